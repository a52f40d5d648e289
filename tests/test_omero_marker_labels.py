"""Labels_From_Marker against the in-process OMERO double: ROIs Train_Model reads back as the right classes,
a re-run that replaces, a second image registered by ID, refusals and failures that leave nothing; the
haematoxylin-only training image made beside the source (its pixels, ROIs, provenance, re-runs, failures, and
dataset-level runs that skip it)."""
import numpy as np
import pytest
from omero.model import MapAnnotationI, MaskI, PolygonI
from skimage import data
from skimage.color import rgb2hed

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
                   Cell_Expansion=4, Training_Image="source image")
    assert message.startswith("✓ Labels from the marker (positive-cells, dab of the same image) written as ROIs on 1 "
                              "image(s):"), message
    assert om.server.images_in(om.dataset) == [image]  # no rendering made
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
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[image], Method="threshold", Sigma=2.0,
                   Training_Image="source image")
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
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[image], Method="threshold", Threshold="0.5",
                   Training_Image="source image")
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
        ({"Training_Image": "magic"}, "Training_Image='magic' must be one of auto, haematoxylin rendering"),
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
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[first, second], Method="instances",
                   Training_Image="source image")
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


# -- the haematoxylin-only training image ----------------------------------------------------------
REGION = (40, 60, 400, 380)  # x, y, width, height: the rendering's (0, 0) is the source's (40, 60)


def _description(om, image_id):
    d = om.server.get("Image", image_id).getDescription()
    return d.getValue() if d is not None else None


def _renderings(om):
    return [i.getId().getValue() for i in om.server.all("Image")
            if ml.is_training_rendering(_description(om, i.getId().getValue()))]


def _pixels(om, image_id):
    return om.server.pixels[om.server.pixels_of(image_id)][0]


def test_the_labels_go_on_a_haematoxylin_rendering_beside_the_source_that_train_model_reads(om, monkeypatch, tmp_path):
    source = om.image("ihc", levels=[IHC])
    hand = om.roi(source, rect(5, 5, 20, 20), name="tumour")  # the user's own annotation: never touched
    message = _run(om, monkeypatch, tmp_path, Data_Type="Dataset", IDs=[om.dataset], Method="positive-cells",
                   Region=",".join(map(str, REGION)))  # Training_Image=auto: DAB of the image itself
    [rendering] = _renderings(om)
    assert message.startswith("✓ Labels from the marker (positive-cells, dab of the same image) written as ROIs on 1 "
                              "haematoxylin-only training image(s) beside the selected image(s):"), message
    assert f"Image:{source} ihc -> Image:{rendering} ihc [haematoxylin only, for training] in Dataset {om.dataset}" in message
    assert f"Train Model with Data_Type=Image, IDs={rendering}, Task=semantic segmentation" in message
    assert "the marker is in this image itself" not in message
    # beside the source: same dataset and group, named, described, uint8 RGB, the region's size and pixel size
    assert sorted(om.server.images_in(om.dataset)) == [source, rendering]
    image = om.server.get("Image", rendering)
    assert image.getName().getValue() == "ihc [haematoxylin only, for training]"
    assert _description(om, rendering).startswith(f"{ml.RENDERING_DESCRIPTION}: haematoxylin only, of Image:{source} "
                                                  "region 40,60,400,380")
    assert om.server.owner_group(image) == (om.user, om.group)
    pixels = om.server.get("Pixels", om.server.pixels_of(rendering))
    assert pixels.getPixelsType().getValue().getValue() == "uint8" and pixels.getPhysicalSizeX().getValue() == 0.5
    x, y, w, h = REGION
    region = IHC[y:y + h, x:x + w]
    stored = _pixels(om, rendering)
    assert stored.shape == (h, w, 3)
    # the pixels are the haematoxylin-only rendering of the region: no DAB left
    np.testing.assert_array_equal(stored, hematoxylin_rendering(region, stain_matrix(region, "estimate")))
    dab_source, dab_rendering = rgb2hed(region)[..., 2], rgb2hed(stored)[..., 2]
    brown = dab_source > np.percentile(dab_source, 95)
    assert dab_rendering[brown].mean() < 0.1 * dab_source[brown].mean(), (dab_rendering[brown].mean(),
                                                                         dab_source[brown].mean())
    assert om.server.rendering[(om.server.pixels_of(rendering), om.user)]["channels"][0]["window"] == (0.0, 255.0)
    # the ROIs are on the rendering, in its pixels; the source keeps only the user's own
    assert not _marker_rois(om, source) and om.server.get("Roi", hand) is not None
    rois = _marker_rois(om, rendering)
    spec = MarkerSpec(method="positive-cells", input="hematoxylin")
    expected = derive_labels(ArraySlide(IHC), spec=spec, region=REGION)
    assert len(rois) == len(expected.objects) > 50
    assert sorted(r.getName().getValue() for r in rois).count("positive") == expected.counts()["positive_objects"]
    # provenance on the rendering, a pointer on the source
    [kv] = _kv(om, rendering)
    assert kv["source image"] == f"Image:{source} ihc" and kv["region"] == "40,60,400,380"
    assert kv["rendering"].startswith("haematoxylin only") and kv["method"] == "positive-cells"
    assert kv["marker"] == "dab of the same image" and kv["ROIs"] == str(len(rois)) and "warning" not in kv
    assert '"input": "hematoxylin"' in kv["parameters"] and kv["origin"].endswith("pixel (40, 60) of the source image")
    [pointer] = _kv(om, source)
    assert pointer[ml.TRAINING_IMAGE_KEY] == f"Image:{rendering}" and pointer["run id"] == kv["run id"]
    # Train_Model's reader: the rendering's pixels, and the labels where the marker put them
    dataset, _, _ = dataset_from_omero(om.conn, "Image", [rendering],
                                       AnnotationOptions("semantic", margin=0, classes=("negative", "positive")))
    [sample] = dataset.samples
    x0, y0 = (int(v.split("=")[1]) for v in sample.source.split()[1:3])
    sh, sw = sample.mask.shape
    np.testing.assert_array_equal(sample.image, stored[y0:y0 + sh, x0:x0 + sw])
    truth = expected.labels[y0:y0 + sh, x0:x0 + sw]
    assert (sample.mask == truth)[truth > 0].mean() > 0.9
    assert ((sample.mask > 0) == (truth > 0)).mean() > 0.97
    # the whole Dataset selected for training: the source (marker pixels, no labels) is left out, said so
    whole, images, notes = dataset_from_omero(om.conn, "Dataset", [om.dataset],
                                              AnnotationOptions("semantic", margin=0, classes=("negative", "positive")))
    assert [int(i.getId()) for i in images] == [rendering] and len(whole.samples) == 1
    np.testing.assert_array_equal(whole.samples[0].mask, sample.mask)
    assert notes == [f"Image:{source} ihc left out: its haematoxylin-only training image Image:{rendering} holds its "
                     "marker labels (trained on instead)"]
    assert not list((tmp_path / "dlcore-omero-journal").glob("*.json"))


def test_a_rerun_replaces_the_rendering_and_its_rois_and_the_source_image_choice_replaces_it_too(om, monkeypatch,
                                                                                                  tmp_path):
    source = om.image("ihc", levels=[IHC])
    _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[source], Method="threshold")
    [first] = _renderings(om)
    first_rois = {r.getId().getValue() for r in _marker_rois(om, first)}
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[source], Method="threshold", Threshold="0.3")
    assert "replaced the earlier labels" in message and "1 Image" in message, message
    [second] = _renderings(om)
    assert second != first and om.server.get("Image", first) is None and om.server.pixels_of(second)
    assert not any(om.server.get("Roi", r) for r in first_rois) and _marker_rois(om, second)
    assert sorted(om.server.images_in(om.dataset)) == [source, second]
    [pointer] = _kv(om, source)  # one pointer, naming the new rendering
    assert pointer[ml.TRAINING_IMAGE_KEY] == f"Image:{second}"
    [kv] = _kv(om, second)
    assert kv["threshold"].startswith("0.3 (given)")
    # back to the source image: the rendering and its ROIs go, the ROIs are on the source as before
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[source], Method="threshold",
                   Training_Image="source image")
    assert message.startswith("✓ Labels from the marker (threshold, dab of the same image) written as ROIs on 1 "
                              "image(s):") and "the marker is in this image itself" in message, message
    assert not _renderings(om) and om.server.images_in(om.dataset) == [source]
    assert _marker_rois(om, source)
    [kv] = _kv(om, source)
    assert ml.TRAINING_IMAGE_KEY not in kv and "warning" in kv
    assert not list((tmp_path / "dlcore-omero-journal").glob("*.json"))


@pytest.mark.parametrize("where", ["tiles", "key-values"])
def test_a_failure_midway_leaves_nothing_new_and_keeps_the_earlier_rendering(om, monkeypatch, tmp_path, where):
    from dlcore.omero import image_output

    sources = [om.image("one", levels=[IHC]), om.image("two", levels=[IHC[:, ::-1].copy()])]
    _run(om, monkeypatch, tmp_path, Data_Type="Dataset", IDs=[om.dataset], Method="instances")
    earlier = sorted(_renderings(om))
    assert len(earlier) == 2 and all(_kv(om, i)[0][ml.TRAINING_IMAGE_KEY].startswith("Image:") for i in sources)
    before = dict(om.server.objects)
    stored = {i: _pixels(om, i).copy() for i in earlier}
    calls = []
    if where == "tiles":  # the second rendering fails halfway through its pixels
        real = image_output.write_new_image

        def failing(conn, read, **kw):
            calls.append(1)
            if len(calls) < 2:
                return real(conn, read, **kw)

            def broken(c, x, y, w, h):  # the first channel is written, then the server goes
                if c > 0:
                    raise DlcoreError("the server went away")
                return read(c, x, y, w, h)
            return real(conn, broken, **kw)

        monkeypatch.setattr(image_output, "write_new_image", failing)
    else:  # the second rendering and its ROIs are saved, then this fails
        real = ml.key_values

        def failing(result, request, **kw):
            calls.append(1)
            if len(calls) == 2:
                raise DlcoreError("the server went away")
            return real(result, request, **kw)

        monkeypatch.setattr(ml, "key_values", failing)
    message = _run(om, monkeypatch, tmp_path, Data_Type="Dataset", IDs=[om.dataset], Method="instances", Sigma=1.0)
    assert message == "Nothing was written: the server went away", message
    assert len(calls) == 2
    assert om.server.objects == before  # the new renderings, their ROIs and pairs went; the earlier ones stay
    assert sorted(_renderings(om)) == earlier and all(_marker_rois(om, i) for i in earlier)
    for i in earlier:
        np.testing.assert_array_equal(_pixels(om, i), stored[i])
    assert not list((tmp_path / "dlcore-omero-journal").glob("*.json"))


def test_dataset_level_runs_skip_renderings_and_a_selected_rendering_is_refused(om, monkeypatch, tmp_path):
    from dlcore.omero.workflows import resolve_images

    source = om.image("ihc", levels=[IHC])
    _run(om, monkeypatch, tmp_path, Data_Type="Dataset", IDs=[om.dataset], Method="threshold")
    [rendering] = _renderings(om)
    skipped = resolve_images(om.conn, "Dataset", [om.dataset], skip_training_renderings=True)
    assert [int(i.getId()) for i in skipped] == [source]  # Run_Model and Labels_From_Marker
    assert sorted(int(i.getId()) for i in resolve_images(om.conn, "Dataset", [om.dataset])) == [source, rendering]
    message = _run(om, monkeypatch, tmp_path, Data_Type="Dataset", IDs=[om.dataset], Method="threshold")
    assert "written as ROIs on 1 haematoxylin-only training image(s)" in message, message
    [again] = _renderings(om)  # the rendering was not taken for a source: one rendering, of the source
    assert sorted(om.server.images_in(om.dataset)) == [source, again]
    assert _description(om, again).startswith(f"{ml.RENDERING_DESCRIPTION}: haematoxylin only, of Image:{source} ")
    before = dict(om.server.objects)
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[again], Method="threshold")
    assert message.startswith(f"Nothing was written: Image:{again} ihc [haematoxylin only, for training] is a "
                              "haematoxylin-only training image"), message
    assert om.server.objects == before


def test_a_rendering_of_a_fluorescence_image_is_refused_and_auto_follows_the_marker(om, monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    fluo = om.image("fluo", levels=[rng.integers(0, 4000, (128, 128, 2)).astype(np.uint16)],
                    channel_names=["DAPI", "CD3"])
    before = dict(om.server.objects)
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[fluo], Marker="channel", Marker_Channel="CD3",
                   Training_Image="haematoxylin rendering")
    assert message == (f"Nothing was written: Image:{fluo} fluo: Training_Image=haematoxylin rendering needs 8-bit RGB "
                       "brightfield images, but it has 2 uint16 channel(s); choose Training_Image=source image"), message
    assert om.server.objects == before
    request = ml.request_from_inputs
    assert request({"Marker": "dab"}).rendering and request({"Marker": "eosin"}).rendering
    assert not request({"Marker": "dab", "Marker_Image_ID": 7}).rendering  # the routine image is marker-free
    assert not request({"Marker": "channel", "Marker_Channel": "CD3"}).rendering
    assert not request({"Marker": "hematoxylin"}).rendering
    assert not request({"Marker": "dab", "Training_Image": "source image"}).rendering
    assert request({"Marker": "dab", "Marker_Image_ID": 7, "Training_Image": "haematoxylin rendering"}).rendering


def test_a_killed_runs_rendering_is_deleted_by_the_next_run(om, monkeypatch, tmp_path):
    source = om.image("ihc", levels=[IHC])

    def killed(result, request, **kw):  # the process dies after the rendering and its ROIs were saved
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ml, "key_values", killed)
        m.setattr(ml, "_abort", lambda conn, created, journals, error: [j.release() for j in journals])
        with pytest.raises(KeyboardInterrupt):
            _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[source], Method="threshold")
    [orphan] = _renderings(om)  # unlinked, listed in the node's journal
    assert om.server.images_in(om.dataset) == [source] and _marker_rois(om, orphan)
    message = _run(om, monkeypatch, tmp_path, Data_Type="Image", IDs=[source], Method="threshold")
    assert "left by a killed run: 1 Image" in message, message
    [rendering] = _renderings(om)
    assert rendering != orphan and om.server.get("Image", orphan) is None
    assert sorted(om.server.images_in(om.dataset)) == [source, rendering]
    assert not list((tmp_path / "dlcore-omero-journal").glob("*.json"))
