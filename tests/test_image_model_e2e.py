"""The shipped image-translation model through the whole engine: a real IHC section as a slide file, tiles
blended into a predicted image, scored against the section's own DAB on the strip training never saw."""
from __future__ import annotations

import numpy as np
import pytest

from dlcore.io.local import open_slide
from dlcore.io.local_sink import LocalFolderSink
from dlcore.models.registry import load_task
from dlcore.train.recipes.translation_ihc import heldout_start, ihc_image, source_and_target
from dlcore.workflows import RunOptions, analyse_slide
from tests.synthetic import write_ome_tiff

MODEL = "translation-ihc-dab"


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    return write_ome_tiff(tmp_path_factory.mktemp("ihc") / "ihc.ome.tif", ihc_image(), mpp=0.5, tile=128)


def _predict(section, out, **params):
    import tifffile

    slide = open_slide(section)
    try:
        result = analyse_slide(slide, load_task(MODEL, params), LocalFolderSink(out),
                               options=RunOptions(detect_tissue=False, checkpoint=False, workers=0))
    finally:
        slide.close()
    stored = tifffile.imread(result.outputs["predicted image"], level=0)
    image = result.summary["predicted_image"]
    scale, offset = np.array(image["scale"])[:, None, None], np.array(image["offset"])[:, None, None]
    return offset + scale * stored.astype(np.float64), result


def test_the_translation_model_predicts_the_held_out_dab_through_tiles(section, tmp_path):
    tiled, result = _predict(section, tmp_path / "tiled", tile_size=128, halo=32, output_dtype="uint16")
    whole, _ = _predict(section, tmp_path / "whole", tile_size=512, halo=32)
    assert result.summary["tiles"] == 16 and tiled.shape == (1, 512, 512)
    assert result.summary["predicted_image"]["channels"] == ["DAB"]
    assert result.summary["predicted_image"]["range_measured"] is False  # the model's known 0-1 range
    assert 0.0 <= tiled.min() and tiled.max() <= 1.0
    # 16 tiles of 128 + 32 against one window: the U-Net sees further than the halo, so not identical,
    # but close (the figure the BENCHMARKS table gives for 512 px tiles is 5e-4 mean)
    assert np.abs(tiled - whole).mean() < 0.01
    x0 = heldout_start(512)
    _, dab = source_and_target(ihc_image())
    r = np.corrcoef(tiled[0, :, x0:].ravel(), dab[:, x0:, 0].ravel())[0, 1]
    print(f"tiled vs one window: mean abs {np.abs(tiled - whole).mean():.2e}; held-out Pearson r {r:.3f}")
    assert r > 0.8, r  # the card's held-out Pearson r is 0.883 (whole strip at once); baselines are below 0.13


def test_dlcore_run_writes_the_prediction_of_an_image_model(section, tmp_path, capsys):
    from dlcore.cli import main

    assert main(["run", MODEL, str(section), "-o", str(tmp_path), "--no-tissue-detection", "--no-checkpoint",
                 "--param", "output_dtype=uint8"]) == 0
    printed = capsys.readouterr().out
    assert "predicted image (DAB; uint8)" in printed
    assert (tmp_path / "ihc" / MODEL / "prediction.ome.tif").is_file()
    assert not (tmp_path / "ihc" / MODEL / "objects.csv").exists()
