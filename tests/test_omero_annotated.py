"""OMERO ROIs and tags become training datasets (against the in-process double)."""
import numpy as np
import pytest
from omero.model import EllipseI, ImageI, MaskI, PolygonI, RectangleI, RoiAnnotationLinkI, RoiI, TagAnnotationI
from omero.rtypes import rdouble, rstring

from dlcore.errors import InputError, OmeroError, ParameterError
from dlcore.omero.annotated import AnnotationOptions, dataset_from_omero, merge_boxes
from dlcore.omero.annotations import image_link
from omero_double import Server

H, W = 1024, 1536


def _pixels(height=H, width=W):
    """An RGB image whose pixels encode their position, so a misplaced read shows."""
    yy, xx = np.mgrid[:height, :width]
    return np.stack([yy % 251, xx % 241, (yy // 7 + xx // 5) % 256], axis=-1).astype(np.uint8)


def _pyramid():
    full = _pixels()
    return [full, full[::2, ::2].copy(), full[::4, ::4].copy()]


class Omero:
    """A double with one group, one user, a dataset and helpers to draw ROIs and tags."""

    def __init__(self):
        self.server = Server()
        self.group = self.server.add_group("lab", "rwra--")
        self.user = self.server.add_user("alice", [self.group])
        self.dataset = self.server.add_dataset("annotated", owner=self.user, group=self.group)
        self.conn = self.server.connect(self.user, self.group)
        self.ctx = {"omero.group": str(self.group)}

    def image(self, name="slide", levels=None, **kwargs):
        return self.server.add_image(levels or _pyramid(), name=name, owner=self.user, group=self.group,
                                     dataset=self.dataset, tile=(128, 128), **kwargs)

    def roi(self, image_id, shape, name=None, description=None):
        roi = RoiI()
        roi.setImage(ImageI(image_id, False))
        if name:
            roi.setName(rstring(name))
        if description:
            roi.setDescription(rstring(description))
        roi.addShape(shape)
        return self.conn.getUpdateService().saveAndReturnObject(roi, self.ctx).getId().getValue()

    def tag(self, text):
        tag = TagAnnotationI()
        tag.setTextValue(rstring(text))
        return self.conn.getUpdateService().saveAndReturnObject(tag, self.ctx)

    def tag_roi(self, roi_id, tag):
        link = RoiAnnotationLinkI()
        link.setParent(RoiI(roi_id, False))
        link.setChild(TagAnnotationI(tag.getId().getValue(), False))
        self.conn.getUpdateService().saveAndReturnObject(link, self.ctx)

    def tag_image(self, image_id, tag):
        self.conn.getUpdateService().saveAndReturnObject(
            image_link(image_id, TagAnnotationI(tag.getId().getValue(), False)), self.ctx)


def rect(x, y, w, h):
    shape = RectangleI()
    for setter, v in ((shape.setX, x), (shape.setY, y), (shape.setWidth, w), (shape.setHeight, h)):
        setter(rdouble(v))
    return shape


def polygon(points):
    shape = PolygonI()
    shape.setPoints(rstring(" ".join(f"{x},{y}" for x, y in points)))
    return shape


@pytest.fixture
def om():
    return Omero()


def test_rois_become_a_semantic_mask_at_the_right_place(om):
    image = om.image()
    om.roi(image, rect(300, 200, 40, 30), name="tumour")
    om.roi(image, polygon([(320, 210), (330, 210), (330, 220), (320, 220)]), name="stroma")  # inside the rectangle
    om.roi(image, rect(10, 10, 5, 5), name="ignored", description="dlcore:nuclei-classical:abc")  # dlcore's result
    ds, images, notes = dataset_from_omero(om.conn, "Dataset", [om.dataset], AnnotationOptions("semantic", margin=8))
    assert ds.classes == ("stroma", "tumour") and ds.task == "semantic"
    [s] = ds.samples
    assert s.group == f"Image:{image}" and s.mpp == pytest.approx(0.5)
    assert s.image.shape == (30 + 16, 40 + 16, 3)
    np.testing.assert_array_equal(s.image, _pixels()[192:238, 292:348])  # the bbox plus margin, read exactly there
    expected = np.zeros((46, 56), np.int32)
    expected[8:38, 8:48] = 2  # tumour: pixels 300..339 x 200..229
    expected[18:28, 28:38] = 1  # the smaller stroma polygon wins inside it
    np.testing.assert_array_equal(s.mask, expected)
    assert any("1 ROIs written by dlcore" in n for n in notes)


def test_only_the_roi_regions_are_read_at_the_chosen_level(om):
    image = om.image()
    om.roi(image, rect(100, 100, 64, 64), name="a")
    om.roi(image, rect(1300, 900, 64, 64), name="a")  # far away: a second, separate region
    om.server.calls.clear()
    ds, _, _ = dataset_from_omero(om.conn, "Image", [image], AnnotationOptions("semantic", level=1, margin=0))
    assert [s.image.shape[:2] for s in ds.samples] == [(32, 32), (32, 32)]
    np.testing.assert_array_equal(ds.samples[1].image, _pixels()[::2, ::2][450:482, 650:682])
    assert ds.samples[0].mpp == pytest.approx(1.0)
    assert all((s.mask == 1).all() for s in ds.samples)
    # level 1 is 768x512 on a 128 grid: 24 tiles x 3 channels for the whole plane; two small regions need 1-2 each
    assert om.server.calls["RawPixelsStore.getTile"] <= 2 * 2 * 3
    assert not om.server.open_stores


def test_classes_from_roi_tags_in_the_given_order(om):
    image = om.image()
    a = om.roi(image, rect(100, 100, 20, 20))
    b = om.roi(image, polygon([(400, 400), (440, 400), (420, 440)]))
    om.tag_roi(a, om.tag("tumour"))
    om.tag_roi(b, om.tag("normal"))
    opts = AnnotationOptions("semantic", class_source="roi_tag", classes=("tumour", "normal"), margin=0)
    ds, _, _ = dataset_from_omero(om.conn, "Image", [image], opts)
    assert ds.classes == ("tumour", "normal")
    values = sorted(int(s.mask.max()) for s in ds.samples)
    assert values == [1, 2]
    triangle = next(s for s in ds.samples if s.mask.max() == 2)
    assert triangle.mask.shape == (40, 40) and 700 < (triangle.mask == 2).sum() < 900  # area 800


def test_instances_ellipse_and_mask_shapes(om):
    image = om.image()
    ellipse = EllipseI()
    for setter, v in ((ellipse.setX, 200), (ellipse.setY, 200), (ellipse.setRadiusX, 10), (ellipse.setRadiusY, 5)):
        setter(rdouble(v))
    om.roi(image, ellipse)
    mask = MaskI()
    bits = np.zeros((8, 16), np.uint8)
    bits[2:6, 4:12] = 1
    mask.setBytes(np.packbits(bits).tobytes())
    for setter, v in ((mask.setX, 205), (mask.setY, 190), (mask.setWidth, 16), (mask.setHeight, 8)):
        setter(rdouble(v))
    om.roi(image, mask)
    ds, _, _ = dataset_from_omero(om.conn, "Image", [image], AnnotationOptions("instances", margin=4))
    [s] = ds.samples
    assert ds.classes == ("object",) and set(np.unique(s.mask)) == {0, 1, 2}
    assert (s.mask == 2).sum() == 32  # the mask's 4x8 set bits, drawn last (smaller)
    assert abs((s.mask > 0).sum() - (np.pi * 50 + 32 - 2 * 8)) < 25


def test_image_tags_become_classification_labels(om):
    tumour, normal = om.tag("tumour"), om.tag("normal")
    small = [_pixels(256, 256)]
    a, b = om.image("a", levels=small), om.image("b", levels=small)
    om.tag_image(a, tumour)
    om.tag_image(b, normal)
    om.roi(b, rect(10, 20, 50, 40), name="whatever")  # with image tags, a ROI is just the crop
    ds, _, _ = dataset_from_omero(om.conn, "Dataset", [om.dataset],
                                  AnnotationOptions("classification", class_source="image_tag"))
    assert ds.classes == ("normal", "tumour")
    assert [(s.label, s.image.shape[:2], s.group) for s in ds.samples] == [
        ("tumour", (256, 256), f"Image:{a}"), ("normal", (40, 50), f"Image:{b}")]


def test_roi_crops_with_roi_names_for_classification(om):
    image = om.image()
    om.roi(image, rect(0, 0, 32, 32), name="tumour")
    om.roi(image, rect(64, 64, 32, 48), name="stroma")
    ds, _, _ = dataset_from_omero(om.conn, "Image", [image], AnnotationOptions("classification"))
    assert [(s.label, s.image.shape) for s in ds.samples] == [("tumour", (32, 32, 3)), ("stroma", (48, 32, 3))]


def test_clear_errors_before_any_pixels_are_read(om):
    image = om.image()
    om.server.calls.clear()
    with pytest.raises(InputError, match="has no ROIs to learn from.*draw polygons"):
        dataset_from_omero(om.conn, "Image", [image], AnnotationOptions("semantic"))
    om.roi(image, rect(0, 0, 10, 10), name="tumour")
    om.roi(image, rect(20, 0, 10, 10))
    with pytest.raises(InputError, match="have no class; name the ROIs"):
        dataset_from_omero(om.conn, "Image", [image], AnnotationOptions("semantic"))
    with pytest.raises(InputError, match="'tumour' are on ROIs.*not among the classes given"):
        dataset_from_omero(om.conn, "Image", [image], AnnotationOptions("instances", classes=("nucleus",)))
    with pytest.raises(InputError, match="has no tag; tag every image"):
        dataset_from_omero(om.conn, "Image", [image], AnnotationOptions("classification", class_source="image_tag"))
    with pytest.raises(OmeroError, match="Image 999: not found"):
        dataset_from_omero(om.conn, "Image", [999], AnnotationOptions("semantic"))
    with pytest.raises(OmeroError, match=f"Dataset {image + 100}: not found.*Image or Project"):
        dataset_from_omero(om.conn, "Dataset", [image + 100], AnnotationOptions("semantic"))
    with pytest.raises(ParameterError, match="image classification"):
        AnnotationOptions("semantic", class_source="image_tag")
    assert om.server.calls["RawPixelsStore.getTile"] == 0


def test_images_the_user_cannot_read_are_refused(om):
    private = om.server.add_group("private", "rw----")
    carol = om.server.add_user("carol", [private])
    om.server.members[private].add(om.user)
    hidden = om.server.add_image([_pixels(64, 64)], name="carol's", owner=carol, group=private)
    with pytest.raises(OmeroError, match=f"Image {hidden}: not found, or you are not allowed to see it"):
        dataset_from_omero(om.conn, "Image", [hidden], AnnotationOptions("semantic"))


def test_merge_boxes():
    merged = merge_boxes([(0, 0, 10, 10), (50, 50, 60, 60), (5, 5, 20, 20), (18, 0, 30, 4)])
    assert merged == [((0, 0, 30, 20), [0, 2, 3]), ((50, 50, 60, 60), [1])]
