"""ingest and featurize on a real 2-worker Dask LocalCluster (Prefect's DaskTaskRunner) equal
the single-process runs; featurize fills the same content-addressed cache. (predict on Dask:
tests/test_predict.py.)"""

import json
import shutil

import numpy as np
import pandas as pd

from pipeline_lib import modalities
from pipeline_lib.config import load_params, parse_params
from pipeline_lib.paths import Paths
from pipeline_lib.stages import featurize, ingest, run_stages
from tests.helpers import copy_project, run_cmd, set_params, solid, write_folder_dataset


def test_dask_featurize_equals_single_process(tmp_path, prefect_api):
    root = copy_project(tmp_path / "project")
    write_folder_dataset(tmp_path / "raw", per_class=6, classes=("shirt", "bag", "sneaker"))
    set_params(root, data={"source": "folder", "path": str(tmp_path / "raw"), "shots_per_class": None},
               augment={"copies": 1}, backbone={"resolution": 32},
               runtime={"executor": "dask", "dask_workers": 2, "shard_size": 5})
    params, paths = load_params(root), Paths.for_root(root)
    run_stages(params, paths, last="augment")
    n_images = len({key for key, _, _ in featurize.feature_keys(params, featurize.all_items(paths),
                                                                modalities.of_dataset(paths))})  # + mirrored

    run_cmd(["python", "-m", "flows.featurize"], root, {"PREFECT_API_URL": prefect_api})
    report = json.loads(paths.featurize_report.read_text())
    assert report["computed_by_workers"] == n_images and report["computed"] == 0
    assert report["cache_hits"] == n_images
    on_dask = {s: dict(np.load(paths.features(s))) for s in ("train", "val", "test", "train_augmented")}

    local = parse_params({**params.model_dump(), "runtime": {**params.runtime.model_dump(), "executor": "local"},
                          "featurize": {**params.featurize.model_dump(), "cache_dir": str(tmp_path / "fresh-cache")}})
    assert featurize.run(local, paths)["computed"] == n_images
    for split, arrays in on_dask.items():
        single = np.load(paths.features(split))
        assert arrays["item_id"].tolist() == single["item_id"].tolist()
        np.testing.assert_allclose(arrays["X"], single["X"], rtol=1e-4, atol=1e-5)


def test_dask_ingest_equals_single_process(tmp_path, prefect_api):
    """Workers decode and validate the files; the stage keeps its whole-data checks: the same
    manifest, items, rejections, duplicates and conversion notes as one process."""
    root = copy_project(tmp_path / "project")
    raw = write_folder_dataset(tmp_path / "raw", per_class=6, classes=("shirt", "bag", "sneaker"))
    (raw / "bag" / "broken.png").write_bytes(b"not a png")
    shutil.copy(raw / "shirt" / "shirt_0.png", raw / "bag" / "copy_of_a_shirt.png")  # a conflicting duplicate
    solid((40, 40), (10, 120, 200, 128), mode="RGBA").save(raw / "sneaker" / "with_alpha.png")  # converted, noted
    set_params(root, data={"source": "folder", "path": str(raw), "shots_per_class": None},
               runtime={"executor": "dask", "dask_workers": 2, "shard_size": 4})
    params, paths = load_params(root), Paths.for_root(root)

    run_cmd(["python", "-m", "flows.ingest"], root, {"PREFECT_API_URL": prefect_api})
    on_dask = json.loads(paths.ingest_report.read_text())
    assert on_dask["decoded_by_workers"] == 21 and not paths.ingest_scratch.exists()
    manifest = pd.read_parquet(paths.manifest)
    items = {f.name: f.read_bytes() for f in paths.images_dir.iterdir()}

    local = parse_params({**params.model_dump(), "runtime": {**params.runtime.model_dump(), "executor": "local"}})
    single = ingest.run(local, paths)
    pd.testing.assert_frame_equal(manifest, pd.read_parquet(paths.manifest))
    assert items == {f.name: f.read_bytes() for f in paths.images_dir.iterdir()}
    for key in ("rejected", "duplicates", "converted", "counts", "per_class"):
        assert on_dask[key] == single[key], key
    assert [r["file"] for r in single["rejected"]] == [str(raw / "bag" / "broken.png")]
    assert single["duplicates"][0]["conflict"] and single["converted"]
