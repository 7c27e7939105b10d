"""The parameter reference, docs/params.md, generated from the params schema (pipeline_lib.config):
every field's default, allowed values and description (its docstring) in one table per section.

    python -m pipeline_lib.params_doc            # rewrite docs/params.md
    python -m pipeline_lib.params_doc --check    # exit 1 if docs/params.md is out of date (tests do this)
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from . import atomic
from .config import Params

DOC = Path(__file__).resolve().parents[1] / "docs" / "params.md"
HEADER = """# Parameters (`params.yaml`)

Generated from the schema in `pipeline_lib/config.py` and the modalities' sections
(`pipeline_lib/image/params.py`, `pipeline_lib/text/params.py`) by `python -m pipeline_lib.params_doc` (a
test fails when this file is out of date). Every value is validated: a wrong key or value stops
with a message naming the key and the allowed values. Change one for an experiment without
editing the file: `dvc exp run -S finetune.epochs=20`.
"""


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _allowed(field) -> str:
    """Literal choices and numeric bounds of a field, in words."""
    parts = []
    for arg in [field.annotation, *typing.get_args(field.annotation)]:
        if typing.get_origin(arg) is typing.Literal:
            parts.append(" \\| ".join(f"`{v}`" for v in typing.get_args(arg)))
    symbols = {Ge: ("≥", "ge"), Gt: (">", "gt"), Le: ("≤", "le"), Lt: ("<", "lt")}
    for meta in field.metadata:
        for kind, (symbol, attr) in symbols.items():
            if isinstance(meta, kind):
                bound = getattr(meta, attr)
                parts.append(f"{symbol} {bound:g}" if isinstance(bound, float) else f"{symbol} {bound}")
    return ", ".join(parts)


def _default(value) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return f"`{text}`" if text != "" else '`""`'


def _rows(model: type[BaseModel], prefix: str, sections: list) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = prefix + name
        if _is_section(field.annotation):
            sections.append((key, field.annotation))
            continue
        description = " ".join((field.description or "").split())
        if not description:
            raise ValueError(f"{key} has no description: add a docstring under the field in its schema module "
                             "(pipeline_lib/config.py, or the modality's params.py)")
        default = field.default_factory() if field.default_factory is not None else field.default
        rows.append(f"| `{key}` | {_default(default)} | {_allowed(field)} | {description} |")
    return rows


def markdown() -> str:
    sections: list = []
    top = _rows(Params, "", sections)
    out = [HEADER, "| key | default | allowed | meaning |", "|---|---|---|---|", *top, ""]
    while sections:
        key, model = sections.pop(0)
        nested: list = []
        out += [f"## `{key}`", ""]
        if model.__doc__ and model.__doc__.strip() and not model.__doc__.startswith(model.__name__ + "("):
            out += [" ".join(model.__doc__.split()), ""]
        out += ["| key | default | allowed | meaning |", "|---|---|---|---|", *_rows(model, key + ".", nested), ""]
        sections[0:0] = nested
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/params.md differs from the schema")
    args = parser.parse_args()
    text = markdown()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            sys.exit(f"{DOC} is out of date: run `python -m pipeline_lib.params_doc`")
        return
    atomic.write_text(DOC, text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
