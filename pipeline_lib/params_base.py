"""The base of every params.yaml section: frozen, no unknown keys, each field's docstring its
description (docs/params.md is generated from them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # each field's docstring is its description: docs/params.md is generated from it
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
