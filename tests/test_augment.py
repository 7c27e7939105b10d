import numpy as np
import pandas as pd
import pytest

from pipeline_lib.config import AugmentPolicy, parse_params
from pipeline_lib.dataset import AUGMENTED, copy_seed
from pipeline_lib.features import load_features
from pipeline_lib.image.augmentation import augment_image
from pipeline_lib.paths import Paths
from pipeline_lib.stages import augment, featurize, ingest
from tests.helpers import write_folder_dataset


def _image(seed=0):
    return (np.random.default_rng(seed).random((28, 28, 3)) * 255).astype(np.uint8)


def test_copies_are_seeded_and_differ_between_seeds():
    x = _image()
    a = augment_image(x, AugmentPolicy(), 7)
    assert np.array_equal(a, augment_image(x, AugmentPolicy(), 7))
    assert a.shape == x.shape and a.dtype == np.uint8
    outs = [augment_image(x, AugmentPolicy(), s) for s in range(20)]
    assert len({o.tobytes() for o in outs}) > 15


def test_transforms_fire_independently():
    # with each transform at p=0.5 and independent draws, "nothing fired" has probability 1/16;
    # albumentations' own seeding would make it 1/2 (all transforms share one draw)
    policy = AugmentPolicy(hflip_p=0.5, affine_p=0.5, crop_p=0.5, brightness_contrast_p=0.5)
    x = _image()
    unchanged = np.mean([np.array_equal(augment_image(x, policy, s), x) for s in range(400)])
    assert unchanged == pytest.approx(1 / 16, abs=0.04)


def test_zero_probabilities_are_identity():
    off = AugmentPolicy(hflip_p=0, affine_p=0, crop_p=0, brightness_contrast_p=0, noise_p=0)
    x = _image()
    assert np.array_equal(augment_image(x, off, 3), x)


def test_random_erasing_fills_one_rectangle_within_the_area_limits():
    policy = AugmentPolicy(hflip_p=0, affine_p=0, crop_p=0, brightness_contrast_p=0, erase_p=1.0,
                           erase_scale_max=0.2, fill=0)
    x = np.full((28, 28, 3), 200, dtype=np.uint8)
    for seed in range(20):
        out = augment_image(x, policy, seed)
        erased = np.argwhere((out == 0).all(axis=2))
        assert len(erased), "erase_p=1 must erase"
        (r0, c0), (r1, c1) = erased.min(0), erased.max(0)
        assert len(erased) == (r1 - r0 + 1) * (c1 - c0 + 1)  # one filled rectangle
        assert len(erased) <= 0.2 * 28 * 28 + 28  # within erase_scale_max (plus rounding)
        assert (out[(out != 0).any(axis=2)] == 200).all()  # the rest untouched


def test_stage_writes_copies_preview_and_featurize_caches_them(tmp_path):
    write_folder_dataset(tmp_path / "raw", per_class=6)
    raw = {"data": {"source": "folder", "path": str(tmp_path / "raw"), "shots_per_class": 2},
           "augment": {"copies": 3}, "backbone": {"resolution": 32}}
    paths = Paths.for_root(tmp_path)
    ingest.run(parse_params(raw), paths)
    report = augment.run(parse_params(raw), paths)
    assert report["real_train_images"] == 6
    assert report["augmented_images"] + report["identical_copies_dropped"] == 18
    aug = pd.read_parquet(paths.augmented_manifest)
    assert set(aug["split"]) == {"train"} and aug["source"].str.startswith("augment:").all()
    assert paths.augment_preview.stat().st_size > 5_000
    first = featurize.run(parse_params(raw), paths)
    assert first["computed"] == first["items"]
    X, y, _ = load_features(paths, AUGMENTED)
    assert len(X) == report["augmented_images"]

    augment.run(parse_params(raw), paths)  # same params: identical copies, nothing to recompute
    assert featurize.run(parse_params(raw), paths)["computed"] == 0
    assert copy_seed(1, "a", 0) != copy_seed(1, "a", 1) != copy_seed(2, "a", 1)
