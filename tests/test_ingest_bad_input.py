"""Every kind of bad input gets a clear message (error mode) or a report entry (quarantine mode)."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline_lib.config import parse_params
from pipeline_lib.errors import BadItem, PipelineError
from pipeline_lib.image.files import image_id, load_image
from pipeline_lib.paths import Paths
from pipeline_lib.stages import ingest
from tests.helpers import solid, write_folder_dataset


def _params(tmp_path, **data):
    return parse_params({"data": {"source": "folder", "path": str(tmp_path / "raw"), "shots_per_class": None,
                                  "min_per_class": 3, **data}})


def _run(tmp_path, **data):
    return ingest.run(_params(tmp_path, **data), Paths.for_root(tmp_path))


@pytest.fixture
def raw(tmp_path):
    return write_folder_dataset(tmp_path / "raw", per_class=8)


def _rejected(report):
    return {r["file"].split("/")[-1]: r["reason"] for r in report["rejected"]}


def test_clean_folder_is_ingested_with_rgb_images(tmp_path, raw):
    report = _run(tmp_path)
    assert report["n_rejected"] == 0 and report["classes"] == ["bag", "sneaker", "trouser"]
    manifest = pd.read_parquet(tmp_path / "data/prepared/manifest.parquet")
    # 6 labelled images per class: choices by cross-validation, no val split
    assert len(manifest) == 24 and set(manifest["split"]) == {"train", "test"} and report["selection_mode"] == "cv"
    img = Image.open(tmp_path / manifest["path"].iloc[0])
    assert img.mode == "RGB"
    pixels = np.asarray(img)
    assert (pixels[..., 0] == pixels[..., 1]).all()  # grey replicated
    assert manifest["item_id"].iloc[0] == image_id(pixels)


BAD_FILES = {
    "zero.png": (lambda p: p.write_bytes(b""), "empty file"),
    "notimage.png": (lambda p: p.write_text("hello, I am text"), "not an image"),
    "truncated.png": (lambda p: p.write_bytes(_png_bytes()[:60]), "corrupt or truncated"),
    "tiny.png": (lambda p: solid((4, 4)).save(p), "too small"),
    "readme.txt": (lambda p: p.write_text("notes"), "a text file in a folder of images"),
    "notes.docx": (lambda p: p.write_bytes(b"PK\x03\x04"), "unsupported file extension"),
}


def _png_bytes():
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_quarantined_with_reason_and_fix(tmp_path, raw, name):
    make, reason = BAD_FILES[name]
    make(raw / "bag" / name)
    report = _run(tmp_path)
    rejected = _rejected(report)
    assert reason in rejected[name]
    assert all(r["fix"] for r in report["rejected"])
    assert report["counts"]["train"] + report["counts"]["val"] + report["counts"]["test"] == 24


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_stops_with_clear_error_in_error_mode(tmp_path, raw, name):
    make, reason = BAD_FILES[name]
    make(raw / "bag" / name)
    with pytest.raises(PipelineError) as err:
        _run(tmp_path, on_bad_file="error")
    assert name in str(err.value) and reason in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "data/prepared").exists()  # nothing half-written


UNUSUAL = {
    "cmyk.jpg": lambda p: solid(colour=(0, 200, 200, 0), mode="CMYK").save(p),
    "sixteen.png": lambda p: Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200).save(p),
    "rgba.png": lambda p: solid(colour=(200, 30, 30, 128), mode="RGBA").save(p),
    "palette.png": lambda p: solid().convert("P").save(p),
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_modes_convert_with_a_note_or_are_rejected(tmp_path, raw, name):
    UNUSUAL[name](raw / "bag" / name)
    report = _run(tmp_path)
    assert name in {c["file"].split("/")[-1] for c in report["converted"]}
    assert report["counts"]["train"] + report["counts"]["val"] + report["counts"]["test"] == 25
    shutil.rmtree(tmp_path / "data")
    report = _run(tmp_path, on_unusual_mode="reject")
    assert "not plain 8-bit" in _rejected(report)[name]


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 200)).save(path)
    loaded = load_image(path)
    assert loaded.pixels.min() == 0 and loaded.pixels.max() == 255 and "rescaled" in loaded.note


def test_empty_class_folder_is_dropped_or_an_error(tmp_path, raw):
    (raw / "coat").mkdir()
    report = _run(tmp_path)
    assert report["dropped_classes"][0]["class"] == "coat" and "empty" in report["dropped_classes"][0]["reason"]
    assert "coat" not in report["classes"]
    with pytest.raises(PipelineError, match="class 'coat' is empty"):
        _run(tmp_path, on_bad_file="error")


def test_class_with_too_few_images(tmp_path, raw):
    (raw / "coat").mkdir()
    solid().save(raw / "coat" / "one.png")
    with pytest.raises(PipelineError, match=r"class 'coat' has 1 usable image\(s\), fewer than data.min_per_class=3"):
        _run(tmp_path, on_bad_file="error")


def test_missing_folder_and_no_class_folders(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        _run(tmp_path)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "img.png").write_bytes(_png_bytes())
    with pytest.raises(PipelineError, match="no class folders"):
        _run(tmp_path)


def _manifest_dataset(tmp_path, rows):
    raw = write_folder_dataset(tmp_path / "raw", per_class=8)
    pd.DataFrame(rows(raw)).to_csv(raw / "labels.csv", index=False)
    return parse_params({"data": {"source": "manifest", "path": str(raw / "labels.csv"),
                                  "shots_per_class": None}})


def test_manifest_path_outside_data_folder_is_rejected(tmp_path):
    outside = tmp_path / "secret.png"
    solid((20, 20)).save(outside)

    def rows(raw):
        files = sorted(raw.rglob("*.png"))
        return [{"path": str(f.relative_to(raw)), "label": f.parent.name} for f in files] + \
            [{"path": "../secret.png", "label": "bag"}]

    report = ingest.run(_manifest_dataset(tmp_path, rows), Paths.for_root(tmp_path))
    assert any("outside the data folder" in r["reason"] for r in report["rejected"])
    assert report["n_rejected"] == 1


def test_manifest_missing_column_and_bad_split(tmp_path):
    raw = write_folder_dataset(tmp_path / "raw", per_class=3)
    pd.DataFrame({"file": ["bag/bag_0.png"], "label": ["bag"]}).to_csv(raw / "m.csv", index=False)
    params = parse_params({"data": {"source": "manifest", "path": str(raw / "m.csv")}})
    with pytest.raises(PipelineError, match=r"lacks column\(s\) \['path'\]"):
        ingest.run(params, Paths.for_root(tmp_path))
    pd.DataFrame({"path": ["bag/bag_0.png"], "label": ["bag"], "split": ["holdout"]}).to_csv(raw / "m.csv", index=False)
    with pytest.raises(PipelineError, match=r"m.csv:2: split 'holdout'"):
        ingest.run(params, Paths.for_root(tmp_path))


def test_duplicates_across_train_and_test_are_reported_as_leakage(tmp_path):
    def rows(raw):
        out = []
        for f in sorted(raw.rglob("*.png")):
            first_of_class = f.name.endswith("_0.png")
            out.append({"path": str(f.relative_to(raw)), "label": f.parent.name,
                        "split": "test" if first_of_class else ""})
        shutil.copy(raw / "bag/bag_0.png", raw / "bag/copy_of_bag_0.png")
        out.append({"path": "bag/copy_of_bag_0.png", "label": "bag", "split": "train"})
        return out

    report = ingest.run(_manifest_dataset(tmp_path, rows), Paths.for_root(tmp_path))
    assert report["n_leakage"] == 1 and report["leakage"][0]["splits"] == ["test", "train"]
    assert report["n_duplicates"] == 1
    manifest = pd.read_parquet(tmp_path / "data/prepared/manifest.parquet")
    assert manifest["item_id"].is_unique
    kept = manifest[manifest["source"].str.endswith("bag_0.png")]
    assert len(kept) == 1 and kept["split"].item() == "test"


def test_load_image_on_directory_is_a_bad_image(tmp_path):
    with pytest.raises(BadItem):
        load_image(tmp_path)


def test_links_out_of_the_data_folder_are_refused_and_never_opened(tmp_path, raw):
    outside = tmp_path / "elsewhere"
    write_folder_dataset(outside, per_class=4, classes=("trouser",))
    (raw / "bag" / "passwd.png").symlink_to("/etc/passwd")
    (raw / "bag" / "outside.png").symlink_to(outside / "trouser" / "trouser_0.png")
    (raw / "bag" / "inside.png").symlink_to(raw / "sneaker" / "sneaker_0.png")  # inside: a duplicate, fine
    (raw / "bag" / "linked_dir").symlink_to(outside / "trouser")
    (raw / "dresses").symlink_to(outside / "trouser")  # a whole class folder linked from outside
    os.mkfifo(raw / "bag" / "pipe.png")  # opening it would block forever
    (raw / "bag" / "dangling.png").symlink_to(raw / "nowhere.png")
    (raw / "bag" / "loop.png").symlink_to(raw / "bag" / "loop.png")  # resolving it raises "Symlink loop"
    report = _run(tmp_path)
    reasons = _rejected(report)
    assert "outside the data folder" in reasons["passwd.png"] and "outside the data folder" in reasons["outside.png"]
    assert "links to folders are not followed" in reasons["linked_dir"]
    assert "not a regular file" in reasons["pipe.png"] and "not a regular file" in reasons["dangling.png"]
    assert "symbolic link loop" in reasons["loop.png"] and report["per_class"]["bag"]["train"] > 0  # the rest read
    assert "class folder is a link" in reasons["dresses"] and "dresses" not in report["classes"]
    manifest = pd.read_parquet(tmp_path / "data/prepared/manifest.parquet")
    assert not manifest["source"].str.contains("elsewhere|passwd|linked_dir").any()
    assert report["n_duplicates"] == 1  # inside.png is sneaker_0.png


def test_hidden_folders_inside_a_class_are_skipped_and_listed(tmp_path, raw):
    hidden = raw / "bag" / ".ipynb_checkpoints"
    hidden.mkdir()
    solid((20, 20), (1, 2, 3)).save(hidden / "bag_0-checkpoint.png")
    report = _run(tmp_path)
    assert report["hidden_skipped"] == [str(hidden)] and report["n_rejected"] == 0
    manifest = pd.read_parquet(tmp_path / "data/prepared/manifest.parquet")
    assert not manifest["source"].str.contains("checkpoint").any()


def test_exif_orientation_is_applied_and_noted(tmp_path, raw):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # stored landscape, 40 wide
    pixels[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": a portrait phone photo
    Image.fromarray(pixels).save(raw / "bag" / "portrait.jpg", exif=exif, quality=95)
    loaded = load_image(raw / "bag" / "portrait.jpg")
    assert loaded.pixels.shape == (40, 20, 3) and "EXIF orientation 6" in loaded.note
    assert loaded.pixels[:20].mean() > 200 and loaded.pixels[20:].mean() < 50  # the white half on top
    report = _run(tmp_path)
    assert any("upright" in c["note"] for c in report["converted"])


def test_huge_image_is_downscaled_for_the_pipeline_and_the_original_kept(tmp_path, raw):
    big = raw / "bag" / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (600, 900, 3), dtype=np.uint8)).save(big)
    before = big.read_bytes()
    report = _run(tmp_path, max_image_side=300)
    manifest = pd.read_parquet(tmp_path / "data/prepared/manifest.parquet")
    row = manifest[manifest["source"] == str(big)].iloc[0]
    assert (row["width"], row["height"]) == (300, 200) and big.read_bytes() == before
    assert any("downscaled from 900x600 to 300x200" in c["note"] for c in report["converted"])
    jpeg = raw / "bag" / "big.jpg"
    Image.fromarray(np.full((1600, 2400, 3), 90, dtype=np.uint8)).save(jpeg)
    assert load_image(jpeg, max_side=300).pixels.shape == (200, 300, 3)  # decoded at a reduced scale first


def test_a_stopped_ingest_still_writes_the_report_its_message_points_to(tmp_path):
    raw = tmp_path / "raw"
    for cls in ("a", "b"):
        (raw / cls).mkdir(parents=True)
        for i in range(3):
            (raw / cls / f"{i}.png").write_text("not an image")
    stale = tmp_path / "reports" / "ingest.json"
    stale.parent.mkdir()
    stale.write_text('{"counts": {"train": 999}}')  # a previous run's report must not survive
    with pytest.raises(PipelineError) as err:
        _run(tmp_path)
    message = str(err.value)
    assert "6 file(s) rejected (6 x not an image" in message and "reports/ingest.json" in message
    written = json.loads(stale.read_text())
    assert written["error"] == message and written["n_rejected"] == 6 and "counts" not in written


def test_folder_source_given_a_file_says_so(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\n")
    with pytest.raises(PipelineError, match="is a file, but data.source: folder needs a folder.*data.source: manifest"):
        ingest.run(_params(tmp_path, path=str(tmp_path / "labels.csv")), Paths.for_root(tmp_path))


def test_manifest_missing_labels_windows_paths_and_no_rows(tmp_path):
    def rows(raw):
        files = sorted(raw.rglob("*.png"))
        out = [{"path": str(f.relative_to(raw)).replace("/", "\\"), "label": f.parent.name} for f in files]
        return out + [{"path": "bag\\bag_0.png", "label": "NaN"}, {"path": "bag\\bag_1.png", "label": " "},
                      {"path": "bag\\missing.png", "label": "bag"}, {"path": "bag\\bag_2.png", "label": "b\tag"}]

    report = ingest.run(_manifest_dataset(tmp_path, rows), Paths.for_root(tmp_path))
    assert report["classes"] == ["bag", "sneaker", "trouser"]  # no class "NaN"
    reasons = [r["reason"] for r in report["rejected"]]
    assert {"empty label", "missing label ('NaN')"} <= set(reasons) and len(reasons) == 4
    assert any("control characters" in r for r in reasons)
    assert any(r.startswith("file not found (it is written with \\") for r in reasons)
    assert report["counts"]["train"] + report["counts"]["test"] == 24  # the \ paths were read
    csv = tmp_path / "raw" / "labels.csv"
    csv.write_text("path,label\n")
    params = parse_params({"data": {"source": "manifest", "path": str(csv), "shots_per_class": None}})
    with pytest.raises(PipelineError, match="has a header but no rows"):
        ingest.run(params, Paths.for_root(tmp_path))
    assert "no rows" in json.loads((tmp_path / "reports/ingest.json").read_text())["error"]


def test_preflight_names_a_missing_data_path_and_a_named_pipe_before_dvc_hashes_them(tmp_path, raw):
    """DVC hashes data.path before ingest runs: a typo gave a bare [Errno 2], a pipe hung it."""
    import subprocess
    import sys

    from pipeline_lib import preflight

    paths = Paths.for_root(tmp_path)
    preflight.check(_params(tmp_path), paths)  # a clean folder passes
    with pytest.raises(PipelineError, match=r"data folder .*/raw_typo \(data.path\) does not exist"):
        preflight.check(_params(tmp_path, path=str(tmp_path / "raw_typo")), paths)
    os.mkfifo(raw / "bag" / "pipe.png")
    with pytest.raises(PipelineError, match=r"bag/pipe.png is a named pipe: DVC would wait on it forever"):
        preflight.check(_params(tmp_path), paths)
    # make repro's wrapper and make run's flow stop with the line before DVC starts (exit 2, no traceback)
    (tmp_path / "params.yaml").write_text(f"data:\n  source: folder\n  path: {tmp_path / 'raw'}\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    for command in (["tasks.prefect_server", "dvc", "repro"], ["flows.pipeline"]):  # make repro; make run
        out = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                             env={**os.environ, "PIPELINE_ROOT": str(tmp_path)}, cwd=os.path.dirname(os.path.dirname(__file__)))
        assert out.returncode == 2 and "pipe.png is a named pipe" in out.stderr and "Traceback" not in out.stderr, command


def test_near_duplicates_across_train_and_test_are_found_by_feature_similarity(tmp_path):
    """A re-encoded, slightly brightened copy of a test image in train: not an exact duplicate for
    ingest, a near-duplicate leak for featurize (with the pair and the threshold)."""
    from pipeline_lib.stages import featurize

    def rows(raw):
        out = [{"path": str(f.relative_to(raw)), "label": f.parent.name,
                "split": "test" if f.name.endswith("_0.png") else ""} for f in sorted(raw.rglob("*.png"))]
        pixels = np.asarray(Image.open(raw / "bag/bag_0.png").convert("RGB")).astype(int)
        Image.fromarray(np.clip(pixels + 6, 0, 255).astype(np.uint8)).save(raw / "bag/brighter_bag_0.jpg", quality=95)
        out.append({"path": "bag/brighter_bag_0.jpg", "label": "bag", "split": "train"})
        return out

    params = _manifest_dataset(tmp_path, rows)
    params = params.model_copy(update={"backbone": params.backbone.model_copy(update={"resolution": 32})})
    paths = Paths.for_root(tmp_path)
    assert ingest.run(params, paths)["n_leakage"] == 0  # not byte-identical
    report = featurize.run(params, paths)
    assert report["near_duplicate_leaks"] >= 1 and report["near_duplicate_threshold"] == 0.99
    top = report["near_duplicate_pairs"][0]
    assert top["test"].endswith("bag_0.png") and top["labelled"].endswith("brighter_bag_0.jpg")
    assert top["similarity"] > 0.99 and top["test_label"] == top["labelled_label"] == "bag"
    strict = params.model_copy(update={"featurize": params.featurize.model_copy(update={"leak_similarity": 1.0})})
    assert featurize.run(strict, paths)["near_duplicate_leaks"] == 0
