"""`dlcore export-dataset --format ome-zarr`: NGFF images with image-label masks, checked with the kept
reader (ome-zarr-py), read back identical by load_exported, and the OME-TIFF default unchanged."""
import json

import numpy as np
import pytest

from dlcore.train.data import AnnotatedDataset, Sample, export_dataset, load_exported

ome_zarr = pytest.importorskip("ome_zarr")


def _semantic() -> AnnotatedDataset:
    rng = np.random.default_rng(0)
    samples = []
    for i, (h, w) in enumerate(((70, 90), (33, 40))):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
        samples.append(Sample(image, mask, None, f"slide-{i}.svs", f"g{i}", 0.25 * (i + 1)))
    return AnnotatedDataset(tuple(samples), "semantic", ("tumour", "stroma"))


def _instances() -> AnnotatedDataset:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4000, (48, 64, 2), dtype=np.uint16)  # two fluorescence channels
    mask = np.zeros((48, 64), np.int32)
    for i in range(1, 8):
        y, x = rng.integers(0, 40, 2)
        mask[y:y + 6, x:x + 6] = i
    return AnnotatedDataset((Sample(image, mask, None, "cells.tif", "g0", None),), "instances", ("nucleus",))


def _nodes(path):
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(str(path), fmt=FormatV04()))())
    image = next(n for n in nodes if n.load(Multiscales) and not n.load(Label))
    label = next(n for n in nodes if n.load(Label))
    return image, label


def test_semantic_export_is_ngff_the_kept_reader_reads(tmp_path):
    dataset = _semantic()
    out = export_dataset(dataset, tmp_path / "out", image_format="ome-zarr")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["image_format"] == "ome-zarr" and not (out / "labels").exists()
    for row, sample in zip(meta["samples"], dataset.samples):
        assert row["image"].endswith(".ome.zarr") and row["labels"] == f"{row['image']}/labels/semantic"
        image, label = _nodes(out / row["image"])
        assert [a["name"] for a in image.metadata["axes"]] == ["c", "y", "x"]
        np.testing.assert_array_equal(np.asarray(image.data[0]), np.moveaxis(sample.image, -1, 0))
        assert image.metadata["channel_names"] == ["red", "green", "blue"]
        scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
        assert scales[0] == [1.0, sample.mpp, sample.mpp] and scales[1] == [1.0, 2 * sample.mpp, 2 * sample.mpp]
        assert image.metadata["axes"][-1]["unit"] == "micrometer" and len(image.data) >= 2
        np.testing.assert_array_equal(np.asarray(label.data[0]), sample.mask)
        assert label.metadata["properties"] == {0: {"class": "background/unlabelled"}, 1: {"class": "tumour"},
                                                2: {"class": "stroma"}}
        assert set(label.metadata["color"]) == {0, 1, 2}
        assert label.metadata["coordinateTransformations"][0][0]["scale"] == [sample.mpp, sample.mpp]
        level1 = np.asarray(label.data[1])  # nearest: only values of the mask, never a blend
        np.testing.assert_array_equal(level1, sample.mask[::2, ::2])
    back = load_exported(out)
    assert back.task == "semantic" and back.classes == dataset.classes
    for a, b in zip(back.samples, dataset.samples):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.mask.dtype == b.mask.dtype and (a.mpp, a.source, a.group) == (b.mpp, b.source, b.group)


def test_instance_export_lists_object_ids_and_reads_back(tmp_path):
    dataset = _instances()
    out = export_dataset(dataset, tmp_path / "out", image_format="ome-zarr")
    row = json.loads((out / "dataset.json").read_text())["samples"][0]
    image, label = _nodes(out / row["image"])
    sample = dataset.samples[0]
    np.testing.assert_array_equal(np.asarray(image.data[0]), np.moveaxis(sample.image, -1, 0))
    assert image.metadata["channel_names"] == ["channel_0", "channel_1"]
    assert "unit" not in image.metadata["axes"][-1]  # no pixel size known: none invented
    np.testing.assert_array_equal(np.asarray(label.data[0]), sample.mask)
    assert sorted(label.metadata["properties"]) == list(range(1, 8))
    assert label.metadata["properties"][3] == {"class": "nucleus"}
    back = load_exported(out).samples[0]
    np.testing.assert_array_equal(back.image, sample.image)
    np.testing.assert_array_equal(back.mask, sample.mask)
    assert back.mpp is None and back.mask.dtype == np.int32


def test_read_ome_zarr_gives_channel_names_and_pixel_size(tmp_path):
    from dlcore.errors import InputError
    from dlcore.train.ome_zarr_export import read_ome_zarr, write_ome_zarr

    image = np.zeros((20, 20, 3), np.uint8)
    write_ome_zarr(tmp_path / "a.ome.zarr", image, mpp=0.5, channel_names=("H", "E", "DAB"))
    stored = read_ome_zarr(tmp_path / "a.ome.zarr")
    assert stored.channel_names == ("H", "E", "DAB") and stored.mpp == 0.5 and stored.mask is None
    with pytest.raises(InputError, match="already exists"):
        write_ome_zarr(tmp_path / "a.ome.zarr", image)
    with pytest.raises(InputError, match="name 2 channels"):
        write_ome_zarr(tmp_path / "b.ome.zarr", image, channel_names=("a", "b"))


def test_default_stays_ome_tiff_and_the_format_is_recorded(tmp_path):
    from dlcore.errors import ParameterError

    out = export_dataset(_semantic(), tmp_path / "out")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["image_format"] == "ome-tiff"
    assert [r["image"] for r in meta["samples"]] == ["images/00000_slide-0.ome.tif", "images/00001_slide-1.ome.tif"]
    assert (out / "labels" / "00000_slide-0.ome.tif").is_file()
    with pytest.raises(ParameterError, match="image_format"):
        export_dataset(_semantic(), tmp_path / "o2", image_format="zarr")


def test_command_exports_ome_zarr_and_dlcore_train_reads_it(tmp_path, capsys):
    from skimage.io import imsave

    from dlcore.cli import main

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    (src / "classes.txt").write_text("tumour\nstroma\n")
    rng = np.random.default_rng(2)
    for i in range(5):
        image = np.full((96, 96, 3), 230, np.uint8)
        mask = np.zeros((96, 96), np.uint8)
        y, x = rng.integers(4, 70, 2)
        mask[y:y + 20, x:x + 20] = 1
        mask[:, 80:] = 2
        image[mask == 1] = (120, 60, 140)
        image[mask == 2] = (220, 140, 180)
        imsave(src / "images" / f"im{i}.png", image, check_contrast=False)
        imsave(src / "labels" / f"im{i}.png", mask, check_contrast=False)
    out = tmp_path / "out"
    assert main(["export-dataset", str(src), str(out), "--format", "ome-zarr", "--mpp", "0.5"]) == 0
    assert (out / "images" / "00000_im0.ome.zarr" / "labels" / "semantic" / ".zattrs").is_file()
    assert "OME-Zarr" in (out / "README.md").read_text()
    back = load_exported(out)
    assert back.task == "semantic" and back.classes == ("tumour", "stroma") and back.samples[0].mpp == 0.5
    capsys.readouterr()
    assert main(["train", str(out), "--task", "semantic", "--name", "tiny-zarr", "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "2", "--patch-size", "32", "--threads", "1",
                 "--no-augment", "--registry", str(tmp_path / "registry")]) == 0
    assert (tmp_path / "registry" / "tiny-zarr" / "rdf.yaml").is_file()
