import os
import subprocess
from pathlib import Path

import pytest

from pipeline_lib.runtime import process_environment

process_environment()  # telemetry off for everything the tests start

# parallel workers (pytest-xdist, `make test`) share the cores: each worker and the stages it starts
# (they inherit the environment) get its share of threads instead of all of them (runtime.py)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    from pipeline_lib.runtime import available_cpus

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // _WORKERS)))

ROOT = Path(__file__).resolve().parents[1]

# The tiers (pyproject.toml's markers): `e2e` (dvc repro, servers) and `pipeline` (stages run in
# process on a tiny project) are left out by `make test-fast`, which keeps the unit tests. A test
# that uses one of these fixtures runs stages (or a flow against a Prefect server): `pipeline`.
PIPELINE_FIXTURES = {"logged", "prefect_api", "tiny_project", "tiny_text_project", "tiny_vectors_project",
                     "cv_project", "prepared", "trained", "sample_project", "toy_project", "project", "tiny_sd"}
# the modules that run longest first: with `-n 2 --dist loadscope` each is one work unit, and
# starting the longest ones first keeps both workers busy to the end (measured: docs/testing.md)
SLOWEST_FIRST = ["test_e2e_dvc", "test_label_studio_e2e", "test_e2e_text", "test_mlflow_server", "test_faults",
                 "test_modality_plugin"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.pipeline)
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def backbone_small():
    """The real pretrained MobileNetV2 (offline weights) at a small resolution."""
    from pipeline_lib.image.backbones import load_backbone

    return load_backbone("mobilenet_v2", "default", resolution=32)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real local Prefect server for the tests that run flows in subprocesses."""
    from tasks.prefect_server import start_server, stop_server

    home = tmp_path_factory.mktemp("prefect-home")
    old = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    proc, url, _ = start_server()
    yield url
    stop_server(proc)
    if old is None:
        os.environ.pop("PREFECT_HOME", None)
    else:
        os.environ["PREFECT_HOME"] = old


@pytest.fixture
def tmpfs(tmp_path):
    """A real small file system mounted under tmp_path (needs root with CAP_SYS_ADMIN, as on CI)."""

    mounted = []

    def mount(name: str, options: str):
        point = tmp_path / name
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): needs root")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


ODD_CLASS = "cats & dogs (big)"  # MLflow refuses & ( ) in metric keys


@pytest.fixture(scope="session")
def logged(tmp_path_factory):
    """A project on a few real images (one class named as MLflow's keys may not be) logged to MLflow
    twice: every stage, then train_head onwards after a head param change. Returns the root, the
    two parent run ids and a client of its store (sqlite in the project)."""
    import mlflow

    from pipeline_lib import tracking
    from pipeline_lib.config import load_params
    from pipeline_lib.paths import Paths
    from pipeline_lib.stages import STAGES, run_stage, run_stages
    from tests.helpers import copy_project, set_params, write_folder_dataset

    root = copy_project(tmp_path_factory.mktemp("tracking") / "project")
    raw = write_folder_dataset(root / "data" / "raw", per_class=6)
    (raw / "bag").rename(raw / ODD_CLASS)
    set_params(root, data={"source": "folder", "path": "data/raw", "shots_per_class": None, "test_fraction": 0.34},
               backbone={"resolution": 32}, train_head={"C": [1.0]}, selection={"folds": 2, "repeats": 1},
               finetune={"epochs": 2, "patience": 2, "batch_size": 8, "unfreeze_blocks": 1},
               evaluate={"bootstrap": 20}, mlflow={"model_name": "toy"})
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        paths = Paths.for_root(root)
        run_stages(load_params(root), paths)
        first = tracking.log_pipeline_run(load_params(root), paths, tags={"prefect.flow_run_id": "abc"})
        set_params(root, train_head={"C": [0.5]})
        params = load_params(root)
        for stage in STAGES[STAGES.index("train_head"):]:
            run_stage(stage, params, paths)
        second = tracking.log_pipeline_run(params, paths)
    return root, first, second, mlflow.MlflowClient(uri)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """One real Label Studio server for the session (its own venv, sqlite, a temporary data dir),
    serving local files under the session's temporary folder, where the test projects live. Skipped
    where it is not installed, except in CI (CI=true), where its absence fails."""
    from tests import label_studio_server

    missing = label_studio_server.available()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    server = label_studio_server.start(tmp_path_factory.mktemp("label-studio"), tmp_path_factory.getbasetemp())
    yield server
    server.stop()
