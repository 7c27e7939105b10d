"""Text as a second modality, with the real all-MiniLM-L6-v2 (offline package) and real reviews
from the embedded text sample: ingest's rules for text, the content-addressed cache, text noise,
the stages end to end and the logged pyfunc model."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline_lib.config import TextNoisePolicy, parse_params
from pipeline_lib.errors import PipelineError
from pipeline_lib.paths import Paths
from pipeline_lib.stages import ingest, run_stages
from pipeline_lib.text.augmentation import augment_text
from pipeline_lib.text.drug_reviews import SAMPLE
from pipeline_lib.text.files import text_id
from pipeline_lib.text.text_normalize import normalize_text

CLASSES = ("acne", "birth_control", "depression", "pain")


def reviews(train_per_class: int = 6, test_per_class: int = 5) -> pd.DataFrame:
    """Real reviews of four conditions from the embedded sample (text, label, split)."""
    frame = pd.read_csv(SAMPLE, keep_default_na=False)
    frame = frame[frame["label"].isin(CLASSES)]
    train = frame[frame["split"] == ""].groupby("label").head(train_per_class).assign(split="train")
    test = frame[frame["split"] == "test"].groupby("label").head(test_per_class)
    return pd.concat([train, test], ignore_index=True)


def _project(tmp_path, frame: pd.DataFrame | None = None, **sections) -> tuple:
    (frame if frame is not None else reviews()).to_csv(tmp_path / "texts.csv", index=False)
    raw = {"data": {"source": "manifest", "path": str(tmp_path / "texts.csv"), "shots_per_class": None},
           "evaluate": {"tta": "none"}, "finetune": {"enabled": False}, "mlflow": {"log_model": True}}
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return parse_params(raw), Paths.for_root(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every stage on 6 labelled reviews per class (4 classes), 20 test reviews."""
    root = tmp_path_factory.mktemp("text")
    params, paths = _project(root)
    run_stages(params, paths)
    return params, paths


def test_normalisation_is_nfc_with_whitespace_collapsed():
    assert normalize_text("  cafe\u0301\n\tna\u00efve\u00a0 text\x00 ") == "caf\u00e9 na\u00efve text"
    assert text_id("a b") == text_id(normalize_text(" a\n b ")) and len(text_id("a")) == 32


def test_stages_end_to_end_well_above_chance(trained):
    params, paths = trained
    ingest_report = json.loads(paths.ingest_report.read_text())
    assert ingest_report["modality"] == "text" and ingest_report["counts"]["train"] == 24
    featurize_report = json.loads(paths.featurize_report.read_text())
    assert featurize_report["backbone"] == "all-MiniLM-L6-v2" and featurize_report["feature_dim"] == 384
    assert featurize_report["mirrored"] == 0 and featurize_report["max_length"] == 256
    metrics = json.loads(paths.metrics.read_text())
    assert metrics["n_test"] == 20 and metrics["accuracy"] >= 0.6  # chance: 0.25
    for pair in metrics["top_confusions"]:  # the worst-confused pairs come with example texts
        assert 1 <= len(pair["examples"]) <= min(2, pair["count"]) and all(pair["examples"])
    assert paths.synthetic_preview.stat().st_size > 5_000 and paths.augment_preview.stat().st_size > 5_000


def test_zero_shot_row_follows_the_class_descriptions(trained):
    from pipeline_lib.text.zero_shot import text_zero_shot

    params, paths = trained
    metrics = json.loads(paths.metrics.read_text())
    row = metrics["baselines"]["zero_shot"]
    assert row["prompts"][0] == "This text is about acne." and row["test_accuracy"] >= 0.5  # chance 0.25
    y = np.load(paths.features("test"))["y"]
    described = {"acne": "pimples and skin", "birth_control": "contraception and periods",
                 "depression": "depression and mood", "pain": "pain and painkillers"}
    swapped = dict(zip(described, reversed(list(described.values()))))
    raw = params.model_dump()
    good = text_zero_shot(parse_params({**raw, "data": {**raw["data"], "class_descriptions": described}}), paths,
                          list(CLASSES), y)
    bad = text_zero_shot(parse_params({**raw, "data": {**raw["data"], "class_descriptions": swapped}}), paths,
                         list(CLASSES), y)
    assert good["prompts"][0] == "This text is about pimples and skin."
    assert good["test_accuracy"] >= 0.5 and bad["test_accuracy"] <= 0.25 < good["test_accuracy"]


def test_cache_is_keyed_by_text_content(trained, tmp_path):
    """The same texts in another project are cache hits; one changed text is the one computed."""
    params, paths = trained
    frame = reviews()
    frame.loc[0, "text"] = frame.loc[0, "text"] + " Edited."
    frame.to_csv(tmp_path / "texts.csv", index=False)
    raw = params.model_dump()
    raw["data"]["path"] = str(tmp_path / "texts.csv")
    raw["featurize"]["cache_dir"] = str(paths.root / params.featurize.cache_dir)
    other = Paths.for_root(tmp_path)
    run_stages(parse_params(raw), other, last="featurize")
    report = json.loads(other.featurize_report.read_text())
    assert report["computed"] == 1 and report["cache_hits"] == report["items"] - 1


def test_text_noise_is_seeded_and_only_perturbs_the_texts_own_words():
    text = normalize_text(reviews().loc[0, "text"])
    no_typos = TextNoisePolicy(typo_p=0.0, word_dropout_p=1.0, word_swap_p=1.0, deletion_p=1.0)
    copies = [augment_text(text, no_typos, seed) for seed in range(20)]
    assert copies == [augment_text(text, no_typos, seed) for seed in range(20)]  # seeded
    assert len(set(copies)) > 15 and all(c != text for c in copies)
    words = text.split(" ")
    for copy in copies:  # label-preserving by construction: a sub-multiset of the text's own words
        assert copy and all(copy.split(" ").count(w) <= words.count(w) for w in copy.split(" "))
    typos = augment_text(text, TextNoisePolicy(typo_p=1.0, typo_rate=1.0, word_dropout_p=0, word_swap_p=0,
                                               deletion_p=0), 0)
    assert typos != text and len(typos.split(" ")) == len(words)


def test_augmented_copies_are_featurized_and_can_train_the_head(tmp_path):
    params, paths = _project(tmp_path, reviews(4, 2), augment={"copies": 2}, train_head={"use_augmented": True})
    run_stages(params, paths, last="train_head")
    augmented = pd.read_parquet(paths.augmented_manifest)
    report = json.loads(paths.augment_report.read_text())
    assert len(augmented) == report["augmented_images"] > 24  # 2 copies x 16; a copy no operation changed is dropped
    assert report["augmented_images"] + report["identical_copies_dropped"] == 32
    assert (augmented["orig_mode"] == "text").all()
    assert json.loads(paths.train_head_report.read_text())["n_train"] == 16 + len(augmented)


def test_bad_text_rows_get_one_line_each_in_the_report(tmp_path):
    frame = reviews(3, 2)
    bad = pd.DataFrame({"text": ["   ", "", "fine text about acne and pimples", reviews(3, 2).loc[0, "text"]],
                        "label": ["acne", "acne", "", "pain"], "split": ["train", "train", "train", "test"]})
    params, paths = _project(tmp_path, pd.concat([frame, bad], ignore_index=True))
    ingest.run(params, paths)
    report = json.loads(paths.ingest_report.read_text())
    reasons = [r["reason"] for r in report["rejected"]]
    assert "empty text (nothing but whitespace)" in reasons and "empty text" in reasons
    assert any(r.startswith("missing label") or r == "empty label" for r in reasons)
    assert all(r["file"].startswith(str(tmp_path / "texts.csv") + ":") for r in report["rejected"])
    # the same text in train and test: kept once, in test
    assert report["n_leakage"] == 1 and report["leakage"][0]["action"] == "kept once, in test only"


@pytest.mark.parametrize("content, message", [
    (b"text,label\ncaf\xe9 au lait,acne\n", "line 2 is not UTF-8 (byte 0xe9"),
    (b"words,label\nsome text,acne\n", "lacks column(s) ['path']"),
    (b"path,text,label\na.png,t,acne\n", "has both a `path` column and a `text` column"),
    (b"text,label\n", "has a header but no rows: add one line `text,label` per text"),
])
def test_unusable_manifest_is_one_clear_line(tmp_path, content, message):
    (tmp_path / "texts.csv").write_bytes(content)
    params, paths = _project(tmp_path, reviews(1, 1))
    (tmp_path / "texts.csv").write_bytes(content)
    with pytest.raises(PipelineError) as err:
        ingest.run(params, paths)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_folder_of_text_files_with_a_bad_encoding_and_a_stray_image(tmp_path):
    from tests.helpers import solid

    frame = reviews(4, 0)
    for i, row in frame.iterrows():
        folder = tmp_path / "raw" / row["label"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.txt").write_text(row["text"], encoding="utf-8")
    (tmp_path / "raw" / "acne" / "latin1.txt").write_bytes("acn\xe9 everywhere".encode("latin-1"))
    params = parse_params({"data": {"source": "folder", "path": str(tmp_path / "raw"), "shots_per_class": None,
                                    "test_fraction": 0.25}, "evaluate": {"tta": "none"}})
    paths = Paths.for_root(tmp_path)
    ingest.run(params, paths)
    report = json.loads(paths.ingest_report.read_text())
    assert report["modality"] == "text" and report["n_rejected"] == 1
    assert report["rejected"][0]["reason"].startswith("line 1 is not UTF-8")
    solid().save(tmp_path / "raw" / "pain" / "photo.png")  # an image among texts
    ingest.run(params, paths)
    report = json.loads(paths.ingest_report.read_text())
    assert report["modality"] == "text" and "an image in a folder of texts" in [r["reason"] for r in report["rejected"]]


@pytest.fixture(scope="module")
def logged(trained):
    """The trained text project logged to MLflow (sqlite in the project): params, paths, run id."""
    from pipeline_lib import tracking

    params, paths = trained
    return params, paths, tracking.log_pipeline_run(params, paths)


def test_logged_pyfunc_model_round_trips_and_matches_evaluate(logged):
    import mlflow

    from pipeline_lib.text.files import read_text

    params, paths, run_id = logged
    mlflow.set_tracking_uri(paths.mlflow_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    manifest = pd.read_parquet(paths.manifest).set_index("item_id")
    expected = pd.read_csv(paths.predictions)
    texts = [read_text(paths.resolve(manifest.loc[i, "path"])) for i in expected["item_id"]]
    out = model.predict(pd.DataFrame({"text": texts}))
    assert out["label"].tolist() == expected["predicted"].tolist()
    np.testing.assert_allclose(out["confidence"], expected["confidence"], atol=1e-4)
    assert model.predict(pd.DataFrame({"text": ["one single review about my acne"]})).shape == (1, 2 + len(CLASSES))
    version = mlflow.MlflowClient().get_model_version_by_alias(params.mlflow.model_name, "challenger")
    assert "Text classifier over 4 classes" in mlflow.MlflowClient().get_registered_model(
        params.mlflow.model_name).description and version.run_id == run_id


def test_predict_reads_a_text_file_and_a_csv_and_accounts_for_every_row(logged, tmp_path):
    from pipeline_lib import predict

    params, paths, _ = logged
    loaded = predict.load_registered(predict.model_uri("challenger", params.mlflow.model_name), paths.mlflow_uri)
    assert loaded.modality == "text" and loaded.classes == list(CLASSES)
    lines = tmp_path / "new.txt"
    lines.write_text("My face broke out in acne again\n\n  \nI have been depressed for months\n", encoding="utf-8")
    report = predict.write_predictions(loaded, predict.read_inputs(loaded, lines), tmp_path / "preds.csv")
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert preds["source"].tolist() == [f"{lines}:1", f"{lines}:4"] and report["predicted"] == 2
    assert [s["path"] for s in report["skipped"]] == [f"{lines}:2", f"{lines}:3"]
    assert {"predicted", "confidence", "raw_confidence", "top1", "top3_p", "text"} <= set(preds.columns)
    table = tmp_path / "new.csv"
    pd.DataFrame({"text": ["acne on my back", ""]}).to_csv(table, index=False)
    report = predict.write_predictions(loaded, predict.read_inputs(loaded, table), tmp_path / "preds2.csv")
    assert report["predicted"] == 1 and report["skipped"][0]["path"] == f"{table}:3"
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(PipelineError, match="line 1 is not UTF-8"):
        predict.read_inputs(loaded, tmp_path / "bad.txt")
