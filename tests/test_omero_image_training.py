"""Train_Image_Model against the in-process OMERO double: Noise2Void on noisy images, CARE from two datasets
matched by name, translation between the channels of one image, the regions read, and refusals that
write nothing."""
import json
import re
import zipfile
import io

import numpy as np
import pytest
from omero.model import FileAnnotationI

from dlcore.config import Config
from dlcore.errors import InputError, ParameterError
from dlcore.models.registry import list_models, load_task
from dlcore.omero.image_training import (NS_IMAGE_TRAINING, ImageTrainingRequest, image_stem, output_names,
                                         plan_regions, request_from_inputs)
from dlcore.restore.training import ImageTrainingOptions
from test_omero_annotated import Omero, _pyramid, rect
from test_omero_scripts import _exec_script

#: One epoch of two small steps on a small U-Net: the tests check the plumbing, not the model.
FAST = {"Epochs": 1, "Patch_Size": 32,
        "Training_Parameters": "steps_per_epoch=2, batch_size=4, channels=[8, 16], val_crop=64, threads=1"}


def _clean(seed, height=96, width=96):
    yy, xx = np.mgrid[:height, :width]
    return 120 + 70 * np.sin(xx / 6 + seed) * np.cos(yy / 9 - seed)


def _noisy(seed, height=96, width=96, sigma=25):
    rng = np.random.default_rng(seed)
    return np.clip(_clean(seed, height, width) + rng.normal(0, sigma, (height, width)), 0, 255).astype(np.uint8)[..., None]


@pytest.fixture
def om():
    return Omero()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    folder = tmp_path / "registry"
    monkeypatch.setenv("DLCORE_MODELS", str(folder))
    return folder


def _files(om, dataset):
    out = {}
    for a in om.server.dataset_annotations(dataset, FileAnnotationI):
        assert a.getNs().getValue() == NS_IMAGE_TRAINING
        ofile = om.server.get("OriginalFile", a.getFile().getId().getValue())
        out.setdefault(ofile.getName().getValue(), []).append(om.server.file_bytes[ofile.getId().getValue()])
    return out


def _nothing_left(registry):
    return not registry.exists() or [p.name for p in registry.iterdir()] in ([], [".dlcore-registry.lock"])


# -- end to end ------------------------------------------------------------------------------------------
def test_n2v_on_two_noisy_images_registers_a_model_that_predicts(om, registry, monkeypatch, capsys):
    images = [om.image(f"noisy {seed}.tif", levels=[_noisy(seed)]) for seed in (0, 1)]
    inputs = {"Data_Type": "Dataset", "IDs": [om.dataset], "Mode": "n2v", "Model_Name": "denoise-test",
              "Model_Description": "denoises the test images", **FAST}
    fake = _exec_script("Train_Image_Model.py", inputs, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("✓ Trained n2v model denoise-test version 1.0.0 on 2 regions of 2 images (0 -> denoised)"), \
        message
    assert "split by image: training 1 (9216 px), validation 1 (9216 px), held-out test 0" in message
    assert "held-out test: none" in message and "Run Model lists it now as denoise-test: run it" in message
    out = capsys.readouterr().out
    assert "check images: 2/2" in out and "read regions: 2/2" in out and "train: 1/1" in out and message in out

    [record] = list_models(Config(models_dir=registry))
    assert (record.name, record.kind, record.version) == ("denoise-test", "image_prediction", "1.0.0")
    folder = registry / "denoise-test"
    assert json.loads((folder / "owner.json").read_text()) == {"user_id": om.user, "user_name": "alice",
                                                               "group_id": om.group, "group_name": "lab"}
    card = (folder / "README.md").read_text()
    assert f"Image:{images[0]} noisy 0.tif" in card and "denoises the test images" in card
    assert "Train Image Model: Data_Type=Dataset" in card  # how to reproduce it

    files = _files(om, om.dataset)
    assert set(files) == {"denoise-test-1.0.0-model-card.md", "denoise-test-1.0.0-qc-report.zip"}
    assert files["denoise-test-1.0.0-model-card.md"] == [card.encode()]
    names = zipfile.ZipFile(io.BytesIO(files["denoise-test-1.0.0-qc-report.zip"][0])).namelist()
    assert {"README.md", "report/learning_curves.png", "report/qc.json"} <= set(names)
    assert fake.outputs["Model_Card"].getValue().getId().getValue() > 0
    assert fake.outputs["QC_Report"].getValue().getId().getValue() > 0

    task = load_task("denoise-test", config=Config(models_dir=registry))
    assert task.kind == "image" and task.mode == "n2v" and task.output_channels == ("denoised",)
    assert task.mpp == pytest.approx(0.5)  # the images' pixel size at level 0
    window = _noisy(7, 48, 40)
    [prediction] = task.predict([window])
    assert prediction.shape == (1, 48, 40) and prediction.dtype == np.float32 and np.isfinite(prediction).all()

    # the same name again: a new version, its own files, nothing attached twice
    fake = _exec_script("Train_Image_Model.py", inputs, om.conn, monkeypatch)
    assert fake.outputs["Message"].getValue().startswith("✓ Trained n2v model denoise-test-v2 version 2.0.0")
    assert all(len(v) == 1 for v in _files(om, om.dataset).values()) and len(_files(om, om.dataset)) == 4
    assert not om.server.open_stores


def test_care_from_two_datasets_matched_by_name(om, registry, monkeypatch):
    low = om.server.add_dataset("low SNR", owner=om.user, group=om.group)
    high = om.server.add_dataset("high SNR", owner=om.user, group=om.group)
    for seed in range(3):
        clean = np.clip(_clean(seed), 0, 255).astype(np.uint8)[..., None]
        om.server.add_image([_noisy(seed, sigma=40)], name=f"field{seed}.tif", owner=om.user, group=om.group,
                            dataset=low)
        om.server.add_image([clean], name=f"field{seed}.ome.tiff", owner=om.user, group=om.group, dataset=high)
    fake = _exec_script("Train_Image_Model.py", {
        "Data_Type": "Dataset", "IDs": [low, high], "Mode": "care", "Source_Dataset": "low SNR",
        "Target_Dataset": str(high), "Model_Name": "care-test", **FAST}, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("✓ Trained care model care-test version 1.0.0 on 3 regions of 3 image pairs"), message
    assert "held-out test 1 (9216 px)" in message
    assert re.search(r"held-out test \(never trained on\), PSNR dB / SSIM / Pearson r: model [\d.]+ / ", message)
    assert "input (no restoration)" in message and "training mean" in message  # the baselines beside the model
    assert f"attached to Dataset {min(low, high)}, {max(low, high)}" in message

    cfg = __import__("yaml").safe_load((registry / "care-test" / "rdf.yaml").read_text())["config"]["dlcore"]
    assert cfg["mode"] == "care" and cfg["output_channels"] == ["restored"]
    assert "Source_Dataset 'low SNR' and Target_Dataset" in cfg["training_data"]["description"]
    split = cfg["training"]["split"]
    assert sorted(split["train"]["images"] + split["val"]["images"] + split["test"]["images"]) == sorted(
        f"Image:{s} field{k}.tif + Image:{s + 1} field{k}.ome.tiff" for k, s in
        zip(range(3), sorted(om.server.images_in(low))))
    for dataset in (low, high):  # the card and the report on both datasets
        assert set(_files(om, dataset)) == {"care-test-1.0.0-model-card.md", "care-test-1.0.0-qc-report.zip"}
    zipped = zipfile.ZipFile(io.BytesIO(_files(om, low)["care-test-1.0.0-qc-report.zip"][0])).namelist()
    assert {"report/metrics.csv", "report/error_map_1.png"} <= set(zipped)


def test_translate_between_the_channels_of_one_image(om, registry, monkeypatch):
    rng = np.random.default_rng(3)
    bright = _noisy(3, 96, 192, sigma=5)[..., 0].astype(np.float32)
    fluorescence = np.clip(255 - bright + rng.normal(0, 3, bright.shape), 0, 255)  # what the model should learn
    image = om.image("field.tif", levels=[np.stack([bright, fluorescence], -1).astype(np.uint8)],
                     channel_names=["Brightfield", "GFP"])
    fake = _exec_script("Train_Image_Model.py", {
        "Data_Type": "Image", "IDs": [image], "Mode": "translate", "Source_Channels": "brightfield",
        "Target_Channels": "1", "Model_Name": "bf-to-gfp", "Loss": "l1", **FAST}, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("✓ Trained translate model bf-to-gfp version 1.0.0 on 1 regions of 1 images "
                              "(Brightfield -> GFP)"), message
    assert "split vertical strips of one image: training 1 (11136 px), validation 1 (3648 px), held-out test 1 " \
           "(3648 px)" in message
    assert "lists it now as bf-to-gfp with Model_Parameters channel=N (the image's Brightfield channel's index)" in message
    task = load_task("bf-to-gfp", {"channel": 0}, config=Config(models_dir=registry))
    assert task.output_channels == ("GFP",) and task.input_channels == 1
    [prediction] = task.predict([np.stack([bright, fluorescence], -1).astype(np.uint8)[:64, :80]])
    assert prediction.shape == (1, 64, 80)


def test_n2v_learns_from_the_rectangles_drawn_and_holds_one_out(om, registry, monkeypatch):
    image = om.image("noisy.tif", levels=[_noisy(0, 96, 240)])
    rois = [om.roi(image, rect(x, 8, 72, 80)) for x in (0, 80, 160)]
    fake = _exec_script("Train_Image_Model.py", {"Data_Type": "Image", "IDs": [image], "Mode": "n2v",
                                                 "Model_Name": "rectangles", **FAST}, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("✓ Trained n2v model rectangles version 1.0.0 on 3 regions of 1 images"), message
    assert "split by image: training 1 (5760 px), validation 1 (5760 px), held-out test 1 (5760 px)" in message
    assert re.search(r"held-out masked-pixel loss [\d.]+ \(Noise2Void has no clean targets", message)
    card = (registry / "rectangles" / "README.md").read_text()
    assert all(f"Image:{image} noisy.tif ROI {roi}" in card for roi in rois)


# -- what is read ----------------------------------------------------------------------------------------
def test_rectangles_are_the_regions_else_a_bounded_central_crop(om):
    image = om.image()  # 1536 x 1024, levels 1, 1/2, 1/4, 128 px tiles
    om.roi(image, rect(100, 100, 200, 120), name="anything")
    om.roi(image, rect(800, 500, 160, 200))
    bare = om.image("bare")
    options = ImageTrainingOptions(patch_size=32, channels=(8, 16))
    request = ImageTrainingRequest(name="plans", options=options, level=1, max_megapixels=0.01)
    plan = plan_regions(om.conn, [(om.conn.getObject("Image", i), None) for i in (image, bare)], request)
    assert [r.box for r in plan.regions] == [(50, 50, 100, 60), (400, 250, 80, 100), (334, 206, 100, 100)]
    assert [r.name for r in plan.regions][2] == f"Image:{bare} bare centre 100x100"
    assert plan.mpp == pytest.approx(1.0) and plan.source_names == ("0", "1", "2") and plan.image_channels == 3
    assert om.server.calls["RawPixelsStore.getTile"] == 0 and not om.server.open_stores
    from dlcore.omero.image_training import read_regions

    pairs = read_regions(om.conn, plan.regions[:1])
    np.testing.assert_array_equal(pairs[0].source, _pyramid()[1][50:110, 50:150])
    assert pairs[0].target is None


def test_names_and_channels():
    assert image_stem("field01.ome.tiff") == "field01" and image_stem("Field01.TIF") == "Field01"
    assert image_stem("a.b") == "a.b" and image_stem(".tif") == ".tif"
    assert output_names("translate", ("BF",), ("GFP", "RFP"), 2) == ["GFP", "RFP"]
    assert output_names("translate", ("BF",), ("0",), 1) == ["predicted"]  # OMERO's index names are no names
    assert output_names("n2v", ("DAPI", "GFP"), (), 2) == ["DAPI denoised", "GFP denoised"]
    assert output_names("care", ("0",), ("1",), 1) == ["restored"]
    request = request_from_inputs({"Model_Name": " translate-1 ", "Mode": "Translate", "Source_Channels": "BF, 2",
                                   "Target_Channels": "GFP", "Loss": "mode default", "Epochs": 3,
                                   "Training_Parameters": "channels=[8, 16], augment=false"})
    assert (request.name, request.mode, request.pairing) == ("translate-1", "translate", "channels")
    assert request.source_channels == ("BF", "2") and request.options.channels == (8, 16)
    assert request.options.loss is None and request.options.epochs == 3 and request.options.augment is False


# -- refusals --------------------------------------------------------------------------------------------
def test_refusals_write_nothing(om, registry, monkeypatch):
    low = om.server.add_dataset("low", owner=om.user, group=om.group)
    high = om.server.add_dataset("high", owner=om.user, group=om.group)
    for name in ("a.tif", "b.tif"):
        om.server.add_image([_noisy(1)], name=name, owner=om.user, group=om.group, dataset=low)
    om.server.add_image([_noisy(2)], name="a.tif", owner=om.user, group=om.group, dataset=high)
    om.server.add_image([_noisy(2)], name="c.tif", owner=om.user, group=om.group, dataset=high)
    small = om.server.add_dataset("small", owner=om.user, group=om.group)
    om.server.add_image([_noisy(1)], name="a.tif", owner=om.user, group=om.group, dataset=small)
    om.server.add_image([_noisy(2, 96, 80)], name="b.tif", owner=om.user, group=om.group, dataset=small)
    two = om.image("two channels", levels=[np.concatenate([_noisy(4), _noisy(5)], -1)],
                   channel_names=["Brightfield", "GFP"])
    narrow = om.image("narrow", levels=[_noisy(6, 96, 48)])
    tiny = om.image("tiny", levels=[_noisy(7, 24, 200)])
    uint16 = om.image("deep", levels=[_noisy(8).astype(np.uint16)])
    # a read-only group: alice sees carol's images but may not annotate them (nor their dataset)
    shared = om.server.add_group("shared", "rwr---")
    carol = om.server.add_user("carol", [shared])
    om.server.members[shared].add(om.user)
    carols_dataset = om.server.add_dataset("carol's", owner=carol, group=shared)
    carols = [om.server.add_image([_noisy(s)], name=f"c{s}", owner=carol, group=shared, dataset=carols_dataset)
              for s in (1, 2)]
    before = dict(om.server.objects)
    om.server.calls.clear()
    base = {"Model_Name": "refused", **FAST}
    cases = [
        ({"Data_Type": "Dataset", "IDs": [low, high], "Mode": "care", "Source_Dataset": "low", "Target_Dataset": "high"},
         f"unpaired images: Image:{om.server.images_in(low)[1]} b.tif in Dataset:{low} 'low' has no partner in "
         f"Dataset:{high} 'high'; Image:{om.server.images_in(high)[1]} c.tif in Dataset:{high} 'high' has no partner"),
        ({"Data_Type": "Dataset", "IDs": [small, low], "Mode": "care", "Source_Dataset": "small",
          "Target_Dataset": "low"},
         f"Image:{om.server.images_in(small)[1]} b.tif is 80x96 but its partner Image:{om.server.images_in(low)[1]} "
         "b.tif is 96x96: the images of a pair must be the same size"),
        ({"Data_Type": "Image", "IDs": [two], "Mode": "translate", "Source_Channels": "Brightfield",
          "Target_Channels": "DAPI"},
         f"Image:{two} two channels has no channel 'DAPI' (Target_Channels); its channels: 0 Brightfield, 1 GFP"),
        ({"Data_Type": "Dataset", "IDs": [carols_dataset], "Mode": "n2v"},
         f"you may not annotate Dataset {carols_dataset}"),
        ({"Data_Type": "Image", "IDs": carols, "Mode": "n2v"}, f"you may not annotate Dataset {carols_dataset}"),
        ({"Data_Type": "Dataset", "IDs": [low, high], "Mode": "care", "Source_Dataset": "low",
          "Target_Dataset": "elsewhere"}, "Target_Dataset='elsewhere' is none of the selection's datasets"),
        ({"Data_Type": "Image", "IDs": [two], "Mode": "translate", "Source_Channels": "GFP", "Target_Channels": "1"},
         "Source_Channels and Target_Channels name the same channel GFP"),
        ({"Data_Type": "Image", "IDs": [two], "Mode": "care"}, "Mode=care learns from pairs: give Source_Dataset"),
        ({"Data_Type": "Image", "IDs": [two], "Mode": "n2v", "Target_Channels": "GFP"}, "Mode=n2v learns from the noisy"),
        ({"Data_Type": "Image", "IDs": [two], "Mode": "n2v", "Loss": "ssim"}, "ssim"),
        ({"Data_Type": "Image", "IDs": [narrow], "Mode": "n2v"},
         f"there is one region to learn from, so it is split into vertical strips, and Image:{narrow} narrow is 48 "
         "px wide: its training strip (28 px) would be narrower than a 32 px patch"),
        ({"Data_Type": "Image", "IDs": [tiny, narrow], "Mode": "n2v"},
         f"Image:{tiny} tiny: 200x24 pixels at level 0 cannot hold a 32 px training patch"),
        ({"Data_Type": "Image", "IDs": [uint16, narrow], "Mode": "n2v"},
         "the input images' channels or pixel types differ (1 channel(s) of uint16"),
        ({"Data_Type": "Image", "IDs": [narrow, two], "Mode": "n2v", "Resolution_Level": 1},
         f"Image:{narrow} narrow has resolution levels 0..0; choose Resolution_Level 0"),
        ({"Data_Type": "Image", "IDs": [narrow], "Mode": "n2v", "Model_Name": "my model"}, "without spaces"),
        ({"Data_Type": "Image", "IDs": [narrow], "Mode": "n2v", "Training_Parameters": "depth=3"},
         "Training_Parameters: depth unknown"),
        ({"Data_Type": "Image", "IDs": [999], "Mode": "n2v"}, "Image 999: not found"),
    ]
    for extra, expected in cases:
        fake = _exec_script("Train_Image_Model.py", {**base, **extra}, om.conn, monkeypatch)
        message = fake.outputs["Message"].getValue()
        assert message.startswith("Nothing was written: ") and expected in message, (extra, message)
    assert om.server.objects == before  # nothing attached
    assert om.server.calls["RawPixelsStore.getTile"] == 0  # every refusal came before any pixel was read
    assert _nothing_left(registry)  # nothing registered
    assert not om.server.open_stores


def test_a_failed_attachment_removes_the_registered_model(om, registry, monkeypatch):
    import omero_double

    for seed in (0, 1):
        om.image(f"noisy {seed}", levels=[_noisy(seed)])

    def refuse_links(self, objs, ctx=None):
        raise RuntimeError("database is read-only")
    monkeypatch.setattr(omero_double.UpdateService, "saveAndReturnArray", refuse_links)
    before = set(om.server.objects)
    fake = _exec_script("Train_Image_Model.py", {"Data_Type": "Dataset", "IDs": [om.dataset], "Mode": "n2v",
                                                 "Model_Name": "denoise-test", **FAST}, om.conn, monkeypatch)
    message = fake.outputs["Message"].getValue()
    assert message.startswith("Nothing was written: attaching denoise-test-1.0.0-model-card.md") and "read-only" in message
    assert set(om.server.objects) == before  # the uploaded files were deleted again
    assert _nothing_left(registry)


def test_a_shared_model_name_and_a_bad_request_are_refused_first(om, registry, monkeypatch):
    (registry / "shared-one").mkdir(parents=True)  # a model a sysadmin installed (no owner.json)
    (registry / "shared-one" / "rdf.yaml").write_text("name: shared-one\nversion: 1.0.0\ndescription: x\n")
    image = om.image("noisy", levels=[_noisy(0)])
    fake = _exec_script("Train_Image_Model.py", {"Data_Type": "Image", "IDs": [image], "Mode": "n2v",
                                                 "Model_Name": "Shared-One", **FAST}, om.conn, monkeypatch)
    assert "Model_Name 'shared-one' is the name of a shared model" in fake.outputs["Message"].getValue()
    assert [p.name for p in registry.iterdir()] == ["shared-one"]
    with pytest.raises(ParameterError, match="Source_Dataset and Target_Dataset are both 'x'"):
        ImageTrainingRequest(name="model", mode="care", source_dataset="x", target_dataset="x")
    with pytest.raises(ParameterError, match="needs both Source_Dataset and Target_Dataset"):
        ImageTrainingRequest(name="model", mode="translate", source_dataset="x")
    with pytest.raises(ParameterError, match="channel GFP is both in Source_Channels and Target_Channels"):
        ImageTrainingRequest(name="model", mode="translate", source_channels=("GFP",), target_channels=("GFP",))
    with pytest.raises(InputError, match="Source_Dataset='x' is none of the selection's datasets"):
        from dlcore.omero.image_training import dataset_pairs

        dataset_pairs(om.conn, "Dataset", [om.dataset], [], ImageTrainingRequest(
            name="model", mode="care", source_dataset="x", target_dataset="annotated"))


def test_the_pairing_datasets_are_found_in_the_selection_by_name_or_id(om):
    from dlcore.omero.image_training import dataset_pairs
    from dlcore.omero.workflows import resolve_images

    project = om.server.add_project("experiment", owner=om.user, group=om.group)
    low = om.server.add_dataset("Low", owner=om.user, group=om.group, project=project)
    high = om.server.add_dataset("High", owner=om.user, group=om.group, project=project)
    sources = [om.server.add_image([_noisy(s)], name=f"f{s}.czi", owner=om.user, group=om.group, dataset=low)
               for s in (1, 2)]
    targets = [om.server.add_image([_noisy(s)], name=f"f{s}.ome.tif", owner=om.user, group=om.group, dataset=high)
               for s in (2, 1)]
    expected = [(sources[0], targets[1]), (sources[1], targets[0])]
    request = ImageTrainingRequest(name="pairs", mode="care", source_dataset="low", target_dataset=str(high))
    for data_type, ids in (("Project", [project]), ("Dataset", [low, high]), ("Image", [sources[0], targets[0]])):
        images = resolve_images(om.conn, data_type, ids)
        pairs = dataset_pairs(om.conn, data_type, ids, images, request)
        assert [(int(s.getId()), int(t.getId())) for s, t in pairs] == expected, data_type
    images = resolve_images(om.conn, "Dataset", [low])
    with pytest.raises(InputError, match=rf"Target_Dataset='{high}' is none of the selection's datasets \(Dataset:{low}"):
        dataset_pairs(om.conn, "Dataset", [low], images, request)
    twin = om.server.add_dataset("Low", owner=om.user, group=om.group, project=project)
    images = resolve_images(om.conn, "Project", [project])
    with pytest.raises(InputError, match="Source_Dataset='Low' names 2 datasets .* give its ID instead"):
        dataset_pairs(om.conn, "Project", [project], images, ImageTrainingRequest(
            name="pairs", mode="care", source_dataset="Low", target_dataset="High"))
    om.server.add_image([_noisy(3)], name="f1.tif", owner=om.user, group=om.group, dataset=twin)
    om.server.add_image([_noisy(3)], name="f1.png", owner=om.user, group=om.group, dataset=twin)
    with pytest.raises(InputError, match=f"Dataset:{twin} 'Low' has two images named 'f1'"):
        dataset_pairs(om.conn, "Project", [project], images, ImageTrainingRequest(
            name="pairs", mode="care", source_dataset=str(twin), target_dataset="High"))


def test_training_ends_before_the_scripts_session_does(om, registry, monkeypatch):
    from dlcore.errors import OmeroError
    from dlcore.omero.image_training import _bounded_by_session

    options = ImageTrainingOptions(patch_size=32)
    assert _bounded_by_session(om.conn, options) is options  # no time to live: no limit
    om.server.session_ttl_ms = 1_000_000
    bounded = _bounded_by_session(om.server.connect(om.user, om.group), options)
    assert 1000 - 240 - 5 < bounded.max_seconds <= 1000 - 240
    om.server.session_ttl_ms = 200_000
    with pytest.raises(OmeroError, match="leaves 200 s, too little to train"):
        _bounded_by_session(om.server.connect(om.user, om.group), options)
    image = om.image("noisy", levels=[_noisy(0, 96, 200)])
    om.server.calls.clear()
    fake = _exec_script("Train_Image_Model.py", {"Data_Type": "Image", "IDs": [image], "Mode": "n2v",
                                                 "Model_Name": "timed-out", **FAST},
                        om.server.connect(om.user, om.group), monkeypatch)
    assert "Nothing was written: the script's time limit (omero.scripts.timeout) leaves" in \
        fake.outputs["Message"].getValue()
    assert om.server.calls["RawPixelsStore.getTile"] == 0 and _nothing_left(registry)
