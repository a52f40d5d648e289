"""``nuclei``: the shipped nuclei model that fits each slide, the classical pipeline without torch, and
the choice recorded."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dlcore.errors import SlideError
from dlcore.io.slide import Level, SlideInfo
from dlcore.tasks import resolve_task, task_names
from dlcore.tasks.auto import (BRIGHTFIELD_NUCLEI, CLASSICAL_NUCLEI, FLUORESCENCE_NUCLEI, AutoTask,
                               brightfield_stain, choose_nuclei, nuclear_channel)
from synthetic import real_he_field, real_ihc_field, write_ome_tiff

BOTH = {BRIGHTFIELD_NUCLEI, FLUORESCENCE_NUCLEI}


def info(channels, dtype) -> SlideInfo:
    return SlideInfo(name="s", identity="s", levels=(Level(100, 100, 1.0),), mpp=(0.5, 0.5), channels=tuple(channels),
                     dtype=dtype, tile_size=(64, 64))


def test_rgb_8_bit_is_brightfield_and_gets_the_brightfield_model():
    choice = choose_nuclei(info(("red", "green", "blue"), "uint8"), {}, torch_ok=True, installed=BOTH)
    assert (choice.chosen, choice.modality, choice.params) == (BRIGHTFIELD_NUCLEI, "brightfield", {})


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_one_channel_is_fluorescence_on_that_channel(dtype):
    choice = choose_nuclei(info(("Channel 0",), dtype), {}, torch_ok=True, installed=BOTH)
    assert (choice.chosen, choice.modality, choice.params) == (FLUORESCENCE_NUCLEI, "fluorescence", {"channel": 0})
    assert "only channel" in choice.reason


def test_the_nuclear_channel_is_found_by_name_or_given():
    multiplex = info(("CD3", "Hoechst 33342", "PanCK"), "uint16")
    assert nuclear_channel(multiplex) == (1, "channel 1 (Hoechst 33342), named as a nuclear stain")
    assert choose_nuclei(multiplex, {"channel": 2}, torch_ok=True, installed=BOTH).params == {"channel": 2}
    # 16-bit RGB-like three channels are not brightfield: the pixel type decides, not the channel count
    assert choose_nuclei(info(("DAPI", "FITC", "TRITC"), "uint16"), {}, torch_ok=True,
                         installed=BOTH).params == {"channel": 0}


@pytest.mark.parametrize("channels,problem", [(("CD3", "CD8"), "no channel is named"),
                                              (("DAPI", "Hoechst"), "all look nuclear")])
def test_several_channels_without_one_nuclear_stain_ask_for_channel(channels, problem):
    with pytest.raises(SlideError, match=f"{problem}.*--channel N"):
        choose_nuclei(info(channels, "uint16"), {}, torch_ok=True, installed=BOTH)
    with pytest.raises(SlideError, match="channel 5 does not exist"):
        nuclear_channel(info(channels, "uint16"), 5)


def test_a_stain_name_for_a_fluorescence_slide_is_refused_not_dropped():
    """``--channel hematoxylin`` means a brightfield stain; on fluorescence it must not turn into "find it"."""
    with pytest.raises(SlideError, match=r"channel='hematoxylin' names a stain.*--channel 0"):
        choose_nuclei(info(("DAPI", "CD3"), "uint16"), {"channel": "hematoxylin"}, torch_ok=True, installed=BOTH)
    with pytest.raises(SlideError, match="channel 2 does not exist in s: it has channels 0..1 \\(DAPI, CD3\\)"):
        choose_nuclei(info(("DAPI", "CD3"), "uint16"), {"channel": 2}, torch_ok=True, installed=BOTH)


def test_real_ihc_shows_dab_and_real_he_does_not():
    """The stain check on real tissue: scikit-image's IHC section against a real H&E field."""
    ihc, he = brightfield_stain(real_ihc_field()), brightfield_stain(real_he_field())
    assert ihc[0] == "ihc" and ihc[1] > 0.3
    assert he[0] == "he" and he[1] < 0.02
    choice = choose_nuclei(info(("red", "green", "blue"), "uint8"), {}, torch_ok=True, installed=BOTH, stain=ihc)
    assert choice.chosen == CLASSICAL_NUCLEI and "IHC" in choice.reason
    choice = choose_nuclei(info(("red", "green", "blue"), "uint8"), {}, torch_ok=True, installed=BOTH, stain=he)
    assert choice.chosen == BRIGHTFIELD_NUCLEI and "H&E (DAB on 0% of the tissue)" in choice.reason


def test_without_torch_or_the_model_the_classical_pipeline_runs_on_the_same_channel():
    no_torch = choose_nuclei(info(("DAPI", "CD3"), "uint16"), {}, torch_ok=False, installed=BOTH)
    assert (no_torch.chosen, no_torch.params) == (CLASSICAL_NUCLEI, {"channel": 0})
    assert "torch is not installed" in no_torch.reason
    missing = choose_nuclei(info(("r", "g", "b"), "uint8"), {}, torch_ok=True, installed={FLUORESCENCE_NUCLEI})
    assert missing.chosen == CLASSICAL_NUCLEI and f"{BRIGHTFIELD_NUCLEI} is not in the model registry" in missing.reason


def test_nuclei_is_listed_first_and_resolves_without_loading_a_model():
    assert task_names()[0] == "nuclei"
    task = resolve_task("nuclei", {"min_size": 12})
    assert isinstance(task, AutoTask) and task.name == "nuclei" and task.params == {"min_size": 12}


def _run(tmp_path, path, *extra):
    from dlcore.cli import main

    assert main(["run", "nuclei", str(path), "-o", str(tmp_path / "out"), "--no-tissue-detection", *extra]) == 0
    provenance = next((tmp_path / "out").glob("*/*/provenance.json"))
    return json.loads(provenance.read_text()), provenance.parent


def test_run_nuclei_on_an_he_slide_runs_the_shipped_brightfield_model_and_says_why(tmp_path, capsys):
    """The shipped registry holds ``nuclei-brightfield-unet``: ``nuclei`` runs it on a real H&E field (no
    DAB) and records why."""
    pytest.importorskip("torch")
    provenance, folder = _run(tmp_path, write_ome_tiff(tmp_path / "he.ome.tif", real_he_field(), mpp=0.5))
    assert folder.name == BRIGHTFIELD_NUCLEI and provenance["task"]["task"] == BRIGHTFIELD_NUCLEI
    assert provenance["task_choice"]["requested"] == "nuclei"
    assert provenance["task_choice"]["modality"] == "brightfield"
    assert "H&E (DAB on 0% of the tissue)" in provenance["task_choice"]["reason"]
    assert provenance["summary"]["objects"] > 100  # a real H&E field: its nuclei are found
    assert f"nuclei → {BRIGHTFIELD_NUCLEI}" in capsys.readouterr().out


def test_nuclei_runs_the_brightfield_model_when_the_registry_has_it(tmp_path):
    """A registry holding a (briefly trained) ``nuclei-brightfield-unet``: ``nuclei`` loads and runs it
    on an 8-bit RGB slide, once for two slides, and records the choice."""
    pytest.importorskip("torch")
    from dlcore.config import Config
    from dlcore.io import open_slide
    from dlcore.io.local_sink import LocalFolderSink
    from dlcore.tasks.classical import ClassicalNuclei
    from dlcore.train.api import train_model
    from dlcore.train.data import AnnotatedDataset, Sample
    from dlcore.train.recipes.nuclei_brightfield import spec
    from dlcore.workflows import RunOptions, analyse_slide

    field = real_he_field()
    labels = ClassicalNuclei().prepare([field]).segment(field)
    samples = tuple(Sample(field[:, x:x + 160], labels[:, x:x + 160], None, f"he {x}", f"g{x}", 0.5)
                    for x in (0, 160, 320))
    quick = spec(quick=True)
    train_model(AnnotatedDataset(samples, "instances", ("nucleus",)),
                spec=quick.__class__(**{**quick.__dict__, "test_groups": ("g320",)}), out_registry=tmp_path / "models")
    task = resolve_task("nuclei", {}, config=Config(models_dir=tmp_path / "models"))
    path = write_ome_tiff(tmp_path / "he.ome.tif", field, mpp=0.5)
    for run in ("a", "b"):
        slide = open_slide(path)
        try:
            result = analyse_slide(slide, task, LocalFolderSink(tmp_path / run), options=RunOptions(detect_tissue=False))
        finally:
            slide.close()
        assert result.provenance["task"]["task"] == BRIGHTFIELD_NUCLEI
        assert result.provenance["task_choice"]["chosen"] == BRIGHTFIELD_NUCLEI
        assert (tmp_path / run / "he" / BRIGHTFIELD_NUCLEI / "objects.csv").is_file()
    assert len(task._resolved) == 1  # the model was loaded once for both slides
    # a real IHC section (brown cytoplasmic DAB): the model is validated on H&E only, the classical pipeline runs
    ihc = write_ome_tiff(tmp_path / "ihc.ome.tif", real_ihc_field(), mpp=0.5)
    slide = open_slide(ihc)
    try:
        result = analyse_slide(slide, task, LocalFolderSink(tmp_path / "c"), options=RunOptions(detect_tissue=False))
    finally:
        slide.close()
    assert result.provenance["task"]["task"] == CLASSICAL_NUCLEI
    assert "DAB (brown) on" in result.provenance["task_choice"]["reason"] and "IHC" in result.provenance["task_choice"]["reason"]
    assert result.summary["objects"] > 100


def test_run_nuclei_on_a_16_bit_fluorescence_slide_runs_the_fluorescence_model(tmp_path):
    """The shipped ``nuclei-fluorescence-unet`` runs on the nuclear channel of a 16-bit slide (the real DSB
    crop in a 16-bit range), and says why."""
    pytest.importorskip("torch")
    from dlcore.train.recipes.nuclei_fluorescence import stardist_test_image

    image = stardist_test_image().image[..., 0].astype(np.uint16) * 200  # 8-bit data in a 16-bit range
    provenance, folder = _run(tmp_path, write_ome_tiff(tmp_path / "dapi.ome.tif", image, mpp=0.5))
    assert folder.name == FLUORESCENCE_NUCLEI
    assert provenance["task"]["parameters"]["channel"] == 0
    assert provenance["task_choice"]["modality"] == "fluorescence"
    assert "its only channel" in provenance["task_choice"]["reason"]
    assert 80 <= provenance["summary"]["objects"] <= 160  # 125 annotated nuclei in this image


def test_run_nuclei_without_torch_falls_back_to_the_classical_pipeline(tmp_path, monkeypatch):
    import dlcore.tasks.auto as auto

    monkeypatch.setattr(auto, "torch_installed", lambda: False)
    provenance, folder = _run(tmp_path, write_ome_tiff(tmp_path / "he.ome.tif", real_he_field(), mpp=0.5))
    assert folder.name == CLASSICAL_NUCLEI and provenance["task"]["task"] == CLASSICAL_NUCLEI
    assert "torch is not installed" in provenance["task_choice"]["reason"]
