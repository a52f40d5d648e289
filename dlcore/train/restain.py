"""Other stains from real H&E with exact masks: IHC-like and fluorescence-like renderings.

Real annotated nuclei are scarce offline and almost all of them are H&E.  These functions turn an
annotated H&E image into an image of another modality *with the same nuclei*, so that the annotation
stays exact (the idea of Hou et al., CVPR 2019, synthesis with exact masks, applied to real tissue):

- :func:`as_ihc`: colour deconvolution (scikit-image's ``rgb2hed``, Ruifrok & Johnston's vectors);
  the eosin is mostly removed (an IHC counterstain is haematoxylin only) and DAB is added as nuclear
  markers (a random share of the annotated nuclei: part of their haematoxylin becomes DAB) or as
  cytoplasmic/membranous ones (in the eosin-marked cytoplasm of random regions, never in the
  nuclei) show it, then the stains are mixed back;
- :func:`as_fluorescence`: the haematoxylin optical density is a nuclear-stain map with the real
  chromatin texture, shapes and crowding; it becomes a DAPI/Hoechst-like emission image (dark
  background with autofluorescence offset, gamma, Poisson-Gaussian noise, 8 or 16 bit).

Both are random (``rng``) and leave the labels untouched.
"""
from __future__ import annotations

import numpy as np


IHC_PATTERNS = ("nuclear", "cytoplasmic", "both", "none")


def as_ihc(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *,
           positive_fraction: tuple[float, float] = (0.0, 0.8), pattern: str | None = None) -> np.ndarray:
    """An IHC-looking uint8 RGB image of ``image`` (uint8 RGB H&E) whose nuclei are ``labels``.

    The haematoxylin is kept at 40–100 % (IHC counterstains are often paler), the eosin scaled by
    0.05–0.35, and DAB is added in one of the patterns markers show:

    - nuclear (Ki-67, ER, p53): each nucleus is positive with a probability drawn from
      ``positive_fraction``; a positive nucleus keeps 25–60 % of its haematoxylin and gains DAB of
      0.6–1.4 times the haematoxylin it had;
    - cytoplasmic or membranous (cytokeratins, HER2, CD markers): DAB of 1–4 times the eosin density
      (the cytoplasm and stroma eosin marked) wherever a smooth random field is positive (cells and
      regions, 20–80 % of the image), outside the nuclei, which stay haematoxylin-blue;
    - both, or none (a negative slide).

    ``pattern`` picks one of :data:`IHC_PATTERNS`; None draws it (40 / 35 / 15 / 10 %).
    """
    from scipy import ndimage as ndi
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image.astype(np.float64) / 255.0)
    hed[..., 0] = np.maximum(hed[..., 0], 0) * rng.uniform(0.4, 1.0)
    eosin = np.maximum(hed[..., 1], 0)
    hed[..., 1] *= rng.uniform(0.05, 0.35)
    hed[..., 2] = np.maximum(hed[..., 2], 0) * 0.3
    pattern = pattern or str(rng.choice(IHC_PATTERNS, p=[0.4, 0.35, 0.15, 0.1]))
    n = int(labels.max())
    if pattern in ("nuclear", "both") and n:
        share = rng.uniform(*positive_fraction)
        positive = np.zeros(n + 1, bool)
        positive[1:] = rng.random(n) < share
        keep = np.ones(n + 1)
        keep[positive] = rng.uniform(0.25, 0.6, int(positive.sum()))
        gain = np.zeros(n + 1)
        gain[positive] = rng.uniform(0.6, 1.4, int(positive.sum()))
        haematoxylin = hed[..., 0].copy()
        hed[..., 0] = haematoxylin * keep[labels]
        hed[..., 2] += haematoxylin * gain[labels]
    if pattern in ("cytoplasmic", "both"):
        field = ndi.gaussian_filter(rng.standard_normal(labels.shape), rng.uniform(4, 30))
        positive_area = field > np.quantile(field, 1 - rng.uniform(0.2, 0.8))
        hed[..., 2] += np.where(positive_area & (labels == 0), eosin * rng.uniform(1.0, 4.0), 0.0)
    return np.round(np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)


def nuclear_density(image: np.ndarray) -> np.ndarray:
    """The haematoxylin optical density of a uint8 RGB image (``rgb2hed``'s first channel, >= 0)."""
    from skimage.color import rgb2hed

    return np.maximum(rgb2hed(image.astype(np.float64) / 255.0)[..., 0], 0)


def as_fluorescence(image: np.ndarray, rng: np.random.Generator, *, dtype=np.uint16,
                    labels: np.ndarray | None = None) -> np.ndarray:
    """A ``(Y, X, 1)`` nuclear-fluorescence image (``dtype`` uint8 or uint16) rendered from the
    haematoxylin of the uint8 RGB H&E ``image``: emission = offset + gain * ((density - floor) / p99.5)^gamma
    (``floor``: a random 20th–60th percentile, the faint haematoxylin outside nuclei),
    then Poisson (photon) and Gaussian (read) noise; the bit range used is random (16 bit: 10–16
    bits, as cameras deliver).

    With ``labels`` (the nuclei), each nucleus's brightness is scaled on its own, as DNA content and
    compaction make it vary in real DAPI/Hoechst images far more than haematoxylin does in H&E: a
    log-normal factor (spread 0.2–0.7) for every nucleus, and 0–3 % of them (mitoses, apoptotic
    bodies) 2–4 times brighter, so that the brightest set the image's range and the dim ones stay dim."""
    from scipy import ndimage as ndi

    density = ndi.gaussian_filter(nuclear_density(image), rng.uniform(0.0, 1.0))
    floor, scale = np.percentile(density, [rng.uniform(20, 60), 99.5])  # cytoplasm's haematoxylin: little dye
    signal = np.clip((density - floor) / max(scale - floor, 1e-6), 0, 1.5) ** rng.uniform(0.7, 1.5)
    if labels is not None and labels.max() > 0:
        n = int(labels.max())
        factor = np.exp(rng.normal(0.0, rng.uniform(0.2, 0.7), n + 1))
        factor[1:][rng.random(n) < rng.uniform(0.0, 0.03)] *= rng.uniform(2.0, 4.0)
        factor[0] = 1.0
        signal = signal * factor[labels]
        signal /= max(float(np.percentile(signal, 99.5)), 1e-6)
    top = 255.0 if dtype == np.uint8 else float(2 ** int(rng.integers(10, 17)) - 1)
    offset = rng.uniform(0.0, 0.08) * top
    gain = rng.uniform(0.35, 0.9) * top
    photons = rng.uniform(30, 400)  # photons at full gain: fewer = noisier
    emission = rng.poisson(np.maximum(offset + gain * signal, 0) / top * photons) / photons * top
    emission += rng.normal(0, rng.uniform(0.002, 0.02) * top, emission.shape)
    limit = float(np.iinfo(dtype).max)
    return np.clip(np.round(emission), 0, limit).astype(dtype)[..., None]
