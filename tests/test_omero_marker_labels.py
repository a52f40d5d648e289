"""Labels_From_Marker against the in-process OMERO double: ROIs Train_Model reads back as the right classes,
a re-run that replaces, a second image registered by ID, refusals and failures that leave nothing."""
import numpy as np
import pytest
from omero.model import MapAnnotationI, MaskI, PolygonI
from skimage import data

from dlcore.errors import DlcoreError
from dlcore.marker.labels import MarkerSpec, derive_labels, hematoxylin_rendering, stain_matrix
from dlcore.omero import marker_labels as ml
from dlcore.omero.annotated import AnnotationOptions, dataset_from_omero
from test_omero_annotated import Omero, rect
from test_omero_scripts import _exec_script

IHC = data.immunohistochemistry()


class ArraySlide:
    """An in-memory slide of one level (for the labels the script must reproduce)."""

    def __init__(self, array, name="array"):
        from dlcore.io.slide import Level, SlideInfo

        self.array = array
        self.info = SlideInfo(name=name, identity=name, levels=(Level(array.shape[1], array.shape[0], 1.0),),
                              mpp=(0.5, 0.5), channels=("Red", "Green", "Blue"), dtype="uint8", tile_size=(128, 128))

    def read_region(self, level, x, y, w, h):
        return self.array[y:y + h, x:x + w]

    def close(self):
        pass


@pytest.fixture
def om():
    return Omero()


def _run(om, monkeypatch, tmp_path, **inputs):
    """Execute the script file as OMERO would (its scratch folder, where journals go, in ``tmp_path``)."""
    config = tmp_path / "dlcore.toml"
    config.write_text(f'[dlcore]\nwork_dir = "{tmp_path}"\n')
    monkeypatch.setenv("DLCORE_CONFIG", str(config))
    fake = _exec_script("Labels_From_Marker.py", inputs, om.conn, monkeypatch)
    return fake.outputs["Message"].getValue()


def _marker_rois(om, image):
    return [r for r in om.server.rois_of(image) if (r.getDescription() and
                                                    r.getDescription().getValue().startswith(ml.ROI_PREFIX))]


def _kv(om, image):
    anns = [a for a in om.server.annotations_of(image, MapAnnotationI) if a.getNs().getValue() == "dlcore/marker-labels"]
    return [{nv.name: nv.value for nv in a.getMapValue()} for a in anns]


def test_positive_cells_become_rois_that_train_models_reader_reads_as_their_classes(om, monkeypatch, tmp_path):
    image = om.image("ihc", levels=[IHC])
    hand = om.roi(image, rect(5, 5, 20, 20), name="tumour")  # the user's own annotation: never touched
    message = _run(om, monkeypatch, tmp_path, Data_Type="Dataset", IDs=[om.dataset], Method="positive-cells",
                   Cell_Expansion=4)
    assert message.startswith("✓ Labels from the marker (positive-cells, dab of the same image) written as ROIs on 1"), message
    assert "Train Model with Task=semantic segmentation, Class_Source=ROI name" in message
    assert "the marker is in this image itself" in message  # honest: Train_Model will see the DAB
    rois = _marker_rois(om, image)
    expected = derive_labels(ArraySlide(IHC), spec=MarkerSpec(method="positive-cells", cell_expansion=4, input="rgb"))
    assert len(rois) == len(expected.objects) > 100
    names = sorted(r.getName().getValue() for r in rois)
    assert set(names) == {"negative", "positive"}
    assert names.count("positive") == expected.counts()["positive_objects"]
    shapes = [s for r in rois for s in r.copyShapes()]
    assert all(isinstance(s, PolygonI) for s in shapes)
    assert all(s.getTextValue().getValue() == r.getName().getValue() for r in rois for s in r.copyShapes())
    [kv] = _kv(om, image)
    assert kv["method"] == "positive-cells" and kv["ROIs"] == str(len(rois)) and kv["classes"] == "negative, positive"
    assert kv["threshold"].startswith(f"{expected.threshold:.6g}") and "Otsu" in kv["threshold"]
    assert kv["dlcore version"] and kv["run id"] and "warning" in kv
    # Train_Model's reader: the ROIs are annotations (not dlcore results), classes from their names
    dataset, _, _ = dataset_from_omero(om.conn, "Image", [image], AnnotationOptions("semantic", margin=0,
                                                                                    classes=("negative", "positive", "tumour")))
    assert dataset.classes == ("negative", "positive", "tumour")
    [sample] = dataset.samples
    x0, y0 = (int(v.split("=")[1]) for v in sample.source.split()[1:3])
    truth = expected.labels[y0:y0 + sample.mask.shape[0], x0:x0 + sample.mask.shape[1]]
    read = np.where(sample.mask == 3, 0, sample.mask)  # the hand-drawn tumour square aside
    agree = (read == truth)[truth > 0].mean()
    assert agree > 0.9, agree  # polygons along the pixel edges, simplified to 256 vertices at most
    assert ((read > 0) == (truth > 0)).mean() > 0.97
    instances, _, _ = dataset_from_omero(om.conn, "Image", [image], AnnotationOptions("instances", margin=0))
    assert int(instances.samples[0].mask.max()) == len(rois) + 1  # every nucleus an object, plus the tumour ROI
    assert om.server.get("Roi", hand) is not None


def test_threshold_masks_are_exact_and_a_rerun_replaces_them(om, monkeypatch, tmp_path):
    image = om.image("ihc", levels=[IHC])
    result = om.roi(image, rect(0, 0, 4, 4), name="nucleus 1", description="dlcore:nuclei-classical:abc")
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[image], Method="threshold", Sigma=2.0)
    assert message.startswith("✓"), message
    first = {r.getId().getValue() for r in _marker_rois(om, image)}
    shapes = [s for r in _marker_rois(om, image) for s in r.copyShapes()]
    assert shapes and all(isinstance(s, MaskI) for s in shapes)
    dataset, _, _ = dataset_from_omero(om.conn, "Image", [image], AnnotationOptions("semantic", margin=512))
    assert dataset.classes == ("positive",)
    [sample] = dataset.samples
    expected = derive_labels(ArraySlide(IHC), spec=MarkerSpec(method="threshold", input="rgb"))
    np.testing.assert_array_equal(sample.mask, expected.labels)  # masks: exact, holes included
    # a re-run with another threshold replaces the ROIs and the key-value pairs: no duplicates
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[image], Method="threshold", Threshold="0.5")
    assert "replaced the earlier labels" in message and f"{len(first)} Roi" in message, message
    second = {r.getId().getValue() for r in _marker_rois(om, image)}
    assert second and not (first & second)
    [kv] = _kv(om, image)
    assert kv["threshold"].startswith("0.5 (given)")
    assert om.server.get("Roi", result) is not None  # another run's results stay
    assert not list((tmp_path / "dlcore-omero-journal").glob("*.json"))


def test_a_second_image_is_registered_and_the_labels_land_on_the_routine_image(om, monkeypatch, tmp_path):
    routine = hematoxylin_rendering(IHC, stain_matrix(IHC, "estimate"))[0:448, 0:448].copy()
    marker = IHC[10:458, 16:464].copy()  # the same section, shifted by (16, 10) pixels
    routine_id = om.image("routine H", levels=[routine])
    marker_id = om.image("DAB re-stain", levels=[marker])
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[routine_id], Marker_Image_ID=marker_id,
                   Method="threshold", Threshold="0.3")
    assert f"dab of Image:{marker_id} DAB re-stain" in message and "registered (affine)" in message, message
    assert "the marker is in this image itself" not in message
    assert _marker_rois(om, routine_id) and not om.server.rois_of(marker_id)
    [kv] = _kv(om, routine_id)
    matrix = np.array(eval(kv["registration matrix"]))  # noqa: S307 - our own JSON list
    np.testing.assert_allclose(matrix[:2, 2], (-16, -10), atol=0.5)
    dataset, _, _ = dataset_from_omero(om.conn, "Image", [routine_id], AnnotationOptions("semantic", margin=448))
    direct = derive_labels(ArraySlide(IHC), spec=MarkerSpec(method="threshold", threshold=0.3, input="rgb"))
    # routine (x, y) is IHC (x, y) and marker (x - 16, y - 10): compare where both images show the section
    truth = direct.labels[10:448, 16:448]
    got = dataset.samples[0].mask[10:448, 16:448]
    assert (got == truth).mean() > 0.97
    mask = dataset.samples[0].mask
    assert not mask[:, :16].any() and not mask[:10].any()  # the marker image does not reach there: no label


def test_refusals_write_nothing(om, monkeypatch, tmp_path):
    image = om.image("ihc", levels=[IHC])
    before = dict(om.server.objects)
    cases = [
        ({"Marker": "channel", "Marker_Channel": "CD3"}, "has no channel 'CD3'"),
        ({"Marker": "channel"}, "Marker=channel needs Marker_Channel"),
        ({"Region": "0,0,900,10"}, "lies outside level 0"),
        ({"Region": "1,2,3"}, "must be four numbers"),
        ({"Marker_Image_ID": 999}, "Marker_Image_ID 999: no such image"),
        ({"Marker_Image_ID": image}, "is also a selected image"),
        ({"Threshold": "high"}, "must be 'otsu' or a number"),
        ({"Max_ROIs": 3, "Method": "positive-cells"}, "more than Max_ROIs=3"),
        ({"Threshold": "50"}, "gives no positive region"),
    ]
    for extra, expected in cases:
        message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[image], **extra)
        assert message.startswith("Nothing was written: ") and expected in message, (extra, message)
    assert om.server.objects == before
    # another user's image in a read-only group
    server = om.server
    group = server.add_group("read-only", "rwr---")
    bob = server.add_user("bob", [group])
    server.members[group].add(om.user)
    theirs = server.add_image([IHC], name="bob's", owner=bob, group=group)
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[theirs])
    assert message.startswith("Nothing was written: you may not add ROIs to Image:"), message
    assert not server.rois_of(theirs)


def test_a_failure_while_writing_deletes_what_was_written(om, monkeypatch, tmp_path):
    first = om.image("one", levels=[IHC])
    second = om.image("two", levels=[IHC[:, ::-1].copy()])
    before = dict(om.server.objects)
    calls = []
    real = ml.key_values

    def failing(result, request, **kw):
        calls.append(1)
        if len(calls) == 2:  # the second image: its ROIs are saved, then this fails
            raise DlcoreError("the server went away")
        return real(result, request, **kw)

    monkeypatch.setattr(ml, "key_values", failing)
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[first, second], Method="instances")
    assert message == "Nothing was written: the server went away", message
    assert om.server.objects == before  # the first image's ROIs and key-values went too
    assert om.server.deleted and not list((tmp_path / "dlcore-omero-journal").glob("*.json"))


def test_request_from_inputs():
    request = ml.request_from_inputs({"Marker": "channel", "Marker_Channel": "CD3", "Method": "positive-cells",
                                      "Nuclei_Channel": "DAPI", "Threshold": "120", "Region": "10,20,300,400",
                                      "Pixel_Classifier": "ihc-dab:dab", "Max_ROIs": 9})
    spec = request.spec
    assert (spec.marker, spec.nuclei_channel, spec.threshold) == ("channel:CD3", "channel:DAPI", 120.0)
    assert (spec.pixel_classifier, spec.classifier_class) == ("ihc-dab", "dab")
    assert request.region == (10, 20, 300, 400) and request.max_rois == 9
    with pytest.raises(DlcoreError, match="Method='magic' must be one of threshold, instances, positive-cells"):
        ml.request_from_inputs({"Method": "magic"})
