"""Batch prediction on bad input: every input accounted for, one clear line for what cannot work,
nothing left in the system's temporary folder (a real registered model from the `logged` fixture)."""

import json
import tempfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline_lib.errors import PipelineError, TransientError
from pipeline_lib.image.deploy import list_inputs
from pipeline_lib.predict import check_request, load_registered, model_uri, write_predictions
from pipeline_lib.prediction import LoadedModel
from tests.helpers import solid


def test_model_names_a_user_types_become_uris():
    assert model_uri(None, "clf") == "models:/clf@champion"
    assert model_uri("challenger", "clf") == "models:/clf@challenger"
    assert model_uri("3", "clf") == "models:/clf/3"
    assert model_uri("models:/other@champion", "clf") == "models:/other@champion"


def test_unreadable_csvs_are_one_clear_line(tmp_path):
    utf16 = tmp_path / "utf16.csv"
    utf16.write_text("path\nimg.png\n", encoding="utf-16")
    with pytest.raises(PipelineError, match="not UTF-8 text"):
        list_inputs(utf16)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(PipelineError, match="not a readable CSV"):
        list_inputs(empty)
    header = tmp_path / "header.csv"
    header.write_text("path\n")
    with pytest.raises(PipelineError, match="has a header but no rows"):
        list_inputs(header)


def test_a_missing_input_is_named_before_the_model_loads(tmp_path, monkeypatch):
    from flows.predict import predict
    from pipeline_lib import predict as predict_lib

    monkeypatch.setattr(predict_lib, "load_registered", lambda *a: pytest.fail("the model was loaded first"))
    with pytest.raises(PipelineError, match=r"predict: .*new_images does not exist"):
        predict.fn(str(tmp_path / "new_images"), root=str(tmp_path))
    with pytest.raises(PipelineError, match="must be at least 1"):
        check_request(tmp_path, 0, 3)


def test_a_missing_store_or_model_fails_at_once_and_creates_nothing(tmp_path):
    store = tmp_path / "mlflow.db"
    with pytest.raises(PipelineError, match="no MLflow store"):
        load_registered("models:/clf@champion", f"sqlite:///{store}")
    assert not store.exists()


def test_unknown_alias_is_a_user_error_not_a_transient_one(logged):
    root, *_ = logged
    with pytest.raises(PipelineError, match="cannot load models:/toy@nobody") as err:
        load_registered("models:/toy@nobody", f"sqlite:///{root}/mlflow.db")
    assert not isinstance(err.value, TransientError)  # the task does not retry it


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    solid((40, 40), (250, 250, 250)).save(folder / "a.png")
    solid((40, 40)).save(folder / "b.gif")
    (folder / "notes.txt").write_text("hello")
    solid((40, 40)).save(folder / ".ipynb_checkpoints" / "a-checkpoint.png")
    return folder


def test_every_input_is_predicted_or_listed_and_no_temp_files_remain(logged, images, tmp_path, monkeypatch):
    root, *_ = logged
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    loaded = load_registered("models:/toy@champion", f"sqlite:///{root}/mlflow.db")
    assert loaded.temperature is not None
    files = list_inputs(images)
    assert [f.name for f in files] == ["a.png", "b.gif", "notes.txt"]  # hidden folder skipped, the rest kept
    report = write_predictions(loaded, files, tmp_path / "out.csv")
    assert report["predicted"] == 1 and [s["path"].rsplit("/", 1)[1] for s in report["skipped"]] == ["b.gif", "notes.txt"]
    assert all("not an image file type" in s["reason"] for s in report["skipped"])
    assert list(scratch.iterdir()) == []


def test_only_unreadable_inputs_fail_with_a_header_csv_and_a_report(tmp_path, images):
    loaded = LoadedModel(model=torch.nn.Identity(), classes=["a", "b"], resolution=32, temperature=None, uri="x")
    tiny = images / "tiny.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tiny)
    out = tmp_path / "out.csv"
    with pytest.raises(PipelineError, match="none of the 2 input"):
        write_predictions(loaded, [images / "notes.txt", tiny], out)
    assert list(pd.read_csv(out).columns[:2]) == ["path", "predicted"]
    skipped = json.loads((tmp_path / "out.report.json").read_text())["skipped"]
    assert skipped[1]["reason"].startswith("too small") and "data." not in skipped[1]["fix"]
    with pytest.raises(PipelineError, match="--batch-size \\(0\\)"):
        write_predictions(loaded, [tiny], out, batch_size=0)


def test_predict_on_a_dask_cluster_equals_one_process(logged, prefect_api, tmp_path):
    """`--executor dask`: shards of runtime.shard_size on a real 2-worker LocalCluster, each worker
    loading the model from MLflow; the table and the skipped list are those of one process."""
    from tests.helpers import clone_project, run_cmd, set_params

    root = clone_project(logged[0], tmp_path / "project")
    set_params(root, runtime={"shard_size": 4, "dask_workers": 2})
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(9):
        solid((24 + i, 30), (25 * i, 200 - 20 * i, 90)).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    env = {"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": ""}
    tables, reports = {}, {}
    for executor in ("local", "dask"):
        out = tmp_path / f"{executor}.csv"
        run_cmd(["python", "-m", "flows.predict", str(folder), "--model", "models:/toy@champion", "--out", str(out),
                 "--executor", executor], root, env)
        tables[executor] = pd.read_csv(out)
        reports[executor] = json.loads((tmp_path / f"{executor}.report.json").read_text())
    local, dask = tables["local"], tables["dask"]
    assert len(local) == 9 and local["path"].tolist() == dask["path"].tolist()
    assert local["predicted"].tolist() == dask["predicted"].tolist()
    np.testing.assert_allclose(local["confidence"], dask["confidence"], atol=1e-5)
    assert reports["local"]["skipped"] == reports["dask"]["skipped"] and len(reports["dask"]["skipped"]) == 1
