"""Group splits and k-fold never leak a group; augmentations keep masks aligned."""
import numpy as np
import pytest

from dlcore.errors import InputError
from dlcore.train.augment import AugmentSpec, augment, hed_jitter
from dlcore.train.splits import kfold_by_group, split_by_group

GROUPS = [f"img{i // 3}" for i in range(30)]  # 10 images, 3 tiles each


@pytest.mark.parametrize("seed", range(5))
def test_split_never_straddles_groups(seed):
    s = split_by_group(GROUPS, val_fraction=0.2, test_fraction=0.3, seed=seed)
    parts = [{GROUPS[i] for i in part} for part in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sorted(s.train + s.val + s.test) == list(range(30))
    assert (len(parts[0]), len(parts[1]), len(parts[2])) == (5, 2, 3)


def test_split_explicit_test_groups():
    s = split_by_group(GROUPS, val_fraction=0.1, test_groups=["img4"])
    assert s.test == (12, 13, 14)
    assert all(GROUPS[i] != "img4" for i in s.train + s.val)


def test_split_too_few_groups():
    with pytest.raises(InputError, match="too few"):
        split_by_group(["a", "a", "b"], val_fraction=0.3, test_fraction=0.3)


@pytest.mark.parametrize("k", [2, 3, 10])
def test_kfold_each_group_validated_once(k):
    folds = kfold_by_group(GROUPS, k, seed=1)
    assert len(folds) == k
    seen = []
    for train, val in folds:
        val_groups = {GROUPS[i] for i in val}
        assert not val_groups & {GROUPS[i] for i in train}
        assert sorted(train + val) == list(range(30))
        seen += sorted(val_groups)
    assert sorted(seen) == sorted(set(GROUPS))  # every group exactly once


def test_kfold_too_many_folds():
    with pytest.raises(InputError):
        kfold_by_group(GROUPS, 11)


def test_augment_keeps_mask_aligned():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (32, 48)).astype(np.int32)
    # the image encodes the mask so any misalignment shows: channel 0 = mask value * 60
    image = np.stack([mask * 60, mask * 60, mask * 60], -1).astype(np.uint8)
    spec = AugmentSpec(hed_sigma=0, hed_bias=0, brightness=0, blur_probability=0)
    shapes = set()
    for _ in range(20):
        img, m = augment(image, mask, rng, spec)
        shapes.add(m.shape)
        assert np.array_equal(img[..., 0], (m * 60).astype(np.uint8))
        assert np.array_equal(np.sort(m.ravel()), np.sort(mask.ravel()))
    assert shapes == {(32, 48), (48, 32)}  # rotations happened


def test_hed_jitter_changes_colour_not_layout():
    from skimage import data

    image = data.immunohistochemistry()[:64, :64]
    out = hed_jitter(image, np.random.default_rng(3), sigma=0.1, bias=0.02)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert not np.array_equal(out, image)
    corr = np.corrcoef(out[..., 0].ravel().astype(float), image[..., 0].ravel().astype(float))[0, 1]
    assert corr > 0.9
    assert np.array_equal(hed_jitter(image, np.random.default_rng(3), sigma=0, bias=0), image)
