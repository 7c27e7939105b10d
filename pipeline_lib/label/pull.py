"""Pull: the finished annotations of both projects become rows of the labels file (labels.py).

Listed, never guessed: a skipped or cancelled task, annotators who disagree, a class the data set
does not have (unless ``new_classes``), an item no longer in the data. Nothing new: nothing written
(the data version does not change, so nothing retrains). Each pull that adds labels appends a line
to rounds.jsonl with the state before it and advise's forecast for the new label count, which the
next run's summary puts beside what it measured (rounds.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..config import Params
from ..dataset import load_manifest
from ..paths import Paths
from . import rounds
from .labels import COLUMNS, labels_file, read_labels, write_labels
from .push import CONTROL, LABEL_NEXT, REVIEW, Kind
from .studio import Client


def pull(params: Params, paths: Paths, client: Client, new_classes: bool = False) -> dict:
    folder = paths.resolve(params.label.folder)
    manifest, classes = load_manifest(paths)
    known = set(manifest["item_id"])
    old = read_labels(folder)
    found: list[dict] = []
    listed: dict[str, list] = {"skipped": [], "disagree": [], "unknown_class": [], "gone": []}
    for kind in (LABEL_NEXT, REVIEW):
        project = client.find_project(kind.title(params))
        if project is None:
            continue
        for task in client.tasks(project["id"], annotated_only=True):
            row = _answer(task, kind, project, classes, known, new_classes, listed)
            if row is not None:
                found.append(row)
    merged, new = _merge(old, pd.DataFrame(found, columns=COLUMNS))
    result = {"new": len(new), "labels": int((new["kind"] == "label").sum()),
              "fixes": int((new["kind"] == "fix").sum()), "confirmed": int((new["kind"] == "confirmed").sum()),
              **{k: v for k, v in listed.items()}, "file": _shown(paths, labels_file(folder))}
    if new.empty:
        return {**result, "status": "nothing new: the labels file is unchanged (no retrain needed)"}
    write_labels(folder, merged)
    result["round"] = rounds.record(paths, folder, result, params.seed)
    return {**result, "status": "written"}


def _shown(paths: Paths, file: Path) -> str:
    return str(file.relative_to(paths.root) if paths.root in file.parents else file)


def _answer(task: dict, kind: Kind, project: dict, classes: list[str], known: set, new_classes: bool,
            listed: dict) -> dict | None:
    """The task's label as a labels-file row, or None (and why, in ``listed``)."""
    data, tid = task.get("data", {}), task["id"]
    iid = str(data.get("item_id", ""))
    done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    answers = {tuple(_choices(a)) for a in done} - {()}
    where = {"task_id": tid, "item_id": iid, "project": project["title"]}
    if not answers:
        listed["skipped"].append(where)
        return None
    if len(answers) > 1 or len(next(iter(answers))) != 1:
        listed["disagree"].append({**where, "answers": sorted("/".join(a) for a in answers)})
        return None
    label = next(iter(answers))[0]
    if label not in classes and not new_classes:
        listed["unknown_class"].append({**where, "label": label})
        return None
    if iid not in known:
        listed["gone"].append(where)
        return None
    last = max(done, key=lambda a: a.get("updated_at") or "")
    given = str(data.get("given_label", ""))
    kind_name = "label" if kind is LABEL_NEXT else ("confirmed" if label == given else "fix")
    return {"item_id": iid, "label": label, "kind": kind_name, "old_label": given if kind is REVIEW else "",
            "item": str(data.get("source", ""))[:200], "project": project["title"], "task_id": tid,
            "annotator": last.get("completed_by", ""), "annotated_at": last.get("updated_at", ""),
            "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _choices(annotation: dict) -> list[str]:
    return [c for r in annotation.get("result", []) if r.get("from_name") == CONTROL
            for c in r.get("value", {}).get("choices", [])]


def _merge(old: pd.DataFrame, found: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The labels file with the pulled rows (a later answer for an item replaces an earlier one), and
    the rows that are new or changed."""
    before = {r.item_id: (r.label, r.kind) for r in old.itertuples()}
    new = found[[before.get(r.item_id) != (r.label, r.kind) for r in found.itertuples()]]
    merged = pd.concat([old[~old["item_id"].isin(new["item_id"])], new], ignore_index=True)
    return merged, new.reset_index(drop=True)
