"""Pixel classification from sparse labels: features checked against scipy's independent filters and
tiling-invariant, every label form, the stored forest predicting exactly as scikit-learn's, training
figures and warnings."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from scipy import ndimage as ndi

from dlcore.errors import InputError, ModelError, ParameterError
from dlcore.pixels.features import FeatureSpec, compute_features, pixel_rows
from dlcore.pixels.forest import CompiledForest, ForestArrays, ForestSettings, train_forest
from dlcore.pixels.scribbles import Stroke, labels_from_array, rasterize, strokes_from_geojson
from dlcore.pixels.training import LabelledImage, PixelTrainingOptions, strokes_of, train_pixel_classifier
from synthetic import real_ihc_field


@pytest.fixture(scope="module")
def ihc():
    return real_ihc_field()[:160, :192]


def _scipy_reference(plane: np.ndarray, sigma: float) -> dict[str, np.ndarray]:
    """Every feature of one plane computed with scipy.ndimage (float64, mode 'reflect' = mirrored with the
    edge pixel, truncate 4): an implementation independent of dlcore's OpenCV one."""
    g = lambda order, s=sigma, a=plane: ndi.gaussian_filter(a, s, order=order, mode="reflect", truncate=4.0)  # noqa: E731
    gy, gx = g((1, 0)), g((0, 1))
    gyy, gxx, gxy = g((2, 0)), g((0, 2)), g((1, 1))
    outer = max(0.5 * sigma, 0.3)
    # the structure tensor's products near the border come from the mirrored image, as in a tile with a halo
    pad = int(4 * sigma + 0.5) + int(4 * outer + 0.5)
    mirrored = np.pad(plane, pad, mode="symmetric")
    mx, my = (ndi.gaussian_filter(mirrored, sigma, order=o, mode="reflect", truncate=4.0) for o in ((0, 1), (1, 0)))
    inner = (slice(pad, pad + plane.shape[0]), slice(pad, pad + plane.shape[1]))
    sxx, sxy, syy = (ndi.gaussian_filter(p, outer, mode="reflect", truncate=4.0)[inner] for p in (mx * mx, mx * my, my * my))

    def eig(a, b, c):
        root = np.sqrt(((a - c) / 2) ** 2 + b ** 2)
        return (a + c) / 2 + root, (a + c) / 2 - root

    narrow = ndi.gaussian_filter(plane, 0.66 * sigma, mode="reflect", truncate=4.0)
    return {"gaussian": g((0, 0)), "log": gxx + gyy, "gradient": np.hypot(gx, gy), "dog": g((0, 0)) - narrow,
            "structure_tensor": eig(sxx, sxy, syy), "hessian": eig(gyy, gxy, gxx)}


@pytest.mark.parametrize("sigma", [0.7, 1.6, 3.5])
def test_features_equal_scipy_filters(ihc, sigma):
    spec = FeatureSpec(scales=(sigma,))
    planes = compute_features(ihc, spec)
    names = spec.names(("red", "green", "blue"))
    assert planes.shape == (len(names), *ihc.shape[:2]) and planes.dtype == np.float32
    for c, channel in enumerate(("red", "green", "blue")):
        reference = _scipy_reference(ihc[..., c].astype(np.float64) / 255, sigma)
        for kind, expected in reference.items():
            pairs = ([(f"{channel}/{kind}/{sigma:g}", expected)] if not isinstance(expected, tuple) else
                     [(f"{channel}/{kind}_large/{sigma:g}", expected[0]), (f"{channel}/{kind}_small/{sigma:g}", expected[1])])
            for name, want in pairs:
                got = planes[names.index(name)]
                scale = max(float(np.abs(want).max()), 1e-3)
                # everywhere, the image border included: both mirror the image with its edge pixel
                assert np.abs(got - want).max() <= 2e-3 * scale, name


def test_tiles_with_the_radius_as_halo_give_the_whole_images_features(ihc):
    spec = FeatureSpec(scales=(0.7, 1.6, 3.5, 5.0))
    r = spec.radius()
    whole = compute_features(ihc, spec)
    mirrored = np.pad(ihc, ((r, r), (r, r), (0, 0)), mode="symmetric")  # what the engine reads past the edge
    for y, x, h, w in ((0, 0, 48, 64), (40, 70, 50, 50), (112, 128, 48, 64), (5, 150, 37, 42)):
        window = mirrored[y:y + h + 2 * r, x:x + w + 2 * r]
        core = compute_features(window, spec)[:, r:r + h, r:r + w]
        np.testing.assert_allclose(core, whole[:, y:y + h, x:x + w], rtol=1e-5, atol=1e-6)
    # and a smaller halo does change them: the radius is not generous by accident
    small = r // 2
    window = np.pad(ihc, ((small, small), (small, small), (0, 0)), mode="symmetric")[40:40 + 50 + 2 * small,
                                                                                       70:70 + 50 + 2 * small]
    core = compute_features(window, spec)[:, small:small + 50, small:small + 50]
    assert np.abs(core - whole[:, 40:90, 70:120]).max() > 2e-5


def test_feature_settings_are_checked():
    with pytest.raises(ParameterError, match="scales"):
        FeatureSpec(scales=(0.1,))
    with pytest.raises(ParameterError, match="features"):
        FeatureSpec(features=("gabor",))
    with pytest.raises(ParameterError, match="colour"):
        FeatureSpec(colour="lab")
    with pytest.raises(ParameterError, match="8-bit RGB"):
        compute_features(np.zeros((8, 8, 2), np.uint16), FeatureSpec(colour="hed"))
    spec = FeatureSpec(scales=(5.0, 1.0), features=("hessian", "gaussian"), colour="hed")
    assert spec.scales == (1.0, 5.0) and spec.features == ("gaussian", "hessian")
    assert FeatureSpec.from_dict(spec.as_dict()) == spec
    assert spec.count(3) == 3 * 2 * 3 == len(spec.names(("r", "g", "b")))


def test_hed_features_see_dab_apart_from_haematoxylin(ihc):
    spec = FeatureSpec(scales=(1.0,), features=("gaussian",), colour="hed")
    planes = compute_features(ihc, spec)
    from skimage.color import rgb2hed

    hed = rgb2hed(ihc)  # scikit-image's deconvolution: log10 OD against the same Ruifrok vectors
    for c in (0, 2):
        assert np.corrcoef(planes[c].ravel(), ndi.gaussian_filter(hed[..., c], 1.0, mode="reflect").ravel())[0, 1] > 0.99


# -- labels ------------------------------------------------------------------------------------
def test_every_stroke_kind_lands_where_it_was_drawn():
    strokes = [Stroke("tumour", "polygon", ((10, 10), (30, 10), (30, 30), (10, 30)), holes=(((18, 18), (22, 18), (22, 22), (18, 22)),)),
               Stroke("stroma", "line", ((40, 5), (40, 35)), width=3),
               Stroke("glass", "point", ((5, 45),), radius=2),
               Stroke("glass", "mask", ((50, 40),), mask=np.ones((4, 6), bool))]
    labels, report = rasterize(strokes, (50, 60), ("tumour", "stroma", "glass"))
    assert labels[15, 15] == 1 and labels[20, 20] == 0  # filled, with its hole
    assert labels[20, 40] == 2 and labels[20, 44] == 0  # a 3 px wide line
    assert labels[45, 5] == 3 and labels[42, 52] == 3 and labels[39, 52] == 0
    assert report.pixels["stroma"] == (labels == 2).sum() and report.conflicting == 0


def test_pixels_two_classes_claim_are_left_unlabelled():
    strokes = [Stroke("a", "polygon", ((0, 0), (20, 0), (20, 20), (0, 20))),
               Stroke("b", "polygon", ((10, 0), (30, 0), (30, 20), (10, 20)))]
    labels, report = rasterize(strokes, (20, 40), ("a", "b"))
    assert labels[10, 5] == 1 and labels[10, 25] == 2 and labels[10, 15] == 0
    assert report.conflicting == (labels[:, 10:21] == 0).sum() > 0
    with pytest.raises(InputError, match="not one of the classes"):
        rasterize([Stroke("c", "point", ((1, 1),))], (5, 5), ("a", "b"))


def test_qupath_geojson_becomes_strokes():
    qupath = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [8, 0], [8, 8], [0, 8], [0, 0]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "MultiLineString", "coordinates": [[[1, 12], [9, 12]], [[1, 14], [9, 14]]]},
         "properties": {"classification": {"name": "Stroma"}}},
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[3, 18], [6, 18]]},
         "properties": {"classification": "Stroma"}}]}
    strokes = strokes_from_geojson(json.loads(json.dumps(qupath)))
    assert [(s.label, s.kind) for s in strokes] == [("Tumor", "polygon"), ("Stroma", "line"), ("Stroma", "line"),
                                                     ("Stroma", "point")]
    labels, _ = rasterize(strokes, (20, 12), ("Tumor", "Stroma"))
    assert labels[4, 4] == 1 and labels[12, 5] == 2 and labels[18, 3] == 2
    unclassified = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}}
    with pytest.raises(InputError, match="no class"):
        strokes_from_geojson([unclassified])


def test_painted_label_images_are_checked():
    assert labels_from_array(np.array([[0, 1], [2, 2]], np.uint8), ("a", "b")).dtype == np.int32
    with pytest.raises(InputError, match="up to 3"):
        labels_from_array(np.array([[0, 3]]), ("a", "b"))
    rgb = np.repeat(np.array([[0, 1], [2, 1]], np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(labels_from_array(rgb, ("a", "b")), [[0, 1], [2, 1]])


# -- forest ------------------------------------------------------------------------------------
def _xy(seed=0, n=4000, f=12):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 3] > 0).astype(int) + (x[:, 5] > 1).astype(int)
    return x, y


def test_stored_forest_predicts_exactly_as_scikit_learn(tmp_path):
    x, y = _xy()
    forest = train_forest(x, y, ForestSettings(n_trees=12, max_depth=10))
    path = ForestArrays.from_sklearn(forest).save(tmp_path / "forest.npz")
    with np.load(path, allow_pickle=False) as data:  # plain numeric arrays only
        assert all(data[k].dtype != object for k in data.files)
    compiled = CompiledForest(ForestArrays.load(path), threads=2)
    test, _ = _xy(seed=1)
    np.testing.assert_allclose(compiled.predict_proba(test), forest.predict_proba(test), atol=1e-6)
    again = pickle.loads(pickle.dumps(compiled))  # sent to the engine's workers
    np.testing.assert_array_equal(again.predict_proba(test), compiled.predict_proba(test))
    with pytest.raises(ModelError, match="features per pixel"):
        compiled.predict_proba(test[:, :5])


def test_a_damaged_forest_file_is_refused(tmp_path):
    x, y = _xy()
    arrays = ForestArrays.from_sklearn(train_forest(x, y, ForestSettings(n_trees=2, max_depth=4)))
    bad = ForestArrays(**{**arrays.__dict__, "left": np.where(arrays.left > 0, arrays.left + 1000, arrays.left)})
    bad.save(tmp_path / "bad.npz")
    with pytest.raises(ModelError, match="points outside"):
        ForestArrays.load(tmp_path / "bad.npz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "obj.npz").write_bytes((tmp_path / "obj.npy").read_bytes())
    with pytest.raises(ModelError, match="cannot read"):
        ForestArrays.load(tmp_path / "obj.npz")


def test_pixel_rows_is_the_transpose(ihc):
    planes = compute_features(ihc[:20, :30], FeatureSpec(scales=(1.0,), features=("gaussian", "hessian")))
    np.testing.assert_array_equal(pixel_rows(planes, 7, 300), planes.reshape(planes.shape[0], -1)[:, 7:300].T)


# -- training ----------------------------------------------------------------------------------
def _two_region_image(seed=0):
    """Dark noisy left half, bright smooth right half."""
    rng = np.random.default_rng(seed)
    image = np.empty((80, 120, 3), np.uint8)
    image[:, :60] = np.clip(70 + rng.normal(0, 25, (80, 60, 3)), 0, 255)
    image[:, 60:] = np.clip(190 + rng.normal(0, 4, (80, 60, 3)), 0, 255)
    return image


def _scribbles(shape, rows=(10, 30, 50, 70)):
    strokes = [Stroke("dark", "line", ((5, r), (45, r))) for r in rows]
    strokes += [Stroke("bright", "line", ((75, r), (115, r))) for r in rows]
    return rasterize(strokes, shape, ("dark", "bright"))[0]


def test_training_reports_oob_heldout_strokes_and_importance():
    image = _two_region_image()
    labels = _scribbles(image.shape[:2])
    assert strokes_of(labels).max() == 8
    options = PixelTrainingOptions(features=FeatureSpec(scales=(1.0, 3.5)), forest=ForestSettings(n_trees=16))
    trained = train_pixel_classifier([LabelledImage("halves", image, labels)], ("dark", "bright"), options=options)
    m = trained.metrics
    assert m["labelled_pixels"]["dark"]["strokes"] == 4 and m["labelled_pixels"]["dark"]["pixels"] == (labels == 1).sum()
    assert m["oob_accuracy"] > 0.95
    held = m["heldout_strokes"]
    assert held["strokes_held_out"] == 2 and held["accuracy"] > 0.95 and held["pixels"] > 0
    assert np.array(held["confusion"]).sum() == held["pixels"]
    assert len(trained.importance) == len(trained.feature_names) == options.features.count(3)
    assert sum(v for _, v in trained.importance) == pytest.approx(1.0)
    assert sum(m["importance_by"]["scale"].values()) == pytest.approx(1.0)
    assert trained.warnings == []
    # the forest labels the unlabelled pixels too
    probs = CompiledForest(trained.forest).predict_proba(pixel_rows(compute_features(image, options.features)))
    classes = probs.argmax(1).reshape(image.shape[:2])
    assert (classes[:, :55] == 0).mean() > 0.97 and (classes[:, 65:] == 1).mean() > 0.97


def test_too_few_labels_warn_and_missing_classes_fail():
    image = _two_region_image()
    labels = _scribbles(image.shape[:2], rows=(10, 30, 50))
    labels[:, 60:] = np.where(labels[:, 60:] == 2, 0, labels[:, 60:])
    labels[40, 80:84] = 2  # one tiny stroke of "bright"
    trained = train_pixel_classifier([LabelledImage("a", image, labels)], ("dark", "bright"),
                                     options=PixelTrainingOptions(forest=ForestSettings(n_trees=4)))
    assert any("'bright' has only 4 labelled pixels in 1 stroke" in w for w in trained.warnings)
    assert trained.metrics["heldout_strokes"] is None
    with pytest.raises(InputError, match="'bright' has no labelled pixels"):
        train_pixel_classifier([LabelledImage("a", image, np.where(labels == 2, 0, labels))], ("dark", "bright"))
    with pytest.raises(InputError, match="at least two classes"):
        train_pixel_classifier([LabelledImage("a", image, labels)], ("dark",))
    with pytest.raises(InputError, match="differ in size"):
        train_pixel_classifier([LabelledImage("a", image, labels[:10])], ("dark", "bright"))
