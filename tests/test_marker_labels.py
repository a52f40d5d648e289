"""Labels from another marker (dlcore.marker.labels, `dlcore annotate-from-marker`): the DAB of a real IHC
section, a fluorescence channel, a second image registered onto the routine one, the training folder."""
import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage import data
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu

from dlcore.cli import main as cli_main
from dlcore.errors import DlcoreError, InputError, ParameterError, SlideError
from dlcore.marker.dataset import labels_from_marker
from dlcore.marker.labels import (MAX_PIXELS, PROVENANCE_FILE, MarkerSpec, derive_labels, hematoxylin_rendering,
                                  parse_region, stain_matrix)
from dlcore.train.data import load_folder

IHC = data.immunohistochemistry()


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def ihc_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ihc") / "ihc.tif"
    tifffile.imwrite(path, IHC, photometric="rgb")
    return path


@pytest.fixture(scope="module")
def fluorescence(tmp_path_factory):
    """DAPI with five nuclei (two of them touching) and CD3 bright on two of them, 0.5 µm/px."""
    height, width = 160, 200
    yy, xx = np.mgrid[:height, :width]
    centres = [(40, 40), (40, 150), (110, 60), (110, 76), (120, 150)]  # (3) and (4) touch
    dapi = np.full((height, width), 200.0)
    cd3 = np.full((height, width), 150.0)
    for k, (cy, cx) in enumerate(centres):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9 ** 2
        dapi[disc] = 3000
        if k in (1, 4):
            cd3[(yy - cy) ** 2 + (xx - cx) ** 2 <= 11 ** 2] = 2500  # membrane and nucleus
    rng = np.random.default_rng(0)
    stack = np.stack([dapi, cd3]) + rng.normal(0, 20, (2, height, width))
    path = tmp_path_factory.mktemp("fl") / "fluo.ome.tif"
    tifffile.imwrite(path, np.clip(stack, 0, 65535).astype(np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD3"]}, "PhysicalSizeX": 0.5,
                               "PhysicalSizeY": 0.5})
    return path, centres


def test_the_dab_threshold_mask_covers_the_brown_cells(ihc_file, tmp_path):
    out = labels_from_marker([ihc_file], tmp_path / "t", spec=MarkerSpec(marker="dab", method="threshold",
                                                                          stain_vectors="reference"))
    [result] = out["results"]
    mask = result.labels > 0
    dab = ndi.gaussian_filter(rgb2hed(IHC)[..., 2], 2.0)  # scikit-image's colour deconvolution directly
    direct = dab > threshold_otsu(dab)
    assert _dice(mask, direct) > 0.95
    assert 0.3 < mask.mean() < 0.7  # the glands' epithelium, not the stroma
    # the slide's own stain vectors (the default) find the same brown
    own = labels_from_marker([ihc_file], tmp_path / "own", spec=MarkerSpec())["results"][0]
    assert _dice(own.labels > 0, direct) > 0.9
    dataset = load_folder(tmp_path / "t", task=out["provenance"]["task"])
    assert dataset.task == "semantic" and dataset.classes == ("positive",)
    [sample] = dataset.samples
    np.testing.assert_array_equal(sample.mask, result.labels)
    assert sample.image.shape == IHC.shape and sample.image.dtype == np.uint8


def test_the_hematoxylin_rendering_keeps_the_hematoxylin_and_drops_the_dab():
    stains = stain_matrix(IHC, "estimate")
    rendering = hematoxylin_rendering(IHC, stains)
    before, after = stains.concentrations(IHC), stains.concentrations(rendering)
    assert np.corrcoef(before[..., 0].ravel(), after[..., 0].ravel())[0, 1] > 0.99
    assert after[..., 2].mean() < 0.05 * before[..., 2].mean()


def test_instances_are_split_and_counted(fluorescence, tmp_path):
    path, centres = fluorescence
    spec = MarkerSpec(marker="channel:DAPI", method="instances", input="channel:DAPI", sigma=1.0)
    out = labels_from_marker([path], tmp_path / "i", spec=spec)
    [result] = out["results"]
    assert len(np.unique(result.labels)) - 1 == len(result.objects) == len(centres)  # the touching pair split
    for cy, cx in centres:
        assert result.labels[cy, cx] > 0
    dataset = load_folder(tmp_path / "i", task="instances")
    assert dataset.task == "instances" and dataset.classes == ("positive",)
    assert dataset.samples[0].image.shape == (160, 200, 1) and dataset.samples[0].image.dtype == np.uint16
    rows = (tmp_path / "i" / "objects.csv").read_text().splitlines()
    assert len(rows) == 1 + len(centres) and rows[0].startswith("image,id,class,marker_mean")


def test_positive_cells_are_classed_by_the_marker(fluorescence, tmp_path):
    path, centres = fluorescence
    spec = MarkerSpec(marker="channel:CD3", method="positive-cells", nuclei_channel="channel:DAPI",
                      input="channel:DAPI")
    out = labels_from_marker([path], tmp_path / "p", spec=spec)
    [result] = out["results"]
    by_centre = {(cy, cx): result.labels[cy, cx] for cy, cx in centres}
    assert [by_centre[c] for c in centres] == [1, 2, 1, 1, 2]  # 1 negative, 2 positive
    assert result.counts()["positive_objects"] == 2 and result.counts()["negative_objects"] == 3
    dataset = load_folder(tmp_path / "p", task="semantic")
    assert dataset.classes == ("negative", "positive")
    instances = tifffile.imread(next((tmp_path / "p" / "instances").glob("*.tif")))
    assert len(np.unique(instances)) - 1 == 5
    # a fraction rule that no cell meets: every cell negative
    strict = labels_from_marker([path], tmp_path / "f", spec=MarkerSpec(
        marker="channel:CD3", method="positive-cells", nuclei_channel="channel:DAPI", input="channel:DAPI",
        positive_by="fraction", min_fraction=1.0, threshold=10_000))["results"][0]
    assert strict.counts()["positive_objects"] == 0


def test_positive_cells_on_the_ihc_section(ihc_file, tmp_path):
    out = labels_from_marker([ihc_file], tmp_path / "c", spec=MarkerSpec(method="positive-cells", cell_expansion=6))
    [result] = out["results"]
    counts = result.counts()
    assert counts["objects"] > 150 and 0.2 < counts["positive_objects"] / counts["objects"] < 0.8
    positive = [o for o in result.objects if o["class"] == "positive"]
    assert all(o["marker_mean"] > result.threshold for o in positive)
    # the input is the section as if stained with haematoxylin alone: no brown left
    sample = load_folder(tmp_path / "c", task="semantic").samples[0]
    assert sample.image.shape == IHC.shape
    stains = stain_matrix(IHC, "estimate")
    assert stains.concentrations(sample.image)[..., 2].mean() < 0.05 * stains.concentrations(IHC)[..., 2].mean()
    assert (tmp_path / "c" / "overview" / "ihc.png").is_file()


def test_provenance_records_the_marker_method_threshold_and_counts(ihc_file, tmp_path):
    out = labels_from_marker([ihc_file], tmp_path / "prov", spec=MarkerSpec(method="instances", sigma=1.5),
                             region=(32, 16, 400, 300))
    record = json.loads((tmp_path / "prov" / PROVENANCE_FILE).read_text())
    assert record == out["provenance"]
    assert record["format"] == "dlcore-marker-labels" and record["task"] == "instances"
    assert record["dlcore_version"] and record["parameters"]["sigma"] == 1.5
    [image] = record["images"]
    assert image["region"] == {"x": 32, "y": 16, "width": 400, "height": 300}
    assert image["marker_source"]["signal"] == "dab" and image["marker_source"]["image"] == "the same image"
    assert "estimated" in image["marker_source"]["stains"]["method"]
    assert image["threshold"]["how"].startswith("Otsu") and image["threshold"]["value"] > 0
    assert image["counts"]["objects"] == out["results"][0].counts()["objects"] > 0
    readme = (tmp_path / "prov" / "README.md").read_text()
    assert f"dlcore train {tmp_path / 'prov'} --task instances" in readme
    assert f"threshold: {image['threshold']['value']:.6g}" in readme and "x=32 y=16 400x300" in readme
    files = sorted(p.name for p in (tmp_path / "prov" / "images").iterdir())
    assert files == ["ihc_x32_y16.ome.tif"]


def test_a_second_image_is_registered_onto_the_routine_image(tmp_path):
    routine = hematoxylin_rendering(IHC, stain_matrix(IHC, "estimate"))[0:448, 0:448]
    marker = IHC[10:458, 16:464]  # the same section, shifted: routine (x, y) is marker (x - 16, y - 10)
    tifffile.imwrite(tmp_path / "routine.tif", routine, photometric="rgb")
    tifffile.imwrite(tmp_path / "restain.tif", marker, photometric="rgb")
    code = cli_main(["annotate-from-marker", str(tmp_path / "routine.tif"), "-o", str(tmp_path / "out"),
                     "--marker", f"image:{tmp_path / 'restain.tif'}", "--threshold", "0.3", "--kind", "rigid"])
    assert code == 0
    record = json.loads((tmp_path / "out" / PROVENANCE_FILE).read_text())["images"][0]
    registration = record["registration"]
    assert registration["kind"] == "rigid" and registration["residual_px"] < 1.0
    np.testing.assert_allclose(np.array(registration["matrix"])[:2, 2], (-16, -10), atol=0.5)
    assert record["marker_source"]["image"] == "restain.tif"
    assert record["marker_coverage"] == pytest.approx((448 - 16) * (448 - 10) / 448 ** 2, abs=0.01)
    labels = load_folder(tmp_path / "out", task="semantic").samples[0].mask
    direct = derive_labels(_Array(IHC), spec=MarkerSpec(threshold=0.3, input="rgb")).labels[:448, :448]
    assert (labels[10:, 16:] == direct[10:, 16:]).mean() > 0.97
    assert not labels[:, :16].any() and not labels[:10].any()  # no marker there: no label


def test_large_images_are_registered_slide_to_slide_and_only_the_region_is_warped():
    routine = hematoxylin_rendering(IHC, stain_matrix(IHC, "estimate"))[0:448, 0:448].copy()
    marker = IHC[10:458, 16:464].copy()
    result = derive_labels(_Array(routine, mpp=0.5), spec=MarkerSpec(threshold=0.3, input="rgb"),
                           marker=_Array(marker, mpp=0.5), region=(100, 120, 300, 300), limit=150_000)
    registration = result.provenance["registration"]
    assert registration["registered"].startswith("slide to slide")  # the images are above the limit
    np.testing.assert_allclose(np.array(registration["matrix"])[:2, 2], (-16, -10), atol=0.5)
    assert result.provenance["marker_coverage"] == 1.0
    direct = derive_labels(_Array(IHC), spec=MarkerSpec(threshold=0.3, input="rgb")).labels
    assert (result.labels == direct[120:420, 100:400]).mean() > 0.98


class _Array:
    def __init__(self, array, mpp=None):
        from dlcore.io.slide import Level, SlideInfo

        self.array = array
        self.info = SlideInfo(name="array", identity="array", levels=(Level(array.shape[1], array.shape[0], 1.0),),
                              mpp=(mpp, mpp) if mpp else None, channels=("R", "G", "B"), dtype="uint8",
                              tile_size=(64, 64))

    def read_region(self, level, x, y, w, h):
        return self.array[y:y + h, x:x + w]


def test_clear_errors(ihc_file, fluorescence, tmp_path):
    with pytest.raises(ParameterError, match="marker='dob' is not one of dab, hematoxylin, eosin or channel:NAME"):
        MarkerSpec(marker="dob")
    with pytest.raises(ParameterError, match="names no channel"):
        MarkerSpec(marker="channel:")
    with pytest.raises(ParameterError, match="method='watershed' must be one of"):
        MarkerSpec(method="watershed")
    with pytest.raises(ParameterError, match="four numbers x,y,width,height"):
        parse_region("10,10,100")
    with pytest.raises(ParameterError, match="width and height positive"):
        parse_region("0,0,0,10")
    with pytest.raises(InputError, match=r"lies outside level 0 of ihc.tif \(512x512\).*--region x,y,w,h"):
        labels_from_marker([ihc_file], tmp_path / "a", spec=MarkerSpec(), region=(400, 0, 200, 100))
    with pytest.raises(SlideError, match=r"has no channel 'CD8'; its channels are 0 \(DAPI\), 1 \(CD3\)"):
        labels_from_marker([fluorescence[0]], tmp_path / "b", spec=MarkerSpec(marker="channel:CD8", input="rgb"))
    with pytest.raises(SlideError, match="marker='dab' needs 8-bit RGB brightfield.*choose channel:NAME"):
        labels_from_marker([fluorescence[0]], tmp_path / "c", spec=MarkerSpec(marker="dab", input="rgb"))
    with pytest.raises(SlideError, match="input='hematoxylin' needs 8-bit RGB brightfield, but fluo.ome.tif is "
                                         "2-channel uint16"):
        labels_from_marker([fluorescence[0]], tmp_path / "c", spec=MarkerSpec(marker="channel:CD3"))
    with pytest.raises(InputError, match=r"more than the 0.1 megapixels .* crop a region with --region x,y,w,h"):
        derive_labels(_Array(IHC), spec=MarkerSpec(), limit=100_000)
    assert MAX_PIXELS >= 16_000_000
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(InputError, match="exists and is not empty; choose a new folder"):
        labels_from_marker([ihc_file], tmp_path / "full", spec=MarkerSpec())
    with pytest.raises(InputError, match="the marker signal is uniform"):
        derive_labels(_Array(np.full((64, 64, 3), 200, np.uint8)), spec=MarkerSpec(stain_vectors="reference"))
    # the command line says it in one line and exits 1
    assert cli_main(["annotate-from-marker", str(ihc_file), "-o", str(tmp_path / "d"), "--marker", "dob"]) == 1
    assert cli_main(["annotate-from-marker", str(ihc_file), "-o", str(tmp_path / "d"), "--region", "a,b"]) == 1
    assert not (tmp_path / "d").exists() and not (tmp_path / "a").exists()


def test_the_command_writes_a_folder_dlcore_train_reads(ihc_file, tmp_path, capsys):
    code = cli_main(["annotate-from-marker", str(ihc_file), "-o", str(tmp_path / "cells"), "--method",
                     "positive-cells", "--cell-expansion", "4", "--min-size", "40"])
    assert code == 0
    out = capsys.readouterr().out
    assert "task semantic, classes negative, positive" in out and f"dlcore train {tmp_path / 'cells'}" in out
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == [
        "README.md", "classes.txt", "images", "instances", "labels", "labels_provenance.json", "objects.csv",
        "overview"]
    dataset = load_folder(tmp_path / "cells", task="semantic")
    assert dataset.classes == ("negative", "positive") and int(dataset.samples[0].mask.max()) == 2
    assert "is too few for train/validation/test" in out
    # --tile: one section cut into tiles, each a file (a split group) of its own; together the whole labels
    assert cli_main(["annotate-from-marker", str(ihc_file), "-o", str(tmp_path / "tiles"), "--method",
                     "positive-cells", "--cell-expansion", "4", "--min-size", "40", "--tile", "200"]) == 0
    tiles = load_folder(tmp_path / "tiles", task="semantic")
    assert len(tiles.samples) == 9 and len(set(tiles.groups)) == 9
    whole = np.zeros((512, 512), np.int64)
    for sample in tiles.samples:
        y, x = _corner(sample.source)
        whole[y:y + sample.mask.shape[0], x:x + sample.mask.shape[1]] = sample.mask
    np.testing.assert_array_equal(whole, dataset.samples[0].mask)
    with pytest.raises(ParameterError, match="tile=8 must be a tile side of at least 32 pixels"):
        labels_from_marker([ihc_file], tmp_path / "t8", spec=MarkerSpec(), tile=8)


def _corner(source: str) -> tuple[int, int]:
    """(y, x) of a tile file ``..._y<Y>_x<X>.ome.tif``."""
    import re

    y, x = re.search(r"_y(\d+)_x(\d+)\.ome\.tif$", source).groups()
    return int(y), int(x)


def test_a_pixel_classifier_can_be_the_marker(ihc_file, tmp_path, monkeypatch):
    from dlcore.pixels.demo import write_scribble_demo

    registry = tmp_path / "registry"
    monkeypatch.setenv("DLCORE_MODELS", str(registry))
    folder = write_scribble_demo(tmp_path / "scribbles")
    assert cli_main(["train", str(folder), "--task", "pixels", "--name", "ihc-dab", "--colour", "hed",
                     "--scales", "1,2.5", "--trees", "8", "--registry", str(registry)]) == 0
    with pytest.raises(DlcoreError, match=r"has the classes dab, hematoxylin, background; say which is the marker"):
        labels_from_marker([ihc_file], tmp_path / "x", spec=MarkerSpec(marker="eosin", pixel_classifier="ihc-dab"))
    out = labels_from_marker([ihc_file], tmp_path / "pc", spec=MarkerSpec(pixel_classifier="ihc-dab"))
    [result] = out["results"]  # marker 'dab' names the classifier's class 'dab'
    record = result.provenance
    assert record["threshold"]["value"] == 0.5 and "pixel classifier 'ihc-dab'" in record["marker_source"]["signal"]
    direct = derive_labels(_Array(IHC), spec=MarkerSpec(input="rgb")).labels > 0
    assert _dice(result.labels > 0, direct) > 0.7


@pytest.mark.slow
def test_the_demo_scores_the_model_and_the_baselines(tmp_path):
    from dlcore.marker.demo import format_figures, run_marker_demo

    figures = run_marker_demo(tmp_path / "demo", threads=2, log=lambda *a: None)
    for key in ("model", "baseline_every_nucleus_positive", "baseline_hematoxylin_threshold"):
        assert set(figures[key]) >= {"precision", "recall", "f1", "pixel_dice"}
    assert figures["baseline_every_nucleus_positive"]["recall"] == pytest.approx(1.0, abs=0.1)
    assert "pixel classifier on haematoxylin" in format_figures(figures)
    assert load_folder(tmp_path / "demo" / "training", task="semantic").classes == ("negative", "positive")
