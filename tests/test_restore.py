"""Prediction models (dlcore.restore): Noise2Void masking, QC metrics, paired data, tiny trainings, the
package round trip through the registry, the task's parameters and checks, and the shipped translation model."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from dlcore.config import Config  # noqa: E402
from dlcore.errors import InputError, ParameterError, SlideError  # noqa: E402
from dlcore.io.slide import Level, SlideInfo  # noqa: E402
from dlcore.models.registry import find_model, load_task, validate_package  # noqa: E402
from dlcore.restore.data import (ImagePair, prepare_images, read_paired_folders, split_images,  # noqa: E402
                                 strip_split)
from dlcore.restore.masking import BlindSpotMasking, mask_patch  # noqa: E402
from dlcore.restore.metrics import evaluate, image_metrics, nrmse, pearson_r, psnr, ssim  # noqa: E402
from dlcore.restore.training import ImageTrainingOptions, heldout_loss, train_image_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(batch_size=4, patch_size=32, channels=(8, 16), seed=0, threads=2)


def smooth_pairs(n: int = 3, size: int = 64, seed: int = 0) -> list[ImagePair]:
    """``n`` (noisy, clean) uint8 pairs of smooth patterns."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    pairs = []
    for i in range(n):
        clean = (np.sin(xx / 5 + i) * np.cos(yy / 7 - i) + 1) * 100 + 20
        noisy = clean + rng.normal(0, 25, clean.shape)
        pairs.append(ImagePair(f"im{i}.png", np.clip(noisy, 0, 255).astype(np.uint8)[..., None],
                               clean.astype(np.uint8)[..., None]))
    return pairs


# -- masking ---------------------------------------------------------------------------------------
def test_blind_spot_values_come_from_another_pixel_and_the_fraction_is_right():
    rng = np.random.default_rng(1)
    patch = np.arange(2 * 96 * 96, dtype=np.float32).reshape(2, 96, 96)  # every value names its own position
    fractions = []
    for _ in range(60):
        m = mask_patch(patch, BlindSpotMasking(fraction=0.002, neighbourhood=5), rng)
        assert np.all((m.ys != m.source_ys) | (m.xs != m.source_xs))  # never the pixel itself
        assert np.abs(m.ys - m.source_ys).max() <= 2 and np.abs(m.xs - m.source_xs).max() <= 2
        assert np.all((m.source_ys >= 0) & (m.source_ys < 96) & (m.source_xs >= 0) & (m.source_xs < 96))
        assert np.array_equal(m.input[:, m.ys, m.xs], patch[:, m.source_ys, m.source_xs])
        assert not np.any(m.input[:, m.ys, m.xs] == patch[:, m.ys, m.xs])  # no information from itself
        assert np.array_equal(m.input[:, ~m.mask], patch[:, ~m.mask])  # nothing else touched
        assert m.mask.sum() == len(m.ys)
        fractions.append(m.mask.mean())
    assert np.mean(fractions) == pytest.approx(0.002, rel=0.15)
    dense = mask_patch(patch, BlindSpotMasking(fraction=0.05), rng)
    assert dense.mask.mean() == pytest.approx(0.05, rel=0.25)
    with pytest.raises(ParameterError, match="fraction"):
        BlindSpotMasking(fraction=0.0)
    with pytest.raises(ParameterError, match="odd"):
        BlindSpotMasking(neighbourhood=4)


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values():
    target = np.zeros((16, 16))
    target[:, 8:] = 1.0
    prediction = target + 0.1  # MSE 0.01
    assert psnr(prediction, target, data_range=1.0) == pytest.approx(20.0)
    assert psnr(target, target, data_range=1.0) == float("inf")
    assert nrmse(prediction, target) == pytest.approx(0.1)
    assert pearson_r(2 * target + 3, target) == pytest.approx(1.0)
    # x = 1, 2, 3, 4 and y = 2, 4, 5, 4: sum dx dy = 3.5, sum dx² = 5, sum dy² = 4.75
    assert pearson_r(np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 5, 4])) == pytest.approx(3.5 / np.sqrt(5 * 4.75))
    assert ssim(target, target, data_range=1.0) == pytest.approx(1.0)
    assert ssim(prediction, target, data_range=1.0) < 1.0
    m = image_metrics(prediction, target, data_range=1.0)
    assert m["mae"] == pytest.approx(0.1) and set(m) == {"psnr", "ssim", "pearson_r", "nrmse", "mae"}
    with pytest.raises(ParameterError, match="same shape"):
        image_metrics(prediction[:8], target)


# -- data ------------------------------------------------------------------------------------------
def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_pairs_are_matched_by_name_and_problems_name_the_files(tmp_path):
    a = np.zeros((32, 40), np.uint8)
    _save(tmp_path / "ok" / "low" / "cell01.png", a)
    _save(tmp_path / "ok" / "high" / "cell01.png", a + 1)
    pairs = read_paired_folders(tmp_path / "ok")
    assert [p.name for p in pairs] == ["cell01.png"] and pairs[0].source.shape == (32, 40, 1)

    _save(tmp_path / "lonely" / "source" / "a.png", a)
    _save(tmp_path / "lonely" / "source" / "b.png", a)
    _save(tmp_path / "lonely" / "target" / "a.png", a)
    with pytest.raises(InputError, match=r"b\.png .*no partner"):
        read_paired_folders(tmp_path / "lonely")

    _save(tmp_path / "sizes" / "low" / "x.png", a)
    _save(tmp_path / "sizes" / "high" / "x.png", np.zeros((32, 48), np.uint8))
    with pytest.raises(InputError, match=r"low/x\.png is 40x32 but its partner .*high/x\.png is 48x32"):
        read_paired_folders(tmp_path / "sizes")

    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match=r"low/ \+ high/"):
        read_paired_folders(tmp_path / "none")
    _save(tmp_path / "named" / "raw" / "x.png", a)
    _save(tmp_path / "named" / "clean" / "x.png", a)
    assert len(read_paired_folders(tmp_path / "named", source_dir="raw", target_dir="clean")) == 1


def test_percentile_normalisation_and_splits():
    pairs = smooth_pairs(5)
    prepared = prepare_images(pairs, mode="care")
    p = prepared[0]
    low, high = np.percentile(pairs[0].source, (1, 99.8))
    assert p.source_low[0] == pytest.approx(low) and p.source_high[0] == pytest.approx(high)
    assert np.percentile(p.source, 1) == pytest.approx(0, abs=1e-5)
    split = split_images(prepared, val_fraction=0.2, test_fraction=0.2)
    names = [im.name for part in (split.train, split.val, split.test) for im in part]
    assert sorted(names) == sorted(p.name for p in pairs) and len(split.test) == 1 and len(split.val) == 1
    wide = prepare_images(smooth_pairs(1, size=128), mode="care")[0]
    one = strip_split(wide, val_fraction=0.1, test_fraction=0.3, min_width=16)
    cols = one.notes["columns"]
    assert cols == {"train": [0, 77], "val": [77, 90], "test": [90, 128]}
    assert one.train[0].width + one.val[0].width + one.test[0].width == 128
    assert np.array_equal(one.test[0].source, wide.source[:, :, 90:])
    with pytest.raises(ParameterError, match="training strip .* narrower than a 96 px patch"):
        strip_split(wide, val_fraction=0.1, test_fraction=0.3, min_width=96)
    with pytest.raises(ParameterError, match="validation strip"):
        strip_split(prepared[0], val_fraction=0.1, test_fraction=0.3, min_width=16)


# -- training --------------------------------------------------------------------------------------
def test_tiny_care_training_reduces_the_loss_and_is_evaluated_against_baselines():
    options = ImageTrainingOptions(epochs=6, steps_per_epoch=6, lr=3e-3, norm="none", val_fraction=0.25,
                                   test_fraction=0.25, patience=10, **TINY)
    trained = train_image_model(smooth_pairs(4), mode="care", options=options)
    losses = trained.history["train_loss"]
    assert losses[-1] < losses[0]
    assert trained.loss == "l1" and trained.architecture[0] == "UNet2D"
    evaluation = evaluate(trained)
    assert {"model", "input (no restoration)", "training mean", "linear regression from input",
            "per-pixel lookup from input"} == set(evaluation.summary)
    assert np.isfinite(evaluation.summary["model"]["psnr"])


def test_tiny_noise2void_run():
    clean = smooth_pairs(1, size=96)[0].target
    noisy = [ImagePair("noisy.png", np.clip(clean + np.random.default_rng(0).normal(0, 20, clean.shape), 0, 255)
                       .astype(np.uint8))]
    options = ImageTrainingOptions(epochs=2, steps_per_epoch=3, mask_fraction=0.01, val_fraction=0.2,
                                   test_fraction=0.3, **TINY)
    trained = train_image_model(noisy, mode="n2v", options=options)
    assert trained.loss == "mse" and len(trained.history["val_loss"]) == 2
    assert np.isfinite(trained.history["val_loss"]).all() and np.isfinite(heldout_loss(trained))
    assert trained.predict(trained.split.test[0]).shape == trained.split.test[0].source.shape
    with pytest.raises(ParameterError, match="Noise2Void"):
        train_image_model(noisy, mode="n2v", options=ImageTrainingOptions(loss="ssim", **TINY))
    with pytest.raises(ParameterError, match="mode"):
        train_image_model(noisy, mode="denoise")


# -- package, registry, task -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A tiny translation model (sigmoid output on 0-1 targets) registered in a fresh registry."""
    from dlcore.restore.package import register_image_model

    pairs = smooth_pairs(3)
    pairs = [ImagePair(p.name, p.source, p.target.astype(np.float32) / 255) for p in pairs]
    options = ImageTrainingOptions(epochs=2, steps_per_epoch=3, final_activation="sigmoid",
                                   target_normalization="none", val_fraction=0.34, test_fraction=0.34, **TINY)
    trained = train_image_model(pairs, mode="translate", options=options)
    root = tmp_path_factory.mktemp("restore") / "registry"
    folder = register_image_model(trained, root, name="tiny-translate", example=pairs[0].source,
                                  output_channels=["clean"], evaluation=evaluate(trained, data_range=1.0),
                                  tile_size=64, halo=16, mpp=0.5)
    return root, folder, trained


def test_package_round_trip_through_the_registry(registry):
    from dlcore.restore.task import ImagePredictionTask

    root, folder, trained = registry
    report = validate_package(folder)
    assert report.ok, report.reason()
    assert sorted(p.name for p in (folder / "report").iterdir()) == ["error_map_1.png", "learning_curves.png",
                                                                      "metrics.csv", "qc.json"]
    task = load_task("tiny-translate", {"device": "cpu"}, config=Config(models_dir=root, device="cpu"))
    assert isinstance(task, ImagePredictionTask) and task.kind == "image" and hasattr(task, "network")
    assert task.output_channels == ("clean",) and task.value_range == (0.0, 1.0) and not task.on_gpu
    assert (task.tile_size, task.halo, task.mpp, task.class_names) == (64, 16, 0.5, ())
    image = smooth_pairs(1, size=80, seed=5)[0].source
    task = task.prepare([image])
    out = task.predict([image[:45, :70], image])  # any size: padded to the network's divisor and cropped back
    assert [o.shape for o in out] == [(1, 45, 70), (1, 80, 80)] and out[0].dtype == np.float32
    assert out[0].min() >= 0 and out[0].max() <= 1
    whole = task.predict([image])[0]
    assert np.allclose(out[1], whole)
    provenance = task.provenance()
    assert provenance["kind"] == "image" and provenance["normalization"]["slide_low"] is not None
    again = load_task("tiny-translate", {"device": "cpu", "output_dtype": "uint16", "tile_size": 128, "halo": 64},
                      config=Config(models_dir=root, device="cpu"))
    assert (again.output_dtype, again.tile_size, again.halo) == ("uint16", 128, 64)


def test_task_parameters_are_checked(registry):
    root, _, _ = registry
    config = Config(models_dir=root, device="cpu")
    with pytest.raises(ParameterError, match=r"halo=40 must be at most tile_size // 2 = 32"):
        load_task("tiny-translate", {"tile_size": 64, "halo": 40}, config=config)
    with pytest.raises(ParameterError, match=r"no parameter\(s\) \['threshold'\].*output_dtype"):
        load_task("tiny-translate", {"threshold": 0.5}, config=config)
    with pytest.raises(ParameterError, match="output_dtype='int8'"):
        load_task("tiny-translate", {"output_dtype": "int8"}, config=config)


def test_check_refuses_slides_the_model_was_not_trained_on(registry):
    root, _, _ = registry
    task = load_task("tiny-translate", {"device": "cpu"}, config=Config(models_dir=root, device="cpu"))

    def info(channels, dtype):
        return SlideInfo(name="s.tif", identity="s", levels=(Level(100, 100, 1.0),), mpp=None,
                         channels=tuple(channels), dtype=dtype, tile_size=(64, 64))

    task.check(info(["grey"], "uint8"))
    with pytest.raises(SlideError, match="takes 1-channel images .*channel=N"):
        task.check(info(["R", "G", "B"], "uint8"))
    with pytest.raises(SlideError, match="trained on uint8 images but s.tif is uint16"):
        task.check(info(["grey"], "uint16"))
    two = load_task("tiny-translate", {"device": "cpu", "channel": 1}, config=Config(models_dir=root, device="cpu"))
    two.check(info(["a", "b"], "uint8"))
    assert two.predict([np.zeros((20, 24, 2), np.uint8)])[0].shape == (1, 20, 24)


def test_a_second_training_of_the_same_name_is_a_new_version(registry):
    from dlcore.restore.package import register_image_model

    root, _, trained = registry
    folder = register_image_model(trained, root, name="tiny-translate", example=trained.split.train[0].source[0][..., None],
                                  output_channels=["clean"], tile_size=64, halo=16)
    assert folder.name == "tiny-translate-v2"
    assert "version: 2.0.0" in (folder / "rdf.yaml").read_text()


def test_cli_trains_a_care_model(tmp_path, capsys):
    from dlcore.cli import main as cli_main

    for pair in smooth_pairs(3, size=64):
        _save(tmp_path / "data" / "low" / pair.name, pair.source[..., 0])
        _save(tmp_path / "data" / "high" / pair.name, pair.target[..., 0])
    code = cli_main(["train", str(tmp_path / "data"), "--task", "care", "--name", "tiny-care", "--epochs", "1",
                     "--steps-per-epoch", "2", "--batch-size", "4", "--patch-size", "32", "--val-fraction", "0.34",
                     "--test-fraction", "0.34", "--registry", str(tmp_path / "registry")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "held-out test (never trained on)" in out and "input (no restoration)" in out
    assert (tmp_path / "registry" / "tiny-care" / "report" / "metrics.csv").is_file()


# -- the shipped model -----------------------------------------------------------------------------
def test_shipped_translation_model_loads_and_its_card_figure_is_reproduced():
    from dlcore.train.recipes.translation_ihc import NAME, heldout_through_task

    config = Config(models_dir=ROOT / "models", device="cpu")
    record = find_model(NAME, config)
    report = validate_package(record.path)
    assert report.ok, report.reason()
    card = record.card_text()
    row = next(line for line in card.splitlines() if line.startswith("| **model** |"))
    psnr_card, ssim_card, r_card = (float(v) for v in row.strip("|").split("|")[1:4])
    lookup = next(line for line in card.splitlines() if line.startswith("| per-pixel lookup from input |"))
    assert "never" in card and "python -m dlcore.train.recipes translation-ihc" in card
    weights = sum(p.stat().st_size for p in record.path.glob("weights*.pt"))
    assert weights < 5e6
    figures = heldout_through_task(load_task(NAME, {"device": "cpu"}, config=config))
    print(f"held-out strip through the task: PSNR {figures['psnr']:.2f} dB (card {psnr_card}), SSIM "
          f"{figures['ssim']:.3f} (card {ssim_card}), Pearson r {figures['pearson_r']:.3f} (card {r_card}); "
          f"lookup baseline r {lookup.split('|')[4].strip()}")
    assert abs(figures["pearson_r"] - r_card) <= 0.02
    assert abs(figures["psnr"] - psnr_card) <= 0.2
    assert re.search(r"translation-ihc-dab", card)
