"""Train_Pixel_Classifier against the in-process OMERO double: ROI shapes as labels, the regions read,
training end to end into the registry, and refusals that write nothing."""
import csv
import io
import json
import re

import numpy as np
import pytest
from omero.model import (EllipseI, ImageI, LabelI, LengthI, LineI, MaskI, PointI, PolylineI,
                         RoiI)
from omero.model.enums import UnitsLength
from omero.rtypes import rdouble, rstring

from dlcore.config import Config
from dlcore.errors import InputError, ParameterError
from dlcore.models.registry import list_models, load_task
from dlcore.omero.annotated import AnnotationOptions, dataset_from_omero, image_strokes
from dlcore.omero.pixel_training import NS_PIXEL_TRAINING, PixelTrainingRequest, request_from_inputs
from dlcore.omero.slide import OmeroSlide
from dlcore.pixels.local_data import read_region_strokes
from dlcore.pixels.scribbles import rasterize
from test_omero_annotated import Omero, _pixels, polygon, rect
from test_omero_scripts import _exec_script

CLASSES = ("a", "b", "c")


def _set(shape, **values):
    for key, value in values.items():
        getattr(shape, f"set{key}")(rdouble(value))
    return shape


def point(x, y):
    return _set(PointI(), X=x, Y=y)


def line(x1, y1, x2, y2, width=None):
    shape = _set(LineI(), X1=x1, Y1=y1, X2=x2, Y2=y2)
    if width is not None:
        shape.setStrokeWidth(LengthI(width, UnitsLength.PIXEL))
    return shape


def polyline(points, width=None):
    shape = PolylineI()
    shape.setPoints(rstring(" ".join(f"{x},{y}" for x, y in points)))
    if width is not None:
        shape.setStrokeWidth(LengthI(width, UnitsLength.PIXEL))
    return shape


def ellipse(x, y, rx, ry):
    return _set(EllipseI(), X=x, Y=y, RadiusX=rx, RadiusY=ry)


def mask(x, y, bits):
    shape = _set(MaskI(), X=x, Y=y, Width=bits.shape[1], Height=bits.shape[0])
    shape.setBytes(np.packbits(bits.astype(np.uint8)).tobytes())
    return shape


def commented(shape, text):
    shape.setTextValue(rstring(text))
    return shape


def _roi(om, image_id, shapes, name=None):
    """A ROI with several shapes (the helper of test_omero_annotated draws one)."""
    roi = RoiI()
    roi.setImage(ImageI(image_id, False))
    if name:
        roi.setName(rstring(name))
    for shape in shapes:
        roi.addShape(shape)
    return om.conn.getUpdateService().saveAndReturnObject(roi, om.ctx).getId().getValue()


@pytest.fixture
def om():
    return Omero()


# -- ROI shapes as labels ---------------------------------------------------------------------------
def test_every_shape_kind_becomes_labels_of_its_class_at_its_place(om):
    image = om.image(levels=[_pixels(256, 320)])
    bits = np.zeros((6, 10), bool)
    bits[1:5, 2:9] = True
    om.roi(image, rect(20, 30, 20, 10), name="a")
    om.roi(image, ellipse(100, 40, 10, 6), name="b")
    om.roi(image, polygon([(200, 20), (240, 20), (220, 60)]), name="c")
    om.roi(image, polyline([(20, 100), (80, 100), (80, 140)], width=5), name="a")
    om.roi(image, line(150, 120, 190, 120), name="b")  # no stroke width: 3 px
    om.roi(image, point(260, 200), name="c")
    om.roi(image, mask(120, 200, bits), name="a")
    label = LabelI()
    label.setX(rdouble(5))
    label.setY(rdouble(5))
    label.setTextValue(rstring("b"))
    om.roi(image, label, name="b")  # a text label marks no pixels: skipped, and said so
    om.roi(image, rect(0, 240, 8, 8), name="c", description="dlcore:nuclei-classical:run")  # a result, not a label

    strokes, notes = image_strokes(om.conn, image)
    assert sorted((s.kind, s.label) for s in strokes) == sorted([
        ("polygon", "a"), ("polygon", "b"), ("polygon", "c"), ("line", "a"), ("line", "b"), ("point", "c"),
        ("mask", "a")])
    assert any("1 shapes skipped (ROI" in n and "Label" in n for n in notes)
    assert any("1 ROIs written by dlcore" in n for n in notes)
    labels, report = rasterize(strokes, (256, 320), CLASSES)
    assert report.conflicting == 0 and report.outside == 0

    assert (labels[31:39, 21:39] == 1).all()  # the rectangle 20..39 x 30..39, class a
    assert (labels[28:42, :19] == 0).all()
    assert (labels[28:42, 42:60] == 0).all()
    assert labels[40, 100] == 2 and labels[36, 96] == 2 and labels[40, 88] == 0 and labels[40, 112] == 0  # ellipse
    assert labels[30, 220] == 3 and labels[55, 220] == 3 and labels[30, 202] == 0  # the triangle
    wide, default = np.flatnonzero(labels[:, 50] == 1), np.flatnonzero(labels[:, 170] == 2)
    assert wide.mean() == 100 and np.ptp(wide) + 1 >= 5 and (np.diff(wide) == 1).all()  # 5 px wide, as drawn
    assert default.mean() == 120 and 3 <= np.ptp(default) + 1 < np.ptp(wide) + 1  # 3 px wide by default
    assert (labels[100:141, 80] == 1).all() and labels[100, 86] == 0 and labels[90, 50] == 0
    assert labels[200, 260] == 3 and labels[200, 262] == 3 and labels[200, 265] == 0  # a disk of radius 2
    np.testing.assert_array_equal(labels[200:206, 120:130] == 1, bits)  # the mask's bits, where it lies
    assert (labels[240:248, 0:8] == 0).all()  # dlcore's own ROI is no label
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_class_from_shape_comments_and_roi_tags(om):
    commented_image = om.image(levels=[_pixels(128, 128)])
    two = _roi(om, commented_image, [commented(rect(10, 10, 10, 10), "tumour"), commented(point(60, 60), "stroma")])
    tagged_image = om.image(levels=[_pixels(128, 128)])
    tagged = om.roi(tagged_image, line(20, 100, 100, 100, width=2))
    om.tag_roi(tagged, om.tag("stroma"))
    for source in ("roi_comment", "roi_name"):  # each shape's own text (by ROI name: when the ROI has none)
        strokes, _ = image_strokes(om.conn, commented_image, class_source=source)
        assert sorted((s.kind, s.label) for s in strokes) == [("point", "stroma"), ("polygon", "tumour")]
    [stroke], _ = image_strokes(om.conn, tagged_image, class_source="roi_tag")
    assert (stroke.kind, stroke.label, stroke.width) == ("line", "stroma", 2.0)
    with pytest.raises(InputError, match=f"ROIs {tagged} have no class; give their shapes the class as comment"):
        image_strokes(om.conn, tagged_image, class_source="roi_comment")
    with pytest.raises(InputError, match=f"ROIs {tagged} have no class; name the ROIs with their class"):
        image_strokes(om.conn, tagged_image, class_source="roi_name")
    with pytest.raises(InputError, match=f"ROIs {two} have no class; tag the ROIs with their class"):
        image_strokes(om.conn, commented_image, class_source="roi_tag")
    with pytest.raises(ParameterError, match="cannot label pixels"):
        image_strokes(om.conn, tagged_image, class_source="image_tag")
    # the shapes' comments are a class source of Train_Model's datasets too: one class per ROI there
    with pytest.raises(InputError, match=f"ROI {two} has shapes with the comments 'tumour', 'stroma'"):
        dataset_from_omero(om.conn, "Image", [commented_image],
                           AnnotationOptions("classification", class_source="roi_comment"))
    single = om.image(levels=[_pixels(128, 128)])
    om.roi(single, commented(rect(10, 10, 30, 20), "tumour"))
    om.roi(single, commented(rect(60, 10, 30, 20), "stroma"))
    ds, _, _ = dataset_from_omero(om.conn, "Image", [single],
                                  AnnotationOptions("semantic", class_source="roi_comment", margin=0))
    assert ds.classes == ("stroma", "tumour")
    assert sorted((int(s.mask.max()), s.mask.shape) for s in ds.samples) == [(1, (20, 30)), (2, (20, 30))]


def test_only_the_regions_around_the_rois_are_read_at_the_working_resolution(om):
    from dlcore.omero.pixel_training import _regions

    image = om.image()  # 1536 x 1024, levels 1 and 1/2 and 1/4, 0.5 µm/px, 128-px tiles
    om.roi(image, rect(100, 100, 40, 20), name="a")
    om.roi(image, line(1300, 900, 1380, 900, width=3), name="b")  # far away: a region of its own
    strokes, _ = image_strokes(om.conn, image)
    request = PixelTrainingRequest(name="tissue", working_mpp=1.0)
    om.server.calls.clear()
    with OmeroSlide(om.conn, om.conn.getObject("Image", image)) as slide:
        plan, regions = _regions(slide, strokes, request, margin=6)
        assert plan.level == 1 and plan.factor == 2 and len(regions) == 2
        images = [read_region_strokes(slide, group, ("a", "b"), mpp=1.0, margin=6, name=f"r{i}")[0]
                  for i, (group, _) in enumerate(regions)]
    rectangle = next(im for im in images if (im.labels == 1).any())
    # the rectangle is x 50..70, y 50..60 in working pixels: its box widened by the margin (and one past the end)
    assert rectangle.image.shape == (6 + 10 + 6 + 1, 6 + 20 + 6 + 1, 3)
    np.testing.assert_array_equal(rectangle.image, _pixels()[::2, ::2][44:67, 44:77])  # level 1, exactly there
    assert (rectangle.labels[7:16, 7:26] == 1).all() and (rectangle.labels[:5] == 0).all()
    # level 1 is 768 x 512 on a 128 grid (24 tiles x 3 channels); two small regions need a tile or two each
    assert 0 < om.server.calls["RawPixelsStore.getTile"] <= 2 * 2 * 3
    assert not om.server.open_stores


# -- training end to end ----------------------------------------------------------------------------
def _halves(seed, height=128, width=192):
    """Dark on the left, bright on the right, with noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:, : width // 2] = (60, 50, 70)
    image[:, width // 2:] = (210, 200, 220)
    return np.clip(image + rng.integers(-12, 12, image.shape), 0, 255).astype(np.uint8)


def _annotated_halves(om, seed=0):
    image = om.image(f"halves {seed}", levels=[_halves(seed)])
    om.roi(image, polygon([(10, 10), (40, 10), (40, 40), (10, 40)]), name="dark")
    om.roi(image, polyline([(10, 80), (60, 80), (60, 110)], width=4), name="dark")
    om.roi(image, ellipse(70, 60, 8, 12), name="dark")
    om.roi(image, rect(120, 10, 40, 25), name="bright")
    om.roi(image, line(110, 100, 180, 100, width=5), name="bright")
    om.roi(image, polygon([(150, 50), (180, 50), (180, 80), (150, 80)]), name="bright")
    return image


FAST = {"Scales": "1,2", "Trees": 8, "Features": "gaussian, gradient, hessian"}


def _files(om, dataset, ns=NS_PIXEL_TRAINING):
    from omero.model import FileAnnotationI

    out = {}
    for a in om.server.dataset_annotations(dataset, FileAnnotationI):
        assert a.getNs().getValue() == ns
        ofile = om.server.get("OriginalFile", a.getFile().getId().getValue())
        out.setdefault(ofile.getName().getValue(), []).append(om.server.file_bytes[ofile.getId().getValue()])
    return out


def test_train_pixel_classifier_script_registers_a_model_that_classifies(om, monkeypatch, tmp_path, capsys):
    registry = tmp_path / "registry"
    monkeypatch.setenv("DLCORE_MODELS", str(registry))
    images = [_annotated_halves(om, seed) for seed in (0, 1)]
    om.image("not annotated", levels=[_halves(5)])  # in the dataset, without ROIs: left out with a note
    inputs = {"Data_Type": "Dataset", "IDs": [om.dataset], "Class_Source": "ROI name", "Model_Name": "halves",
              "Classes": "dark, bright", "Model_Description": "dark and bright halves", **FAST}
    fake = _exec_script("Train_Pixel_Classifier.py", inputs, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("✓ Trained pixel classifier halves version 1.0.0 (classes dark, bright) on "), message
    assert "on 4 regions of 2 images" in message  # two far-apart groups of ROIs on each image
    assert re.search(r"labels: dark \d+ px in 6 strokes, bright \d+ px in 6 strokes", message)
    assert float(re.search(r"out-of-bag accuracy ([\d.]+)", message).group(1)) > 0.95
    assert re.search(r"held-out strokes \(2 strokes never seen in training\): accuracy 1.000", message)
    assert "top features: " in message and "Run Model lists it now as halves" in message
    assert "1 image(s) without ROIs left out" in message
    out = capsys.readouterr().out
    assert "read regions: " in out and "forest: 1/1" in out and message in out  # progress lines, then the outcome

    folder = registry / "halves"
    [record] = list_models(Config(models_dir=registry))
    assert (record.name, record.kind, record.version) == ("halves", "pixel_classifier", "1.0.0")
    owner = json.loads((folder / "owner.json").read_text())
    assert owner == {"user_id": om.user, "user_name": "alice", "group_id": om.group, "group_name": "lab"}
    card = (folder / "README.md").read_text()
    assert f"Image:{images[0]}" in card and "dark and bright halves" in card

    files = _files(om, om.dataset)
    assert set(files) == {"halves-1.0.0-model-card.md", "halves-1.0.0-feature-importance.csv"}
    assert files["halves-1.0.0-model-card.md"] == [card.encode()]
    rows = list(csv.DictReader(io.StringIO(files["halves-1.0.0-feature-importance.csv"][0].decode())))
    assert len(rows) == 3 * 2 * 4  # 3 channels x 2 scales x (gaussian, gradient, 2 Hessian eigenvalues)
    assert {r["channel"] for r in rows} == {"0", "1", "2"}  # the images' channel labels (OMERO's: indices)
    assert fake.outputs["Model_Card"].getValue().getId().getValue() > 0

    task = load_task("halves", config=Config(models_dir=registry))
    assert task.class_names == ("dark", "bright")
    [result] = task.predict([_halves(9)])
    expected = np.where(np.arange(192) < 96, 1, 2)[None].repeat(128, axis=0)
    away = np.abs(np.arange(192) - 96) > 4  # a few pixels at the boundary may go either way
    assert (result.labels[:, away] == expected[:, away]).mean() > 0.99

    # a re-run with the same name: a new version, its own files, nothing attached twice
    fake = _exec_script("Train_Pixel_Classifier.py", inputs, om.conn, monkeypatch)
    assert fake.outputs["Message"].getValue().startswith("✓ Trained pixel classifier halves-v2 version 2.0.0")
    files = _files(om, om.dataset)
    assert sorted(files) == ["halves-1.0.0-feature-importance.csv", "halves-1.0.0-model-card.md",
                             "halves-2.0.0-feature-importance.csv", "halves-2.0.0-model-card.md"]
    assert all(len(v) == 1 for v in files.values())
    assert {r.name for r in list_models(Config(models_dir=registry))} == {"halves", "halves-v2"}
    assert not om.server.open_stores


def test_refusals_write_nothing(om, monkeypatch, tmp_path):
    registry = tmp_path / "registry"
    monkeypatch.setenv("DLCORE_MODELS", str(registry))
    bare = om.image("bare", levels=[_halves(3)])
    one_class = om.image("one class", levels=[_halves(4)])
    om.roi(one_class, rect(10, 10, 20, 20), name="dark")
    om.roi(one_class, rect(120, 10, 20, 20), name="dark")
    unnamed = om.image("unnamed", levels=[_halves(6)])
    roi = om.roi(unnamed, rect(10, 10, 20, 20))
    # a read-only group: alice sees carol's annotated images but may not annotate them (nor their dataset)
    shared = om.server.add_group("shared", "rwr---")
    carol = om.server.add_user("carol", [shared])
    om.server.members[shared].add(om.user)
    carols_dataset = om.server.add_dataset("carol's", owner=carol, group=shared)
    carols = om.server.add_image([_halves(7)], name="carol's", owner=carol, group=shared, dataset=carols_dataset)
    carol_conn = om.server.connect(carol, shared)
    for name, shape in (("dark", rect(10, 10, 20, 20)), ("bright", rect(120, 10, 20, 20))):
        r = RoiI()
        r.setImage(ImageI(carols, False))
        r.setName(rstring(name))
        r.addShape(shape)
        carol_conn.getUpdateService().saveAndReturnObject(r, {"omero.group": str(shared)})
    before = dict(om.server.objects)
    om.server.calls.clear()
    base = {"Data_Type": "Image", "Model_Name": "tissue", **FAST}
    cases = [
        ({"IDs": [bare]}, "none of the 1 selected images has ROIs to learn from"),
        ({"IDs": [one_class]}, "every ROI is of the class 'dark'; a pixel classifier needs labels of at least two"),
        ({"IDs": [one_class], "Classes": "dark, bright"}, "class 'bright' has no labels"),
        ({"IDs": [one_class], "Classes": "bright, glass"}, "'dark', which are not among the Classes given"),
        ({"IDs": [unnamed]}, f"ROIs {roi} have no class; name the ROIs with their class"),
        ({"IDs": [carols]}, f"you may not annotate Dataset {carols_dataset}"),
        ({"IDs": [carols_dataset], "Data_Type": "Dataset"}, f"you may not annotate Dataset {carols_dataset}"),
        ({"IDs": [999]}, "Image 999: not found"),
        ({"IDs": [one_class], "Model_Name": "my model"}, "without spaces"),
        ({"IDs": [one_class], "Model_Name": "m"}, "a name of 5 to 64 letters"),  # bioimage.io's rule, checked first
        ({"IDs": [one_class], "Model_Name": "tissue.v1"}, "a name of 5 to 64 letters"),
        ({"IDs": [one_class], "Scales": "1,x"}, "Scales='1,x' must be numbers"),
        ({"IDs": [one_class], "Scales": "100"}, "scales=(100.0,) must be distinct sigmas"),
        ({"IDs": [one_class], "Features": "gaussian, wavelets"}, "choose distinct names among gaussian"),
        ({"IDs": [one_class], "Colour": "cmyk"}, "Colour='cmyk' must be one of raw, od, hed"),
        ({"IDs": [one_class], "Holdout_Fraction": 1.0}, "Holdout_Fraction=1.0"),
    ]
    for extra, expected in cases:
        fake = _exec_script("Train_Pixel_Classifier.py", {**base, **extra}, om.conn, monkeypatch)
        message = fake.outputs["Message"].getValue()
        assert message.startswith("Nothing was written: ") and expected in message, (extra, message)
    assert om.server.objects == before
    assert om.server.calls["RawPixelsStore.getTile"] == 0  # every refusal came before any pixel was read
    assert not registry.exists() or not any(registry.iterdir())


def test_a_failed_attachment_removes_the_registered_model(om, monkeypatch, tmp_path):
    import omero_double

    registry = tmp_path / "registry"
    monkeypatch.setenv("DLCORE_MODELS", str(registry))
    image = _annotated_halves(om)

    def refuse_links(self, objs, ctx=None):
        raise RuntimeError("database is read-only")
    monkeypatch.setattr(omero_double.UpdateService, "saveAndReturnArray", refuse_links)
    before = set(om.server.objects)
    fake = _exec_script("Train_Pixel_Classifier.py", {"Data_Type": "Image", "IDs": [image], "Model_Name": "halves",
                                                      **FAST}, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("Nothing was written: attaching halves-1.0.0-model-card.md") and "read-only" in message
    assert set(om.server.objects) == before  # the uploaded files were deleted again
    assert list(registry.iterdir()) == [] or [p.name for p in registry.iterdir()] == [".dlcore-registry.lock"]


def test_od_and_hed_need_8_bit_rgb_and_a_shared_model_name_is_refused(om, monkeypatch, tmp_path):
    registry = tmp_path / "registry"
    monkeypatch.setenv("DLCORE_MODELS", str(registry))
    grey = om.image("grey", levels=[np.repeat(_halves(0)[..., :1], 1, axis=2).astype(np.uint16)])
    om.roi(grey, rect(10, 10, 20, 20), name="dark")
    om.roi(grey, rect(120, 10, 20, 20), name="bright")
    fake = _exec_script("Train_Pixel_Classifier.py", {"Data_Type": "Image", "IDs": [grey], "Model_Name": "tissue",
                                                      "Colour": "hed", **FAST}, om.conn, monkeypatch)
    assert "Colour=hed needs 8-bit RGB brightfield images, but the images have 1 channels of uint16" in \
        fake.outputs["Message"].getValue()
    (registry / "shared").mkdir(parents=True)  # a model a sysadmin installed (no owner.json)
    (registry / "shared" / "rdf.yaml").write_text("name: shared\nversion: 1.0.0\ndescription: x\n")
    fake = _exec_script("Train_Pixel_Classifier.py", {"Data_Type": "Image", "IDs": [grey], "Model_Name": "Shared",
                                                      **FAST}, om.conn, monkeypatch)
    assert "Model_Name 'shared' is the name of a shared model" in fake.outputs["Message"].getValue()
    assert [p.name for p in registry.iterdir()] == ["shared"]


def test_request_from_inputs():
    request = request_from_inputs({"Model_Name": " tissue ", "Classes": "tumour, stroma,, glass",
                                   "Class_Source": "ROI comment", "Scales": "5, 0.7", "Features": ["log", "gaussian"],
                                   "Colour": "HED", "Trees": 50, "Holdout_Fraction": 0.0,
                                   "Working_Pixel_Size_um": 1.0})
    assert request == PixelTrainingRequest(name="tissue", class_source="roi_comment",
                                           classes=("tumour", "stroma", "glass"), scales=(5.0, 0.7),
                                           features=("log", "gaussian"), colour="hed", trees=50, holdout_fraction=0.0,
                                           working_mpp=1.0)
    spec = request.feature_spec(255.0)
    assert spec.scales == (0.7, 5.0) and spec.features == ("gaussian", "log") and spec.colour == "hed"
    with pytest.raises(ParameterError, match="Class_Source='Image tag'"):
        request_from_inputs({"Model_Name": "tissue", "Class_Source": "Image tag"})
    with pytest.raises(ParameterError, match="Classes tumour, tumour: name each class once"):
        PixelTrainingRequest(name="tissue", classes=("tumour", "tumour"))


def test_run_model_applies_a_pixel_classifier_in_place(tmp_path):
    """What Train_Pixel_Classifier registers, Run_Model runs: class label image, class outlines and
    probabilities attached, key-values, on the double's demo slide."""
    from omero.model import FileAnnotationI, MapAnnotationI

    from dlcore.cli import main as cli_main
    from dlcore.omero import annotations as ann
    from dlcore.omero.workflows import run_on_objects
    from dlcore.pixels.demo import write_scribble_demo
    from omero_double import Server, demo_levels

    registry = tmp_path / "registry"
    folder = write_scribble_demo(tmp_path / "training")
    assert cli_main(["train", str(folder), "--task", "pixels", "--name", "ihc-dab", "--scales", "1,2.5",
                     "--trees", "12", "--registry", str(registry)]) == 0
    server = Server()
    group = server.add_group("lab", "rwra--")
    alice = server.add_user("alice", [group])
    dataset = server.add_dataset("slides", owner=alice, group=group)
    image = server.add_image(demo_levels(tmp_path / "slide"), name="demo.ome.tif", owner=alice, group=group,
                             dataset=dataset, channel_names=["R", "G", "B"])
    conn = server.connect(alice, group)
    [report] = run_on_objects(conn, "ihc-dab", "Image", [image], {}, config=Config(models_dir=registry))
    assert report.ok, report.message
    label_id = report.output_id("label image")
    labels = server.pixels[server.pixels_of(label_id)][0][..., 0]
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels > 0).mean() > 0.3
    files = {server.get("OriginalFile", a.getFile().getId().getValue()).getName().getValue()
             for a in server.annotations_of(image, FileAnnotationI)}
    assert {"class_outlines.geojson", "probabilities.png", "probabilities.npy", "provenance.json"} <= files
    [kv] = [a for a in server.annotations_of(image, MapAnnotationI) if a.getNs().getValue() == ann.namespace("ihc-dab")]
    values = {nv.name: nv.value for nv in kv.getMapValue()}
    assert values["task"] == "ihc-dab"
    assert not server.open_stores
