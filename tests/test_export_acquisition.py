"""Pixel size, channel names, stain and objective magnification carried from the source images through
`dlcore export-dataset` (OME-TIFF and OME-Zarr) into the archive metadata and back; each exported OME-TIFF
is read by kept readers: tifffile, and ome-types validating its OME-XML against the OME schema."""
import csv
import json

import numpy as np
import pytest
import tifffile
from ome_types import from_tiff

from dlcore.cli import main
from dlcore.errors import ParameterError
from dlcore.io.acquisition import Acquisition, read_acquisition
from dlcore.train.data import load_exported, load_folder

FLUO = ("DAPI", "CD3", "CD8")


def _instances(shape, seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint16)
    for i in range(1, 9):
        y, x = rng.integers(4, shape[0] - 12), rng.integers(4, shape[1] - 12)
        mask[y:y + 8, x:x + 8] = i
    return mask


def _fluorescence_folder(root, *, n=2):
    """Three-channel uint16 OME-TIFFs as a scanner exports them: 0.325 µm, named channels, a 20x objective
    and a stain key-value; each with an instance mask."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        image = np.random.default_rng(i).integers(0, 4000, (3, 64, 80), dtype=np.uint16)
        tifffile.imwrite(root / "images" / f"field{i}.ome.tif", image, ome=True, photometric="minisblack",
                         metadata={"axes": "CYX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325,
                                   "Channel": {"Name": list(FLUO)},
                                   "MapAnnotation": {"Value": {"Staining": "mIF DAPI/CD3/CD8"}}})
        path = root / "images" / f"field{i}.ome.tif"
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
        from dlcore.io.acquisition import add_to_ome_xml

        tifffile.tiffcomment(path, add_to_ome_xml(xml, magnification=20).encode())
        tifffile.imwrite(root / "labels" / f"field{i}.tif", _instances((64, 80), i))
    return root


def _he_folder(root):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)).save(root / "images" / "he.png")
    Image.fromarray(_instances((48, 56), 3).astype(np.uint8)).save(root / "labels" / "he.png")
    return root


def _ome(path):
    """The exported file through both kept readers: ome-types (schema-validated) and tifffile's pixels."""
    ome = from_tiff(str(path), validate=True)
    with tifffile.TiffFile(path) as tif:
        pixels = tif.series[0].asarray()
    return ome, pixels


def test_a_scanners_ome_tiff_metadata_is_read(tmp_path):
    folder = _fluorescence_folder(tmp_path / "src", n=1)
    found = read_acquisition(folder / "images" / "field0.ome.tif")
    assert found == Acquisition(mpp=0.325, channel_names=FLUO, magnification=20.0, stain="mIF DAPI/CD3/CD8")
    svs = tmp_path / "aperio.tif"
    tifffile.imwrite(svs, np.zeros((16, 16, 3), np.uint8),
                     description="Aperio Image Library v12.0.15\n16x16 -> 16x16 JPEG/RGB Q=70|AppMag = 40|MPP = 0.2520")
    assert read_acquisition(svs).magnification == 40.0
    assert read_acquisition(tmp_path / "missing.tif") == Acquisition()


def test_ome_tiff_export_carries_pixel_size_channels_stain_and_objective(tmp_path, capsys):
    src = _fluorescence_folder(tmp_path / "src")
    out = tmp_path / "export"
    assert main(["export-dataset", str(src), str(out), "--task", "instances"]) == 0
    assert "2 instances samples" in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    row = meta["samples"][0]
    assert (row["mpp"], row["channel_names"], row["stain"], row["magnification"]) == (
        0.325, list(FLUO), "mIF DAPI/CD3/CD8", 20.0)
    ome, pixels = _ome(out / row["image"])
    [image] = ome.images
    assert image.pixels.physical_size_x == pytest.approx(0.325) and image.pixels.physical_size_x_unit.value == "µm"
    assert [c.name for c in image.pixels.channels] == list(FLUO)
    [instrument] = ome.instruments
    assert instrument.objectives[0].nominal_magnification == 20.0
    assert image.objective_settings.id == instrument.objectives[0].id and image.instrument_ref.id == instrument.id
    [stain] = [a for a in ome.structured_annotations.map_annotations if a.id in {r.id for r in image.annotation_refs}]
    assert {m.k: m.value for m in stain.value.ms} == {"stain": "mIF DAPI/CD3/CD8"}
    source = tifffile.imread(src / "images" / "field0.ome.tif")
    assert np.array_equal(pixels, source)
    label_ome, label = _ome(out / row["labels"])
    assert label_ome.images[0].pixels.physical_size_x == pytest.approx(0.325)
    assert np.array_equal(label, tifffile.imread(src / "labels" / "field0.tif"))
    # the archive metadata says it too
    rembi = json.loads((out / "rembi.json").read_text())
    assert rembi["image_acquisition"]["objective_magnification"] == 20.0  # from the images: the facility gave none
    assert rembi["image_data"]["stains"] == ["mIF DAPI/CD3/CD8"] and rembi["image_data"]["format"] == "OME-TIFF"
    with (out / "file_list.tsv").open() as fh:
        files = {r["Files"]: r for r in csv.DictReader(fh, delimiter="\t")}
    listed = files[row["image"]]
    assert (listed["channel_names"], listed["stain"], listed["objective_magnification"]) == (
        "DAPI;CD3;CD8", "mIF DAPI/CD3/CD8", "20")
    # and it comes back: from dataset.json, and from the files alone for a plain folder reader
    back = load_exported(out).samples[0]
    assert (back.mpp, back.channel_names, back.stain, back.magnification) == (0.325, FLUO, "mIF DAPI/CD3/CD8", 20.0)
    assert read_acquisition(out / row["image"]) == Acquisition(0.325, FLUO, 20.0, "mIF DAPI/CD3/CD8")


def test_given_stain_and_magnification_fill_what_a_png_cannot_say(tmp_path):
    src = _he_folder(tmp_path / "src")
    out = tmp_path / "export"
    assert main(["export-dataset", str(src), str(out), "--stain", "H&E", "--magnification", "40",
                 "--mpp", "0.25", "--task", "instances"]) == 0
    row = json.loads((out / "dataset.json").read_text())["samples"][0]
    assert row["channel_names"] is None and row["image_axes"] == "YXS"
    ome, pixels = _ome(out / row["image"])
    assert ome.instruments[0].objectives[0].nominal_magnification == 40.0
    assert ome.images[0].pixels.physical_size_x == pytest.approx(0.25)
    from PIL import Image

    assert np.array_equal(pixels, np.asarray(Image.open(src / "images" / "he.png")))
    assert read_acquisition(out / row["image"]).stain == "H&E"
    with pytest.raises(ParameterError, match="magnification=-4.0 must be a positive number"):
        load_folder(src, magnification=-4.0)


def test_without_any_acquisition_facts_the_ome_xml_stays_valid_and_claims_nothing(tmp_path):
    src = _he_folder(tmp_path / "src")
    out = tmp_path / "export"
    assert main(["export-dataset", str(src), str(out), "--task", "instances"]) == 0
    row = json.loads((out / "dataset.json").read_text())["samples"][0]
    ome, _ = _ome(out / row["image"])
    assert not ome.instruments and not ome.structured_annotations.map_annotations
    rembi = json.loads((out / "rembi.json").read_text())
    assert "objective_magnification" not in rembi["image_acquisition"]
    assert rembi["image_data"]["stains"] == [] and rembi["image_data"]["objective_magnifications"] == []


def test_ome_zarr_export_keeps_channels_stain_and_objective(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    src = _fluorescence_folder(tmp_path / "src", n=1)
    out = tmp_path / "export"
    assert main(["export-dataset", str(src), str(out), "--format", "ome-zarr", "--task", "instances"]) == 0
    row = json.loads((out / "dataset.json").read_text())["samples"][0]
    [node, *_] = list(Reader(parse_url(str(out / row["image"])))())
    assert node.metadata["channel_names"] == list(FLUO)
    assert node.zarr.root_attrs["acquisition"] == {"stain": "mIF DAPI/CD3/CD8", "objective_magnification": 20.0}
    rembi = json.loads((out / "rembi.json").read_text())
    assert rembi["image_data"]["format"] == "OME-Zarr (NGFF 0.4)"
    back = load_exported(out).samples[0]
    assert (back.channel_names, back.stain, back.magnification, back.mpp) == (FLUO, "mIF DAPI/CD3/CD8", 20.0, 0.325)
