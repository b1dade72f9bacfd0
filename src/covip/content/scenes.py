"""Scenes composited from concept cut-outs: the diagnostic sets' images under every config, and the
offline stand-in image generator (`covip.local.compositor`).

A scene is a wall and a floor cut from two real texture photographs bundled with scikit-image
(brick, grass, gravel, moon), tinted and shaded; each cut-out is scaled, maybe mirrored, relit
(brightness, contrast, colour cast) and pasted with a soft drop shadow, without overlapping the
others. Everything is drawn from a generator seeded by the caller.

With probability `defect_rate` the scene gets one realistic defect of the kind an image model makes,
which stage 3 must catch: a concept heavily occluded (by another concept, or by a piece of scenery
when it is alone), pushed mostly out of frame, or omitted. The layout returned records, per concept,
where it went and which fraction of its pixels is visible: the ground truth the verifier's tests are
measured against. The verifier itself never sees the layout.

Options: defect_rate, defect_kinds (weights per kind), scale_range (cut-out longest side as a
fraction of the image side), brightness, contrast, colour_cast (jitter half-widths), noise (pixel
noise std), image_size (used when the caller does not say).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from covip.core.io import decode_image, encode_png
from covip.core.seeding import derive_seed

DEFECT_KINDS = ("occluded", "out_of_frame", "omitted")
DEFAULT_OPTIONS = {
    "defect_rate": 0.15,
    "defect_kinds": {"occluded": 1.0, "out_of_frame": 1.0, "omitted": 1.0},
    "scale_range": [0.24, 0.42],
    "brightness": 0.2,
    "contrast": 0.2,
    "colour_cast": 0.08,
    "noise": 2.0,
    "image_size": 320,
}

# Texture name -> (dark, light) tint; the grey texture is mapped onto this ramp, then jittered.
TEXTURES = {
    "brick": ((80, 35, 28), (225, 150, 120)),
    "grass": ((20, 50, 15), (150, 205, 95)),
    "gravel": ((60, 55, 48), (215, 205, 185)),
    "moon": ((45, 45, 52), (205, 205, 215)),
}
_ALPHA_ON = 0.5  # a pixel belongs to a concept where its alpha is above this
# A defect leaves this range of the victim's pixels visible: clearly broken, rarely a total wipe-out.
_DEFECT_VISIBLE = (0.05, 0.45)


@lru_cache(maxsize=None)
def _texture(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)().astype(np.float32) / 255.0


class SceneComposer:
    """Deterministic scene compositor: cut-outs in, one scene image and its layout out."""

    def __init__(self, options: dict | None = None, where: str = "scene options"):
        unknown = sorted(set(options or {}) - set(DEFAULT_OPTIONS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(DEFAULT_OPTIONS)}")
        options = {**DEFAULT_OPTIONS, **(options or {})}
        self.defect_rate = float(options["defect_rate"])
        if not 0.0 <= self.defect_rate <= 1.0:
            raise ValueError(f"{where}.defect_rate must be in [0, 1], got {self.defect_rate}")
        weights = dict(options["defect_kinds"])
        bad = set(weights) - set(DEFECT_KINDS)
        if bad or any(float(w) < 0 for w in weights.values()) or sum(map(float, weights.values())) <= 0:
            raise ValueError(f"{where}.defect_kinds must map some of {list(DEFECT_KINDS)} to non-negative weights with a positive sum, got {weights}")
        self.defect_kinds = [k for k in DEFECT_KINDS if float(weights.get(k, 0)) > 0]
        total = sum(float(weights[k]) for k in self.defect_kinds)
        self.defect_probs = [float(weights[k]) / total for k in self.defect_kinds]
        lo, hi = map(float, options["scale_range"])
        if not 0.05 <= lo <= hi <= 0.9:
            raise ValueError(f"{where}.scale_range must satisfy 0.05 <= low <= high <= 0.9, got {[lo, hi]}")
        self.scale_range = (lo, hi)
        self.brightness, self.contrast, self.cast = (float(options[k]) for k in ("brightness", "contrast", "colour_cast"))
        for key, value in (("brightness", self.brightness), ("contrast", self.contrast), ("colour_cast", self.cast)):
            if not 0.0 <= value < 0.6:
                raise ValueError(f"{where}.{key} must be in [0, 0.6), got {value}")
        self.noise = float(options["noise"])
        if self.noise < 0:
            raise ValueError(f"{where}.noise must be >= 0, got {self.noise}")
        self.image_size = int(options["image_size"])
        if self.image_size < 64:
            raise ValueError(f"{where}.image_size must be >= 64, got {self.image_size}")

    # -----------------------------------------------------------------------------------------------

    def compose(self, references: list[bytes], ids: list[str], size: int | None = None,
                seed: int | None = None) -> tuple[bytes, dict, str]:
        """One scene from the reference cut-outs (RGBA PNG bytes, alpha = the concept's pixels):
        (PNG bytes, layout, a one-line note). Without a seed the scene is keyed by the references."""
        if not references:
            raise ValueError("compose request has no reference images")
        if len(ids) != len(references):
            raise ValueError(f"compose request: {len(ids)} concept ids for {len(references)} reference images")
        size = int(size or self.image_size)
        if seed is None:  # still deterministic: keyed by the references themselves
            seed = derive_seed(0, *(hashlib.sha256(r).hexdigest() for r in references))
        rng = np.random.default_rng(seed)
        cutouts = [decode_image(r, f"compose request reference image {i} ({cid})", mode="RGBA")
                   for i, (r, cid) in enumerate(zip(references, ids))]

        scene, textures = self._background(size, rng)
        defect, victim = None, None
        if rng.random() < self.defect_rate:
            defect = str(rng.choice(self.defect_kinds, p=self.defect_probs))
            victim = int(rng.integers(len(ids)))
        layout, image = self._compose(scene, cutouts, ids, defect, victim, rng)
        note = f"composited {len(ids)} cut-out(s) on {textures[0]}/{textures[1]}"
        if defect:
            note += f"; defect: {ids[victim]} {defect}"
        return encode_png(image), layout, note

    # -----------------------------------------------------------------------------------------------

    def _background(self, size: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[str, str]]:
        names = list(TEXTURES)
        wall, floor = (names[i] for i in rng.choice(len(names), size=2, replace=False))
        horizon = int(size * rng.uniform(0.3, 0.55))
        top = self._texture_patch(wall, size, horizon, rng)
        bottom = self._texture_patch(floor, size, size - horizon, rng)
        # The floor darkens towards the horizon (depth), and a soft shadow line marks where they meet.
        depth = np.linspace(0.75, 1.05, size - horizon)[:, None, None]
        scene = np.concatenate([top, bottom * depth], axis=0)
        band = np.exp(-((np.arange(size) - horizon) / (size * 0.015)) ** 2)[:, None, None]
        scene = scene * (1 - 0.35 * band)
        # One light direction for the whole scene.
        angle = rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[0:size, 0:size] / size
        light = 1.05 - 0.2 * ((x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle) + 0.5)
        return np.clip(scene * light[:, :, None], 0, 255), (wall, floor)

    def _texture_patch(self, name: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
        texture = _texture(name)
        th, tw = texture.shape
        crop_w = int(tw * rng.uniform(0.35, 0.8))
        crop_h = max(8, min(th, int(crop_w * height / width)))
        y0, x0 = int(rng.integers(0, th - crop_h + 1)), int(rng.integers(0, tw - crop_w + 1))
        patch = Image.fromarray((texture[y0:y0 + crop_h, x0:x0 + crop_w] * 255).astype(np.uint8))
        grey = np.asarray(patch.resize((width, max(1, height)), Image.Resampling.BILINEAR), np.float32) / 255.0
        dark, light = (np.clip(np.asarray(c, np.float32) + rng.uniform(-18, 18, 3), 0, 255) for c in TEXTURES[name])
        return dark[None, None, :] + grey[:, :, None] * (light - dark)[None, None, :]

    def _prepare(self, cutout: Image.Image, longest: float, flipped: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
        scale = longest / max(cutout.size)
        w, h = max(4, round(cutout.width * scale)), max(4, round(cutout.height * scale))
        image = cutout.resize((w, h), Image.Resampling.LANCZOS)
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, np.float32)
        rgb, alpha = array[:, :, :3], array[:, :, 3] / 255.0
        b = 1 + rng.uniform(-self.brightness, self.brightness)
        c = 1 + rng.uniform(-self.contrast, self.contrast)
        cast = 1 + rng.uniform(-self.cast, self.cast, 3)
        on = alpha > _ALPHA_ON
        mean = rgb[on].mean(axis=0) if on.any() else rgb.reshape(-1, 3).mean(axis=0)
        rgb = np.clip(((rgb - mean) * c + mean) * b * cast, 0, 255)
        lighting = {"brightness": round(float(b), 3), "contrast": round(float(c), 3), "cast": [round(float(v), 3) for v in cast]}
        return rgb, alpha, lighting

    def _compose(self, scene, cutouts, ids, defect, victim, rng):
        size = scene.shape[0]
        n = len(cutouts)
        lo, hi = self.scale_range
        if n >= 3:  # crowded scenes use smaller cut-outs so they fit side by side
            lo, hi = lo * 0.8, hi * 0.8
        order = [int(i) for i in rng.permutation(n)]
        placed: dict[int, dict] = {}
        boxes: list[tuple[int, int, int, int]] = []
        for i in order:
            flipped = bool(rng.random() < 0.5)
            longest = rng.uniform(lo, hi) * size
            if defect == "omitted" and i == victim:
                continue
            rgb, alpha, lighting = self._prepare(cutouts[i], longest, flipped, rng)
            h, w = alpha.shape
            if defect == "out_of_frame" and i == victim:
                x, y = self._edge_position(alpha, size, rng)
            else:
                x, y, rgb, alpha, lighting = self._free_position(cutouts[i], longest, flipped, boxes, size, rng, rgb, alpha, lighting)
                h, w = alpha.shape
            boxes.append((x, y, x + w, y + h))
            placed[i] = {"rgb": rgb, "alpha": alpha, "x": x, "y": y, "flipped": flipped, "lighting": lighting, "scale": max(w, h) / size}

        occluder_of_victim = None
        paste = [i for i in order if i in placed]
        extra = None  # a piece of scenery covering the victim when no other concept can
        if defect == "occluded":
            v = placed[victim]
            others = [i for i in paste if i != victim]
            if others:
                # Another concept, scaled to about the victim's size and pasted last over it.
                o = others[int(rng.integers(len(others)))]
                ref = cutouts[o]
                vh, vw = v["alpha"].shape
                cover = max(vw / ref.width, vh / ref.height) * max(ref.size) * rng.uniform(0.95, 1.2)
                rgb, alpha, lighting = self._prepare(ref, min(cover, 1.2 * hi * size), placed[o]["flipped"], rng)
                x, y = self._cover_position(v, alpha, size, rng)
                placed[o].update(rgb=rgb, alpha=alpha, x=x, y=y, lighting=lighting, scale=max(alpha.shape) / size)
                paste = [i for i in paste if i != o] + [o]
                occluder_of_victim = ids[o]
            else:
                rgb, alpha = self._scenery_blob(*v["alpha"].shape[::-1], rng)
                extra = (rgb, alpha, *self._cover_position(v, alpha, size, rng))
                occluder_of_victim = "scenery"

        owner = np.full((size, size), -1, np.int32)
        for i in paste:
            p = placed[i]
            self._paste(scene, owner, p["rgb"], p["alpha"], p["x"], p["y"], label=i, shadow=True)
        if extra is not None:
            rgb, alpha, ex, ey = extra
            self._paste(scene, owner, rgb, alpha, ex, ey, label=-2, shadow=True)

        if self.noise > 0:
            scene = scene + rng.normal(0, self.noise, scene.shape)
        image = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8), "RGB")

        layout = {}
        for i, cid in enumerate(ids):
            entry = {"defect": defect if i == victim else None}
            if i not in placed:
                entry.update(bbox=None, scale=None, flipped=None, visible_fraction=0.0, lighting=None)
            else:
                p = placed[i]
                h, w = p["alpha"].shape
                total = int((p["alpha"] > _ALPHA_ON).sum())
                visible = int((owner == i).sum())
                entry.update(
                    bbox=[p["x"], p["y"], p["x"] + w, p["y"] + h],
                    scale=round(float(p["scale"]), 4),
                    flipped=p["flipped"],
                    visible_fraction=round(visible / max(total, 1), 4),
                    lighting=p["lighting"],
                )
            if i == victim and defect == "occluded":
                entry["occluded_by"] = occluder_of_victim
            layout[cid] = entry
        return layout, image

    def _free_position(self, cutout, longest, flipped, boxes, size, rng, rgb, alpha, lighting):
        """A position fully inside the frame that overlaps no placed box; shrinks the cut-out if needed."""
        gap = max(2, size // 80)
        for _ in range(8):
            h, w = alpha.shape
            if w < size and h < size:
                for _ in range(60):
                    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
                    if all(x + w + gap <= b[0] or b[2] + gap <= x or y + h + gap <= b[1] or b[3] + gap <= y for b in boxes):
                        return x, y, rgb, alpha, lighting
            longest *= 0.85
            rgb, alpha, lighting = self._prepare(cutout, longest, flipped, rng)
        # Crowded beyond repair: place anyway; the layout's visible_fraction tells the truth.
        h, w = alpha.shape
        return int(rng.integers(0, max(1, size - w + 1))), int(rng.integers(0, max(1, size - h + 1))), rgb, alpha, lighting

    @staticmethod
    def _edge_position(alpha: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
        """A position across one border that leaves 5-45% of the cut-out's pixels inside the frame."""
        h, w = alpha.shape
        on = alpha > _ALPHA_ON
        total = max(1, int(on.sum()))
        for attempt in range(30):
            keep = rng.uniform(0.15, 0.5) * (0.9**attempt)
            side = int(rng.integers(4))
            x = int(rng.integers(0, max(1, size - w + 1)))
            y = int(rng.integers(0, max(1, size - h + 1)))
            if side == 0:
                x = -int(w * (1 - keep))
            elif side == 1:
                x = size - int(w * keep)
            elif side == 2:
                y = -int(h * (1 - keep))
            else:
                y = size - int(h * keep)
            inside = on[max(0, -y):min(h, size - y), max(0, -x):min(w, size - x)].sum() / total
            if _DEFECT_VISIBLE[0] <= inside <= _DEFECT_VISIBLE[1]:
                break
        return x, y

    @staticmethod
    def _cover_position(victim: dict, alpha: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
        """Where to put an occluder (mask `alpha`) so that it hides 55-95% of the victim's pixels."""
        vh, vw = victim["alpha"].shape
        von = victim["alpha"] > _ALPHA_ON
        oh, ow = alpha.shape
        oon = alpha > _ALPHA_ON
        total = max(1, int(von.sum()))
        cx, cy = victim["x"] + vw / 2, victim["y"] + vh / 2
        for attempt in range(30):
            spread = 0.3 * (0.9**attempt)
            x = int(round(cx - ow / 2 + rng.uniform(-spread, spread) * vw))
            y = int(round(cy - oh / 2 + rng.uniform(-spread, spread) * vh))
            x, y = int(np.clip(x, 0, max(0, size - ow))), int(np.clip(y, 0, max(0, size - oh)))
            # Overlap of the two masks, in the victim's coordinates.
            dx, dy = x - victim["x"], y - victim["y"]
            ys, xs = slice(max(0, dy), min(vh, dy + oh)), slice(max(0, dx), min(vw, dx + ow))
            covered = von[ys, xs] & oon[ys.start - dy:ys.stop - dy, xs.start - dx:xs.stop - dx] if ys.start < ys.stop and xs.start < xs.stop else np.zeros(0, bool)
            visible = 1.0 - covered.sum() / total
            if _DEFECT_VISIBLE[0] <= visible <= _DEFECT_VISIBLE[1]:
                break
        return x, y

    def _scenery_blob(self, vw: int, vh: int, rng: np.random.Generator):
        """An irregular bush/rock cut from a real texture, about the victim's size."""
        name = list(TEXTURES)[int(rng.integers(len(TEXTURES)))]
        w, h = int(vw * rng.uniform(0.85, 1.1)), int(vh * rng.uniform(0.85, 1.1))
        rgb = self._texture_patch(name, w, h, rng)
        yy, xx = np.mgrid[0:h, 0:w]
        angle = np.arctan2(yy - h / 2, xx - w / 2)
        wobble = 1 + 0.08 * np.sin(3 * angle + rng.uniform(0, 6.28)) + 0.05 * np.sin(5 * angle + rng.uniform(0, 6.28))
        radius = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
        alpha = np.clip((wobble - radius) / 0.06, 0, 1).astype(np.float32)
        return rgb, alpha

    @staticmethod
    def _paste(scene, owner, rgb, alpha, x, y, label, shadow):
        h, w = alpha.shape
        if shadow:
            # A soft shadow offset down-right, darkening whatever lies beneath.
            pad = max(2, max(w, h) // 10)
            blurred = Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(pad / 2))
            shade = np.asarray(blurred, np.float32) / 255.0 * 0.35
            SceneComposer._blend(scene, None, shade, x + pad // 2, y + pad // 2, None, darken=True)
        SceneComposer._blend(scene, rgb, alpha, x, y, (owner, label))

    @staticmethod
    def _blend(scene, rgb, alpha, x, y, owner_label, darken=False):
        size = scene.shape[0]
        h, w = alpha.shape
        x0, y0, x1, y1 = max(0, x), max(0, y), min(size, x + w), min(size, y + h)
        if x0 >= x1 or y0 >= y1:
            return
        a = alpha[y0 - y:y1 - y, x0 - x:x1 - x]
        region = scene[y0:y1, x0:x1]
        if darken:
            region *= (1 - a)[:, :, None]
            return
        src = rgb[y0 - y:y1 - y, x0 - x:x1 - x]
        scene[y0:y1, x0:x1] = region * (1 - a[:, :, None]) + src * a[:, :, None]
        owner, label = owner_label
        owner_region = owner[y0:y1, x0:x1]
        owner_region[a > _ALPHA_ON] = label
