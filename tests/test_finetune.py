"""finetune at a tiny size, with the real pretrained MobileNetV2."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline_lib.config import parse_params
from pipeline_lib.image.backbones import backbone_param_groups, load_backbone, split_blocks, unfreeze
from pipeline_lib.image.finetuning import Trainer, WeightAverage
from pipeline_lib.image.networks import build_model, load_finetuned
from pipeline_lib.paths import Paths
from pipeline_lib.stages import finetune, run_stages
from pipeline_lib.stages.evaluate import choose_candidate, paired_comparison
from tests.helpers import Interrupted, interrupt_after_epochs, write_folder_dataset

RAW = {"data": {"source": "folder", "shots_per_class": None, "val_fraction": 0.3},
       "selection": {"cv_below": 0},  # holdout mode: a val split (CV mode: tests/test_selection.py)
       "train_head": {"C": [0.01]},   # a strongly regularised probe: fine-tuning has something to learn
       "backbone": {"resolution": 32}, "augment": {"copies": 0},
       "finetune": {"epochs": 4, "batch_size": 8, "unfreeze_blocks": 2, "lr": 0.001, "patience": 10}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    write_folder_dataset(root / "raw", per_class=10, classes=("shirt", "coat", "pullover"))
    params = _params(root)
    paths = Paths.for_root(root)
    run_stages(params, paths, last="train_head")
    return root


def _params(root, **finetune_overrides):
    raw = json.loads(json.dumps(RAW))
    raw["data"]["path"] = str(root / "raw")
    raw["finetune"].update(finetune_overrides)
    return parse_params(raw)


def _bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running_" in n}


def test_unfreeze_counts_blocks_from_the_end():
    bb = load_backbone("mobilenet_v2", resolution=32).model
    assert unfreeze(bb, 0) == 0
    blocks = split_blocks(bb)
    last = sum(p.numel() for p in blocks[-1].parameters())
    assert unfreeze(bb, 1) == last
    assert unfreeze(bb, "all") == sum(p.numel() for p in bb.parameters())


def test_layerwise_learning_rates_decay_towards_the_input():
    bb = load_backbone("mobilenet_v2", resolution=32).model
    unfreeze(bb, 3)
    groups = backbone_param_groups(bb, lr=0.1, decay=0.5)
    blocks = split_blocks(bb)
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.05, 0.025])  # only the 3 trainable blocks
    assert {id(q) for q in groups[0]["params"]} == {id(q) for q in blocks[-1].parameters()}
    assert sum(len(g["params"]) for g in groups) == sum(q.requires_grad for q in bb.parameters())
    same = backbone_param_groups(bb, lr=0.1, decay=1.0)
    assert {g["lr"] for g in same} == {0.1}


@pytest.mark.parametrize("monitor", ["val_accuracy", "val_loss"])
def test_finetune_learns_and_never_ends_worse_than_the_probe(prepared, monitor):
    params, paths = _params(prepared, monitor=monitor), Paths.for_root(prepared)
    report = finetune.run(params, paths)
    curve = pd.read_csv(paths.finetune_history)
    assert curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]  # it learns
    # the probe (epoch 0) is the floor of the monitored quantity on val
    if monitor == "val_loss":
        assert report["best_val_loss"] <= report["val_loss_before"]
    else:
        assert report["val_accuracy"] >= report["val_accuracy_before"]
    assert report["val_accuracy"] == (curve.set_index("epoch").loc[report["best_epoch"], "val_accuracy"]
                                      if report["best_epoch"] else report["val_accuracy_before"])


def test_training_step_moves_only_unfrozen_blocks_and_never_batchnorm_statistics(prepared):
    params, paths = _params(prepared), Paths.for_root(prepared)
    model, _ = build_model(params, paths)
    unfreeze(model.backbone, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    stats = [k for k in before if "running_" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    n_blocks = len(split_blocks(model.backbone))
    frozen = [k for k in before if k.startswith("backbone.features.")
              and int(k.split(".")[2]) < n_blocks - 2 and "running_" not in k]
    unfrozen = [k for k in before if k.startswith(f"backbone.features.{n_blocks - 1}.") and "weight" in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in unfrozen)
    assert not torch.equal(before["head.net.1.weight"], after["head.net.1.weight"])


def test_train_mode_keeps_batchnorm_in_eval(prepared):
    model, _ = build_model(_params(prepared), Paths.for_root(prepared))
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.head.training


def test_batchnorm_train_mode_updates_only_unfrozen_blocks_statistics(prepared):
    model, _ = build_model(_params(prepared, batchnorm="train"), Paths.for_root(prepared))
    unfreeze(model.backbone, 2)
    before = _bn_stats(model)
    model.train()
    model(torch.rand(4, 3, 32, 32))
    after = _bn_stats(model)
    n_blocks = len(split_blocks(model.backbone))
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(int(k.split(".")[2]) >= n_blocks - 2 for k in moved)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(prepared, ema, monkeypatch):
    params, paths = _params(prepared, epochs=3, ema=ema), Paths.for_root(prepared)
    finetune.run(params, paths)
    reference = torch.load(paths.finetuned_model, weights_only=True)

    interrupt_after_epochs(monkeypatch, 2)
    with pytest.raises(Interrupted):
        finetune.run(params, paths)
    monkeypatch.undo()
    ckpt = paths.finetune_checkpoint(finetune.config_hash(params, paths))
    assert ckpt.exists()
    report = finetune.run(params, paths)
    assert report["resumed_from_epoch"] == 2 and report["epochs_run"] == 3
    assert not ckpt.exists()
    resumed = torch.load(paths.finetuned_model, weights_only=True)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-4, atol=1e-5)


def test_weight_average_follows_the_ramped_decay_and_restores_the_raw_weights():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    start = model.weight.detach().clone()
    avg = WeightAverage(model, decay=0.9)
    expected = start.clone()
    for step in range(1, 40):
        with torch.no_grad():
            model.weight.add_(1.0)
        avg.update(model)
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * model.weight.detach()
    torch.testing.assert_close(avg.shadow["weight"], expected)
    raw = model.weight.detach().clone()
    with avg.applied(model) as averaged:
        torch.testing.assert_close(averaged.weight, expected)
        assert not torch.equal(averaged.weight, raw)  # the average lags the raw weights
    torch.testing.assert_close(model.weight, raw)  # restored
    again = WeightAverage(model, 0.9, avg.state_dict())  # resumed from a checkpoint
    assert again.steps == 39 and torch.equal(again.shadow["weight"], avg.shadow["weight"])


def test_disabled_finetune_leaves_no_model(prepared):
    paths = Paths.for_root(prepared)
    assert finetune.run(_params(prepared, enabled=False), paths) == {"enabled": False}
    assert not paths.finetuned_model.exists()
    assert paths.finetune_history.read_text().startswith("epoch,")  # dvc.yaml's plot output, empty
    assert load_finetuned(_params(prepared), paths) is None


def test_candidate_is_chosen_on_val_and_paired_comparison_counts():
    scores = {"head": (0.80, 0.5), "finetune": (0.82, 0.6)}
    assert choose_candidate(scores, "val_accuracy") == "finetune"
    assert choose_candidate(scores, "val_loss") == "head"
    assert choose_candidate({"head": (0.80, 0.5), "finetune": (0.80, 0.6)}, "val_accuracy") == "head"
    assert choose_candidate({"head": (0.80, 0.5), "finetune": (0.81, 0.5)}, "val_loss") == "head"
    a = np.array([True, True, False, False, True])
    b = np.array([True, False, True, True, True])
    res = paired_comparison(a, b)
    assert (res["only_first_correct"], res["only_second_correct"]) == (1, 2)
    assert res["mcnemar_p"] == pytest.approx(1.0)


def test_sigkilled_run_resumes_from_its_last_checkpoint(prepared, tmp_path):
    """A real process killed (SIGKILL) mid-training; the re-run resumes and matches an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    overrides = {"epochs": 25, "patience": 25}
    params, paths = _params(prepared, **overrides), Paths.for_root(prepared)
    finetune.run(params, paths)
    reference = torch.load(paths.finetuned_model, weights_only=True)
    paths.finetuned_model.unlink()

    script = tmp_path / "run_finetune.py"
    script.write_text(
        "import json, sys\n"
        "from pipeline_lib.stages import finetune\n"
        "from pipeline_lib.config import parse_params\n"
        "from pipeline_lib.paths import Paths\n"
        "finetune.run(parse_params(json.loads(sys.argv[1])), Paths.for_root(sys.argv[2]))\n")
    raw = json.loads(json.dumps(RAW))
    raw["data"]["path"] = str(prepared / "raw")
    raw["finetune"].update(overrides)
    ckpt = paths.finetune_checkpoint(finetune.config_hash(params, paths))
    log = tmp_path / "run_finetune.log"
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(raw), str(prepared)],
                            cwd=os.getcwd(), stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {log.read_text()[-2000:]}"
    killed_at = torch.load(ckpt, weights_only=True)["progress"]["epoch"]
    assert 1 <= killed_at < 25 and not paths.finetuned_model.exists()

    report = finetune.run(params, paths)
    assert report["resumed_from_epoch"] == killed_at and report["epochs_run"] == 25
    resumed = torch.load(paths.finetuned_model, weights_only=True)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-4, atol=1e-5)


def test_evaluate_tta_from_cached_mirror_features_equals_the_network_path(prepared):
    """head_tta comes from featurize's cached mirror-image vectors and finetune_tta from one mirrored
    pass: both equal flip TTA through the whole network (what the logged model does)."""
    from pipeline_lib.heads import load_head
    from pipeline_lib.image.networks import FinetuneModel, Images
    from pipeline_lib.image.networks import predict_proba as network_proba
    from pipeline_lib.stages.evaluate import model_probabilities

    params, paths = _params(prepared), Paths.for_root(prepared)
    finetune.run(params, paths)
    probas = model_probabilities(params, paths)
    assert set(probas) >= {"head", "head_tta"}
    manifest = pd.read_parquet(paths.manifest).set_index("item_id")
    test_ids = np.load(paths.features("test"))["item_id"]
    tuned = load_finetuned(params, paths)
    images = Images(manifest.loc[list(test_ids)].reset_index(), paths, tuned.preprocess)
    head, _ = load_head(paths.head, paths.head_meta)
    frozen = FinetuneModel(tuned.preprocess, load_backbone("mobilenet_v2", resolution=32, blocks=15).model, head)
    np.testing.assert_allclose(probas["head_tta"]["test"], network_proba(frozen, images, tta=True), atol=1e-4)
    if "finetune" in probas:
        np.testing.assert_allclose(probas["finetune_tta"]["test"], network_proba(tuned, images, tta=True), atol=1e-5)
    assert not np.allclose(probas["head_tta"]["test"], probas["head"]["test"])  # the mirror images do count


def _train_images(prepared, hold_mb=float("inf")):
    from pipeline_lib.image.networks import Images

    params, paths = _params(prepared), Paths.for_root(prepared)
    manifest = pd.read_parquet(paths.manifest)
    images = Images(manifest[manifest["split"] == "train"], paths, load_backbone("mobilenet_v2", resolution=32,
                                                                                 blocks=15).preprocess, hold_mb=hold_mb)
    augmented = images.augmented(params.augment.policy, [params.seed, 0])
    assert images.augment is None and augmented.pixels is images.pixels  # a copy: the plain images stay plain
    return augmented


def test_batches_are_the_same_from_worker_processes_and_from_disk(prepared):
    """An item is a function of (index, epoch) alone: two DataLoader workers, or images read from
    disk at each access instead of held in memory, give the same augmented batches; no draw is
    taken from torch's global generator (dropout and shuffling downstream stay as they were)."""
    held, streamed = _train_images(prepared), _train_images(prepared, hold_mb=0)
    assert held.pixels is not None and streamed.pixels is None
    index_batches = [[3, 0, 7], [1, 5], [2, 4, 6]]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    in_process = list(held.batches(index_batches, epoch=2))
    from_workers = list(streamed.batches(index_batches, epoch=2, workers=2))
    assert torch.equal(torch.get_rng_state(), state)
    for (x0, y0, w0), (x1, y1, w1) in zip(in_process, from_workers, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(w0, w1)
    assert x0.shape == (3, 3, 32, 32)
    next_epoch = held.batch([2, 4, 6], epoch=3)
    assert not torch.equal(next_epoch, x0)  # another epoch, another draw
    assert torch.equal(held.batch([2, 4, 6], epoch=3), next_epoch)
    assert torch.equal(held.batch([4], epoch=3)[0], next_epoch[1])  # whatever batch the item is in
    plain = held.batch([2, 4, 6])
    assert torch.equal(plain, streamed.batch([2, 4, 6]))  # no epoch: never augmented
    assert not torch.equal(plain, x0)


def test_finetuning_with_loader_workers_and_streamed_images_ends_with_the_same_model(prepared):
    """runtime.loader_workers and runtime.hold_images_mb change where the images are decoded and
    augmented, not what the model learns (mixup on: its draws are the training process's)."""
    paths = Paths.for_root(prepared)
    finetune.run(_params(prepared, epochs=2, mixup=0.4), paths)
    reference = torch.load(paths.finetuned_model, weights_only=True)
    params = _params(prepared, epochs=2, mixup=0.4).model_copy(
        update={"runtime": _params(prepared).runtime.model_copy(update={"loader_workers": 2, "hold_images_mb": 0})})
    report = finetune.run(params, paths)
    assert report["epochs_run"] == 2
    tuned = torch.load(paths.finetuned_model, weights_only=True)
    for key in reference:
        assert torch.equal(tuned[key], reference[key]), key


def test_a_run_alone_trains_on_two_halves_of_each_batch_as_on_the_whole_batch(prepared, monkeypatch):
    """On 2 threads a run alone trains each batch's halves side by side (Trainer._step_in_halves):
    the same steps as one pass over the batch up to float rounding (dropout and mixup on), and
    the same model every time (the threads' gradients add up in either order)."""
    paths = Paths.for_root(prepared)
    threads = torch.get_num_threads()
    steps = []
    in_halves = Trainer._step_in_halves
    monkeypatch.setattr(Trainer, "_step_in_halves", lambda self, *a: steps.append(1) or in_halves(self, *a))

    def tuned(num_threads):
        params = _params(prepared, epochs=2, mixup=0.4, dropout=0.3)
        params = params.model_copy(update={"runtime": params.runtime.model_copy(update={"num_threads": num_threads})})
        finetune.run(params, paths)
        return torch.load(paths.finetuned_model, weights_only=True)

    try:
        whole = tuned(1)
        assert not steps  # one thread: one pass over each batch
        halves, again = tuned(2), tuned(2)
        assert steps
    finally:
        torch.set_num_threads(threads)
    moved = [k for k in whole if k.startswith("head.") and "weight" in k]
    assert moved
    for key in whole:
        assert torch.equal(halves[key], again[key]), key
        torch.testing.assert_close(halves[key], whole[key], rtol=1e-4, atol=1e-5)


def test_loader_workers_policy():
    from pipeline_lib.errors import PipelineError
    from pipeline_lib.runtime import loader_workers

    assert loader_workers("auto", "cpu") == 0 and loader_workers(3, "cpu") == 3
    with pytest.raises(PipelineError, match="loader_workers"):
        parse_params({"runtime": {"loader_workers": -1}})
