"""The catalogue of bad inputs (docs/BAD_INPUTS.md): each gets a clear error naming the problem and the fix,
writes nothing, and leaves earlier results intact.  Cases tested elsewhere are listed in the catalogue with
their tests; these are the rest, through the command line a user types."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dlcore.cli import main
from synthetic import disc_image, real_he_field, write_ome_tiff, write_png

DISCS = ["--channel", "0", "--tile-size", "128", "--halo", "32", "--no-tissue-detection"]


def _run(capsys, *args) -> tuple[int, str]:
    code = main(["run", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def good(tmp_path) -> Path:
    return write_png(tmp_path / "discs.png", disc_image(256))


@pytest.mark.parametrize("name, content, message", [
    ("empty.tif", b"", "is not a readable TIFF"),
    ("empty.svs", b"", "cannot be opened by OpenSlide"),
    ("empty.png", b"", "cannot be read as an image"),
    ("random.tif", np.random.default_rng(0).bytes(4096), "is not a readable TIFF"),
    ("random.ndpi", np.random.default_rng(1).bytes(4096), "cannot be opened by OpenSlide"),
])
def test_empty_and_random_files_are_refused_and_the_batch_goes_on(tmp_path, capsys, good, name, content, message):
    bad = tmp_path / name
    bad.write_bytes(content)
    code, text = _run(capsys, "nuclei-classical", bad, good, "-o", tmp_path / "out", *DISCS)
    assert code == 1 and message in text and "1 of 2 slides done, 1 failed" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["discs"]  # nothing for the bad file


def test_a_folder_without_slides_is_refused(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no slides here")
    code, text = _run(capsys, "nuclei-classical", tmp_path / "notes", "-o", tmp_path / "out")
    assert code == 1 and "no slide files to analyse" in text and "holds no slide files" in text
    assert not (tmp_path / "out").exists()


def test_a_tiff_whose_tiles_are_missing_is_refused(tmp_path, capsys):
    import tifffile

    path = write_ome_tiff(tmp_path / "holes.ome.tif", np.full((512, 512, 3), 200, np.uint8), tile=128)
    with tifffile.TiffFile(path, mode="r+b") as tif:  # a conversion that stopped: tiles with no data
        counts = tif.pages[0].tags["TileByteCounts"]
        counts.overwrite([0, 0, *counts.value[2:]])
    code, text = _run(capsys, "nuclei-classical", path, "-o", tmp_path / "out")
    assert code == 1 and "2 of the 16 tiles of level 0 have no data in the file" in text and "convert" in text
    assert not (tmp_path / "out" / "holes").exists()


def test_wrong_pixel_types_and_channel_counts_name_the_fix(tmp_path, capsys):
    float_grey = write_ome_tiff(tmp_path / "float.ome.tif", np.random.default_rng(0).random((256, 256), np.float32))
    code, text = _run(capsys, "nuclei-classical", float_grey, "-o", tmp_path / "out")
    assert code == 1 and "1-channel float32" in text and "--channel 0" in text
    five = write_ome_tiff(tmp_path / "five.ome.tif", np.zeros((5, 256, 256), np.uint16), axes="CYX")
    code, text = _run(capsys, "nuclei", five, "-o", tmp_path / "out")
    assert code == 1 and "5 channels" in text and "choose the nuclear channel with --channel N" in text
    assert not (tmp_path / "out" / "float").exists() and not (tmp_path / "out" / "five").exists()


def test_an_image_that_is_all_tissue_is_analysed_whole(tmp_path, capsys):
    field = real_he_field()  # real H&E, tissue to all four edges
    path = write_ome_tiff(tmp_path / "he.ome.tif", field, mpp=0.5, tile=128)
    code, text = _run(capsys, "nuclei-classical", path, "-o", tmp_path / "out", "--tile-size", "128")
    assert code == 0, text
    import json

    summary = json.loads((tmp_path / "out" / "he" / "nuclei-classical" / "provenance.json").read_text())["summary"]
    assert summary["tissue_fraction"] >= 0.95 and summary["objects"] > 50


@pytest.mark.parametrize("args, message", [
    (["--threshold=-1"], "threshold=-1.0 must be a positive value of the smoothed signal"),
    (["--sigma", "1000"], "sigma=1000.0 is more than 50 working pixels"),
    (["--tile-size=-5"], "tile_size=-5 is too small; use at least 32"),
    (["--tile-size", "128", "--halo", "500"], "halo=500 must be >= 0 and smaller than tile_size=128"),
    (["--mpp", "0"], "is not a positive pixel size"),
    (["--param", "colour=red"], "has no parameter(s) ['colour']"),
])
def test_absurd_parameters_are_refused_with_the_reason(tmp_path, capsys, good, args, message):
    code, text = _run(capsys, "nuclei-classical", good, "-o", tmp_path / "out", "--channel", "0", *args)
    assert code == 1 and message in text
    assert not (tmp_path / "out" / "discs").exists()


def test_an_output_folder_that_is_a_file_is_refused_before_any_slide(tmp_path, capsys, good):
    (tmp_path / "out").write_text("not a folder")
    code, text = _run(capsys, "nuclei-classical", good, "-o", tmp_path / "out", *DISCS)
    assert code == 1 and "the output folder" in text and "is a file" in text
    assert (tmp_path / "out").read_text() == "not a folder"


def test_a_link_to_nothing_is_named_as_such(tmp_path, capsys):
    link = tmp_path / "slide.svs"
    link.symlink_to(tmp_path / "share" / "gone.svs")
    code, text = _run(capsys, "nuclei-classical", link, "-o", tmp_path / "out")
    assert code == 1 and "is a link to" in text and "which does not exist" in text


def _full_disk_after(monkeypatch, cls, method: str, calls: int, filename: str) -> None:
    """``cls.method`` works ``calls`` times, then fails once as a full disk does (ENOSPC), then works again
    (someone freed space)."""
    real = getattr(cls, method)
    seen = {"n": 0}

    def failing(self, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] == calls + 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(cls, method, failing)


def test_a_full_output_disk_mid_run_keeps_the_earlier_results_and_the_batch_goes_on(tmp_path, capsys, good,
                                                                                    monkeypatch):
    from dlcore.io.local_sink import LocalFolderSink

    other = write_png(tmp_path / "other.png", disc_image(256, seed=3))
    out = tmp_path / "out"
    assert _run(capsys, "nuclei-classical", good, "-o", out, *DISCS)[0] == 0
    earlier = _files(out / "discs")
    with monkeypatch.context() as disk:
        _full_disk_after(disk, LocalFolderSink, "add_objects", 2, str(out / "discs" / "objects.csv"))
        code, text = _run(capsys, "nuclei-classical", good, other, "-o", out, *DISCS, "--tile-size", "64",
                          "--halo", "24")
    assert code == 1 and "the disk is full" in text and "earlier results are untouched" in text
    assert "Free space there" in text and "1 of 2 slides done, 1 failed" in text  # the second slide ran
    assert _files(out / "discs") == earlier  # the earlier results, byte for byte; no partial folder
    assert (out / "other" / "nuclei-classical" / "objects.csv").exists()


def test_a_full_scratch_disk_keeps_the_finished_tiles_for_the_next_run(tmp_path, capsys, good, monkeypatch):
    from dlcore.io.labels import LabelCanvas

    config = tmp_path / "dlcore.toml"
    config.write_text(f'[dlcore]\nwork_dir = "{tmp_path / "scratch"}"\ncheckpoint_every_s = 0\n')
    monkeypatch.setenv("DLCORE_CONFIG", str(config))
    args = ("nuclei-classical", good, "-o", tmp_path / "out", "--channel", "0", "--tile-size", "64", "--halo", "24",
            "--no-tissue-detection")
    with monkeypatch.context() as disk:
        _full_disk_after(disk, LabelCanvas, "_store_many", 5, str(tmp_path / "scratch" / "labels.zarr"))
        code, text = _run(capsys, *args)
    assert code == 1 and "the disk is full" in text and "tiles are kept in the run's checkpoint" in text
    assert not (tmp_path / "out" / "discs" / "nuclei-classical").exists()
    code, text = _run(capsys, *args)  # space freed: the run continues
    assert code == 0, text
    import json

    provenance = json.loads((tmp_path / "out" / "discs" / "nuclei-classical" / "provenance.json").read_text())
    assert provenance["summary"]["resumed"]["tiles_done_before"] >= 4


def test_evaluating_against_labels_of_another_size_names_both_sizes(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "labels").mkdir()
    write_png(tmp_path / "set" / "images" / "a.png", disc_image(128))
    Image.fromarray(np.zeros((100, 90), np.uint16)).save(tmp_path / "set" / "labels" / "a.png")
    assert main(["evaluate", "nuclei-classical", str(tmp_path / "set"), "--channel", "0", "--mpp", "0.5"]) == 1
    assert "is 90x100 but its image is 128x128" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "nuclei-classical"], "the following arguments are required: slides"),
    (["run", "nuclei-classical", "x.png", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_wrong_usage_exits_2_with_argparse_s_reason(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_deleted_omero_ids_are_named_and_nothing_is_written(tmp_path):
    from dlcore.config import Config
    from dlcore.errors import OmeroError
    from dlcore.omero.workflows import run_on_objects
    from omero_double import Server, _delete, demo_levels

    server = Server()
    group = server.add_group("lab", "rwra--")
    alice = server.add_user("alice", [group])
    dataset = server.add_dataset("d", owner=alice, group=group)
    image = server.add_image(demo_levels(tmp_path / "s", 512, 512), name="gone", owner=alice, group=group,
                             dataset=dataset)
    _delete(server, "Image", image)
    before = set(server.objects)
    with pytest.raises(OmeroError, match=rf"Image {image}: not found, or you are not allowed to see it.*Nothing was written"):
        run_on_objects(server.connect(alice, group), "nuclei-classical", "Image", [image], {}, config=Config())
    assert set(server.objects) == before


def test_nothing_is_left_in_scratch_by_a_refused_input(tmp_path, capsys, monkeypatch):
    config = tmp_path / "dlcore.toml"
    config.write_text(f'[dlcore]\nwork_dir = "{tmp_path / "scratch"}"\n')
    monkeypatch.setenv("DLCORE_CONFIG", str(config))
    blank = write_png(tmp_path / "blank.png", np.full((256, 256, 3), 245, np.uint8))
    code, text = _run(capsys, "nuclei-classical", blank, "-o", tmp_path / "out")
    assert code == 1 and "no tissue found" in text
    leftovers = [p for p in (tmp_path / "scratch").rglob("*")] if (tmp_path / "scratch").exists() else []
    assert [p for p in leftovers if p.is_file()] == []
    shutil.rmtree(tmp_path / "scratch", ignore_errors=True)


def test_the_catalogue_has_25_inputs_and_names_tests_that_exist():
    import re

    catalogue = (Path(__file__).parent.parent / "docs" / "BAD_INPUTS.md").read_text()
    rows = [line for line in catalogue.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 25
    for row in rows:
        named = re.findall(r"`?(tests/[\w/]+\.py)::(\w+)`?", row)
        assert named or re.search(r"`(tests/[\w/]+\.py)`", row), f"no test named in: {row}"
        for file, function in named:
            assert re.search(rf"^def {function}\(", (Path(__file__).parent.parent / file).read_text(), re.M), \
                f"{file}::{function} does not exist"
