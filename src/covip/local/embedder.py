"""Offline image embedder whose nearest neighbours mean something: colour, texture and silhouette.

This stands in for CLIP when no weights are available. It is not semantic; it puts a red mug next to
other red, smooth, round-ish things, which is what "visually similar negative" needs in a run
without models. The vector is three blocks, each L2-normalised and scaled by the square root of its
weight, so the cosine of two vectors is the weighted mean of the three block cosines:

- colour: a smoothed joint CIELAB histogram of the concept's own pixels (alpha is the mask),
  square-rooted (Hellinger), plus the mean and spread of L*, a*, b*;
- texture: HOG of the grayscale crop, composited on neutral grey so the mask's outline counts as an
  edge but the hidden background does not;
- shape: a small thumbnail of the mask (centred values) plus log-scaled Hu moments, the bounding
  box's aspect ratio and the fraction of the crop the concept fills.

The concept is first cropped to its mask's bounding box and padded to a square, so position and
scale in the reference photo do not matter.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.color import rgb2lab
from skimage.feature import hog
from skimage.measure import moments_central, moments_hu, moments_normalized

from covip.clients.spec import ModelSpec
from covip.core.io import decode_image

DEFAULT_WEIGHTS = {"color": 0.5, "texture": 0.3, "shape": 0.2}
# Joint CIELAB histogram bins: L* over [0, 100], a* and b* over [-60, 60] (clipped; saturated
# colours rarely leave this box and finer bins there would only split near-identical hues).
_L_BINS, _AB_BINS, _AB_RANGE = 4, 6, 60.0
_THUMB = 12


class ColorTextureEmbedder:
    """Deterministic colour/texture/shape embedder (backend 'local_color_texture')."""

    def __init__(self, spec: ModelSpec):
        options = spec.resolved_options()
        self.spec = spec
        self.identity = spec.identity
        self.size = int(options["size"])
        if self.size < 32 or self.size % 16:
            raise ValueError(f"models.{spec.name}.options.size must be a multiple of 16 and >= 32, got {self.size}")
        weights = dict(DEFAULT_WEIGHTS)
        given = options["weights"]
        bad = set(given) - set(DEFAULT_WEIGHTS)
        if bad:
            raise ValueError(f"models.{spec.name}.options.weights: unknown block(s) {sorted(bad)}; known: {sorted(DEFAULT_WEIGHTS)}")
        weights.update(given)
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"models.{spec.name}.options.weights must be non-negative with a positive sum, got {weights}")
        total = sum(weights.values())
        self.weights = {name: w / total for name, w in weights.items()}
        self.mask_threshold = float(options["mask_threshold"])
        if not 0.0 <= self.mask_threshold < 1.0:
            raise ValueError(f"models.{spec.name}.options.mask_threshold must be in [0, 1), got {self.mask_threshold}")

    @property
    def dim(self) -> int:
        cells = self.size // 16
        return (_L_BINS * _AB_BINS * _AB_BINS + 6) + (cells - 1) ** 2 * 4 * 9 + (_THUMB * _THUMB + 9)

    def embed(self, images: list[bytes]) -> np.ndarray:
        """One L2-normalised float32 row per image, in input order."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for index, data in enumerate(images):
            image = decode_image(data, f"{self.spec.name} input image {index}")
            out[index] = self.features(image)
        return out

    # -- features -----------------------------------------------------------------------------------

    def _square_crop(self, image: Image.Image) -> tuple[np.ndarray, float]:
        """The concept cropped to its mask, padded to a square, resized; RGBA floats in [0, 1]."""
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        mask = alpha > self.mask_threshold
        if mask.sum() < 4:
            # No usable alpha (an RGB photo, or a nearly empty cut-out): the whole frame is the concept.
            rgba.putalpha(255)
            mask = np.ones_like(mask)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        height, width = bottom - top, right - left
        crop = rgba.crop((left, top, right, bottom))
        side = max(height, width)
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(crop, ((side - width) // 2, (side - height) // 2))
        square = square.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(square, dtype=np.float32) / 255.0, float(width) / float(height)

    def features(self, image: Image.Image) -> np.ndarray:
        """The weighted, L2-normalised feature vector of one image."""
        pixels, aspect = self._square_crop(image)
        rgb, alpha = pixels[..., :3], pixels[..., 3]
        mask = alpha > self.mask_threshold
        if not mask.any():  # resizing can erase a hair-thin concept; fall back to any coverage
            mask = alpha > 0
        blocks = {
            "color": _color_block(rgb, mask),
            "texture": _texture_block(rgb, alpha, self.size),
            "shape": _shape_block(alpha, mask, aspect),
        }
        parts = [_unit(block) * np.sqrt(self.weights[name]) for name, block in blocks.items()]
        return _unit(np.concatenate(parts)).astype(np.float32)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-12 else vector


def _color_block(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lab = rgb2lab(rgb)[mask]
    l_idx = np.clip((lab[:, 0] / 100.0 * _L_BINS).astype(int), 0, _L_BINS - 1)
    ab = np.clip((lab[:, 1:] + _AB_RANGE) / (2 * _AB_RANGE) * _AB_BINS, 0, _AB_BINS - 1e-6).astype(int)
    hist = np.zeros((_L_BINS, _AB_BINS, _AB_BINS), dtype=np.float64)
    np.add.at(hist, (l_idx, ab[:, 0], ab[:, 1]), 1.0)
    # Smoothing lets two shades that straddle a bin edge still overlap.
    hist = gaussian_filter(hist / max(len(lab), 1), sigma=0.6, mode="constant")
    stats = np.concatenate([lab.mean(axis=0) / 100.0, lab.std(axis=0) / 50.0])
    return np.concatenate([_unit(np.sqrt(hist.ravel())), 0.5 * stats])


def _texture_block(rgb: np.ndarray, alpha: np.ndarray, size: int) -> np.ndarray:
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gray = gray * alpha + 0.5 * (1.0 - alpha)
    return hog(gray, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2), block_norm="L2-Hys")


def _shape_block(alpha: np.ndarray, mask: np.ndarray, aspect: float) -> np.ndarray:
    size = alpha.shape[0]
    step = size // _THUMB
    thumb = alpha[: step * _THUMB, : step * _THUMB].reshape(_THUMB, step, _THUMB, step).mean(axis=(1, 3))
    central = moments_central(mask.astype(np.float64), order=3)
    hu = moments_hu(moments_normalized(central, order=3))
    # Hu moments span many orders of magnitude; sign * log10 puts them on a comparable scale.
    hu_log = -np.sign(hu) * np.log10(np.abs(hu) + 1e-12)
    hu_log = np.clip(hu_log, -12.0, 12.0) / 12.0
    extra = np.array([np.log(aspect) / 2.0, mask.mean() - 0.5])
    return np.concatenate([(thumb - 0.5).ravel(), hu_log, extra])
