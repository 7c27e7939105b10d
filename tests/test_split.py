import numpy as np
import pandas as pd

from pipeline_lib.stages.ingest import assign_splits, subsample_shots


def _frame(counts, split=""):
    labels = [c for c, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"label": labels, "split": [split] * len(labels)})


def test_stratified_split_keeps_class_proportions():
    frame = _frame({"a": 100, "b": 50, "c": 10})
    split = assign_splits(frame, val_fraction=0.2, test_fraction=0.2, seed=0)
    table = pd.crosstab(frame["label"], split)
    # val_fraction is of the labelled pool (what is left after test)
    assert table.loc["a"].to_dict() == {"test": 20, "train": 64, "val": 16}
    assert table.loc["b"].to_dict() == {"test": 10, "train": 32, "val": 8}
    assert table.loc["c"].to_dict() == {"test": 2, "train": 6, "val": 2}


def test_split_is_seeded():
    frame = _frame({"a": 30, "b": 30})
    same = assign_splits(frame, 0.2, 0.2, seed=1).equals(assign_splits(frame, 0.2, 0.2, seed=1))
    other = assign_splits(frame, 0.2, 0.2, seed=2)
    assert same and not assign_splits(frame, 0.2, 0.2, seed=1).equals(other)


def test_tiny_class_still_gets_train_and_test():
    split = assign_splits(_frame({"a": 3}), 0.2, 0.2, seed=0)
    assert sorted(split) == ["test", "train", "val"]


def test_given_split_is_kept_and_no_new_test_is_drawn():
    frame = pd.concat([_frame({"a": 10, "b": 10}), _frame({"a": 5, "b": 5}, "test")], ignore_index=True)
    split = assign_splits(frame, 0.2, 0.2, seed=0)
    assert (split[frame["split"] == "test"] == "test").all()
    assert (split[frame["split"] == ""] != "test").all()
    assert (split == "val").sum() == 4


def test_shots_subsample_train_only():
    frame = pd.DataFrame({"label": ["a"] * 10 + ["b"] * 4 + ["a"] * 3,
                          "split": ["train"] * 14 + ["test"] * 3})
    split = subsample_shots(frame, 5, seed=0)
    assert ((split == "train") & (frame["label"] == "a")).sum() == 5
    assert ((split == "train") & (frame["label"] == "b")).sum() == 4
    assert (split == "unused").sum() == 5
    assert (split[frame["split"] == "test"] == "test").all()
    assert subsample_shots(frame, None, 0).equals(frame["split"])


def test_shots_subsets_are_nested():
    frame = pd.DataFrame({"label": ["a"] * 12 + ["b"] * 12, "split": ["train"] * 24})
    kept = [set(np.flatnonzero(subsample_shots(frame, k, seed=5) == "train")) for k in (1, 2, 5, 10)]
    assert all(small < big for small, big in zip(kept, kept[1:]))


def test_no_val_to_hold_out_means_cross_validation():
    """Every labelled row named train by the source leaves nothing to hold out: choices are made by
    cross-validation (mode "cv"), not in a holdout mode with an empty val split."""
    from types import SimpleNamespace

    from pipeline_lib.stages.ingest import split_labelled

    frame = _frame({"a": 40, "b": 40}, split="train")
    frame.loc[frame.index[::8], "split"] = "test"
    d = SimpleNamespace(test_fraction=0.2, shots_per_class=None, val_fraction=0.2)
    split, mode = split_labelled(frame, d, cv_below=2, seed=0)
    assert mode == "cv" and not (split == "val").any()
    split, mode = split_labelled(frame.assign(split=frame["split"].replace("train", "")), d, cv_below=2, seed=0)
    assert mode == "holdout" and (split == "val").sum() > 0
