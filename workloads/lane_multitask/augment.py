"""GANet's photometric and affine training augmentations for TuSimple, in numpy/PIL/scipy.

Original: Wolfwjs/GANet 8685a61 `configs/tusimple/final_exp_res18_s8.py:103-155`
(`train_al_pipeline`, run by albumentations 0.4.6 per requirements/build.txt, keypoints with
remove_invisible=False). After the crop, the flip and the resize to the input size (data.py),
in this order, each with its probability:

  p 0.7  one of (equally likely) RGBShift (each channel +-10) or HueSaturationValue (hue +-10,
         saturation +-15, value +-10, on OpenCV's 8-bit HSV: hue in [0, 180))
  p 0.2  JPEG re-encoding at a quality drawn from 85..95
  p 0.2  one of a 3x3 box blur or a 3x3 median blur
  p 0.6  brightness: + beta * 255 with beta in +-0.2 (RandomBrightness, contrast 1)
  p 0.6  ShiftScaleRotate: angle +-10 degrees, scale 0.8..1.2, shift +-0.1 of the size,
         about the image centre (w/2, h/2), zeros outside (border_mode 0)
  p 0.6  RandomResizedCrop to the input size: area 0.8..1.2 of the image, aspect (w/h)
         1.7..2.7 (log-uniform), 10 tries, else the central crop at the nearest aspect

Lane points follow the two geometric ops through the same matrix as the pixels and may leave
the image (the targets drop or clip them, as GANet's). The drivable mask (not in GANet) is
warped with the same matrix, nearest neighbour, zeros outside.

Departures, all below a pixel or in the codec: GANet's images are BGR and albumentations
treats them as RGB, so its RGB shift and HSV conversion act on the channels in BGR order;
the same is done here on the RGB input reversed. The HSV conversions are OpenCV's 8-bit
formulas in float (OpenCV uses fixed-point tables), JPEG is PIL's encoder (OpenCV's in GANet).
The shift-scale-rotate and the resized crop are composed into one affine map and the image is
resampled once (bilinear; albumentations resamples twice); the resized crop maps pixel
coordinates as x' = (x - x0) * W / w for the image too (albumentations resizes the image with
half-pixel centres but moves keypoints by this formula), which keeps pixels and lane points
exactly aligned. Random numbers come from a numpy Generator the caller seeds from the
harness's torch RNG (data.py), not from Python's `random` as in albumentations.
"""
from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage

# cfg:114-153, in pipeline order
COLOR_P, RGB_SHIFT, HUE, SAT, VAL = 0.7, 10.0, 10.0, 15.0, 10.0
JPEG_P, JPEG_QUALITY = 0.2, (85, 95)
BLUR_P = 0.2
BRIGHTNESS_P, BRIGHTNESS = 0.6, 0.2
SSR_P, SHIFT, SCALE, ROTATE = 0.6, 0.1, (-0.2, 0.2), 10.0
RRC_P, RRC_SCALE, RRC_RATIO = 0.6, (0.8, 1.2), (1.7, 2.7)


@dataclasses.dataclass
class AugParams:
    """One draw of every op's parameters; None = the op does not fire."""
    rgb_shift: tuple[float, float, float] | None = None  # on the (B, G, R) channels
    hsv_shift: tuple[float, float, float] | None = None
    jpeg_quality: int | None = None
    blur: str | None = None  # "box" or "median"
    brightness: float | None = None
    ssr: tuple[float, float, float, float] | None = None  # angle (deg), scale, dx, dy
    crop: tuple[int, int, int, int] | None = None  # x0, y0, w, h


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int
                            ) -> tuple[int, int, int, int]:
    """albumentations 0.4.6 RandomResizedCrop.get_params_dependent_on_targets (torchvision's
    rule), with its start fractions i / (H - h + 1e-10) turned back into pixels by int()."""
    area = height * width
    log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
    for _ in range(10):
        target = _uniform(rng, *RRC_SCALE) * area
        aspect = math.exp(_uniform(rng, *log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            h_start, w_start = i / (height - h + 1e-10), j / (width - w + 1e-10)
            return int((width - w) * w_start), int((height - h) * h_start), w, h
    ratio = width / height
    if ratio < min(RRC_RATIO):
        w, h = width, int(round(width / min(RRC_RATIO)))
    elif ratio > max(RRC_RATIO):
        h, w = height, int(round(height * max(RRC_RATIO)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def sample_params(rng: np.random.Generator, height: int, width: int) -> AugParams:
    p = AugParams()
    if rng.random() < COLOR_P:
        if rng.random() < 0.5:
            p.rgb_shift = tuple(_uniform(rng, -RGB_SHIFT, RGB_SHIFT) for _ in range(3))  # type: ignore[assignment]
        else:
            p.hsv_shift = (_uniform(rng, -HUE, HUE), _uniform(rng, -SAT, SAT),
                           _uniform(rng, -VAL, VAL))
    if rng.random() < JPEG_P:
        p.jpeg_quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    if rng.random() < BLUR_P:
        p.blur = "box" if rng.random() < 0.5 else "median"
    if rng.random() < BRIGHTNESS_P:
        p.brightness = _uniform(rng, -BRIGHTNESS, BRIGHTNESS)
    if rng.random() < SSR_P:
        p.ssr = (_uniform(rng, -ROTATE, ROTATE), _uniform(rng, 1 + SCALE[0], 1 + SCALE[1]),
                 _uniform(rng, -SHIFT, SHIFT), _uniform(rng, -SHIFT, SHIFT))
    if rng.random() < RRC_P:
        p.crop = random_resized_crop_box(rng, height, width)
    return p


# -- photometric (uint8 HxWx3 in, uint8 out) --

def _lut(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[img]


def rgb_shift(img: np.ndarray, shifts: tuple[float, float, float]) -> np.ndarray:
    out = np.empty_like(img)
    for ch, s in enumerate(shifts):
        out[..., ch] = _lut(img[..., ch], np.clip(np.arange(256) + s, 0, 255).astype(np.uint8))
    return out


def rgb_to_hsv8(img: np.ndarray) -> np.ndarray:
    """OpenCV COLOR_RGB2HSV for 8-bit images: H in [0, 180), S and V in [0, 255]."""
    rgb = img.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    s = np.where(v > 0, delta * 255 / np.maximum(v, 1), 0)
    d = np.maximum(delta, 1e-12)
    h = np.where(v == r, 60 * (g - b) / d, np.where(v == g, 120 + 60 * (b - r) / d,
                                                     240 + 60 * (r - g) / d))
    h = np.where(delta > 0, h, 0)
    h = np.where(h < 0, h + 360, h)
    hsv = np.stack([np.round(h / 2) % 180, np.round(s), v], -1)
    return hsv.astype(np.uint8)


def hsv8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h = hsv[..., 0].astype(np.float32) * 2 / 60  # sector position in [0, 6)
    s = hsv[..., 1].astype(np.float32) / 255
    v = hsv[..., 2].astype(np.float32)
    sector = np.floor(h).astype(np.int32) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(hsv.shape, np.float32)
    for i, (r, g, b) in enumerate(choices):
        sel = sector == i
        out[sel] = np.stack([r[sel], g[sel], b[sel]], -1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def hsv_shift(img: np.ndarray, shifts: tuple[float, float, float]) -> np.ndarray:
    """albumentations' uint8 shift_hsv: hue mod 180, saturation and value clipped (LUTs)."""
    hsv = rgb_to_hsv8(img)
    base = np.arange(256, dtype=np.int16)
    tables = (np.mod(base + shifts[0], 180).astype(np.uint8),
              np.clip(base + shifts[1], 0, 255).astype(np.uint8),
              np.clip(base + shifts[2], 0, 255).astype(np.uint8))
    shifted = np.stack([_lut(hsv[..., i], tables[i]) for i in range(3)], -1)
    return hsv8_to_rgb(shifted)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def blur(img: np.ndarray, kind: str) -> np.ndarray:
    """cv2.blur (3x3 mean, reflect-101 border) or cv2.medianBlur (3x3, replicated border)."""
    if kind == "box":
        out = ndimage.uniform_filter(img.astype(np.float32), size=(3, 3, 1), mode="mirror")
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return ndimage.median_filter(img, size=(3, 3, 1), mode="nearest")


def brightness(img: np.ndarray, beta: float) -> np.ndarray:
    return _lut(img, np.clip(np.arange(256, dtype=np.float32) + beta * 255, 0, 255).astype(np.uint8))


# -- geometric --

def shift_scale_rotate_matrix(angle: float, scale: float, dx: float, dy: float, height: int,
                              width: int) -> np.ndarray:
    """3x3 form of cv2.getRotationMatrix2D((w/2, h/2), angle, scale) + (dx*w, dy*h), as
    albumentations 0.4.6 shift_scale_rotate builds it (angle counter-clockwise on screen)."""
    a = math.radians(angle)
    alpha, beta = scale * math.cos(a), scale * math.sin(a)
    cx, cy = width / 2, height / 2
    return np.array([[alpha, beta, (1 - alpha) * cx - beta * cy + dx * width],
                     [-beta, alpha, beta * cx + (1 - alpha) * cy + dy * height],
                     [0.0, 0.0, 1.0]])


def crop_resize_matrix(crop: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    x0, y0, w, h = crop
    sx, sy = width / w, height / h
    return np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy], [0.0, 0.0, 1.0]])


def warp(img: np.ndarray, matrix: np.ndarray, order: int) -> np.ndarray:
    """out(x', y') = img(M^-1 (x', y')), pixel centres at integer coordinates (cv2.warpAffine),
    zeros outside; order 1 bilinear, 0 nearest. Works on HxW and HxWxC arrays."""
    inv = np.linalg.inv(matrix)
    # scipy's affine_transform maps output (row, col) to input (row, col)
    rc = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])
    offset = np.array([inv[1, 2], inv[0, 2]])
    planes = img[..., None] if img.ndim == 2 else img
    out = np.empty_like(planes)
    for ch in range(planes.shape[-1]):
        src = planes[..., ch].astype(np.float32) if order else planes[..., ch]
        res = ndimage.affine_transform(src, rc, offset, order=order, mode="constant", cval=0,
                                       prefilter=False)
        out[..., ch] = np.clip(np.round(res), 0, 255) if order else res
    return out[..., 0] if img.ndim == 2 else out


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    if len(points) == 0:
        return points
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def apply(image: np.ndarray, mask: np.ndarray, lanes: list[np.ndarray], p: AugParams
          ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Apply one draw to an RGB uint8 image, its mask and lane points (x, y) in its pixels."""
    h, w = image.shape[:2]
    bgr = image[..., ::-1]  # albumentations saw GANet's BGR arrays as RGB
    if p.rgb_shift is not None:
        bgr = rgb_shift(bgr, p.rgb_shift)
    if p.hsv_shift is not None:
        bgr = hsv_shift(bgr, p.hsv_shift)
    image = np.ascontiguousarray(bgr[..., ::-1])
    if p.jpeg_quality is not None:
        image = jpeg(image, p.jpeg_quality)
    if p.blur is not None:
        image = blur(image, p.blur)
    if p.brightness is not None:
        image = brightness(image, p.brightness)
    matrix = np.eye(3)
    if p.ssr is not None:
        matrix = shift_scale_rotate_matrix(*p.ssr, h, w)
    if p.crop is not None:
        matrix = crop_resize_matrix(p.crop, h, w) @ matrix
    if p.ssr is not None or p.crop is not None:
        image = warp(image, matrix, order=1)
        mask = warp(mask, matrix, order=0)
        lanes = [transform_points(np.asarray(lane, np.float64), matrix) for lane in lanes]
    return image, mask, lanes


def ganet_augment(image: np.ndarray, mask: np.ndarray, lanes: list[np.ndarray],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    return apply(image, mask, lanes, sample_params(rng, *image.shape[:2]))
