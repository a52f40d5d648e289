"""Registration of a second image of the same section (dlcore.marker.registration), on a real IHC
section (scikit-image's ``immunohistochemistry()``) moved by known transforms and re-stained."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dlcore.errors import InputError
from dlcore.io.slide import Level, SlideInfo, check_region
from dlcore.marker.registration import (
    Registration, RegistrationError, measure_residual, register, register_slides, structure_image, warp_to_fixed,
)

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    from tests.synthetic import real_ihc_field

    return real_ihc_field()


def restain(rgb: np.ndarray) -> np.ndarray:
    """The same section as an H&E-like image: the DAB is gone, and eosin appears where DAB was
    (colour deconvolution, changed stain amounts, recomposition)."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    other = np.zeros_like(hed)
    other[..., 0] = hed[..., 0] * 1.1
    other[..., 1] = hed[..., 2] * 1.5
    return np.clip(hed2rgb(other) * 255, 0, 255).astype(np.uint8)


def similarity(angle_deg: float, scale: float, shift: tuple[float, float], centre: tuple[float, float]) -> np.ndarray:
    """3 x 3 fixed -> moving: rotate by ``angle_deg`` and scale about ``centre``, then shift."""
    a = np.deg2rad(angle_deg)
    linear = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = np.asarray(shift) + np.asarray(centre) - linear @ np.asarray(centre)
    return matrix


def moved(rgb: np.ndarray, truth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The moving image: ``moving(truth @ p) = rgb(p)``; glass (white) where ``rgb`` does not reach."""
    return cv2.warpAffine(rgb, truth[:2], size, flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))


def grid_error(matrix: np.ndarray, truth: np.ndarray, shape: tuple[int, int], margin: int = 32) -> float:
    """Largest distance between where ``matrix`` and ``truth`` send a grid of fixed points."""
    ys, xs = np.mgrid[margin:shape[0] - margin:16, margin:shape[1] - margin:16]
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    return float(np.abs(matrix @ points - truth @ points)[:2].max())


@pytest.mark.parametrize("kind", ["similarity", "affine"])
def test_recovers_a_known_transform_across_stains(ihc: np.ndarray, kind: str) -> None:
    truth = similarity(10.0, 1.05, (12.0, -7.0), (255.5, 255.5))
    if kind == "affine":
        truth = truth @ np.array([[1.0, 0.03, 0.0], [0.0, 0.98, 0.0], [0.0, 0.0, 1.0]])
    moving_rgb = moved(restain(ihc), truth, (512, 512))
    fixed = structure_image(ihc)
    result = register(fixed, structure_image(moving_rgb), kind=kind, fixed_mpp=0.5)

    assert result.kind == kind
    assert grid_error(result.matrix, truth, fixed.shape) < 1.0
    assert result.residual_px < 1.0 and result.residual_p90_px < 1.5
    assert result.residual_um == pytest.approx(result.residual_px * 0.5)
    assert result.patches >= 10 and result.refined
    assert result.coarse_method.startswith("ORB+RANSAC")
    json.dumps(result.as_dict())
    # the moving image brought into the fixed frame lies on the fixed image
    back = structure_image(warp_to_fixed(moving_rgb, result, fixed.shape))
    inside = warp_to_fixed(np.ones((512, 512), np.uint8), result, fixed.shape, labels=True).astype(bool)
    assert np.corrcoef(back[inside], fixed[inside])[0, 1] > 0.9


def test_rigid_finds_a_rotation_beyond_90_degrees(ihc: np.ndarray) -> None:
    truth = similarity(120.0, 1.0, (5.0, 9.0), (255.5, 255.5))
    fixed = structure_image(ihc)
    result = register(fixed, structure_image(moved(restain(ihc), truth, (512, 512))), kind="rigid")

    assert grid_error(result.matrix, truth, fixed.shape) < 1.0
    assert np.allclose(result.matrix[:2, :2].T @ result.matrix[:2, :2], np.eye(2), atol=1e-6)  # rigid
    assert result.residual_px < 1.0 and result.refined


def test_moving_image_with_half_the_pixel_size(ihc: np.ndarray) -> None:
    # the moving scan has 0.25 µm pixels (twice as many) against the fixed 0.5 µm, and is turned by 5°
    zoom = np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]])  # pixel centres, 0.5 -> 0.25 µm
    truth = zoom @ similarity(5.0, 1.0, (6.0, -4.0), (255.5, 255.5))
    fixed = structure_image(ihc)
    moving = structure_image(moved(restain(ihc), truth, (1024, 1024)))
    result = register(fixed, moving, kind="rigid", fixed_mpp=0.5, moving_mpp=0.25)

    assert grid_error(result.matrix, truth, fixed.shape) < 1.0  # moving pixels: 0.25 µm
    assert result.residual_px < 1.0
    assert "0.50 µm/px" in result.coarse_method


def test_refuses_an_unrelated_image(ihc: np.ndarray) -> None:
    from skimage import data

    with pytest.raises(RegistrationError, match=r"median residual displacement is \d+\.\d px.*max_residual_px=4"):
        register(structure_image(ihc), structure_image(data.astronaut()), kind="affine")
    assert issubclass(RegistrationError, InputError)


def test_refuses_when_nothing_can_be_measured(ihc: np.ndarray) -> None:
    with pytest.raises(RegistrationError, match=r"only 0 patches.*same section"):
        register(structure_image(ihc), np.zeros((512, 512), np.float32))


def test_the_residual_is_measured_independently(ihc: np.ndarray) -> None:
    truth = similarity(10.0, 1.0, (12.0, -7.0), (255.5, 255.5))
    fixed = structure_image(ihc)
    moving = structure_image(moved(restain(ihc), truth, (512, 512)))
    off = truth.copy()
    off[:2, 2] += (2.0, 1.0)  # a known error of sqrt(5) px
    assert measure_residual(fixed, moving, truth)[0] < 0.2
    median, p90, patches = measure_residual(fixed, moving, off)
    assert median == pytest.approx(np.sqrt(5), abs=0.3) and patches >= 10


@pytest.mark.parametrize("dtype", [np.uint16, np.int64])
def test_warped_labels_only_hold_input_values(ihc: np.ndarray, dtype: type) -> None:
    from skimage.measure import label

    nuclei = label(structure_image(ihc) > 0.5).astype(np.int64)
    labels = np.where(nuclei > 0, nuclei + (2**40 if dtype == np.int64 else 7), 0).astype(dtype)
    registration = Registration(kind="similarity", matrix=similarity(10.0, 1.05, (12.3, -7.6), (255.5, 255.5)),
                                residual_px=0.0, residual_p90_px=0.0, residual_um=None, patches=0,
                                coarse_method="given", refined=False)
    out = warp_to_fixed(labels, registration, (400, 600), labels=True)

    assert out.shape == (400, 600) and out.dtype == labels.dtype
    assert set(np.unique(out)) <= set(np.unique(labels)) | {0}
    assert len(np.unique(out)) > 0.5 * len(np.unique(labels))
    assert (out[:, 520:] == 0).all()  # outside the moving image
    y, x = 200, 250  # a pixel takes the label of the nearest moving pixel
    mx, my = np.rint(registration.map_points([[x, y]])[0]).astype(int)
    assert out[y, x] == labels[my, mx]
    rgb = warp_to_fixed(ihc, registration, (400, 600))
    assert rgb.shape == (400, 600, 3) and rgb.dtype == np.uint8


class ArraySlide:
    """An in-memory pyramidal slide (area-averaged levels) implementing :class:`dlcore.io.slide.Slide`."""

    def __init__(self, image: np.ndarray, mpp: float, levels: int = 3) -> None:
        self.levels = [image]
        for _ in range(levels - 1):
            last = self.levels[-1]
            self.levels.append(cv2.resize(last, (last.shape[1] // 2, last.shape[0] // 2), interpolation=cv2.INTER_AREA))
        self.info = SlideInfo(
            name="array", identity="array", mpp=(mpp, mpp), channels=("R", "G", "B"), dtype="uint8",
            tile_size=(256, 256),
            levels=tuple(Level(width=a.shape[1], height=a.shape[0], downsample=image.shape[1] / a.shape[1])
                         for a in self.levels),
        )

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        check_region(self.info, level, x, y, width, height)
        return self.levels[level][y:y + height, x:x + width]

    def close(self) -> None:
        pass


def on_glass(tissue: np.ndarray, shape: tuple[int, int], x: int, y: int) -> np.ndarray:
    canvas = np.full(shape + (3,), 242, np.uint8)
    canvas[y:y + tissue.shape[0], x:x + tissue.shape[1]] = tissue
    return canvas


def test_register_slides_recovers_a_shift_in_level0_pixels(ihc: np.ndarray, tmp_path) -> None:
    from dlcore.io.local import open_slide
    from tests.synthetic import write_ome_tiff

    write_ome_tiff(tmp_path / "he.ome.tif", on_glass(ihc, (768, 1024), 200, 120), mpp=0.5, levels=3)
    write_ome_tiff(tmp_path / "ihc.ome.tif", on_glass(restain(ihc), (768, 1024), 224, 106), mpp=0.5, levels=3)
    fixed, moving = open_slide(tmp_path / "he.ome.tif"), open_slide(tmp_path / "ihc.ome.tif")
    try:
        result = register_slides(fixed, moving, working_mpp=1.0, thumbnail_side=256)
    finally:
        fixed.close()
        moving.close()

    truth = np.array([[1.0, 0.0, 24.0], [0.0, 1.0, -14.0], [0.0, 0.0, 1.0]])
    error = grid_error(result.matrix, truth, (632, 712), margin=120)  # over the tissue, level-0 pixels
    assert error < 1.0
    assert result.residual_px < 1.0 and result.residual_um == pytest.approx(result.residual_px * 0.5)
    assert "thumbnails" in result.coarse_method and "level-0" in result.measured_on


def test_register_slides_with_different_pixel_sizes(ihc: np.ndarray) -> None:
    # the moving slide is scanned at 0.25 µm (twice the pixels), turned by 30° about the tissue's centre
    fixed = ArraySlide(on_glass(ihc, (768, 1024), 200, 120), mpp=0.5)
    zoom = np.array([[2.0, 0.0, 0.5], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]])
    truth = zoom @ similarity(30.0, 1.0, (20.0, 10.0), (455.5, 375.5))
    moving_image = cv2.warpAffine(fixed.levels[0], truth[:2], (2048, 1536), borderValue=(242, 242, 242))
    moving = ArraySlide(restain(moving_image), mpp=0.25)
    result = register_slides(fixed, moving, working_mpp=1.0, kind="rigid", thumbnail_side=512, region_side=384)

    assert grid_error(result.matrix, truth, (632, 712), margin=150) < 1.0  # moving level-0 pixels (0.25 µm)
    assert result.residual_px < 1.0
