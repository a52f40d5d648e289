"""Datasets: folder loaders, validation, and the archive export round trip."""
import json

import numpy as np
import pytest

from dlcore.errors import InputError
from dlcore.train.data import AnnotatedDataset, Sample, export_dataset, load_exported, load_folder


def _rgb(rng, h=24, w=32):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_export_round_trip_identical_arrays(tmp_path):
    rng = np.random.default_rng(0)
    samples = (
        Sample(_rgb(rng), rng.integers(0, 3, (24, 32)).astype(np.int32), None, "Image:12", "slide-1", 0.25),
        Sample(rng.random((20, 16, 2)).astype(np.float32), rng.integers(0, 70000, (20, 16)).astype(np.uint32),
               None, "/data/b.tif", "slide-2", None),
        Sample(rng.integers(0, 4096, (10, 12, 1), dtype=np.uint16), np.zeros((10, 12), np.uint8), None,
               "c.png", "slide-1", 0.5),
    )
    ds = AnnotatedDataset(samples, "instances", ("nucleus",))
    out = export_dataset(ds, tmp_path / "archive", description="test")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["task"] == "instances" and len(meta["samples"]) == 3
    assert (out / "samples.csv").is_file() and (out / "README.md").is_file()
    back = load_exported(out)
    assert (back.task, back.classes) == (ds.task, ds.classes)
    for a, b in zip(ds.samples, back.samples):
        assert a.image.dtype == b.image.dtype and np.array_equal(a.image, b.image)
        assert a.mask.dtype == b.mask.dtype and np.array_equal(a.mask, b.mask)
        assert (a.source, a.group, a.mpp, a.label) == (b.source, b.group, b.mpp, b.label)
    # the archive is plain OME-TIFF: another reader sees the RGB image
    import tifffile

    assert tifffile.imread(out / meta["samples"][0]["image"]).shape == (24, 32, 3)
    with pytest.raises(InputError, match="not empty"):
        export_dataset(ds, out)


def test_classification_round_trip_and_class_folders(tmp_path):
    from skimage.io import imsave

    rng = np.random.default_rng(1)
    for cls in ("tumour", "normal"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(2):
            imsave(tmp_path / "src" / cls / f"{cls}{i}.png", _rgb(rng, 16, 16), check_contrast=False)
    ds = load_folder(tmp_path / "src")
    assert ds.task == "classification" and ds.classes == ("normal", "tumour")
    assert [s.label for s in ds.samples] == ["normal", "normal", "tumour", "tumour"]
    back = load_folder(export_dataset(ds, tmp_path / "out"))  # load_folder recognises an archive
    assert all(np.array_equal(a.image, b.image) and a.label == b.label for a, b in zip(ds.samples, back.samples))


def test_images_labels_folder_with_groups(tmp_path):
    import tifffile
    from skimage.io import imsave

    rng = np.random.default_rng(2)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        imsave(tmp_path / "images" / f"{name}.png", _rgb(rng), check_contrast=False)
        tifffile.imwrite(tmp_path / "labels" / f"{name}.tif", rng.integers(0, 3, (24, 32)).astype(np.uint16))
    (tmp_path / "groups.csv").write_text("image,group\na,patient1\nb,patient1\n")
    (tmp_path / "classes.txt").write_text("tumour\nstroma\n")
    ds = load_folder(tmp_path, task="semantic")
    assert ds.classes == ("tumour", "stroma") and ds.groups == ["patient1", "patient1"]
    assert ds.samples[0].mask.shape == (24, 32)


def test_validation_errors():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match="mask shape"):
        AnnotatedDataset((Sample(img, np.zeros((4, 4), int), None, "x", "g"),), "semantic", ("a",))
    with pytest.raises(InputError, match="no class"):
        AnnotatedDataset((Sample(img, np.full((8, 8), 3), None, "x", "g"),), "semantic", ("a", "b"))
    with pytest.raises(InputError, match="not one of"):
        AnnotatedDataset((Sample(img, None, "c", "x", "g"),), "classification", ("a", "b"))


def test_export_dataset_command(tmp_path, capsys):
    from skimage.io import imsave

    from dlcore.cli import main

    rng = np.random.default_rng(3)
    for cls in ("a", "b"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        imsave(tmp_path / "src" / cls / "x.png", _rgb(rng, 8, 8), check_contrast=False)
    assert main(["export-dataset", str(tmp_path / "src"), str(tmp_path / "out"), "--mpp", "0.5"]) == 0
    back = load_exported(tmp_path / "out")
    assert [s.label for s in back.samples] == ["a", "b"] and back.samples[0].mpp == 0.5
    assert main(["export-dataset", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, dlcore.train, dlcore.train.cli, dlcore.train.data, dlcore.train.api, dlcore.train.metrics; "
            "bad = [m for m in ('torch', 'monai', 'matplotlib') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
