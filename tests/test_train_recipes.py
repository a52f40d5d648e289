"""The recipes' datasets keep the held-out quadrant out of training (no training run here)."""
import numpy as np

from dlcore.train.recipes import HELD_OUT, heldout_corners, in_test_region, training_blocks, training_corners
from dlcore.train.recipes.classifier import patch_class


def test_training_crops_never_touch_the_held_out_quadrant():
    for y, x in training_blocks():
        assert not in_test_region(y, x, 128)
    covered = np.zeros((512, 512), bool)
    for y, x in training_corners():
        covered[y:y + 128, x:x + 128] = True
    assert not covered[HELD_OUT].any() and covered.sum() == 512 * 512 - 256 * 256
    for y, x in heldout_corners():
        assert y >= 256 and x >= 256 and y + 128 <= 512 and x + 128 <= 512


def test_nuclei_dataset_groups():
    from dlcore.train.recipes import nuclei

    ds = nuclei.build_dataset()
    assert ds.task == "instances" and len(ds.samples) == 13
    assert ds.groups.count("held-out-quadrant") == 1 and ds.samples[-1].image.shape == (256, 256, 3)
    assert all(s.mask.max() > 0 for s in ds.samples)


def test_patch_class_rules():
    assert patch_class(np.zeros((4, 4), int)) == "background"
    assert patch_class(np.full((4, 4), 2)) == "dab_positive"
    assert patch_class(np.full((4, 4), 1)) == "dab_negative"
    mixed = np.ones((4, 4), int)
    mixed[:2] = 2  # half positive: ambiguous
    assert patch_class(mixed) is None
    half_glass = np.ones((4, 4), int)
    half_glass[:2] = 0
    assert patch_class(half_glass) is None
