"""The DAG in three views agrees, and the code's shape keeps its promises: dvc.yaml, the stage
registry (pipeline_lib.stages.STAGES) and flows/ name the same stages in the same order; a stage
module imports no other stage; pipeline_lib has no import cycle and imports neither Prefect nor
DVC; every pipeline_lib module a stage imports (transitively) is among its dvc.yaml deps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from flows import OTHER_FLOWS
from pipeline_lib.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "pipeline_lib"


def _module_file(dotted: str) -> Path | None:
    base = ROOT / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[Path]:
    """pipeline_lib modules a file imports, at the top or inside functions (lazy imports count)."""
    package = _dotted(path) if path.name == "__init__.py" else _dotted(path).rpartition(".")[0]
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] != "pipeline_lib":
                continue
            target = _module_file(name)
            if target is not None and target != path:
                found.add(target)
    return found


def closure(path: Path) -> set[Path]:
    seen, todo = set(), [path]
    while todo:
        for target in imports(todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_dvc_yaml_registry_and_flows_name_the_same_stages_in_order():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert tuple(dvc) == STAGES
    flow_modules = {p.stem for p in (ROOT / "flows").glob("*.py") if not p.stem.startswith("_")}
    assert flow_modules == set(STAGES) | set(OTHER_FLOWS)
    for stage, spec in dvc.items():
        assert spec["cmd"] == f"python -m flows.{stage}"
        source = (ROOT / "flows" / f"{stage}.py").read_text()
        assert f'@flow(name="{stage}")\ndef {stage}(' in source
        assert (LIB / "stages" / f"{stage}.py").exists()
    # each stage's upstream outputs are declared before it: dvc.yaml's order is the DAG's order
    outs = {stage: [next(iter(o)) if isinstance(o, dict) else o for o in spec.get("outs", [])]
            for stage, spec in dvc.items()}
    for i, (stage, spec) in enumerate(dvc.items()):
        later = {o for s in STAGES[i:] for o in outs[s]}
        assert not later & set(spec.get("deps", [])), f"{stage} depends on a later stage's output"


def test_stages_import_no_other_stage_and_the_library_has_no_cycle():
    stage_files = {LIB / "stages" / f"{s}.py" for s in STAGES}
    for stage in stage_files:
        others = (imports(stage) & stage_files) - {stage}
        assert not others, f"{stage.name} imports the stage(s) {[p.name for p in others]}"
    for module in LIB.rglob("*.py"):
        assert module not in closure(module), f"import cycle through {module.relative_to(ROOT)}"
        tree = ast.parse(module.read_text())
        top = {(a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
               for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        assert not top & {"prefect", "dvc"}, f"{module.relative_to(ROOT)} imports Prefect or DVC"


def test_each_stage_declares_the_code_it_runs():
    """A change to any pipeline_lib module a stage imports must make DVC re-run the stage.
    Package __init__ files (the telemetry switches, the stage list) do not change results."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, spec in dvc.items():
        deps = {ROOT / d for d in spec["deps"] if not d.startswith("$")}
        entry = LIB / "stages" / f"{stage}.py"
        needed = {p for p in closure(entry) | {entry} if p.name != "__init__.py"}
        missing = sorted(str(p.relative_to(ROOT)) for p in needed
                         if not any(p == d or d in p.parents for d in deps))
        assert not missing, f"dvc.yaml stage {stage} does not declare: {missing}"
        undeclared_flow = ROOT / "flows" / f"{stage}.py"
        assert undeclared_flow in deps, f"dvc.yaml stage {stage} does not declare flows/{stage}.py"


def test_each_stage_writes_exactly_its_dvc_yaml_outputs():
    """pipeline_lib.paths.OUTPUTS (what each stage writes, by Paths attribute) and dvc.yaml's outs,
    metrics and plots of the stage name the same files: an output DVC does not know is never
    versioned, and one the code does not write fails `dvc repro`."""
    from pipeline_lib.paths import OUTPUTS, Paths

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    paths = Paths(ROOT)
    assert list(OUTPUTS) == list(STAGES)
    for stage in STAGES:
        declared = {o if isinstance(o, str) else next(iter(o)) for kind in ("outs", "metrics", "plots")
                    for o in dvc[stage].get(kind, [])}
        assert declared == {str(p.relative_to(ROOT)) for p in paths.outputs(stage)}, stage


def test_a_stage_started_by_an_interpreter_without_the_venv_says_how_to_fix_it():
    """`dvc repro` outside the activated venv runs another `python`: one line, no traceback."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-S", "-m", "flows.ingest"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "source .venv/bin/activate" in proc.stderr


class _Recording:
    """A read-only stand-in for Params (or one of its sections) that records every key read."""

    def __init__(self, obj, prefix: str, log: set):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_log", log)

    def __getattr__(self, name):
        from pydantic import BaseModel

        value = getattr(self._obj, name)
        key = self._prefix + name
        if isinstance(value, BaseModel):
            return _Recording(value, key + ".", self._log)
        self._log.add(key)
        return value


# Keys a stage reads without them changing its outputs; each with the reason.
NOT_RESULTS = {
    "model_dump": "finetune's checkpoint identity (config_hash) and Dask workers' copy of the params",
    "runtime.num_threads": "how many CPU threads compute the same result",
    "featurize.cache_dir": "where the content-addressed cache lives, not what is in it",
    "featurize.cache_shard_items": "how many vectors a cache file holds, not what they are",
    "runtime.executor": "local or Dask: the same vectors", "runtime.dask_address": "where Dask runs",
    "runtime.dask_workers": "how many Dask workers", "runtime.shard_size": "Dask task size",
    "runtime.loader_workers": "which processes decode the same images (tests/test_finetune.py)",
    "runtime.hold_images_mb": "images held in memory or read again from disk: the same pixels",
    "synthetic.preview_per_class": "a report picture", "augment.preview_images": "a report picture",
    "synthetic.ddpm.checkpoint_every": "how often a resumable checkpoint is written",
    "evaluate.top_confusions": "the length of a list in the report",
}
# Declared keys that neither tiny project reads, and the branch that does read them.
READ_ELSEWHERE = {
    "ingest": {"semi_supervised.source": "with data.unlabeled set", "advise.enabled": "with data.unlabeled set"},
    "finetune": {"data.unlabeled": "finetune.adapt: dann (the target domain's images)"},
    "evaluate": {"mlflow": "flows/evaluate logs the run and registers the model (pipeline_lib.tracking)"},
}
COVERED_BY = {"backbone.names": "backbone.name", "backbone.weights_for": "backbone.weights",
              "backbone.blocks_for": "backbone.blocks"}


def _declared(params: list, key: str) -> bool:
    key = COVERED_BY.get(key, key)
    return any(key == p or key.startswith(p + ".") for p in params) or key in NOT_RESULTS or any(
        key.endswith("." + n) or key == n for n in NOT_RESULTS)


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """A copy of the project on a few real images, with every optional part on that reads params
    (DDPM with the confidence probe and dedup, augmentation, flip TTA, fine-tuning)."""
    from tests.helpers import copy_project, set_params, write_folder_dataset

    root = copy_project(tmp_path_factory.mktemp("tiny") / "project")
    write_folder_dataset(root / "data" / "raw", per_class=6)
    set_params(root, data={"source": "folder", "path": "data/raw", "shots_per_class": None, "test_fraction": 0.34},
               synthetic={"generator": "ddpm", "per_class": 2, "min_confidence": 0.01, "dedup_similarity": 0.999,
                          "ddpm": {"resolution": 16, "channels": [8, 16], "train_steps": 4, "batch_size": 4,
                                   "sample_steps": 2}},
               augment={"copies": 1}, backbone={"resolution": 32}, train_head={"C": [1.0], "use_augmented": True},
               selection={"folds": 2, "repeats": 1},
               finetune={"epochs": 1, "patience": 1, "batch_size": 8, "unfreeze_blocks": 1},
               evaluate={"bootstrap": 0}, mlflow={"log_model": False})
    return root


@pytest.fixture(scope="module")
def tiny_text_project(tmp_path_factory):
    """A copy of the project on a few real reviews, with every optional part of the text branch on
    that reads params (templated synthetic texts with class descriptions, text noise, contrastive
    tuning of the encoder, the zero-shot row)."""
    from tests.helpers import copy_project, set_params
    from tests.test_text import reviews

    root = copy_project(tmp_path_factory.mktemp("tiny-text") / "project")
    reviews(4, 2).replace({"split": {"train": ""}}).to_csv(root / "reviews.csv", index=False)  # val drawn from them
    set_params(root, data={"source": "manifest", "path": "reviews.csv", "shots_per_class": None, "val_fraction": 0.25,
                           "class_descriptions": {"Acne": "skin spots and pimples"}},
               synthetic={"generator": "template", "min_confidence": 0.01, "dedup_similarity": 0.999},
               augment={"copies": 1}, text={"max_length": 32}, train_head={"C": [1.0], "use_augmented": True},
               selection={"folds": 2, "repeats": 1, "cv_below": 2},  # holdout mode: the image project is in cv mode
               finetune={"text": {"epochs": 3, "augment": True}},
               evaluate={"bootstrap": 0}, mlflow={"log_model": False})
    return root


@pytest.fixture(scope="module")
def tiny_vectors_project(tmp_path_factory):
    """A copy of the project on the test-only vectors modality (tests/modality_vectors.py)."""
    import tests.modality_vectors  # noqa: F401 - registers the modality
    from tests.helpers import copy_project, set_params
    from tests.test_modality_plugin import vectors

    root = copy_project(tmp_path_factory.mktemp("tiny-vectors") / "project")
    vectors(6).to_csv(root / "vectors.csv", index=False)
    set_params(root, data={"source": "manifest", "path": "vectors.csv", "shots_per_class": None},
               selection={"folds": 2, "repeats": 1}, evaluate={"bootstrap": 0}, mlflow={"log_model": False})
    return root


def _reads(project: Path) -> dict[str, set]:
    """The params keys each stage reads when it runs on ``project``."""
    import contextlib
    import io

    from pipeline_lib.config import load_params
    from pipeline_lib.paths import Paths
    from pipeline_lib.stages import stage_module

    params, paths = load_params(project), Paths.for_root(project)
    reads = {}
    for stage in STAGES:
        reads[stage] = set()
        with contextlib.redirect_stderr(io.StringIO()):
            stage_module(stage).run(_Recording(params, "", reads[stage]), paths)
    return reads


@pytest.fixture(scope="module")
def reads(tiny_project, tiny_text_project, tiny_vectors_project) -> dict[str, dict[str, set]]:
    return {"image": _reads(tiny_project), "text": _reads(tiny_text_project), "vectors": _reads(tiny_vectors_project)}


@pytest.mark.parametrize("branch", ["image", "text", "vectors"])
def test_each_stage_declares_the_params_it_reads(reads, branch):
    """Every params key a stage reads (recorded on the tiny project of each modality) is among its
    dvc.yaml params (or explained in NOT_RESULTS): otherwise changing it would leave the stage's
    outputs stale."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    undeclared = {stage: missing for stage, log in reads[branch].items()
                  if (missing := sorted(k for k in log if not _declared(dvc[stage].get("params", []), k)))}
    assert not undeclared, f"dvc.yaml does not declare the params these stages read ({branch}): {undeclared}"


def test_no_stage_declares_a_param_it_never_reads(reads):
    """Every params key a stage declares is read by it on one branch or the other: a declared key
    that is never read re-runs the stage for nothing when it changes."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    unread = {}
    for stage, spec in dvc.items():
        seen = set().union(*(branch[stage] for branch in reads.values()))
        seen |= {declared for key, declared in COVERED_BY.items() if key in seen}
        never = [p for p in spec.get("params", []) if p not in READ_ELSEWHERE.get(stage, {})
                 and not any(k == p or k.startswith(p + ".") for k in seen)]
        if never:
            unread[stage] = never
    assert not unread, f"dvc.yaml declares params these stages never read: {unread}"
