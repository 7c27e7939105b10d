"""The labelling loop without a server: how pulled labels enter ingest's manifest (never test), how
annotations become label rows (skipped, disagreeing, unknown and vanished items listed, not
guessed), the labelling config, the paired interval, and the errors of a server that is not there."""

import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from pipeline_lib.errors import PipelineError, TransientError
from pipeline_lib.label import labels, pull, push, rounds, studio


def _frame():
    return pd.DataFrame({
        "item_id": ["a", "b", "c", "d", "e"],
        "label": ["cat", "dog", "dog", "", "cat"],
        "label_idx": [0, 1, 1, -1, 0],
        "split": ["train", "test", "unused", "unlabeled", "train"],
        "note": [""] * 5})


def _labels(*rows):
    return pd.DataFrame([dict(zip(("item_id", "label", "kind", "project"), r)) for r in rows]).reindex(
        columns=labels.COLUMNS, fill_value="")


def test_pulled_labels_join_train_fixes_replace_and_test_is_never_touched():
    frame, classes, done = labels.apply(_frame(), ["cat", "dog"], _labels(
        ("c", "cat", "label", "p"),    # the pool's hidden label was dog: the labeller's answer wins
        ("d", "dog", "label", "p"),    # from data.unlabeled
        ("b", "cat", "label", "p"),    # a test item: ignored
        ("gone", "cat", "label", "p"),
        ("a", "dog", "fix", "p"),
        ("e", "cat", "confirmed", "p")), min_per_class=1)
    by = frame.set_index("item_id")
    assert by.loc["c", ["split", "label", "label_idx"]].tolist() == ["train", "cat", 0]
    assert by.loc["d", ["split", "label", "label_idx"]].tolist() == ["train", "dog", 1]
    assert by.loc["b", ["split", "label"]].tolist() == ["test", "dog"]
    assert by.loc["a", ["label", "label_idx"]].tolist() == ["dog", 1]
    assert done["labels"] == 2 and done["confirmed"] == 1
    assert done["fixes"] == [{"item_id": "a", "old_label": "cat", "label": "dog"}]
    assert {i["item_id"] for i in done["ignored"]} == {"b", "gone"}
    assert classes == ["cat", "dog"]


def test_a_new_class_joins_only_with_enough_labels():
    loop = _labels(("c", "bird", "label", "p"), ("d", "bird", "label", "p"))
    frame, classes, done = labels.apply(_frame(), ["cat", "dog"], loop, min_per_class=3)
    assert classes == ["cat", "dog"] and done["labels"] == 0
    assert frame.equals(_frame())  # the pool items wait in the pool as they were
    assert all("fewer than data.min_per_class=3" in i["why"] for i in done["ignored"])
    # a fix to a class that cannot join yet leaves the item with its label from the source
    fixes = _labels(("c", "bird", "label", "p"), ("a", "bird", "fix", "p"), ("e", "dog", "fix", "p"))
    frame, classes, done = labels.apply(_frame(), ["cat", "dog"], fixes, min_per_class=3)
    assert frame.set_index("item_id").loc["a", ["label", "split", "label_idx"]].tolist() == ["cat", "train", 0]
    assert done["labels"] == 0 and done["fixes"] == [{"item_id": "e", "old_label": "cat", "label": "dog"}]
    assert {i["item_id"] for i in done["ignored"]} == {"a", "c"}
    frame, classes, done = labels.apply(_frame(), ["cat", "dog"], loop, min_per_class=2)
    assert classes == ["cat", "dog", "bird"] and done["labels"] == 2
    assert set(frame.loc[frame["item_id"].isin(["c", "d"]), "label_idx"]) == {2}


def test_a_damaged_labels_file_is_one_line_naming_file_and_line(tmp_path):
    (tmp_path / labels.LABELS_FILE).write_text("item_id,label,kind\na,cat,label\nb,,label\n")
    with pytest.raises(PipelineError, match=r"label_studio.csv, line 3: needs an item_id, a label"):
        labels.read_labels(tmp_path)
    (tmp_path / labels.LABELS_FILE).write_text("id,label\n")
    with pytest.raises(PipelineError, match="column.* item_id, kind missing"):
        labels.read_labels(tmp_path)
    assert labels.read_labels(tmp_path / "none").empty


def test_the_labelling_config_offers_exactly_the_classes_whatever_their_names():
    classes = ['a "quoted" one', "c&d", "t-shirt/top", "<angle>"]
    for tag, kind in (("Image", push.LABEL_NEXT), ("Text", push.REVIEW)):
        config = push.label_config(classes, tag, kind)
        ET.fromstring(config)  # well-formed XML
        assert push.config_classes(config) == classes


def _task(tid, iid, *answers, cancelled=(), **data):
    annotations = [{"result": [{"from_name": "label", "value": {"choices": [a]}}], "updated_at": f"t{k}",
                    "completed_by": 1} for k, a in enumerate(answers)]
    annotations += [{"result": [], "was_cancelled": True} for _ in cancelled]
    return {"id": tid, "data": {"item_id": iid, "source": f"file{tid}", **data}, "annotations": annotations}


def test_annotations_become_rows_and_the_doubtful_ones_are_listed_not_guessed():
    project = {"title": "p: label next"}
    listed = {"skipped": [], "disagree": [], "unknown_class": [], "gone": []}
    known, classes = {"a", "b", "c", "d", "e", "f"}, ["cat", "dog"]

    def answer(task, kind=push.LABEL_NEXT, new=False):
        return pull._answer(task, kind, project, classes, known, new, listed)

    assert answer(_task(1, "a", "cat"))["kind"] == "label"
    assert answer(_task(2, "b", cancelled=[1])) is None and listed["skipped"][0]["task_id"] == 2
    assert answer(_task(3, "c", "cat", "dog")) is None and listed["disagree"][0]["answers"] == ["cat", "dog"]
    assert answer(_task(4, "d", "cat", "cat"))["label"] == "cat"  # two annotators who agree
    assert answer(_task(5, "e", "bird")) is None and listed["unknown_class"][0]["label"] == "bird"
    assert answer(_task(5, "e", "bird"), new=True)["label"] == "bird"
    assert answer(_task(6, "zz", "cat")) is None and listed["gone"][0]["item_id"] == "zz"
    fix = answer(_task(7, "f", "dog", given_label="cat"), kind=push.REVIEW)
    assert (fix["kind"], fix["old_label"], fix["label"]) == ("fix", "cat", "dog")
    assert answer(_task(8, "f", "cat", given_label="cat"), kind=push.REVIEW)["kind"] == "confirmed"


def test_a_pull_with_nothing_new_changes_nothing():
    old = _labels(("a", "cat", "label", "p"), ("b", "dog", "fix", "p"))
    merged, new = pull._merge(old, old.copy())
    assert new.empty and merged["item_id"].tolist() == ["a", "b"]
    merged, new = pull._merge(old, _labels(("a", "dog", "label", "p"), ("c", "cat", "label", "p")))
    assert new["item_id"].tolist() == ["a", "c"]
    assert dict(zip(merged["item_id"], merged["label"])) == {"a": "dog", "b": "dog", "c": "cat"}


def test_the_change_against_the_champion_has_a_paired_interval():
    decision = {"champion_version": "3", "promoted": False,
                "test": {"n": 200, "only_second_correct": 14, "only_first_correct": 4, "p_value": 0.015}}
    paired = rounds._paired(decision)
    assert paired["accuracy_change"] == pytest.approx(0.05)
    lo, hi = paired["interval_95"]
    assert lo < 0.05 < hi and hi - lo == pytest.approx(2 * 1.96 * (18 - 100 / 200) ** 0.5 / 200, abs=1e-3)
    assert rounds._paired(None) is None


def test_no_server_and_no_token_are_one_line_each(monkeypatch):
    from tasks.prefect_server import _free_port

    monkeypatch.delenv(studio.TOKEN_ENV, raising=False)
    with pytest.raises(PipelineError, match="set LABEL_STUDIO_API_KEY"):
        studio.Client.connect("http://127.0.0.1:9")
    monkeypatch.setenv(studio.TOKEN_ENV, "secret-token-value")
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(TransientError, match=f"Label Studio does not answer at {url}") as err:
        studio.Client.connect(url)
    assert "secret-token-value" not in str(err.value)


def test_each_modality_gives_label_studio_its_item(tmp_path):
    import base64

    from pipeline_lib import modalities
    from pipeline_lib.config import parse_params
    from pipeline_lib.paths import Paths

    paths = Paths(tmp_path)
    (tmp_path / "data/prepared/texts").mkdir(parents=True)
    (tmp_path / "data/prepared/texts/t.txt").write_text("The pills stopped my headaches.")
    params = parse_params({})
    text = modalities.get("text")
    assert text.label_studio_tag == "Text"
    assert text.label_studio_value(paths, "data/prepared/texts/t.txt", params) == "The pills stopped my headaches."
    image = modalities.get("image")
    (tmp_path / "data/prepared/images").mkdir(parents=True)
    png = tmp_path / "data/prepared/images/a b.png"
    image.write(png, __import__("numpy").zeros((4, 4, 3), "uint8"))
    assert image.label_studio_value(paths, "data/prepared/images/a b.png", params) == \
        "/data/local-files/?d=data/prepared/images/a%20b.png"
    assert image.label_studio_folder(paths, params) == tmp_path.resolve() / "data/prepared/images"
    inline = parse_params({"label": {"images": "inline"}})
    uri = image.label_studio_value(paths, "data/prepared/images/a b.png", inline)
    assert base64.b64decode(uri.split(",", 1)[1]) == png.read_bytes() and image.label_studio_folder(paths, inline) is None
    elsewhere = parse_params({"label": {"document_root": "data/prepared/images"}})
    with pytest.raises(PipelineError, match="label.document_root .* does not hold"):
        image.label_studio_value(paths, "data/prepared/images/a b.png", elsewhere)


def test_ingest_applies_the_loop_labels_and_a_new_class_needs_no_test_item(tmp_path):
    """The real ingest on a folder data set plus data.unlabeled: the loop's labels move pool items
    to train (one of them of a class the source does not have), the test split stays as drawn."""
    from pipeline_lib.config import parse_params
    from pipeline_lib.dataset import read_manifest
    from pipeline_lib.paths import Paths
    from pipeline_lib.stages import ingest
    from tests.helpers import write_folder_dataset

    write_folder_dataset(tmp_path / "raw", per_class=6, classes=("trouser", "bag"))
    write_folder_dataset(tmp_path / "pool", per_class=3, classes=("sneaker", "bag"), seed=1)
    raw = {"data": {"source": "folder", "path": "raw", "unlabeled": "pool", "shots_per_class": None,
                    "test_fraction": 0.34}, "label": {"folder": "labels"}}
    params, paths = parse_params(raw), Paths(tmp_path)
    before = ingest.run(params, paths)
    manifest = read_manifest(paths.manifest)
    pool = manifest[manifest["split"] == "unlabeled"]
    truth = {row.item_id: row.source.split("/")[-2] for row in pool.itertuples()}
    (tmp_path / "labels").mkdir()
    labels.write_labels(tmp_path / "labels", _labels(*[(iid, cls, "label", "p") for iid, cls in truth.items()]))
    after = ingest.run(params, paths)
    relabelled = read_manifest(paths.manifest).set_index("item_id").loc[list(truth)]
    assert set(relabelled["split"]) == {"train"} and relabelled["label"].tolist() == list(truth.values())
    assert after["classes"] == ["bag", "trouser", "sneaker"] and after["labelling"]["labels"] == 6
    assert after["counts"]["test"] == before["counts"]["test"] and after["counts"]["train"] == before["counts"]["train"] + 6
    assert after["per_class"]["sneaker"] == {"test": 0, "train": 3}  # evaluate lists it as unmeasured
