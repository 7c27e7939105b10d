"""Does a refactor keep the numbers? Runs every stage (in process, as `dvc repro` would on a fresh
project) at an older commit and at the working tree, on the image sample (default params) and on
the README's drug-review one-liner, and compares reports/metrics.json, selection.json and
advise.json key by key; only the stage timings may differ.

    .venv/bin/python benchmarks/same_numbers.py 76ff815 [--kinds image text]

Each project is a fresh copy (its own feature cache), so a run takes what `make run` takes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = {"started_at", "finished_at", "wall_seconds", "advise_seconds"}
REPORTS = ("metrics.json", "selection.json", "advise.json")
CHILD = """
import sys
root, kind, out = sys.argv[1:4]
sys.path.insert(0, root)
from pathlib import Path
import shutil
from tests.helpers import copy_project, set_params
from pipeline_lib.config import load_params
from pipeline_lib.stages import run_stages
try:
    from pipeline_lib.paths import Paths
except ImportError:  # before pipeline_lib.paths existed
    from pipeline_lib.config import Paths
proj = copy_project()
if kind == "text":
    set_params(proj, data={"source": "manifest", "path": "pipeline_lib/sample_data/drug_reviews_condition.csv",
                           "shots_per_class": 16}, finetune={"text": {"pairs_per_example": 5}})
run_stages(load_params(proj), Paths.for_root(proj))
for name in %r:
    shutil.copy(proj / "reports" / name, Path(out) / name)
""" % (REPORTS,)


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) if k not in TIMINGS
                for d in ([f"{path}/{k} only in one"] if (k in a) != (k in b) else differences(a[k], b[k], f"{path}/{k}"))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (u, v) in enumerate(zip(a, b)) for d in differences(u, v, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r:.60} -> {b!r:.60}"]


def run(code_root: Path, kind: str, out: Path) -> None:
    out.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", CHILD, str(code_root), kind, str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the commit to compare the working tree with")
    parser.add_argument("--kinds", nargs="+", default=["image", "text"], choices=["image", "text"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="same-numbers-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(work / "old"), args.old], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        for kind in args.kinds:
            run(work / "old", kind, work / f"old-{kind}")
            run(ROOT, kind, work / f"new-{kind}")
            for name in REPORTS:
                found = differences(*(json.loads((work / f"{side}-{kind}" / name).read_text()) for side in ("old", "new")))
                print(f"{kind:5} {name:15} {'identical (timings aside)' if not found else '; '.join(found[:10])}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(work / "old")], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
