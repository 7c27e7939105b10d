"""The labels the loop brings back: one CSV (``<label.folder>/label_studio.csv``, one row per item,
DVC-tracked beside the user's data) that ingest applies on top of the source, and nothing else.

Kinds of row:
- ``label``: an unlabelled item (data.unlabeled, or the pool beyond data.shots_per_class) now
  labelled: it joins the training set (never test: the test split is drawn before, from the source).
- ``fix``: a labelled item whose label was wrong: ``label`` replaces ``old_label``. Deleting the row
  undoes it.
- ``confirmed``: a suspicious label a reviewer kept: nothing changes, and it is not sent again.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import atomic
from ..errors import PipelineError

LABELS_FILE = "label_studio.csv"
ROUNDS_FILE = "rounds.jsonl"
COLUMNS = ["item_id", "label", "kind", "old_label", "item", "project", "task_id", "annotator", "annotated_at",
           "pulled_at"]
KINDS = ("label", "fix", "confirmed")
POOL_SPLITS = ("unused", "unlabeled")  # where an item waits for a label
ORIGINAL = ["label", "split", "note"]  # what apply() may change in a manifest row


def labels_file(folder: Path) -> Path:
    return folder / LABELS_FILE


def read_labels(folder: Path) -> pd.DataFrame:
    """The loop's labels (empty when nothing was pulled yet); a damaged file is one clear error."""
    path = labels_file(folder)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}): restore it with "
                            f"`dvc checkout {path}` or `git checkout {path}.dvc`") from None
    missing = [c for c in ("item_id", "label", "kind") if c not in frame.columns]
    if missing:
        raise PipelineError(f"{path}: column(s) {', '.join(missing)} missing: the file is written by "
                            "`python -m flows.label pull`; restore it with `dvc checkout`")
    bad = frame[~frame["kind"].isin(KINDS) | (frame["item_id"] == "") | (frame["label"] == "")]
    if len(bad):
        row = int(bad.index[0]) + 2
        raise PipelineError(f"{path}, line {row}: needs an item_id, a label and a kind in {', '.join(KINDS)}: "
                            "fix or delete that line")
    return frame.reindex(columns=COLUMNS, fill_value="").drop_duplicates("item_id", keep="last")


def write_labels(folder: Path, frame: pd.DataFrame) -> Path:
    path = labels_file(folder)
    with atomic.atomic_path(path) as tmp:
        frame.reindex(columns=COLUMNS).to_csv(tmp, index=False)
    return path


def apply(frame: pd.DataFrame, classes: list[str], labels: pd.DataFrame, min_per_class: int
          ) -> tuple[pd.DataFrame, list[str], dict]:
    """Ingest's manifest with the loop's labels applied (``frame``: every item, labelled or waiting
    in the pool, test split already drawn), the classes (a new class from ``pull --new-classes``
    appended once it has ``min_per_class`` labels), and what was done."""
    done = {"labels": 0, "fixes": [], "confirmed": 0, "ignored": []}
    if labels.empty:
        return frame, classes, done
    frame, original = frame.copy(), frame[ORIGINAL].copy()
    where = {iid: i for i, iid in enumerate(frame["item_id"])}
    for row in labels.itertuples(index=False):
        i = where.get(row.item_id)
        if i is None:
            done["ignored"].append({"item_id": row.item_id, "label": row.label,
                                    "why": "not in the data any more (deleted or changed since it was labelled)"})
            continue
        split, current = frame.at[i, "split"], frame.at[i, "label"]
        if split == "test":
            done["ignored"].append({"item_id": row.item_id, "label": row.label,
                                    "why": "a test item: test labels come from the source only"})
        elif row.kind == "confirmed" and split not in POOL_SPLITS:
            done["confirmed"] += 1
        elif split in POOL_SPLITS:
            frame.loc[i, ["label", "split", "note"]] = [row.label, "train", f"labelled in Label Studio ({row.project})"]
            done["labels"] += 1
        elif row.label != current:
            frame.loc[i, ["label", "note"]] = [row.label, f"label fixed in Label Studio (was {current})"]
            done["fixes"].append({"item_id": row.item_id, "old_label": current, "label": row.label})
    frame, classes = _new_classes(frame, classes, min_per_class, done, original)
    index = {c: k for k, c in enumerate(classes)}
    labelled = frame["split"].isin(["train", "val", "test"])
    frame.loc[labelled, "label_idx"] = frame.loc[labelled, "label"].map(index).astype(int)
    return frame, classes, done


def _new_classes(frame: pd.DataFrame, classes: list[str], min_per_class: int, done: dict, original: pd.DataFrame):
    """Classes the labellers added (``pull --new-classes``) join once they have ``min_per_class``
    labels; until then every item labelled with one goes back to what it was in ``original`` (a
    pool item to the pool, a fixed item to its label from the source), listed as ignored."""
    labelled = frame["split"].isin(["train", "val"])
    for cls in [c for c in pd.unique(frame.loc[labelled, "label"]) if c not in classes]:
        rows = labelled & (frame["label"] == cls)
        if int(rows.sum()) >= min_per_class:
            classes = classes + [cls]
            continue
        why = (f"new class {cls!r} has {int(rows.sum())} label(s), fewer than data.min_per_class={min_per_class}: "
               "kept out until it has more")
        done["ignored"] += [{"item_id": iid, "label": cls, "why": why} for iid in frame.loc[rows, "item_id"]]
        fixed = {f["item_id"] for f in done["fixes"] if f["label"] == cls}
        done["fixes"] = [f for f in done["fixes"] if f["label"] != cls]
        done["labels"] -= int((rows & ~frame["item_id"].isin(fixed)).sum())
        frame.loc[rows, ORIGINAL] = original.loc[rows, ORIGINAL]
    return frame, classes
