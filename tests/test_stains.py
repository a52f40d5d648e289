"""Colour deconvolution with the slide's own stain vectors, and the classical pipeline on real brightfield."""
from __future__ import annotations

import numpy as np
import pytest

from dlcore.errors import ParameterError
from dlcore.tasks.classical import ClassicalNuclei
from dlcore.tasks.stains import REFERENCE_VECTORS, TYPICAL_EOSIN, StainMatrix, estimate_stains, optical_density
from synthetic import real_he_field, real_ihc_field


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _angle(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(_unit(a), _unit(b)), -1, 1))))


def _render(concentrations: np.ndarray, vectors) -> np.ndarray:
    """8-bit RGB of per-pixel stain amounts ``(N, k)`` under OD vectors ``(k, 3)`` (Beer-Lambert)."""
    od = concentrations @ np.stack([_unit(v) for v in vectors])
    return np.clip(256.0 * 10 ** (-od) - 1, 0, 255).round().astype(np.uint8)


# a haematoxylin and a DAB as another lab's stains and scanner show them: 10-12° off the textbook vectors
LAB_HEMATOXYLIN = (0.55, 0.72, 0.42)
LAB_DAB = (0.33, 0.46, 0.82)


def _two_stain_field(seed=0, n=40_000):
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, n)  # 0: haematoxylin only, 1: DAB only, 2: both
    h = np.where(kind != 1, rng.uniform(0.2, 1.0, n), 0.0)
    d = np.where(kind != 0, rng.uniform(0.2, 1.0, n), 0.0)
    rgb = _render(np.stack([h, d], axis=1), [LAB_HEMATOXYLIN, LAB_DAB])
    return rgb.reshape(200, 200, 3), kind.reshape(200, 200), h.reshape(200, 200)


def test_estimated_vectors_recover_the_slide_stains():
    rgb, _, _ = _two_stain_field()
    stains = estimate_stains([rgb])
    assert stains.method.startswith("estimated from the slide") and "dab" in stains.method
    assert _angle(stains.vectors[0], LAB_HEMATOXYLIN) < 3
    assert _angle(stains.vectors[2], LAB_DAB) < 3
    assert _angle(stains.vectors[1], REFERENCE_VECTORS[1]) < 1e-6  # eosin keeps its reference


def test_haematoxylin_channel_does_not_respond_to_dab():
    rgb, kind, h = _two_stain_field()
    estimated = estimate_stains([rgb]).concentrations(rgb)[..., 0]
    textbook = StainMatrix().concentrations(rgb)[..., 0]
    dab_only, h_only = kind == 1, kind == 0
    # with the slide's vectors, pure DAB reads as (almost) no haematoxylin, and haematoxylin is measured
    leak = np.abs(estimated[dab_only]).mean() / estimated[h_only].mean()
    assert leak < 0.03
    assert np.corrcoef(estimated[h_only], h[h_only])[0, 1] > 0.99
    # with the textbook vectors the same DAB leaks into the haematoxylin channel several times more
    textbook_leak = textbook[dab_only].mean() / textbook[h_only].mean()
    assert textbook_leak > 0.1 and textbook_leak > 4 * leak, (leak, textbook_leak)


def test_eosin_is_told_from_dab_on_real_he():
    stains = estimate_stains([real_he_field()])
    assert "haematoxylin and eosin" in stains.method
    assert _angle(stains.vectors[1], TYPICAL_EOSIN) < 12
    ihc = estimate_stains([real_ihc_field()])
    assert "haematoxylin and dab" in ihc.method
    assert _angle(ihc.vectors[2], REFERENCE_VECTORS[2]) < 12


def test_one_stain_or_no_tissue_falls_back_to_the_reference():
    rng = np.random.default_rng(1)
    only_h = _render(rng.uniform(0.2, 1.0, (10_000, 1)), [LAB_HEMATOXYLIN]).reshape(100, 100, 3)
    assert estimate_stains([only_h]).method.startswith("reference") and "one stain" in estimate_stains([only_h]).method
    glass = np.full((50, 50, 3), 240, np.uint8)
    assert estimate_stains([glass]).vectors == REFERENCE_VECTORS


def test_stain_matrix_rejects_dependent_vectors():
    with pytest.raises(ParameterError, match="independent"):
        StainMatrix(vectors=((1, 0, 0), (1, 0, 0), (0, 0, 1)))
    assert optical_density(np.array([[[255, 255, 255]]], np.uint8)).max() == 0


def test_classical_on_real_ihc_finds_nuclei_not_glands():
    """On scikit-image's real IHC section, the DAB-rich epithelium must not come out as gland-sized
    regions: every object is nucleus-sized, and the objects cover far less than the tissue."""
    image = real_ihc_field()
    task = ClassicalNuclei().at_resolution(0.5).prepare([image])
    assert task.stain_method.startswith("estimated from the slide")
    labels = task.segment(image)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    assert 150 < areas.size < 500
    assert areas.max() <= task.max_object_pixels == 1600  # 400 µm² at 0.5 µm/px
    assert np.median(areas) * 0.25 < 120  # a typical nucleus: tens of µm², not a gland
    assert (labels > 0).mean() < 0.45


def test_background_removal_and_size_limit_are_parameters():
    image = real_ihc_field()
    bare = ClassicalNuclei(background_radius_um=0, max_area_um2=None).at_resolution(0.5)
    assert bare.background_radius_px == 0 and bare.max_object_pixels is None
    default = ClassicalNuclei().at_resolution(0.5)
    assert default.background_radius_px == 16 and default.halo == 72
    assert ClassicalNuclei().at_resolution(None).provenance()["pixel_size_for_um"].startswith("0.5 µm/px assumed")
    bare_labels = bare.prepare([image]).segment(image)
    assert np.bincount(bare_labels.ravel())[1:].max() > 1600  # without them, gland-sized regions appear
    with pytest.raises(ParameterError, match="max_area_um2"):
        ClassicalNuclei(max_area_um2=0)
    with pytest.raises(ParameterError, match="background_radius_um"):
        ClassicalNuclei(background_radius_um=-1)
    with pytest.raises(ParameterError, match="markers"):
        ClassicalNuclei(markers="gland")
    with pytest.raises(ParameterError, match="stain_vectors"):
        ClassicalNuclei(stain_vectors="guess")


def test_a_third_reference_in_the_stains_plane_is_replaced_by_the_residual():
    """On a real CoNSeP tile the estimated haematoxylin and eosin and the reference DAB nearly shared a
    plane (determinant < 1e-3): the matrix must stay invertible and well conditioned."""
    hematoxylin, eosin = (0.552, 0.776, 0.305), (0.485, 0.743, 0.462)
    rng = np.random.default_rng(2)
    kind = rng.integers(0, 3, 30_000)
    h = np.where(kind != 1, rng.uniform(0.2, 1.0, kind.size), 0.0)
    e = np.where(kind != 0, rng.uniform(0.2, 1.0, kind.size), 0.0)
    rgb = _render(np.stack([h, e], axis=1), [hematoxylin, eosin]).reshape(150, 200, 3)
    stains = estimate_stains([rgb])
    assert "replaced by the residual" in stains.method
    matrix = np.asarray(stains.vectors)
    assert abs(np.linalg.det(matrix)) > 0.05
    unmixed = stains.concentrations(rgb)[..., 0].ravel()
    assert np.corrcoef(unmixed[kind != 1], h[kind != 1])[0, 1] > 0.98
