"""The fast array operations promise scipy's and scikit-image's exact results: checked against them on
random blobs, on images with plateaus (rounded distances), thin lines and flat objects."""
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.feature import peak_local_max

from dlcore.imageops import fill_holes, grey_opening_square, label_peaks


def _blobs(seed: int, shape=(90, 97), thin_lines: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.random(shape), rng.uniform(1.5, 4))
    mask = noise > np.quantile(noise, rng.uniform(0.35, 0.75))
    if thin_lines:  # one-pixel-wide objects: flat distance maps, scikit-image's "trivial" case
        mask[::9] = True
        mask[:, 3] = False
    return mask


@pytest.mark.parametrize("seed", range(12))
def test_label_peaks_are_peak_local_max(seed):
    mask = _blobs(seed, thin_lines=seed % 3 == 0)
    components, count = ndi.label(mask)
    assert count > 3
    distance = ndi.distance_transform_edt(mask)
    signal = np.where(mask, ndi.gaussian_filter(np.random.default_rng(seed).random(mask.shape), 2), 0)
    cases = [(distance, None), (distance.astype(np.float32), 1.5), (signal.astype(np.float32), None),
             (np.round(distance).astype(np.int32), None)]  # int32: plateaus, and scipy's filter (no OpenCV type)
    for image, threshold in cases:
        for min_distance in (1, 2, 6):
            expected = peak_local_max(image, min_distance=min_distance, threshold_abs=threshold, labels=components,
                                      exclude_border=False)
            got = label_peaks(image, components, min_distance, threshold)
            assert len(got) > 0
            np.testing.assert_array_equal(got, expected)  # same points, same order (the marker ids follow it)


def test_label_peaks_of_no_objects_is_empty():
    assert label_peaks(np.ones((8, 8)), np.zeros((8, 8), np.int32), 3).shape == (0, 2)


@pytest.mark.parametrize("seed", range(12))
def test_fill_holes_is_scipys(seed):
    mask = _blobs(seed, thin_lines=seed % 2 == 0)
    mask[20:40, 20:40] = True
    mask[25:30, 25:30] = False  # a hole for sure
    filled = fill_holes(mask)
    np.testing.assert_array_equal(filled, ndi.binary_fill_holes(mask))
    assert filled[27, 27] and not mask[27, 27]


def test_fill_holes_edge_cases():
    for mask in (np.zeros((5, 6), bool), np.ones((5, 6), bool), np.zeros((0, 4), bool), np.eye(7, dtype=bool)):
        np.testing.assert_array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))


@pytest.mark.parametrize("radius", [1, 4, 16])
def test_grey_opening_square_is_scipys(radius):
    image = ndi.gaussian_filter(np.random.default_rng(radius).random((120, 77)), 2).astype(np.float32)
    opened = grey_opening_square(image, radius)
    np.testing.assert_array_equal(opened, ndi.grey_opening(image, size=(2 * radius + 1,) * 2))
    assert not np.array_equal(opened, image)
