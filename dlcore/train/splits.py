"""Image-level splits: train/validation/test and k-fold, by group.

Samples that share a ``group`` (tiles of one image, images of one specimen) always land on the same
side, so no test figure is inflated by near-duplicates of training data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlcore.errors import InputError, ParameterError


@dataclass(frozen=True)
class Split:
    """Sample indices of the train, validation and test parts."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]


def _unique_groups(groups) -> list[str]:
    return sorted(set(groups), key=str)


def _indices(groups, chosen: set) -> tuple[int, ...]:
    return tuple(i for i, g in enumerate(groups) if g in chosen)


def split_by_group(groups, *, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                   test_groups=None) -> Split:
    """Split sample indices into train/val/test so that no group straddles two parts.

    Parameters
    ----------
    groups : the group of every sample.
    val_fraction, test_fraction : fractions of the *groups* for validation and test; a non-zero
        fraction gets at least one group.  ``test_fraction`` is ignored when ``test_groups`` is given.
    seed : random seed of the group shuffle.
    test_groups : groups held out as the test set explicitly (e.g. a spatial region of an image).

    Returns
    -------
    Split
    """
    groups = list(groups)
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ParameterError(f"{name}={value} must be in [0, 1)")
    unique = _unique_groups(groups)
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    if test_groups is not None:
        test = set(test_groups)
        missing = test - set(unique)
        if missing:
            raise InputError(f"test group(s) {sorted(missing)} are not in the dataset")
        order = [g for g in order if g not in test]
    else:
        n_test = int(round(test_fraction * len(unique)))
        n_test = max(n_test, 1) if test_fraction > 0 else 0
        test = set(order[:n_test])
        order = order[n_test:]
    n_val = int(round(val_fraction * (len(unique))))
    n_val = max(n_val, 1) if val_fraction > 0 else 0
    val = set(order[:n_val])
    train = set(order[n_val:])
    if not train:
        raise InputError(f"{len(unique)} split group(s) are too few for train/validation/test with "
                         f"val_fraction={val_fraction}, test_fraction={test_fraction}; annotate more images "
                         "or lower the fractions")
    return Split(_indices(groups, train), _indices(groups, val), _indices(groups, test))


def kfold_by_group(groups, k: int, *, seed: int = 0) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """k (train, validation) index pairs; every group is in exactly one validation fold.

    Groups are shuffled with ``seed`` then dealt round-robin, so fold sizes differ by at most one group.
    """
    groups = list(groups)
    unique = _unique_groups(groups)
    if k < 2:
        raise ParameterError(f"k={k}: k-fold cross-validation needs k >= 2")
    if k > len(unique):
        raise InputError(f"k={k} folds need at least {k} split groups; the data has {len(unique)}")
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    folds = []
    for f in range(k):
        held = set(order[f::k])
        folds.append((_indices(groups, set(unique) - held), _indices(groups, held)))
    return folds
