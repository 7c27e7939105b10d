"""synthesize with real diffusers models (tiny, randomly initialised, built from configs, offline),
the synthetic split downstream, zero-shot baselines and DANN's gradient reversal."""

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_lib.config import parse_params
from pipeline_lib.dataset import load_manifest, load_synthetic
from pipeline_lib.errors import PipelineError
from pipeline_lib.features import load_features, nearest_class_mean
from pipeline_lib.image.domain_adaptation import DomainClassifier, dann_lambda, reverse_gradient
from pipeline_lib.image.zero_shot import clip_zero_shot
from pipeline_lib.paths import Paths
from pipeline_lib.stages import augment, evaluate, featurize, finetune, ingest, run_stages, synthesize, train_head
from pipeline_lib.training_set import TrainingSet
from tests.helpers import build_tiny_clip, build_tiny_stable_diffusion, write_folder_dataset

TINY_DDPM = {"resolution": 16, "channels": [8, 16], "train_steps": 4, "batch_size": 8, "sample_steps": 2}


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture
def project(tmp_path):
    write_folder_dataset(tmp_path / "raw", per_class=8, classes=("shirt", "coat", "bag"))
    return tmp_path


def _params(root, **synthetic):
    raw = {"data": {"source": "folder", "path": str(root / "raw"), "shots_per_class": None, "val_fraction": 0.25},
           "backbone": {"resolution": 32}, "augment": {"copies": 0},
           "synthetic": {"per_class": 3, "ddpm": TINY_DDPM, **synthetic},
           "finetune": {"epochs": 1, "batch_size": 8, "unfreeze_blocks": 1}}
    return parse_params(raw)


def test_stable_diffusion_text_to_image_with_provenance(project, tiny_sd):
    params = _params(project, generator="stable_diffusion",
                     stable_diffusion={"model": str(tiny_sd), "steps": 2, "resolution": 32,
                                       "class_prompts": {"bag": "a leather handbag"}})
    paths = Paths.for_root(project)
    ingest.run(params, paths)
    report = synthesize.run(params, paths)
    frame = load_synthetic(paths, kept_only=False)
    assert report["generated"] == len(frame) == 9 and report["kept"] == 9
    assert set(frame["prompt"]) == {"a photo of a shirt", "a photo of a coat", "a leather handbag"}
    assert frame["generator"].eq("stable_diffusion").all() and frame["model_hash"].str.len().eq(16).all()
    assert frame["seed"].nunique() == 9 and frame["split"].eq("synthetic").all()
    assert all((project / p).exists() for p in frame["path"])
    assert paths.synthetic_preview.stat().st_size > 5_000
    again = load_synthetic(paths, kept_only=False) if synthesize.run(params, paths) else None
    assert again["item_id"].tolist() == frame["item_id"].tolist()  # seeded: the same images


def test_a_class_with_no_labelled_image_is_learnt_from_generated_ones(project, tiny_sd):
    params = _params(project, generator="stable_diffusion", ratio=0.5, min_confidence=0.4,
                     stable_diffusion={"model": str(tiny_sd), "steps": 2, "resolution": 32})
    params = params.model_copy(update={"data": params.data.model_copy(update={"zero_shot_classes": ["sandal"]})})
    paths = Paths.for_root(project)
    ingest_report = ingest.run(params, paths)
    assert ingest_report["classes"][-1] == "sandal" and ingest_report["zero_shot_classes"] == ["sandal"]
    report = synthesize.run(params, paths)
    # no real image to cap the ratio against and no probe that knows the class: all 3 are kept
    assert report["per_class"]["sandal"] == {"generated": 3, "kept": 3, "real": 0}
    assert report["per_class"]["bag"]["kept"] <= 0.5 * report["per_class"]["bag"]["real"]
    for stage in (augment, featurize):
        stage.run(params, paths)
    assert train_head.run(params, paths)["n_train_synthetic"] >= 3
    finetune.run(params, paths)
    metrics = evaluate.run(params, paths)
    assert metrics["unmeasured_classes"] == ["sandal"] and metrics["per_class"]["sandal"]["support"] == 0
    from pipeline_lib.image.model import build_classifier

    assert build_classifier(params, paths, metrics["candidate"]).classes[-1] == "sandal"

    ddpm = _params(project, generator="ddpm")
    ddpm = ddpm.model_copy(update={"data": ddpm.data.model_copy(update={"zero_shot_classes": ["sandal"]})})
    report = synthesize.run(ddpm, paths)
    assert report["ddpm_not_generated"]["classes"] == ["sandal"] and report["per_class"]["sandal"]["generated"] == 0
    for stage in (augment, featurize):
        stage.run(ddpm, paths)
    with pytest.raises(PipelineError, match=r"class\(es\) \['sandal'\] have no training image"):
        train_head.run(ddpm, paths)


def test_stable_diffusion_img2img_variations_of_the_real_images(project, tiny_sd):
    params = _params(project, generator="stable_diffusion", per_class=2,
                     stable_diffusion={"model": str(tiny_sd), "steps": 4, "resolution": 32, "img2img_strength": 0.5})
    paths = Paths.for_root(project)
    ingest.run(params, paths)
    assert synthesize.run(params, paths)["generated"] == 6


def test_missing_stable_diffusion_model_is_a_clear_error_within_a_second(project, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paths = Paths.for_root(project)
    ingest.run(_params(project), paths)
    for model, expected in (("stable-diffusion-v1-5/stable-diffusion-v1-5", "huggingface-cli download"),
                            (str(project / "no-such-dir"), "not found"), ("", "is empty")):
        params = _params(project, generator="stable_diffusion", stable_diffusion={"model": model})
        started = time.perf_counter()
        with pytest.raises(PipelineError, match=expected):
            synthesize.run(params, paths)
        assert time.perf_counter() - started < 1.0


def test_ddpm_trains_samples_is_reused_and_synthetic_stays_out_of_val_and_test(project):
    params = _params(project, generator="ddpm")
    paths = Paths.for_root(project)
    ingest.run(params, paths)
    first = synthesize.run(params, paths)
    assert first["generated"] == 9 and not first["ddpm_reused"] and first["ddpm_train_steps"] == 4
    assert (paths.ddpm_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    frame = load_synthetic(paths)
    assert (frame["height"] == 28).all() and (frame["width"] == 28).all()  # the real images' size
    again = synthesize.run(params.model_copy(update={"synthetic": params.synthetic.model_copy(
        update={"per_class": 2})}), paths)
    assert again["ddpm_reused"] and again["generated"] == 6

    for stage in (augment, featurize):
        stage.run(params, paths)
    synthetic_ids = set(load_synthetic(paths)["item_id"])
    for split in ("train", "val", "test"):
        assert not synthetic_ids & set(load_features(paths, split)[2])
    assert set(load_features(paths, "synthetic")[2]) == synthetic_ids
    report = train_head.run(params, paths)
    assert report["n_train_synthetic"] == 6 and report["n_train"] == report["n_train_real"] + 6
    # the DDPM learnt from every labelled image: a CV fold must not train on what it made of the held-out ones
    data = TrainingSet(params, paths)
    assert data.mode == "cv" and data.syn_derived.all()
    fold = data.folds(params)[0]
    assert len(data.training(fold.train)[1]) == len(fold.train)  # no synthetic image in a fold
    assert len(data.training(np.arange(len(data.y)))[1]) == len(data.y) + 6  # the refit keeps them
    assert json.loads(paths.selection_report.read_text())["synthetic_left_out_of_folds"] == 6
    ft = finetune.run(params, paths)
    assert ft["n_train_synthetic"] == 6 and ft["n_fold_synthetic"] == 0
    metrics = evaluate.run(params, paths)
    assert metrics["n_test"] == int((load_manifest(paths)[0]["split"] == "test").sum())
    X_syn, y_syn, _ = load_features(paths, "synthetic")
    X_test, y_test, _ = load_features(paths, "test")
    expected = float((nearest_class_mean(X_syn, y_syn, X_test, 3) == y_test).mean())
    assert metrics["baselines"]["synthetic_only"] == {"test_accuracy": expected, "n_reference": 6,
                                                      "classes_without_images": []}


def test_generator_none_writes_every_declared_output(project):
    params = _params(project, generator="none")
    paths = Paths.for_root(project)
    ingest.run(params, paths)
    assert synthesize.run(params, paths)["generated"] == 0
    for out in (paths.synthetic_manifest, paths.synthetic_preview, paths.ddpm_dir, paths.synthesize_report):
        assert out.exists(), out  # dvc.yaml's outs and plots of the stage
    assert load_synthetic(paths).empty


@pytest.mark.pipeline  # runs stages in its body
def test_ddpm_training_resumes_from_its_checkpoint_to_the_same_model(tmp_path):
    from pipeline_lib.config import DdpmParams
    from pipeline_lib.image.generators import dir_hash, train_ddpm

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8), np.arange(12) % 3
    p = DdpmParams(**{**TINY_DDPM, "train_steps": 6, "checkpoint_every": 2})
    cpu = torch.device("cpu")
    whole = train_ddpm(images, labels, 3, p, 7, tmp_path / "whole", cpu)
    checkpoint = tmp_path / "partial.pt"
    train_ddpm(images, labels, 3, p, 7, tmp_path / "first", cpu, checkpoint=checkpoint)
    assert torch.load(checkpoint, weights_only=True)["step"] == 4  # the last one before the end
    resumed = train_ddpm(images, labels, 3, p, 7, tmp_path / "resumed", cpu, checkpoint=checkpoint)
    assert resumed["resumed_at_step"] == 4 and whole["resumed_at_step"] == 0
    assert dir_hash(tmp_path / "resumed") == dir_hash(tmp_path / "whole")  # bit-identical weights
    checkpoint.write_bytes(b"damaged")  # an unreadable checkpoint: start over, same result
    again = train_ddpm(images, labels, 3, p, 7, tmp_path / "again", cpu, checkpoint=checkpoint)
    assert again["resumed_at_step"] == 0 and dir_hash(tmp_path / "again") == dir_hash(tmp_path / "whole")


def test_filtering_and_ratio_cap_are_counted_per_class(project, tiny_sd):
    params = _params(project, generator="stable_diffusion", per_class=4, ratio=0.5, min_confidence=0.3,
                     stable_diffusion={"model": str(tiny_sd), "steps": 2, "resolution": 32})
    paths = Paths.for_root(project)
    ingest.run(params, paths)
    report = synthesize.run(params, paths)
    frame = load_synthetic(paths, kept_only=False)
    real = load_manifest(paths)[0].query("split == 'train'")["label"].value_counts()
    for label, row in report["per_class"].items():
        kept = frame[(frame["label"] == label) & frame["kept"]]
        assert row["kept"] == len(kept) <= int(0.5 * real[label])
        assert (kept["confidence"] >= 0.3).all()
    assert (frame.loc[frame["dropped_because"] == "low_confidence", "confidence"] < 0.3).all()
    assert sum(report["dropped"].values()) == report["generated"] - report["kept"]


def test_near_duplicates_are_dropped_per_class():
    frame = pd.DataFrame({"label_idx": [0, 0, 0, 1, 0], "kept": [True, True, True, True, False],
                          "dropped_because": ["", "", "", "", "low_confidence"]})
    X = np.array([[1.0, 0.0], [0.999, 0.01], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    synthesize.drop_near_duplicates(frame, X, 0.99)
    assert frame["kept"].tolist() == [True, False, True, True, False]  # other class: not a duplicate
    assert frame["dropped_because"].tolist() == ["", "near_duplicate", "", "", "low_confidence"]


def test_nearest_class_mean_and_clip_zero_shot(tmp_path):
    X_ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    pred = nearest_class_mean(X_ref, np.array([0, 0, 1]), np.array([[0.8, 0.2], [0.1, 0.9]]), n_classes=3)
    assert pred.tolist() == [0, 1]  # class 2 has no reference image and is never predicted
    clip = build_tiny_clip(tmp_path / "clip")
    proba = clip_zero_shot(clip, ["a photo of a bag", "a photo of a coat"],
                           [np.zeros((28, 28, 3), np.uint8), np.full((40, 30, 3), 200, np.uint8)])
    assert proba.shape == (2, 2) and np.allclose(proba.sum(1), 1.0)
    with pytest.raises(PipelineError, match="not a CLIP model directory"):
        clip_zero_shot(tmp_path, ["x"], [])


def test_gradient_reversal_flips_the_feature_gradient_of_the_domain_loss():
    torch.manual_seed(0)
    domain = DomainClassifier(8).eval()  # no dropout: the same forward pass each time
    feats = torch.randn(6, 8, requires_grad=True)
    target = torch.tensor([0.0, 0, 0, 1, 1, 1])

    def feature_grad(lam: float, reverse: bool) -> torch.Tensor:
        feats.grad = None
        x = reverse_gradient(feats, lam) if reverse else feats
        torch.nn.functional.binary_cross_entropy_with_logits(domain.net(x).squeeze(1), target).backward()
        return feats.grad.clone()

    plain, reversed_ = feature_grad(1.0, False), feature_grad(1.0, True)
    torch.testing.assert_close(reversed_, -plain)
    torch.testing.assert_close(feature_grad(0.3, True), -0.3 * plain)
    assert dann_lambda(0.0, 0.1) == 0.0 and dann_lambda(1.0, 0.1) == pytest.approx(0.1, abs=1e-4)


def test_dann_finetune_reports_domain_accuracy_and_reads_an_unlabeled_folder(project):
    write_folder_dataset(project / "unlabeled", per_class=3, classes=("pullover",))  # folder names are ignored
    (project / "unlabeled" / "pullover" / "broken.png").write_bytes(b"not a png")
    raw = _params(project).model_dump()
    raw["data"]["unlabeled"] = str(project / "unlabeled")
    raw["finetune"].update(adapt="dann", epochs=2)
    params = parse_params(raw)
    paths = Paths.for_root(project)
    run_stages(params, paths, last="train_head")
    report = finetune.run(params, paths)
    assert report["adapt"] == "dann" and report["target_images"] == 3
    assert [s["path"] for s in report["target_skipped"]] == ["pullover/broken.png"]
    history = pd.read_csv(paths.finetune_history)
    assert report["domain_accuracy_last_epoch"] == pytest.approx(history["domain_accuracy"].iloc[-1])
    assert history["domain_accuracy"].between(0, 1).all()
    raw["finetune"]["unfreeze_blocks"] = 0
    with pytest.raises(PipelineError, match="needs trainable blocks"):
        finetune.run(parse_params(raw), paths)
    json.dumps(report)  # the report is plain JSON
