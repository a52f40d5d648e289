"""Slide quality control: artefacts painted onto real tissue are found where they are, clean real tissue
shows none, and the QC outputs, the batch table, ``dlcore qc`` and ``dlcore run --qc`` behave as
documented (docs/QC.md)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dlcore.cli import main as cli_main
from dlcore.errors import InputError, ParameterError
from dlcore.io import open_slide
from dlcore.io.local_sink import LocalFolderSink
from dlcore.qc.classes import ARTEFACTS, BY_NAME, flag_for, worst
from dlcore.qc.exclusion import Exclusion, usable_tissue
from dlcore.qc.outputs import update_batch_table, write_qc_files
from dlcore.qc.run import QCOptions, run_qc, table_row
from dlcore.tasks.classical import ClassicalNuclei
from dlcore.tiling.grid import Tile
from dlcore.tiling.pool import TileWork
from dlcore.tiling.tile_objects import find_tile_objects
from dlcore.tiling.tissue import TissueMask
from dlcore.workflows import RunOptions, analyse_slide
from painted_artefacts import at_mask_resolution, iou, paint_pen, painted_demo, painted_he
from synthetic import write_ome_tiff


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The clean and the painted demo slide (real IHC tissue, 0.5 µm/px), their QC, and the true masks."""
    folder = tmp_path_factory.mktemp("qc")
    clean, painted, truth = painted_demo()
    paths = {"clean": write_ome_tiff(folder / "clean.ome.tif", clean, tile=256, levels=4),
             "painted": write_ome_tiff(folder / "painted.ome.tif", painted, tile=256, levels=4)}
    results = {}
    for name, path in paths.items():
        slide = open_slide(path)
        try:
            results[name] = run_qc(slide)
        finally:
            slide.close()
    return paths, results, truth


@pytest.mark.parametrize("artefact", ["blur", "pen", "fold", "bubble", "pale"])
def test_each_painted_artefact_is_found_where_it_is(demo, artefact):
    _, results, truth = demo
    result = results["painted"]
    found = result.mask == BY_NAME[artefact].value
    expected = at_mask_resolution(truth[artefact], result.mask.shape)
    assert expected.sum() > 1000  # the artefact covers a real area at the QC resolution
    assert iou(found, expected) >= 0.8, f"{artefact}: IoU {iou(found, expected):.3f}"
    assert result.fractions[artefact] > 0.01
    assert result.flags[artefact] == flag_for(BY_NAME[artefact], result.fractions[artefact])
    assert result.flags[artefact] == ("pass" if artefact == "pale" else "warn")  # pale: 3 %, under its 5 % warning


def test_the_coverslip_edge_is_found_along_its_length(demo):
    _, results, truth = demo
    result = results["painted"]
    found = result.mask == BY_NAME["coverslip_edge"].value
    line = at_mask_resolution(truth["coverslip_edge"], result.mask.shape)
    assert (found & line).sum() / line.sum() >= 0.9  # the thin line is covered along its length...
    assert found.sum() <= 3 * line.sum()  # ...and not much else
    assert result.flags["coverslip_edge"] == "warn"


def test_pen_strokes_of_two_colours_are_each_found(demo):
    _, results, truth = demo
    result = results["painted"]
    found = result.mask == BY_NAME["pen"].value
    pen = at_mask_resolution(truth["pen"], result.mask.shape)
    half = pen.shape[0] // 2
    assert (found & pen)[:half].sum() / pen[:half].sum() >= 0.9  # the blue stroke (top)
    assert (found & pen)[half:].sum() / pen[half:].sum() >= 0.9  # the green stroke (bottom)


def test_no_artefact_on_the_clean_demo_slide(demo):
    result = demo[1]["clean"]
    assert result.verdict == "pass"
    assert all(v == 0.0 for v in result.fractions.values()), result.fractions
    assert set(np.unique(result.mask)) == {0, 1}
    assert result.focus["blocks_judged"] > 1000 and result.focus["median_sharpness"] > 0.15
    assert "in range" in result.stain["judgement"]


def test_real_he_tissue_clean_and_with_artefacts(tmp_path):
    """A second stain: clean H&E shows no artefact; painted H&E shows each artefact where it was painted."""
    clean, painted, truth = painted_he()
    for name, image in (("clean", clean), ("painted", painted)):
        slide = open_slide(write_ome_tiff(tmp_path / f"{name}.ome.tif", image, tile=256, levels=3))
        try:
            result = run_qc(slide)
        finally:
            slide.close()
        if name == "clean":
            assert result.verdict == "pass" and not any(result.fractions.values()), result.fractions
            continue
        for artefact, mask in truth.items():
            found = result.mask == BY_NAME[artefact].value
            assert iou(found, at_mask_resolution(mask, result.mask.shape)) >= 0.8, artefact


def test_fluorescence_gets_tissue_and_focus_only(tmp_path):
    rng = np.random.default_rng(0)
    image = np.zeros((1024, 1024), np.uint16)
    ys, xs = rng.integers(20, 1004, (2, 400))
    yy, xx = np.ogrid[:1024, :1024]
    for y, x in zip(ys, xs):
        image[max(0, y - 6):y + 6, max(0, x - 6):x + 6] = 3000
    image[300:700, 300:700] += 400
    slide = open_slide(write_ome_tiff(tmp_path / "fluo.ome.tif", image, levels=2))
    try:
        result = run_qc(slide)
    finally:
        slide.close()
    assert "not applicable" in " ".join(result.methods.values())
    assert result.fractions["pen"] == 0.0 and result.flags["stain"] == "pass"
    assert result.focus["blocks_judged"] > 0


def test_flags_follow_the_class_thresholds():
    pen, blur = BY_NAME["pen"], BY_NAME["blur"]
    assert flag_for(pen, 0.0) == "pass" and flag_for(pen, 0.0001) == "warn" and flag_for(pen, 0.1) == "fail"
    assert flag_for(blur, 0.049) == "pass" and flag_for(blur, 0.05) == "warn" and flag_for(blur, 0.25) == "fail"
    assert worst(["pass", "fail", "warn"]) == "fail" and worst([]) == "pass"


@pytest.mark.parametrize("options, word", [({"qc_mpp": 0}, "qc_mpp"), ({"focus_block": 4}, "focus_block"),
                                           ({"blur_threshold": -1}, "blur_threshold")])
def test_bad_qc_options_are_refused(options, word):
    with pytest.raises(ParameterError, match=word):
        QCOptions(**options)


def test_a_bad_qc_mode_is_refused():
    with pytest.raises(ParameterError, match="exclude"):
        RunOptions(qc="strict")
    with pytest.raises(SystemExit):
        cli_main(["run", "nuclei-classical", "x.tif", "--qc", "strict"])


def test_qc_files_hold_the_mask_and_the_figures(demo, tmp_path):
    result = demo[1]["painted"]
    paths = write_qc_files(result, tmp_path)
    with tifffile.TiffFile(paths["qc_mask"]) as tif:
        assert np.array_equal(tif.asarray(), result.mask)
        assert 'PhysicalSizeX="2.0"' in tif.ome_metadata and "7=pen" in tif.ome_metadata
    report = json.loads(paths["qc_json"].read_text())
    assert report["verdict"] == result.verdict == "warn"
    assert report["fractions_of_tissue"]["pen"] == pytest.approx(result.fractions["pen"], abs=1e-5)
    assert set(report["methods"]) >= {"tissue", "pen", "fold", "pale", "bubble", "coverslip_edge", "blur"}
    from PIL import Image

    overview = Image.open(paths["qc_overview"])
    assert overview.width > 1000 and overview.height > result.mask.shape[0] * 0.7


def test_the_batch_table_holds_each_slide_once(demo, tmp_path):
    table = tmp_path / "qc_batch.csv"
    clean, painted = demo[1]["clean"], demo[1]["painted"]
    update_batch_table(table, [clean.table_row(), painted.table_row()])
    update_batch_table(table, [painted.table_row()])  # checked again: its row is replaced
    rows = list(csv.DictReader(table.open()))
    assert [r["slide"] for r in rows] == ["clean.ome.tif", "painted.ome.tif"]
    assert rows[1]["verdict"] == "warn" and rows[1]["pen_flag"] == "warn" and float(rows[1]["pen_fraction"]) > 0.01
    assert rows[0]["verdict"] == "pass" and float(rows[0]["blur_fraction"]) == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".qc_batch.csv.lock", "qc_batch.csv"]  # no temporary file
    assert table_row("x", painted.summary()) == {**painted.table_row(), "slide": "x"}


def test_exclusion_reads_the_mask_at_working_resolution():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 5:7] = True  # level-0 pixels 40-80 down, 100-140 across (20 per mask pixel)
    exclusion = Exclusion(mask=mask, downsample=20.0, factor=2.0)  # a working pixel is 2 level-0 pixels
    window = exclusion.window(45, 15, 30, 30)  # working pixels 45-75 across, 15-45 down
    assert window.shape == (30, 30)
    assert window[5:25, 5:25].all() and not window[:5].any() and not window[25:].any() and not window[:, 25:].any()
    assert exclusion.window(-10, -10, 5, 5).shape == (5, 5)  # outside the image: the nearest edge pixel
    tissue = TissueMask(mask=np.ones((5, 5), bool), downsample=40.0, method="m")
    usable = usable_tissue(tissue, mask, 20.0)
    assert not usable.mask[1, 2] and usable.mask.sum() == 24 and "less QC artefacts" in usable.method


def test_objects_centred_on_an_artefact_are_dropped_whole():
    labels = np.zeros((64, 64), np.int32)
    labels[10:20, 10:20] = 1  # centre (15, 15): on the artefact
    labels[10:20, 40:50] = 2  # centre (15, 45): off it, though it reaches into it
    excluded = np.zeros((64, 64), bool)
    excluded[:, :42] = True
    window = np.zeros((64, 64, 3), np.uint8)
    tile = Tile(row=0, col=0, x=0, y=0, width=64, height=64, halo=0)
    found = find_tile_objects(tile, window, labels, canvas_size=(64, 64), excluded=excluded)
    assert found.count == 1 and found.area[0] == 100  # object 2, whole
    semantic = TileWork(exclude=Exclusion(mask=excluded, downsample=1.0, factor=1.0))
    classes = semantic(tile, window, np.full((64, 64), 2, np.uint8))
    assert (classes[:, :42] == 0).all() and (classes[:, 42:] == 2).all() and classes.dtype == np.uint8


def run(path, out, qc):
    slide = open_slide(path)
    try:
        return analyse_slide(slide, ClassicalNuclei(), LocalFolderSink(out), options=RunOptions(qc=qc, workers=0))
    finally:
        slide.close()


def test_flag_reports_and_exclude_leaves_the_artefacts_out(demo, tmp_path):
    paths, results, _ = demo
    off = run(paths["painted"], tmp_path / "off", "off")
    flag = run(paths["painted"], tmp_path / "flag", "flag")
    exclude = run(paths["painted"], tmp_path / "exclude", "exclude")
    folder = Path("painted") / "nuclei-classical"
    # flag: the analysis is unchanged, QC joins the results
    assert (tmp_path / "off" / folder / "objects.csv").read_bytes() == (tmp_path / "flag" / folder / "objects.csv").read_bytes()
    assert "qc" not in off.summary and flag.summary["qc"]["verdict"] == "warn"
    assert flag.summary["qc"]["excluded_area_mm2"] == 0.0
    assert {"qc.json", "qc_mask.ome.tif", "qc_overview.png"} <= {p.name for p in (tmp_path / "flag" / folder).iterdir()}
    assert "QC warn" in flag.summary["tags"] and "QC: pen" in flag.summary["tags"]
    # exclude: no object is centred on an artefact, and the area left out is recorded
    qc = results["painted"]
    rows = list(csv.DictReader((tmp_path / "exclude" / folder / "objects.csv").open()))
    assert 0 < len(rows) < off.summary["objects"] * 0.9
    cx = np.array([float(r["centroid_x"]) for r in rows]) / qc.downsample
    cy = np.array([float(r["centroid_y"]) for r in rows]) / qc.downsample
    on_artefact = qc.artefact_mask()[cy.astype(int), cx.astype(int)]
    assert on_artefact.mean() < 0.002  # centroids round to a mask pixel: only those on an artefact's edge
    summary = exclude.summary["qc"]
    assert summary["mode"] == "exclude"
    assert summary["excluded_fraction_of_tissue"] == pytest.approx(qc.excluded_fraction(), abs=1e-4)
    expected_mm2 = (qc.artefact_mask() & qc.tissue).sum() * (qc.mpp ** 2) / 1e6
    assert summary["analysed_tissue_mm2"] == pytest.approx(qc.tissue.sum() * (qc.mpp ** 2) / 1e6 - expected_mm2, rel=1e-3)
    assert summary["excluded_area_mm2"] == pytest.approx(expected_mm2, rel=1e-3)
    provenance = json.loads((tmp_path / "exclude" / folder / "provenance.json").read_text())
    assert provenance["options"]["qc"] == "exclude" and provenance["timings"]["qc_s"] > 0


def test_excluding_everything_is_a_clear_error(tmp_path):
    image = np.zeros((1024, 1024, 3), np.uint8)
    image[:] = (40, 70, 200)  # a slide inked all over: tissue to the tissue detector, pen ink to QC
    slide = open_slide(write_ome_tiff(tmp_path / "inked.ome.tif", image))
    try:
        with pytest.raises(InputError, match="nothing is left to analyse.*--qc flag"):
            analyse_slide(slide, ClassicalNuclei(), LocalFolderSink(tmp_path / "out"), options=RunOptions(qc="exclude"))
    finally:
        slide.close()
    assert not any((tmp_path / "out").rglob("*.csv"))


def test_dlcore_qc_writes_the_files_and_one_table_row_per_slide(demo, tmp_path, capsys):
    paths = demo[0]
    out = tmp_path / "out"
    assert cli_main(["qc", str(paths["clean"]), str(paths["painted"]), "-o", str(out)]) == 0
    assert cli_main(["qc", str(paths["painted"]), "-o", str(out)]) == 0  # again: replaces its files and row
    text = capsys.readouterr().out
    assert "✓ clean.ome.tif: QC pass: no artefact found" in text
    assert "! painted.ome.tif: QC warn" in text and "pen" in text
    for name in ("clean", "painted"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["qc"]  # no partial folder left
        assert sorted(p.name for p in (out / name / "qc").iterdir()) == ["qc.json", "qc_mask.ome.tif",
                                                                         "qc_overview.png"]
    rows = list(csv.DictReader((out / "qc_batch.csv").open()))
    assert [r["slide"] for r in rows] == ["clean.ome.tif", "painted.ome.tif"]


def test_dlcore_qc_fail_exit(tmp_path):
    image = np.full((2048, 2048, 3), 250, np.uint8)
    image[200:1800, 200:1800] = (180, 120, 170)
    paint_pen(image, [(300, 1000), (1700, 1000)], 600, (30, 150, 60))  # ink over a third of the tissue
    path = write_ome_tiff(tmp_path / "inked.ome.tif", image, levels=3)
    assert cli_main(["qc", str(path), "-o", str(tmp_path / "a")]) == 0
    assert cli_main(["qc", str(path), "-o", str(tmp_path / "b"), "--fail-exit"]) == 3
    assert json.loads((tmp_path / "b" / "inked" / "qc" / "qc.json").read_text())["flags"]["pen"] == "fail"


def test_the_artefact_classes_are_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "QC.md").read_text()
    for qc_class in ARTEFACTS:
        assert f"`{qc_class.name}`" in doc


def test_patches_cleared_on_artefacts_leave_the_slide_decision():
    from dlcore.models.patches import labelled_patches

    tile = Tile(row=0, col=0, x=0, y=0, width=100, height=64, halo=8)  # 2 x 4 patches of 32 (the last partial)
    labels = np.zeros((80, 116), np.int32)
    labels[8:72, 8:108] = 2  # every patch classified
    labels[8:40, 8:30] = 0  # an artefact clears most of patch (0, 0)...
    labels[40:72, 40:50] = 0  # ...and under half of patch (1, 1)
    kept = labelled_patches(tile, labels, 32, 2, 4)
    assert kept.tolist() == [[False, True, True, True], [True, True, True, True]]


def test_the_ridge_filter_is_scikit_images_sato():
    """dark_ridges is scikit-image's sato (black ridges, reflect) in OpenCV: the same values, on real tissue."""
    from skimage.filters import sato

    from dlcore.qc.artefacts import Picture, dark_ridges
    from synthetic import real_he_field

    value = Picture.of(real_he_field()).value
    for sigmas in ([1.0, 2.0, 3.0], [0.7, 1.4]):
        expected = sato(value, sigmas=sigmas, black_ridges=True, mode="reflect")
        assert np.abs(dark_ridges(value, sigmas) - expected).max() < 1e-5


def test_a_bubble_on_glass_is_what_the_tissue_detector_would_have_analysed(tmp_path):
    """The tissue detector takes a bubble's dark rim for tissue and fills the disc: QC marks it a bubble,
    counts it in the tissue the analysis would have covered, and ``exclude`` leaves it out."""
    from painted_artefacts import demo_tissue, paint_bubble

    image = np.full((2048, 2048, 3), 250, np.uint8)
    image[700:1700, 700:1700] = demo_tissue(2048, 2048)[524:1524, 524:1524]  # real tissue in the middle
    disc = paint_bubble(image, (350, 350), 220, rim=12)  # a bubble on the glass only
    slide = open_slide(write_ome_tiff(tmp_path / "glass-bubble.ome.tif", image, levels=3))
    try:
        result = run_qc(slide)
    finally:
        slide.close()
    bubble = result.mask == BY_NAME["bubble"].value
    assert iou(bubble, at_mask_resolution(disc, result.mask.shape)) >= 0.8
    assert result.tissue[bubble].all()  # the detector's tissue: an analysis without QC reads it
    assert result.fractions["bubble"] == pytest.approx(bubble.sum() / result.tissue.sum())
    usable = usable_tissue(TissueMask(mask=result.tissue, downsample=result.downsample, method="m"),
                           result.artefact_mask(), result.downsample)
    assert not usable.mask[bubble].any() and usable.mask.sum() == (result.tissue & ~result.artefact_mask()).sum()
    assert result.fractions, result.flags


def test_focus_is_never_measured_on_enlarged_pixels(tmp_path):
    """A 10x scan (1 µm/px) is judged at its own pixels, not enlarged to the default 0.5 µm/px, where
    interpolation would read as blur."""
    from synthetic import real_he_field

    path = write_ome_tiff(tmp_path / "10x.ome.tif", np.ascontiguousarray(np.tile(real_he_field(), (3, 2, 1))), mpp=1.0)
    slide = open_slide(path)
    try:
        result = run_qc(slide)
    finally:
        slide.close()
    assert result.focus["mpp"] == 1.0 and result.fractions["blur"] == 0.0
