"""The seeds' classical nuclei pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from dlcore.errors import ParameterError
from dlcore.tasks.classical import ClassicalNuclei, kmeans_threshold, otsu_threshold
from synthetic import disc_image


def test_kmeans_threshold_splits_two_populations():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10, 1, 5000), rng.normal(50, 2, 1000)])
    t = kmeans_threshold(values)
    assert 25 < t < 35  # midway between the class means (10 and 50)
    assert abs(t - (values[values <= t].mean() + values[values > t].mean()) / 2) < 1e-6
    assert 12 < otsu_threshold(values) < 45


def test_uniform_image_has_no_threshold():
    with pytest.raises(ParameterError, match="uniform"):
        kmeans_threshold(np.ones(100))


def test_segments_discs_and_splits_touching_pairs():
    image = np.full((120, 200), 10, np.uint8)
    from skimage.draw import disk

    for centre in [(30, 30), (30, 90), (90, 50), (90, 66)]:  # the last two touch
        rr, cc = disk(centre, 10, shape=image.shape)
        image[rr, cc] = 200
    task = ClassicalNuclei(channel=0, sigma=1, min_distance=5).prepare([image[..., None]])
    labels = task.segment(image[..., None])
    assert labels.max() == 4 and len(np.unique(labels)) == 5
    no_split = ClassicalNuclei(channel=0, sigma=1, split_touching=False).prepare([image[..., None]])
    assert len(np.unique(no_split.segment(image[..., None]))) == 4


def test_min_size_removes_small_objects():
    image = np.full((100, 100), 10, np.uint8)
    image[10:14, 10:14] = 200  # 16 px
    image[50:70, 50:70] = 200  # 400 px
    task = ClassicalNuclei(channel=0, sigma=0, min_size=60).prepare([image[..., None]])
    labels = task.segment(image[..., None])
    assert len(np.unique(labels)) == 2 and (labels > 0).sum() == 400


def test_hematoxylin_channel_on_rgb():
    from skimage import data

    ihc = data.immunohistochemistry()[:256, :256]
    task = ClassicalNuclei().prepare([ihc])
    labels = task.segment(ihc)
    assert 20 < labels.max() < 400
    assert 0.05 < (labels > 0).mean() < 0.6


@pytest.mark.parametrize("kwargs,message", [
    (dict(channel="blue"), "not one of"), (dict(sigma=-1), "sigma"), (dict(threshold_method="li"), "kmeans"),
    (dict(min_size=-5), "min_size"), (dict(mpp=0), "mpp"), (dict(halo=4), "halo"), (dict(min_distance=0), "min_distance"),
])
def test_parameters_are_validated(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        ClassicalNuclei(**kwargs)


def test_provenance_records_every_parameter():
    task = ClassicalNuclei(channel=0).prepare([disc_image(128)[..., None]])
    params = task.provenance()["parameters"]
    assert params["sigma"] == 3.0 and params["min_size"] == 60 and params["threshold_method"] == "kmeans"
    assert params["threshold"] is not None
