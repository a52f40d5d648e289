"""Quality control of prediction models, in the style of ZeroCostDL4Mic: figures on held-out images.

- :func:`image_metrics`: PSNR, SSIM, Pearson r, NRMSE and MAE of a prediction against its target.
  SSIM is scikit-image's with ZeroCostDL4Mic's (and Wang et al.'s) settings: Gaussian weights, sigma
  1.5, population covariance; NRMSE is the RMSE divided by the target's range (max - min).
- :func:`baselines`: trivial predictors fitted on the training images, so that a figure means
  something: the training targets' mean, a linear regression from the input channels, a per-pixel
  lookup (the mean target in each of 64 quantile bins of the input: any per-pixel function of the
  input), and for CARE the input itself.
- :func:`evaluate`: the model and the baselines on every held-out image.
- :func:`n2v_synthetic_check`: Noise2Void's honest check: noise of known strength added to real clean
  tissue, N2V trained on the noisy image alone, PSNR(noisy, clean) against PSNR(denoised, clean).

Figures are in the normalised target units the network predicts (for targets kept on their own scale,
e.g. 0-1, those units).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dlcore.errors import ParameterError
from dlcore.restore.data import EPS, PreparedImage

METRICS = ("psnr", "ssim", "pearson_r", "nrmse", "mae")
LOOKUP_BINS = 64


def _pair(prediction, target) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction, np.float64)
    target = np.asarray(target, np.float64)
    if prediction.shape != target.shape:
        raise ParameterError(f"prediction {prediction.shape} and target {target.shape} must have the same shape")
    return prediction, target


def psnr(prediction, target, *, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range² / MSE)`` (inf for a perfect prediction)."""
    prediction, target = _pair(prediction, target)
    mse = float(np.mean((prediction - target) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


def ssim(prediction, target, *, data_range: float) -> float:
    """Structural similarity (scikit-image; Gaussian sigma 1.5, population covariance) of 2-D images,
    or of ``(C, Y, X)`` stacks (mean over channels)."""
    from skimage.metrics import structural_similarity

    prediction, target = _pair(prediction, target)
    kwargs = dict(data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if prediction.ndim == 3:
        return float(np.mean([structural_similarity(t, p, **kwargs) for p, t in zip(prediction, target)]))
    return float(structural_similarity(target, prediction, **kwargs))


def pearson_r(prediction, target) -> float:
    """Pearson's correlation coefficient over all pixels (nan when either is constant)."""
    prediction, target = _pair(prediction, target)
    p, t = prediction.ravel() - prediction.mean(), target.ravel() - target.mean()
    denominator = np.sqrt((p * p).sum() * (t * t).sum())
    return float((p * t).sum() / denominator) if denominator > 0 else float("nan")


def nrmse(prediction, target) -> float:
    """Root mean squared error divided by the target's range (max - min)."""
    prediction, target = _pair(prediction, target)
    span = float(target.max() - target.min())
    rmse = float(np.sqrt(np.mean((prediction - target) ** 2)))
    return rmse / span if span > 0 else float("nan")


def image_metrics(prediction, target, *, data_range: float | None = None) -> dict[str, float]:
    """PSNR, SSIM, Pearson r, NRMSE and MAE of ``prediction`` against ``target`` (same shape: ``(Y, X)``
    or ``(C, Y, X)``).  ``data_range`` (PSNR's peak, SSIM's range) defaults to the target's max - min."""
    prediction, target = _pair(prediction, target)
    if data_range is None:
        data_range = float(target.max() - target.min()) or 1.0
    return {"psnr": psnr(prediction, target, data_range=data_range),
            "ssim": ssim(prediction, target, data_range=data_range),
            "pearson_r": pearson_r(prediction, target), "nrmse": nrmse(prediction, target),
            "mae": float(np.mean(np.abs(prediction - target)))}


# -- baselines -------------------------------------------------------------------------------------
Predictor = Callable[[PreparedImage], np.ndarray]


def _pixels(images: Sequence[PreparedImage], which: str) -> np.ndarray:
    return np.concatenate([getattr(im, which).reshape(getattr(im, which).shape[0], -1) for im in images], axis=1)


def mean_baseline(train: Sequence[PreparedImage]) -> Predictor:
    """Predicts every pixel as the training targets' mean (per channel)."""
    mean = _pixels(train, "target").mean(axis=1)
    return lambda im: np.broadcast_to(mean[:, None, None], (len(mean), im.height, im.width)).astype(np.float32)


def linear_baseline(train: Sequence[PreparedImage]) -> Predictor:
    """Least squares from the input channels (and a constant) to each target channel, per pixel."""
    x = _pixels(train, "source")
    y = _pixels(train, "target")
    design = np.vstack([x, np.ones((1, x.shape[1]))]).T
    coef = np.linalg.lstsq(design, y.T, rcond=None)[0]  # (C_in + 1, C_out)

    def predict(im: PreparedImage) -> np.ndarray:
        flat = im.source.reshape(im.source.shape[0], -1)
        out = coef[:-1].T @ flat + coef[-1][:, None]
        return out.reshape(-1, im.height, im.width).astype(np.float32)

    return predict


def lookup_baseline(train: Sequence[PreparedImage], *, bins: int = LOOKUP_BINS) -> Predictor:
    """The mean target in each of ``bins`` quantile bins of the first input channel: the best per-pixel
    function of the input's value, without spatial context."""
    x = _pixels(train, "source")[0]
    y = _pixels(train, "target")
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    index = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1)
    table = np.stack([np.bincount(index, weights=yc, minlength=len(edges) - 1) for yc in y]) / np.maximum(counts, 1)
    table[:, counts == 0] = y.mean(axis=1, keepdims=True)

    def predict(im: PreparedImage) -> np.ndarray:
        i = np.clip(np.searchsorted(edges, im.source[0], side="right") - 1, 0, len(edges) - 2)
        return table[:, i].astype(np.float32)

    return predict


def baselines(mode: str, train: Sequence[PreparedImage]) -> dict[str, Predictor]:
    """The trivial predictors for ``mode``, fitted on the training images (see the module docstring)."""
    out = {"training mean": mean_baseline(train), "linear regression from input": linear_baseline(train),
           "per-pixel lookup from input": lookup_baseline(train)}
    if mode == "care" and train and train[0].source.shape[0] == train[0].target.shape[0]:
        out = {"input (no restoration)": lambda im: im.source, **out}
    return out


# -- evaluation ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """Held-out figures: per image and predictor, and their means over the images.

    Attributes
    ----------
    rows : ``[{"image", "predictor", "psnr", "ssim", "pearson_r", "nrmse", "mae"}]``.
    summary : ``{predictor: {metric: mean over the held-out images}}``; the model is ``"model"``.
    data_range : the PSNR peak / SSIM range used (None: each target's own max - min).
    predictions : ``{image name: (C, Y, X) model prediction}``, for the error maps.
    """

    rows: list[dict]
    summary: dict[str, dict[str, float]]
    data_range: float | None
    predictions: dict = field(default_factory=dict, repr=False)


def evaluate(trained, images: Sequence[PreparedImage] | None = None, *, data_range: float | None = None) -> Evaluation:
    """The model and the baselines on ``images`` (default: the split's held-out test images).

    Parameters
    ----------
    trained
        A :class:`~dlcore.restore.training.TrainedImageModel` (Noise2Void has no clean targets: its held-out
        figure is the masked loss, use :func:`n2v_synthetic_check`).
    images
        Prepared images with targets.
    data_range
        PSNR's peak and SSIM's range in target units; None: each target's max - min (for targets
        kept on a known scale, give it, e.g. 1.0).
    """
    if trained.mode == "n2v":
        raise ParameterError("Noise2Void has no clean targets to compare with; use n2v_synthetic_check")
    images = list(trained.split.test if images is None else images)
    if not images:
        raise ParameterError("no held-out images to evaluate on; use a test fraction above 0")
    predictors = {"model": trained.predict, **baselines(trained.mode, trained.split.train)}
    rows, predictions = [], {}
    for im in images:
        for name, predictor in predictors.items():
            prediction = predictor(im)
            if name == "model":
                predictions[im.name] = prediction
            rows.append({"image": im.name, "predictor": name,
                         **image_metrics(prediction, im.target, data_range=data_range)})
    summary = {name: {m: float(np.mean([r[m] for r in rows if r["predictor"] == name])) for m in METRICS}
               for name in predictors}
    return Evaluation(rows=rows, summary=summary, data_range=data_range, predictions=predictions)


def error_map(prediction, target, path, *, title: str = "", source=None) -> str:
    """A PNG of ``|prediction - target|`` with a colour bar (beside the source, target and prediction
    when ``source`` is given); 2-D arrays or the first channel of ``(C, Y, X)``.  Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    def first(a):
        a = np.asarray(a, np.float32)
        return a[0] if a.ndim == 3 else a

    prediction, target = first(prediction), first(target)
    panels = ([("input", first(source), "gray")] if source is not None else []) + [
        ("target", target, "gray"), ("prediction", prediction, "gray"),
        ("|prediction - target|", np.abs(prediction - target), "magma")]
    lo, hi = float(min(target.min(), prediction.min())), float(max(target.max(), prediction.max()))
    aspect = min(max(target.shape[0] / max(target.shape[1], 1), 0.4), 2.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 2.8 * aspect + 0.8), dpi=90)
    for ax, (name, image, cmap) in zip(np.atleast_1d(axes), panels):
        kwargs = {"vmin": lo, "vmax": hi} if name in ("target", "prediction") else {}
        shown = ax.imshow(image, cmap=cmap, **kwargs)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        if cmap == "magma":
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94) if title else None)
    fig.savefig(path)
    plt.close(fig)
    return str(path)


# -- Noise2Void's synthetic check --------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticCheck:
    """Noise2Void on noise of known strength (see :func:`n2v_synthetic_check`).

    Attributes
    ----------
    noisy, denoised : metrics of the noisy and the denoised held-out strip against the clean one.
    psnr_gain : ``denoised["psnr"] - noisy["psnr"]``, dB.
    gaussian : a reference: Gaussian smoothing of the noisy strip with the sigma (in ``gaussian["sigma"]``)
        that does best on the validation strip *against the clean image* (an oracle-tuned classical filter).
    sigma, poisson_peak : the noise added.
    columns : the test strip's columns; ``trained`` the N2V model; ``images`` clean/noisy/denoised strips.
    """

    noisy: dict
    denoised: dict
    psnr_gain: float
    sigma: float
    poisson_peak: float | None
    columns: tuple[int, int]
    seconds: float
    gaussian: dict
    trained: object = field(repr=False)
    images: dict = field(repr=False, default_factory=dict)


def clean_tissue() -> np.ndarray:
    """A real clean tissue image in [0, 1]: the grey level of scikit-image's ``immunohistochemistry()``."""
    from skimage import data
    from skimage.color import rgb2gray

    return rgb2gray(data.immunohistochemistry()).astype(np.float32)


def add_noise(clean: np.ndarray, *, sigma: float, poisson_peak: float | None = None, seed: int = 0) -> np.ndarray:
    """``clean`` (in [0, 1]) with Poisson noise (``poisson_peak`` photons at 1; None: none) then Gaussian
    noise of standard deviation ``sigma``, float32."""
    rng = np.random.default_rng(seed)
    noisy = np.asarray(clean, np.float64)
    if poisson_peak:
        noisy = rng.poisson(np.clip(noisy, 0, None) * poisson_peak) / poisson_peak
    return (noisy + rng.normal(0.0, sigma, noisy.shape)).astype(np.float32)


GAUSSIAN_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def _gaussian_reference(noisy: np.ndarray, clean: np.ndarray, val_columns, test_columns) -> dict:
    """Gaussian smoothing of the whole noisy image, sigma chosen by PSNR against the clean validation strip,
    measured on the test strip."""
    from scipy import ndimage as ndi

    (v0, v1), (t0, t1) = val_columns, test_columns
    best = max(GAUSSIAN_SIGMAS, key=lambda s: psnr(ndi.gaussian_filter(noisy, s)[:, v0:v1], clean[:, v0:v1],
                                                   data_range=1.0))
    smoothed = ndi.gaussian_filter(noisy, best)[:, t0:t1]
    return {"sigma": float(best), **image_metrics(smoothed, clean[:, t0:t1], data_range=1.0)}


def n2v_synthetic_check(clean: np.ndarray | None = None, *, sigma: float = 0.1, poisson_peak: float | None = None,
                        options=None, test_fraction: float = 0.3, val_fraction: float = 0.1, seed: int = 0,
                        progress=None) -> SyntheticCheck:
    """Train Noise2Void on a noisy copy of a clean image and measure what it recovers.

    The noisy image is split into vertical strips (training | validation | test); N2V trains on the
    noisy training strip alone (it never sees a clean pixel); the test strip, never trained on, is
    denoised (with the whole noisy image's normalisation, as the engine would) and compared with the
    clean one.

    Parameters
    ----------
    clean
        A clean 2-D image in [0, 1]; default :func:`clean_tissue`.
    sigma, poisson_peak
        The noise (:func:`add_noise`).
    options
        :class:`~dlcore.restore.training.ImageTrainingOptions` (defaults when None).
    test_fraction, val_fraction
        Widths of the test and validation strips.
    seed
        Seeds the noise.
    progress
        ``(stage, done, total)`` callback.

    Returns
    -------
    SyntheticCheck
        PSNR / SSIM of the noisy and denoised test strip against the clean one, and the gain.
    """
    import time

    from dlcore.restore.data import ImagePair, prepare_images, strip_split
    from dlcore.restore.training import ImageTrainingOptions, train_image_model

    clean = clean_tissue() if clean is None else np.asarray(clean, np.float32)
    if clean.ndim != 2:
        raise ParameterError(f"the clean image must be 2-D, got shape {clean.shape}")
    options = options or ImageTrainingOptions()
    noisy = add_noise(clean, sigma=sigma, poisson_peak=poisson_peak, seed=seed)
    prepared = prepare_images([ImagePair("noisy", noisy[..., None])], mode="n2v", percentiles=options.percentiles)[0]
    split = strip_split(prepared, val_fraction=val_fraction, test_fraction=test_fraction, min_width=options.patch_size)
    started = time.monotonic()
    trained = train_image_model(split, mode="n2v", options=options, progress=progress)
    seconds = time.monotonic() - started
    x0, x1 = split.notes["columns"]["test"]
    test = split.test[0]
    low, high = prepared.source_low[0], prepared.source_high[0]
    denoised = trained.predict(test)[0] * (high - low + EPS) + low
    truth, noisy_strip = clean[:, x0:x1], noisy[:, x0:x1]
    gaussian = _gaussian_reference(noisy, clean, split.notes["columns"]["val"], (x0, x1))
    return SyntheticCheck(noisy=image_metrics(noisy_strip, truth, data_range=1.0),
                          denoised=image_metrics(denoised, truth, data_range=1.0),
                          psnr_gain=psnr(denoised, truth, data_range=1.0) - psnr(noisy_strip, truth, data_range=1.0),
                          sigma=float(sigma), poisson_peak=poisson_peak, columns=(int(x0), int(x1)), seconds=seconds,
                          gaussian=gaussian, trained=trained,
                          images={"clean": truth, "noisy": noisy_strip, "denoised": denoised})


__all__ = ["METRICS", "psnr", "ssim", "pearson_r", "nrmse", "image_metrics", "baselines", "evaluate", "Evaluation",
           "error_map", "n2v_synthetic_check", "SyntheticCheck", "add_noise", "clean_tissue"]
