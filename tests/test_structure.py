"""The DAG in three views agrees, and the code's shape keeps its promises: dvc.yaml, the stage
registry (pipeline_lib.stages.STAGES) and flows/ name the same stages in the same order; a stage
module imports no other stage; pipeline_lib has no import cycle and imports neither Prefect nor
DVC; every pipeline_lib module a stage imports (transitively) is among its dvc.yaml deps."""

from __future__ import annotations

import ast
from pathlib import Path

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


def test_a_stage_started_by_an_interpreter_without_the_venv_says_how_to_fix_it():
    """`dvc repro` outside the activated venv runs another `python`: one line, no traceback."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-S", "-m", "flows.ingest"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "source .venv/bin/activate" in proc.stderr
