"""The modality registry: what it knows, how the stages find a data set's modality (and a model's),
data written by the version before the registry, and bad plugin names. The end-to-end proof is
tests/test_modality_plugin.py."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_lib import modalities
from pipeline_lib.errors import PipelineError
from pipeline_lib.features import load_features
from pipeline_lib.paths import Paths

ROOT = Path(__file__).resolve().parents[1]


def test_the_built_in_modalities_and_the_files_they_read():
    names = [m.name for m in modalities.modalities()]
    assert names[:2] == ["image", "text"]
    assert modalities.for_file(Path("a/b.JPG")).name == "image" and modalities.for_file(Path("x.txt")).name == "text"
    assert modalities.for_file(Path("notes.docx")) is None
    assert modalities.nouns("text") == "texts" and modalities.nouns("no-such-kind") == "items"
    assert modalities.of_model({}).name == "image"  # models logged before the metadata key are image models


def test_no_stage_module_branches_on_the_kind_of_data():
    pattern = re.compile(r"is_text|orig_mode|== *['\"]text|['\"]text['\"] *==|isinstance\([^)]*(TextEncoder|Backbone)")
    hits = [f"{f.name}:{i}" for f in sorted((ROOT / "pipeline_lib" / "stages").glob("*.py"))
            for i, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def _prepared(tmp_path: Path, orig_mode: str, id_column: str = "item_id") -> Paths:
    paths = Paths(tmp_path)
    paths.prepared_dir.mkdir(parents=True)
    pd.DataFrame({id_column: ["a", "b"], "path": ["x", "y"], "orig_mode": [orig_mode] * 2,
                  "label": ["p", "q"], "label_idx": [0, 1], "split": ["train", "test"]}).to_parquet(paths.manifest)
    (paths.prepared_dir / "classes.json").write_text('["p", "q"]')
    return paths


def test_the_recorded_modality_wins_and_older_prepared_data_is_told_by_its_manifest(tmp_path):
    from pipeline_lib.dataset import load_manifest

    text = _prepared(tmp_path / "t", "text", id_column="image_id")  # written before the registry
    assert modalities.of_dataset(text).name == "text"
    assert list(load_manifest(text)[0]["item_id"]) == ["a", "b"]
    image = _prepared(tmp_path / "i", "RGB")
    assert modalities.of_dataset(image).name == "image"
    (image.prepared_dir / modalities.DATASET_FILE).write_text(json.dumps({"modality": "text"}))
    assert modalities.of_dataset(image).name == "text"


def test_a_modality_that_is_not_registered_is_one_line_naming_the_fix(tmp_path):
    paths = _prepared(tmp_path, "RGB")
    (paths.prepared_dir / modalities.DATASET_FILE).write_text(json.dumps({"modality": "audio"}))
    with pytest.raises(PipelineError, match=r"no modality 'audio' is registered.*PIPELINE_MODALITIES") as err:
        modalities.of_dataset(paths)
    assert "\n" not in str(err.value)


def test_a_plugin_module_that_cannot_be_imported_is_named(monkeypatch):
    monkeypatch.setattr(modalities, "_loaded", False)
    monkeypatch.setenv(modalities.PLUGINS_ENV, "no_such_module_xyz")
    with pytest.raises(PipelineError, match=r"PIPELINE_MODALITIES: cannot import the modality module 'no_such_module_xyz'"):
        modalities.modalities()
    monkeypatch.setattr(modalities, "_loaded", False)
    monkeypatch.delenv(modalities.PLUGINS_ENV)
    assert [m.name for m in modalities.modalities()][:2] == ["image", "text"]


def test_feature_files_written_before_the_neutral_names_are_read(tmp_path):
    paths = Paths(tmp_path)
    paths.features_dir.mkdir(parents=True)
    np.savez(paths.features("train"), X=np.ones((2, 3), np.float32), y=np.array([0, 1]), image_id=np.array(["a", "b"]),
             backbones=np.array(["m"]))
    X, y, ids = load_features(paths, "train")
    assert X.shape == (2, 3) and list(ids) == ["a", "b"]
