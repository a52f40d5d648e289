"""Model tasks through the tile engine: semantic, instances, patch classification, foreign packages."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bioimageio.spec")

from dlcore.config import Config  # noqa: E402
from dlcore.io import open_slide  # noqa: E402
from dlcore.io.local_sink import LocalFolderSink  # noqa: E402
from dlcore.models import registry  # noqa: E402
from dlcore.models.architectures import PatchClassifier, UNet2D  # noqa: E402
from dlcore.models.package import write_package  # noqa: E402
from dlcore.workflows import RunOptions, analyse_slide  # noqa: E402

from test_models_registry import tiny_semantic_package  # noqa: E402


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory) -> Path:
    from dlcore.demo import SyntheticSlideSpec, write_synthetic_slide

    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "demo.ome.tif", SyntheticSlideSpec(width=1024, height=1024))


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(models_dir=tmp_path / "models", device="cpu", batch_size=4)


def _run(slide_path, task, out, **options):
    slide = open_slide(slide_path)
    try:
        return analyse_slide(slide, task, LocalFolderSink(out), options=RunOptions(**options))
    finally:
        slide.close()


def test_semantic_model_on_slide(slide_path, tmp_path, config):
    registry.install(str(tiny_semantic_package(tmp_path / "pkg")), config)
    task = registry.load_task("tiny-semantic", {"batch_size": 3}, config=config)
    assert (task.kind, task.mpp, task.tile_size, task.class_names) == ("semantic", 2.0, 128, ("tumour", "stroma"))
    result = _run(slide_path, task, tmp_path / "out")
    s = result.summary
    assert s["working_mpp"] == 2.0 and s["tiles"] >= 1
    # every pixel of every tile core is a class: the counts add up to the tiles' core pixels
    assert sum(s["class_pixels"].values()) == result.provenance["timings"]["core_pixels"]
    outlines = json.loads(Path(result.outputs["class outlines"]).read_text())
    names = {f["properties"]["name"] for f in outlines["features"]}
    assert names == {n for n, c in s["class_pixels"].items() if n != "background" and c > 0}
    assert set(s["tags"]) == names and len(s["tags"]) == len(names)  # the classes found: the image's tags
    assert result.provenance["task"]["weights_format"] == "torchscript"


def test_instances_from_maps_splits_touching_objects():
    from dlcore.models.instances import instances_from_maps

    yy, xx = np.mgrid[0:64, 0:96]
    d1 = 12 - np.hypot(yy - 32, xx - 34)
    d2 = 12 - np.hypot(yy - 32, xx - 56)
    distance = np.clip(np.maximum(d1, d2), 0, None).astype(np.float32)
    labels = instances_from_maps(distance[None], {"type": "distance_watershed", "fg_threshold": 0.5,
                                                  "seed_threshold": 2.0, "min_distance": 4, "min_size": 10})
    assert labels.max() == 2 and labels[32, 30] != labels[32, 60]
    fg = (distance > 0.5).astype(np.float32)
    boundary = ((distance > 0) & (distance < 3)).astype(np.float32)
    boundary[:, 45] = np.maximum(boundary[:, 45], fg[:, 45])  # the contact line is boundary
    labels = instances_from_maps(np.stack([fg, boundary]), {"type": "fg_boundary_watershed", "fg_threshold": 0.5,
                                                            "boundary_threshold": 0.5, "min_size": 10, "min_seed_size": 5})
    assert labels.max() == 2 and labels[32, 30] != labels[32, 60] and labels[32, 45] > 0


def test_instance_model_with_object_classifier(slide_path, tmp_path, config):
    from dlcore.models.object_classifier import fit_object_classifier

    torch.manual_seed(1)
    kwargs = {"in_channels": 3, "out_channels": 2, "channels": [4, 8], "norm": "none"}
    model = UNet2D(**kwargs)
    image = np.asarray(open_slide(slide_path).read_region(0, 256, 256, 64, 64))
    with torch.no_grad():  # thresholds at this network's median outputs, so that it finds objects
        probs = torch.sigmoid(model(torch.from_numpy(np.moveaxis(image, -1, 0)[None] / 255.0).float()))[0].numpy()
    discs = [np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= r for r in (3, 4, 8, 9)]
    crops = [np.full(d.shape + (3,), v, np.uint8) for d, v in zip(discs, (60, 70, 180, 190))]
    classifier = fit_object_classifier(discs, crops, ["small_dark", "small_dark", "large_pale", "large_pale"])
    package = write_package(
        tmp_path / "pkg", name="tiny-nuclei", description="random fg/boundary U-Net", model=model,
        architecture=("UNet2D", kwargs), test_input=image, cover=image, authors=["T"], tags=["nuclei"],
        card_markdown="# tiny nuclei", dlcore_config={
            "kind": "instances", "mpp": 1.0, "tile_size": 256, "halo": 32,
            "postprocess": {"type": "fg_boundary_watershed", "fg_threshold": float(np.quantile(probs[0], 0.6)),
                            "boundary_threshold": float(np.quantile(probs[1], 0.5)), "min_size": 12},
            "object_classifier": classifier})
    registry.install(str(package), config)
    task = registry.load_task("tiny-nuclei", {"min_size": 15}, config=config)
    assert task.kind == "instances" and task.postprocess["min_size"] == 15
    assert task.class_names == ("large_pale", "small_dark")
    result = _run(slide_path, task, tmp_path / "out")
    n = result.summary["objects"]
    assert n > 0
    with open(result.outputs["measurements"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    assert {r["class"] for r in rows} <= {"large_pale", "small_dark"}
    assert min(int(r["area_px"]) for r in rows) >= 15
    import tifffile

    labels = tifffile.imread(result.outputs["label image"])
    # every object is in the label image, except where a truncated object lost pixels to a neighbour's
    assert n - result.summary["truncated_objects"] <= len(np.unique(labels)) - 1 <= n


def _texture(kind: str, shape, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    if kind == "stripes":
        base = np.where((xx // 4) % 2 == 0, 90, 200)[..., None] * np.array([1.0, 0.5, 0.9])
    else:
        base = np.where(((yy // 6) + (xx // 6)) % 2 == 0, 150, 230)[..., None] * np.array([1.0, 0.75, 0.8])
    return np.clip(base + rng.normal(0, 8, shape + (3,)), 0, 255).astype(np.uint8)


def test_patch_classifier_slide_decision(tmp_path, config):
    import tifffile

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    classes = ["stripes", "checks"]
    model = PatchClassifier(3, 2, width=4, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        x = np.stack([_texture(classes[i % 2], (32, 32), rng) for i in range(16)])
        y = torch.tensor([i % 2 for i in range(16)])
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(np.moveaxis(x, -1, 1) / 255.0).float()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    package = write_package(
        tmp_path / "pkg", name="textures", description="stripes vs checks", model=model,
        architecture=("PatchClassifier", {"in_channels": 3, "n_classes": 2, "width": 4, "depth": 2}),
        test_input=_texture("stripes", (32, 32), rng), cover=_texture("checks", (64, 128), rng), authors=["T"],
        tags=["classification"], card_markdown="# textures", dlcore_config={
            "kind": "patch_classification", "mpp": 0.5, "tile_size": 128, "halo": 0, "patch_size": 32,
            "classes": classes, "colors": [[255, 0, 0], [0, 0, 255]]})
    registry.install(str(package), config)
    image = np.concatenate([_texture("stripes", (256, 192), rng), _texture("checks", (256, 64), rng)], axis=1)
    slide = tmp_path / "two-textures.ome.tif"
    tifffile.imwrite(slide, image, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    task = registry.load_task("textures", {}, config=config)
    result = _run(slide, task, tmp_path / "out", detect_tissue=False)
    s = result.summary
    assert s["tissue_patches"] == 64
    assert s["slide_class"] == "stripes" and s["tags"] == ["stripes"]
    assert s["slide_classification"]["stripes"] > 0.6 > s["slide_classification"]["checks"]
    assert s["patch_counts"]["stripes"] >= 44 and s["patch_counts"]["checks"] >= 12
    heat = np.load(result.outputs["heatmap probabilities"])
    assert heat.shape == (8, 8, 2)
    assert heat[:, :6, 0].mean() > 0.8 and heat[:, 6:, 1].mean() > 0.8
    assert Path(result.outputs["heatmap"]).is_file()
    import tifffile as tf

    labels = tf.imread(result.outputs["label image"])
    assert set(np.unique(labels)) <= {1, 2}


def foreign_package(folder: Path) -> Path:
    """A package built the way ZeroCostDL4Mic / the Model Zoo build them: bioimageio.spec classes,
    torchscript weights only, scale_range pre-processing, sigmoid post-processing, no config.dlcore."""
    from bioimageio.spec import save_bioimageio_package_as_folder
    from bioimageio.spec.model.v0_5 import (Author, AxisId, BatchAxis, ChannelAxis, CiteEntry, FileDescr,
                                            Identifier, InputTensorDescr, IntervalOrRatioDataDescr, LicenseId,
                                            ModelDescr, OutputTensorDescr, ParameterizedSize, ScaleRangeDescr,
                                            ScaleRangeKwargs, SigmoidDescr, SizeReference, SpaceInputAxis,
                                            SpaceOutputAxis, TensorId, TorchscriptWeightsDescr, Version,
                                            WeightsDescr)

    work = folder.parent / f"{folder.name}-src"
    work.mkdir()
    net = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():  # dark pixels (after percentile scaling) are foreground
        net.weight[:] = -4.0
        net.bias[:] = 5.0
    torch.jit.script(net).save(str(work / "model.pt"))
    x = np.random.default_rng(0).integers(0, 255, (1, 3, 64, 64)).astype(np.float32)
    lo, hi = np.percentile(x, 1), np.percentile(x, 99.8)
    with torch.no_grad():
        y = torch.sigmoid(net(torch.from_numpy((x - lo) / (hi - lo + 1e-6)))).numpy()
    np.save(work / "input.npy", x)
    np.save(work / "output.npy", y)
    (work / "README.md").write_text("# Dark-pixel U-Net\n\n## Validation\n\nnone")
    from PIL import Image

    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(work / "cover.png")
    descr = ModelDescr(
        name="ZeroCost style model", description="exported like ZeroCostDL4Mic", authors=[Author(name="Someone")],
        cite=[CiteEntry(text="ZeroCostDL4Mic", doi="10.1038/s41467-021-22518-0")], license=LicenseId("MIT"),
        documentation=FileDescr(source=work / "README.md"), covers=[FileDescr(source=work / "cover.png")], tags=["unet", "segmentation"],
        inputs=[InputTensorDescr(
            id=TensorId("input0"), axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier(c) for c in "rgb"]),
                                         SpaceInputAxis(id=AxisId("y"), size=ParameterizedSize(min=16, step=16)),
                                         SpaceInputAxis(id=AxisId("x"), size=ParameterizedSize(min=16, step=16))],
            test_tensor=FileDescr(source=work / "input.npy"), data=IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[ScaleRangeDescr(kwargs=ScaleRangeKwargs(axes=[AxisId("channel"), AxisId("y"), AxisId("x")],
                                                                   min_percentile=1.0, max_percentile=99.8))])],
        outputs=[OutputTensorDescr(
            id=TensorId("output0"), axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier("nuclei")]),
                                          SpaceOutputAxis(id=AxisId("y"), size=SizeReference(tensor_id=TensorId("input0"), axis_id=AxisId("y"))),
                                          SpaceOutputAxis(id=AxisId("x"), size=SizeReference(tensor_id=TensorId("input0"), axis_id=AxisId("x")))],
            test_tensor=FileDescr(source=work / "output.npy"), data=IntervalOrRatioDataDescr(type="float32"),
            postprocessing=[SigmoidDescr()])],
        weights=WeightsDescr(torchscript=TorchscriptWeightsDescr(source=work / "model.pt",
                                                                 pytorch_version=Version(torch.__version__.split("+")[0]))),
    )
    return save_bioimageio_package_as_folder(descr, output_path=folder)


def test_foreign_package_runs_as_semantic_segmentation(slide_path, tmp_path, config, caplog):
    package = foreign_package(tmp_path / "zc")
    assert registry.validate_package(package).ok
    record = registry.install(str(package), config)
    assert record.name == "zerocost-style-model"
    task = registry.load_task(record.name, {"tile_size": 256}, config=config)
    assert "no config.dlcore" in caplog.text
    assert task.kind == "semantic" and task.class_names == ("nuclei",) and task.mpp is None
    result = _run(slide_path, task, tmp_path / "out")
    px = result.summary["class_pixels"]
    total = px["background"] + px["nuclei"]
    assert 0.01 < px["nuclei"] / total < 0.9  # dark stain is found, glass and pale tissue are not
    prov = result.provenance["task"]
    assert prov["dlcore_config_from_package"] is False
    assert prov["preprocessing"][0]["id"] == "scale_range" or any(p["id"] == "scale_range" for p in prov["preprocessing"])
    assert any("slide_statistics" in p for p in prov["preprocessing"])  # percentiles fixed once per slide
