"""Stage ingest: read the source, decide the modality, validate and normalise every item, split,
write a manifest.

Sources: the embedded Fashion-MNIST sample, a folder ``<path>/<class>/*`` (image files, or
``*.txt`` with one text per file: the files' modality, pipeline_lib.modalities), or a CSV manifest
``path,label[,split]`` (paths relative to the CSV's folder) or one whose rows hold the items
themselves (``text,label[,split]``). Every item that cannot be used goes to the report with the
reason and the fix (``data.on_bad_file: quarantine``) or stops the stage with that message
(``error``). Output: the items as the modality normalises them (RGB PNGs, UTF-8 texts), named by
content hash, a parquet manifest, classes.json, the modality (dataset.json) and reports/ingest.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import numpy as np
import pandas as pd

from .. import atomic, modalities
from ..config import Params
from ..dataset import MANIFEST_COLUMNS, SPLITS, UNLABELED
from ..errors import BadItem, PipelineError
from ..image import fashion_mnist
from ..label import labels as loop_labels
from ..modality import Modality
from ..paths import Paths
from ..runtime import chunks
from ..text.files import decode_utf8

MISSING_LABELS = {"", "nan", "none", "null", "na", "n/a", "<na>"}  # what spreadsheets write for "no label"


@dataclass
class Candidate:
    source: str  # where the item came from (path, or sample:<part>/<index>, or <csv>:<line>)
    label: str
    split: str  # "" when the source gives none
    modality: Modality
    file: Path | None = None  # a file to read, or
    value: object = None  # the item already in memory (the sample's pixels, a manifest row's text)


@dataclass
class IngestReport:
    rejected: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    leakage: list[dict] = field(default_factory=list)
    dropped_classes: list[dict] = field(default_factory=list)
    converted: list[dict] = field(default_factory=list)
    hidden_skipped: list[str] = field(default_factory=list)  # hidden folders (.ipynb_checkpoints, .trash)
    labelling: dict = field(default_factory=dict)  # the labelling loop's labels applied (label.folder)
    decoded_by_workers: int = 0  # files a Dask worker decoded (runtime.executor: dask)

    def reject(self, source: str, reason: str, fix: str, strict: bool) -> None:
        if strict:
            raise PipelineError(f"{source}: {reason}. Fix: {fix}. "
                                "(Set data.on_bad_file: quarantine to skip such files and list them "
                                "in reports/ingest.json instead.)")
        self.rejected.append({"file": source, "reason": reason, "fix": fix})


# ---------------------------------------------------------------- sources
def _sample_candidates(params: Params, path: Path) -> tuple[list[Candidate], list[str]]:
    sample = fashion_mnist.load_sample(path)
    classes = [str(c) for c in sample["classes"]]
    image = modalities.get("image")
    out = [Candidate(f"sample:pool/{i}", classes[int(y)], "", image, value=x)
           for i, (x, y) in enumerate(zip(sample["x_pool"], sample["y_pool"]))]
    per_class: Counter = Counter()
    for i, (x, y) in enumerate(zip(sample["x_test"], sample["y_test"])):
        if per_class[int(y)] < params.data.sample_test_per_class:
            per_class[int(y)] += 1
            out.append(Candidate(f"sample:test/{i}", classes[int(y)], "test", image, value=x))
    return out, classes


def _folder_candidates(root: Path, report: IngestReport, strict: bool) -> tuple[list[Candidate], list[str]]:
    if root.is_file():
        raise PipelineError(f"data.path {root} is a file, but data.source: folder needs a folder of class folders "
                            f"({root.parent}/<class_name>/*.png); for a CSV manifest set data.source: manifest.")
    if not root.is_dir():
        raise PipelineError(f"data folder {root} does not exist. Put images in {root}/<class_name>/ "
                            "or set data.path (and data.source) in params.yaml.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise PipelineError(f"{root} has no class folders: expected {root}/<class_name>/*.png "
                            f"(one sub-folder per class; extensions {', '.join(modalities.extensions())}).")
    out: list[Candidate] = []
    for stray in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        report.reject(str(stray), "file outside any class folder",
                      f"move it into {root}/<class_name>/", strict)
    base, classes = root.resolve(), []
    for class_dir in class_dirs:
        if not class_dir.name.isprintable():
            report.reject(str(class_dir), f"class folder name {class_dir.name!r} has control characters",
                          "rename the folder in plain characters", strict)
            continue
        if not class_dir.resolve().is_relative_to(base):
            report.reject(str(class_dir), f"class folder is a link to {class_dir.resolve()}, outside the data "
                          f"folder {base}", "copy the images into the data folder instead of linking them", strict)
            continue
        classes.append(class_dir.name)
        out += [Candidate(str(f), class_dir.name, "", modalities.for_file(f), file=f)
                for f in _item_files(class_dir, base, report, strict, modalities.extensions())]
    return _one_modality(out, report, strict), classes


def _one_modality(candidates: list[Candidate], report: IngestReport, strict: bool) -> list[Candidate]:
    """A folder is a data set of one modality, the one it holds most files of (a tie goes to the
    modality registered first); files of another are rejected."""
    counts = Counter(c.modality.name for c in candidates)
    order = [m.name for m in modalities.modalities()]
    chosen = min(counts, key=lambda name: (-counts[name], order.index(name))) if counts else None
    for c in candidates:
        if c.modality.name != chosen:
            report.reject(c.source, f"{c.modality.one} in a folder of {modalities.get(chosen).nouns}",
                          "keep each kind of data in a data set of its own (or remove the file)", strict)
    return [c for c in candidates if c.modality.name == chosen]


def _item_files(folder: Path, base: Path, report: IngestReport, strict: bool,
                extensions: tuple[str, ...]) -> list[Path]:
    """The files with ``extensions`` under a folder, recursively and sorted. Hidden files and folders
    are skipped (the folders listed in the report); links that lead outside ``base`` and links to
    folders are refused, never opened; other extensions are rejected."""
    files = []
    for top, dirs, names in os.walk(folder):  # does not follow linked folders
        here = Path(top)
        report.hidden_skipped += [str(here / d) for d in dirs if d.startswith(".")]
        for d in sorted(d for d in dirs if not d.startswith(".") and (here / d).is_symlink()):
            report.reject(str(here / d), f"a link to the folder {(here / d).resolve()} (links to folders are not "
                          "followed)", "copy the images into the class folder", strict)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here / d).is_symlink())
        for name in sorted(n for n in names if not n.startswith(".")):
            f = here / name
            try:
                target = f.resolve(strict=False) if f.is_symlink() else f
            except (RuntimeError, OSError):  # a link that leads back to itself (OSError from Python 3.13)
                report.reject(str(f), "a symbolic link loop (the link leads back to itself)",
                              "remove the link or point it at an image", strict)
                continue
            if f.is_symlink() and not target.is_relative_to(base):
                report.reject(str(f), f"a link to {target}, outside the data folder {base}",
                              "copy the image into the data folder instead of linking it", strict)
            elif not f.is_file():
                report.reject(str(f), "not a regular file (a named pipe, socket or device, or a broken link)",
                              "remove it from the data folder", strict)
            elif f.suffix.lower() in extensions:
                files.append(f)
            else:
                report.reject(str(f), f"unsupported file extension {f.suffix or '(none)'!r}",
                              f"use one of {', '.join(extensions)} or remove the file", strict)
    return files


def _manifest_candidates(csv: Path, report: IngestReport, strict: bool) -> tuple[list[Candidate], list[str]]:
    if not csv.is_file():
        raise PipelineError(f"manifest {csv} does not exist: give a CSV with columns path,label[,split] "
                            "in data.path, or set data.source: folder.")
    try:
        frame = pd.read_csv(io.StringIO(decode_utf8(csv.read_bytes(), f"manifest {csv}")), dtype=str,
                            keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PipelineError(f"manifest {csv} is not a readable CSV: {exc}") from None
    inline = next(((m, items) for m in modalities.modalities() if (items := m.inline_items(frame)) is not None), None)
    if inline and "path" in frame.columns:
        what = f"a `{inline[0].inline_column}` column" if inline[0].inline_column else f"the {inline[0].nouns} themselves"
        raise PipelineError(f"manifest {csv} has both a `path` column and {what}: a data set is files (path) or "
                            f"{inline[0].nouns} in the rows; keep one of the two.")
    item = inline[0].noun if inline else "path"
    missing = ({"label"} | (set() if inline else {"path"})) - set(frame.columns)
    if missing:
        raise PipelineError(f"manifest {csv} lacks column(s) {sorted(missing)}; it has {list(frame.columns)}. "
                            "Expected a header line `path,label[,split]` (images) or `text,label[,split]` (texts).")
    if frame.empty:
        raise PipelineError(f"manifest {csv} has a header but no rows: add one line `{item},label` per "
                            f"{item if inline else 'file'}.")
    base = csv.parent.resolve()
    out: list[Candidate] = []
    for line_no, row in enumerate(frame.itertuples(index=False), start=2):
        where = f"{csv}:{line_no}"
        split = str(getattr(row, "split", "") or "").strip().lower()
        if split and split not in SPLITS:
            raise PipelineError(f"{where}: split {split!r} is not one of {list(SPLITS)} (or empty)")
        label = unicodedata.normalize("NFC", str(row.label).strip())
        if label.lower() in MISSING_LABELS:
            report.reject(where, f"missing label ({label!r})" if label else "empty label",
                          "give every row a label (or remove the row)", strict)
            continue
        if not label.isprintable():
            report.reject(where, f"label {label!r} has control characters (tab, newline, ...)",
                          "write the class name in plain characters", strict)
            continue
        if inline:
            out.append(Candidate(where, label, split, inline[0], value=inline[1][line_no - 2]))
            continue
        target = (base / str(row.path)).resolve()
        if "\\" in str(row.path) and not target.exists():  # a Windows path: images\cat\1.png
            target = (base / PureWindowsPath(str(row.path)).as_posix()).resolve()
        if not target.is_relative_to(base):
            report.reject(f"{where} ({row.path})", f"path points outside the data folder {base}",
                          "copy the image under the manifest's folder and use a relative path", strict)
            continue
        if not target.exists():
            windows = " (it is written with \\; paths are relative to the CSV's folder, with /)" if "\\" in str(row.path) else ""
            report.reject(f"{where} ({row.path})", f"file not found{windows}",
                          f"fix the path: it must name a file under {base}", strict)
            continue
        modality = modalities.for_file(target)
        if modality is None:
            report.reject(f"{where} ({row.path})", f"unsupported file extension {target.suffix or '(none)'!r}",
                          f"use one of {', '.join(modalities.extensions())}", strict)
            continue
        out.append(Candidate(str(target), label, split, modality, file=target))
    return _one_modality(out, report, strict), sorted({c.label for c in out})


def _unlabeled_candidates(folder: Path, modality: Modality, report: IngestReport, strict: bool) -> list[Candidate]:
    """Every file of the data set's modality under data.unlabeled (recursively), for semi-supervised
    learning and for advise's picks."""
    if not folder.is_dir():
        raise PipelineError(f"data.unlabeled: folder {folder} not found: give a folder of unlabelled {modality.nouns} "
                            "(any layout), or set semi_supervised.source: none")
    out = [Candidate(str(f), "", UNLABELED, modality, file=f)
           for f in _item_files(folder, folder.resolve(), report, strict, modality.extensions)]
    if not out:
        raise PipelineError(f"data.unlabeled: no {modality.nouns} ({', '.join(modality.extensions)}) under {folder}")
    return out


# ---------------------------------------------------------------- split
def assign_splits(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """Stratified split of rows whose ``split`` is empty; rows with a given split keep it.

    When the source already names test rows, the rest is split into train/val only.
    """
    split = assign_test(frame, test_fraction, seed)
    return assign_val(frame, split, (frame["split"] == "") & (split == "train"), val_fraction, seed)


def assign_test(frame: pd.DataFrame, test_fraction: float, seed: int) -> pd.Series:
    """Rows with an empty ``split`` become test (a stratified ``test_fraction``, at least one per
    class, unless the source names test rows) or train (the labelled pool); given splits are kept."""
    rng = np.random.default_rng(seed)
    split = frame["split"].copy()
    has_test = bool((split == "test").any())
    for _, idx in frame[split == ""].groupby("label").groups.items():
        idx = np.array(sorted(idx))
        rng.shuffle(idx)
        n_test = 0 if has_test else max(1, int(round(len(idx) * test_fraction)))
        n_test = min(n_test, max(0, len(idx) - 1))
        split.loc[idx[:n_test]] = "test"
        split.loc[idx[n_test:]] = "train"
    return split


def assign_val(frame: pd.DataFrame, split: pd.Series, eligible: pd.Series, val_fraction: float,
               seed: int) -> pd.Series:
    """Move a stratified ``val_fraction`` of the ``eligible`` rows of each class to val, leaving at
    least one training image per class."""
    rng = np.random.default_rng(seed + 2)
    split = split.copy()
    for _, idx in frame[eligible].groupby("label").groups.items():
        idx = np.array(sorted(idx))
        rng.shuffle(idx)
        n = len(idx)
        n_val = int(round(n * val_fraction))
        if val_fraction > 0 and n >= 2:
            n_val = max(1, n_val)
        n_val = min(n_val, max(0, n - 1))
        split.loc[idx[:n_val]] = "val"
    return split


def subsample_shots(frame: pd.DataFrame, shots: int | None, seed: int) -> pd.Series:
    """Keep ``shots`` labelled images per class (seeded); the others become split ``unused``.

    The labelled pool is every train or val row. The subsets are nested: the k images kept at k
    shots are among those kept at k + 1, so growing the labelled set only adds images (and only
    those need featurizing).
    """
    split = frame["split"].copy()
    if shots is None:
        return split
    rng = np.random.default_rng(seed + 1)
    for _, idx in sorted(frame[split.isin(["train", "val"])].groupby("label").groups.items()):
        order = np.array(sorted(idx))[rng.permutation(len(idx))]
        split.loc[order[shots:]] = "unused"
    return split


def split_labelled(frame: pd.DataFrame, d, cv_below: int, seed: int) -> tuple[pd.Series, str]:
    """test | train | val | unused for every row, and the selection mode.

    Test rows are set aside first; ``shots_per_class`` then keeps k labelled images per class.
    When the smallest class has fewer than ``cv_below`` of them, every one of them is a training
    image and choices are made by cross-validation over them (mode "cv"); otherwise a stratified
    ``val_fraction`` (plus rows the source marks val) is held out for choosing (mode "holdout").
    """
    given = frame["split"]
    split = assign_test(frame, d.test_fraction, seed)
    split = subsample_shots(frame.assign(split=split), d.shots_per_class, seed)
    kept = split.isin(["train", "val"])
    counts = frame.loc[kept, "label"].value_counts()
    if counts.empty or int(counts.min()) < cv_below or d.val_fraction == 0:
        return split.where(~kept, "train"), "cv"
    split = assign_val(frame, split, kept & (given == ""), d.val_fraction, seed)
    if not (split == "val").any():  # the source names every labelled row train: nothing to hold out
        return split, "cv"
    return split, "holdout"


# ---------------------------------------------------------------- stage
def run(params: Params, paths: Paths, decoded: Path | None = None) -> dict:
    """Ingest; when it stops on bad input, reports/ingest.json still says why (and what was rejected).
    ``decoded``: the folder where Dask workers left the files they decoded (decode_shard); a file
    found there is not decoded again."""
    report = IngestReport()
    try:
        return _run(params, paths, report, decoded)
    except PipelineError as exc:
        atomic.write_json(paths.ingest_report, {"error": str(exc), **_problems(report)})
        raise
    finally:
        if decoded is not None:
            shutil.rmtree(decoded, ignore_errors=True)


def _run(params: Params, paths: Paths, report: IngestReport, decoded: Path | None = None) -> dict:
    d = params.data
    strict = d.on_bad_file == "error"
    candidates, classes, modality = _candidates(params, paths, report, strict)
    items = modality.folder
    with atomic.replace_dir(paths.prepared_dir) as staging:
        rows = _validate_and_write(candidates, staging / items, modality, params, report, strict, decoded)
        frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        unlabeled = frame[frame["split"] == UNLABELED]
        frame = frame[frame["split"] != UNLABELED].reset_index(drop=True)
        frame = _check_classes(frame, classes, params, report, strict)
        classes = sorted(frame["label"].unique(), key=classes.index) if len(frame) else []
        frame["label_idx"] = frame["label"].map({c: i for i, c in enumerate(classes)}).astype(int)
        frame["split"], mode = split_labelled(frame, d, params.selection.cv_below, params.seed)
        frame = pd.concat([frame, unlabeled.assign(label_idx=-1)], ignore_index=True)
        source_classes = classes  # a class only the labelling loop has has no test item (like zero-shot ones)
        frame, classes, report.labelling = loop_labels.apply(  # after the test split: never in test
            frame, classes, loop_labels.read_labels(paths.resolve(params.label.folder)), d.min_per_class)
        _require_splits(frame, source_classes)
        classes = classes + _zero_shot_classes(d.zero_shot_classes, classes)
        frame = frame.sort_values(["split", "label_idx", "item_id"], kind="stable").reset_index(drop=True)
        _remove_orphans(staging / items, set(frame["path"]))
        frame["path"] = f"data/prepared/{items}/" + frame["path"]
        atomic.write_parquet(staging / "manifest.parquet", frame)
        atomic.write_json(staging / "classes.json", classes)
        modalities.record(staging, modality)

    summary = {"selection_mode": mode, "modality": modality.name, **_summary(frame, classes, report)}
    if decoded is not None:
        summary["decoded_by_workers"] = report.decoded_by_workers
    atomic.write_json(paths.ingest_report, summary)
    return summary


def _candidates(params: Params, paths: Paths, report: IngestReport, strict: bool
                ) -> tuple[list[Candidate], list[str], Modality]:
    """Every item the source names (and data.unlabeled's, when read), its classes and the modality."""
    d = params.data
    if d.source == "sample":
        candidates, classes = _sample_candidates(params, paths.resolve(d.path))
    elif d.source == "folder":
        candidates, classes = _folder_candidates(paths.resolve(d.path), report, strict)
    else:
        candidates, classes = _manifest_candidates(paths.resolve(d.path), report, strict)
    modality = candidates[0].modality if candidates else modalities.get("image")
    if d.unlabeled and (params.semi_supervised.source == "folder" or params.advise.enabled):
        candidates = candidates + _unlabeled_candidates(paths.resolve(d.unlabeled), modality, report, strict)
    return candidates, classes, modality


def _validate_and_write(candidates, items_dir: Path, modality: Modality, params: Params, report: IngestReport,
                        strict: bool, decoded: Path | None = None) -> list[dict]:
    from tqdm import tqdm

    items_dir.mkdir(parents=True)
    rows: list[dict] = []
    seen: dict[str, dict] = {}  # item id -> its row (duplicates are kept once)
    for cand in tqdm(candidates, desc="ingest", unit="item", disable=len(candidates) < 200):
        done = _decoded(decoded, cand.file) if decoded is not None and cand.file is not None else None
        if done is not None:  # a Dask worker decoded it: the same checks, the item already written
            report.decoded_by_workers += 1
            if "bad" in done:
                report.reject(cand.source, *done["bad"], strict)
                continue
            iid, fields = done["id"], done["fields"]
            moved = decoded / f"{_decoded_key(cand.file)}{modality.suffix}"
            write = lambda name, moved=moved: shutil.move(moved, items_dir / name)  # noqa: E731
        else:
            try:
                item, fields = modality.load(cand.file if cand.file is not None else cand.value, params)
            except BadItem as bad:
                report.reject(cand.source, bad.reason, bad.fix, strict)
                continue
            iid = modality.content_id(item)
            write = lambda name, item=item: modality.write(items_dir / name, item)  # noqa: E731
        if fields.get("note"):
            report.converted.append({"file": cand.source, "note": fields["note"]})
        _keep(cand, iid, fields, seen, rows, report, write, modality.suffix)
    return rows


# ---------------------------------------------------------------- on a Dask cluster
def plan_shards(params: Params, paths: Paths, shard_size: int) -> list[list[str]]:
    """The files ingest would decode, in shards of ``shard_size`` for Dask workers
    (runtime.executor: dask). Items already in memory (the embedded sample, a manifest's texts)
    stay with the stage; so does every check that needs the whole data set."""
    candidates = _candidates(params, paths, IngestReport(), strict=False)[0]
    return chunks([str(c.file) for c in candidates if c.file is not None], shard_size)


def decode_shard(params: Params, paths: Paths, files: list[str]) -> int:
    """On a Dask worker: decode and validate each file as the stage would (modality.load), into
    paths.ingest_scratch: the normalised item and a JSON record (its content id and fields, or why it
    was rejected, and the file's size and time, so a file changed since is decoded again). Plain
    writes, the record last: an interrupted record is not read, the stage decodes that file itself."""
    scratch = paths.ingest_scratch
    scratch.mkdir(parents=True, exist_ok=True)
    for name in files:
        file = Path(name)
        modality, key = modalities.for_file(file), _decoded_key(file)
        try:
            item, fields = modality.load(file, params)
        except BadItem as bad:
            record = {"bad": [bad.reason, bad.fix]}
        else:
            modality.write(scratch / f"{key}{modality.suffix}", item)
            record = {"id": modality.content_id(item), "fields": fields}
        (scratch / f"{key}.json").write_text(json.dumps({"stat": _stat(file), **record}))
    return len(files)


def _decoded_key(file: Path) -> str:
    return hashlib.sha1(str(file).encode()).hexdigest()


def _stat(file: Path) -> list[int]:
    st = file.stat()
    return [st.st_size, st.st_mtime_ns]


def _decoded(folder: Path, file: Path) -> dict | None:
    """What a worker recorded for ``file``, or None (not decoded there, unreadable, or the file
    changed since)."""
    try:
        record = json.loads((folder / f"{_decoded_key(file)}.json").read_text())
        return record if record.get("stat") == _stat(file) else None
    except (OSError, ValueError):
        return None


def _keep(cand: Candidate, iid: str, fields: dict, seen: dict[str, dict], rows: list[dict], report: IngestReport,
          write, suffix: str) -> None:
    """Write a new item once (named by its content id) and add its row; a repeat of a seen item is
    listed as a duplicate (a conflict when labelled differently) and, across train/test, as leakage
    (kept once, in test)."""
    if iid in seen:
        first = seen[iid]
        entry = {"file": cand.source, "duplicate_of": first["source"], "label": cand.label, "split": cand.split}
        if first["label"] != cand.label:
            entry["conflict"] = f"labelled {cand.label!r} here but {first['label']!r} there"
        if first["split"] != cand.split and "test" in (first["split"], cand.split):
            report.leakage.append({"file": cand.source, "same_image_as": first["source"],
                                   "splits": sorted([first["split"] or "(unassigned)", cand.split or "(unassigned)"]),
                                   "action": "kept once, in test only"})
            first["split"] = "test"
        report.duplicates.append(entry)
        return
    name = f"{iid}{suffix}"
    write(name)
    row = {"item_id": iid, "path": name, "source": cand.source, "label": cand.label, "label_idx": -1,
           "split": cand.split, **fields}
    seen[iid] = row
    rows.append(row)


def _check_classes(frame: pd.DataFrame, classes: list[str], params: Params, report: IngestReport,
                   strict: bool) -> pd.DataFrame:
    counts = frame["label"].value_counts() if len(frame) else pd.Series(dtype=int)
    extra = sorted(set(counts.index) - set(classes))
    classes.extend(extra)
    need = params.data.min_per_class
    for cls in classes:
        n = int(counts.get(cls, 0))
        if n >= need:
            continue
        what = "is empty" if n == 0 else f"has {n} usable image(s), fewer than data.min_per_class={need}"
        msg = f"class {cls!r} {what}"
        if strict:
            raise PipelineError(f"{msg}. Add images for it, remove the class, or lower data.min_per_class.")
        report.dropped_classes.append({"class": cls, "usable_images": n, "reason": msg})
        frame = frame[frame["label"] != cls]
    if frame["label"].nunique() < 2:
        why = f" ({rejection_summary(report)})" if report.rejected else ""
        raise PipelineError(
            f"fewer than 2 usable classes after validation: {len(report.rejected)} file(s) rejected{why}, "
            f"{len(report.dropped_classes)} class(es) dropped; the list is in reports/ingest.json. A classifier "
            f"needs at least two classes with {need}+ images each.")
    return frame.reset_index(drop=True)


def _zero_shot_classes(names: list[str], labelled: list[str]) -> list[str]:
    """data.zero_shot_classes: appended after the labelled classes (they have no image here; their
    training images can only come from the synthesize stage, and no test image measures them)."""
    clash = [c for c in names if c in labelled]
    if clash:
        raise PipelineError(f"data.zero_shot_classes: {clash} also have labelled images; remove them from "
                            "data.zero_shot_classes (it is for classes with none).")
    return list(names)


def _require_splits(frame: pd.DataFrame, classes: list[str]) -> None:
    for split in ("train", "test"):
        have = set(frame.loc[frame["split"] == split, "label"])
        missing = [c for c in classes if c not in have]
        if missing:
            raise PipelineError(
                f"split {split!r} has no image of class(es) {missing}: add images to those classes "
                "(each needs enough for train, val and test) or adjust data.val_fraction/test_fraction.")


def _remove_orphans(images_dir: Path, keep: set[str]) -> None:
    for f in images_dir.iterdir():
        if f.name not in keep:
            f.unlink()


def _summary(frame: pd.DataFrame, classes: list[str], report: IngestReport) -> dict:
    per_class = (frame.groupby(["label", "split"]).size().unstack(fill_value=0)
                 .reindex(index=classes, fill_value=0))
    return {
        "classes": classes,
        "zero_shot_classes": [c for c in classes if c not in set(frame["label"])],
        "counts": {split: int((frame["split"] == split).sum()) for split in (*SPLITS, "unused", UNLABELED)},
        "per_class": {cls: {k: int(v) for k, v in row.items()} for cls, row in per_class.iterrows()},
        **_problems(report),
    }


def _problems(report: IngestReport) -> dict:
    return {
        "n_rejected": len(report.rejected),
        "rejected": report.rejected,
        "n_duplicates": len(report.duplicates),
        "duplicates": report.duplicates,
        "n_leakage": len(report.leakage),
        "leakage": report.leakage,
        "dropped_classes": report.dropped_classes,
        "converted": report.converted,
        "hidden_skipped": report.hidden_skipped,
        "labelling": report.labelling,
    }


def rejection_summary(report: IngestReport, top: int = 3) -> str:
    """The commonest reasons files were rejected: "24 x cannot read the file (...)"."""
    reasons = Counter(r["reason"] for r in report.rejected).most_common(top)
    return "; ".join(f"{n} x {reason}" for reason, n in reasons)


