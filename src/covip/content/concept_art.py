"""Reference images for the built-in concept pool: real photographs plus seeded drawings.

Two sources, both offline: real photographs bundled with scikit-image (astronaut, cameraman, cat,
coffee cup, rocket, motorcycle, the horse silhouette and a handful of LFW faces), cropped around
their subject and given a soft elliptical cut-out mask (the horse's: its silhouette); and
procedurally drawn objects (mugs, balloons, robots, houses, cars, lamps, fish, birds, snails and
cartoon people). Each kind is drawn from style parameters taken from a seeded generator, and the
  variants of one kind take different colours and patterns from a shuffled palette, so three mugs
  are three visibly different mugs. That is what makes the hard negatives of stage 4 meaningful.

Every image is RGBA (alpha: the concept's own pixels). Drawings are made at twice the final size and
downsampled, which anti-aliases their edges and masks alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# ---------------------------------------------------------------------------------------------------
# Real photographs


@dataclass(frozen=True)
class PhotoSpec:
    """One concept cut from a scikit-image sample photograph."""

    key: str  # stable name used in the `source` column
    category: str
    kind: str
    loader: str  # skimage.data function name
    crop: tuple[int, int, int, int]  # rows r0:r1, cols c0:c1 of the original
    index: int | None = None  # for image stacks (lfw_subset)


# Crops were chosen by looking at each photo: they frame the subject and leave little background
# inside the ellipse. LFW faces were picked to look unlike each other (sex, age, glasses, skin).
PHOTOS: tuple[PhotoSpec, ...] = (
    PhotoSpec("astronaut", "person", "astronaut", "astronaut", (10, 330, 40, 330)),
    PhotoSpec("camera", "person", "photographer", "camera", (40, 420, 150, 370)),
    PhotoSpec("chelsea", "animal", "cat", "chelsea", (0, 300, 90, 390)),
    PhotoSpec("horse", "animal", "horse", "horse", (0, 328, 0, 400)),
    PhotoSpec("coffee", "object", "cup", "coffee", (10, 330, 120, 470)),
    PhotoSpec("rocket", "object", "rocket", "rocket", (110, 427, 250, 390)),
    PhotoSpec("stereo_motorcycle", "object", "motorcycle", "stereo_motorcycle", (140, 470, 80, 700)),
    *(
        PhotoSpec(f"lfw_subset[{i}]", "person", "face", "lfw_subset", (0, 25, 0, 25), index=i)
        for i in (18, 25, 31, 45, 64, 99)
    ),
)


def _load_photo_array(spec: PhotoSpec) -> np.ndarray:
    """The cropped photo as uint8 RGB, or a bool silhouette for the horse."""
    from skimage import data

    image = getattr(data, spec.loader)()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
        image = image[0]
    if spec.index is not None:
        image = image[spec.index]
    r0, r1, c0, c1 = spec.crop
    return image[r0:r1, c0:c1]


def soft_ellipse_mask(width: int, height: int, feather: float = 0.08) -> np.ndarray:
    """An elliptical alpha mask filling the frame, fading out over `feather` of the radius."""
    y, x = np.mgrid[0:height, 0:width]
    dx = (x + 0.5 - width / 2) / (width / 2)
    dy = (y + 0.5 - height / 2) / (height / 2)
    radius = np.sqrt(dx**2 + dy**2)
    alpha = np.clip((1.0 - radius) / feather, 0.0, 1.0)
    return (alpha * 255).astype(np.uint8)


def _fit(image: Image.Image, longest: int) -> Image.Image:
    scale = longest / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def render_photo(spec: PhotoSpec, longest: int, rng: np.random.Generator) -> Image.Image:
    """Render a bundled photograph as an RGBA cut-out whose longest side is `longest`."""
    array = _load_photo_array(spec)
    if array.dtype == bool:
        # The horse is a black-on-white silhouette: the mask is exact; give it a coat (seeded brown
        # with a soft light-to-dark gradient and a darker mane line) so it is not a flat blob.
        mask = ~array
        h, w = mask.shape
        coat = np.array(rng.choice([(120, 72, 40), (90, 60, 40), (150, 110, 70), (60, 45, 35)]), float)
        ramp = np.linspace(1.15, 0.75, h)[:, None, None] * np.linspace(0.9, 1.1, w)[None, :, None]
        # Real fur (the cat photo's cheek) modulates the coat, so the horse has texture to recognise.
        from skimage import data

        fur = np.asarray(Image.fromarray(data.chelsea()[150:300, 0:180].mean(axis=2).astype(np.uint8)).resize((w, h)), float)
        fur = 1.0 + 0.6 * (fur - fur.mean()) / (fur.std() + 1e-6) * 0.35
        rgb = np.clip(coat[None, None, :] * ramp * fur[:, :, None], 0, 255)
        dark = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(9))) == 0
        rgb[dark & mask] *= 0.55  # the outline band reads as shading at the silhouette's edge
        rgba = np.dstack([rgb.astype(np.uint8), mask.astype(np.uint8) * 255])
        image = Image.fromarray(rgba, "RGBA")
        return _fit(image, longest)
    if array.dtype != np.uint8:  # LFW faces are float in [0, 1]
        array = (np.clip(array, 0, 1) * 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    rgb = Image.fromarray(array, "RGB")
    # Faces are 25 px: upscale with bicubic, which rings less than Lanczos at this factor.
    if spec.loader == "lfw_subset":
        rgb = rgb.resize((longest, longest), Image.Resampling.BICUBIC)
    else:
        rgb = _fit(rgb, longest)
    alpha = soft_ellipse_mask(rgb.width, rgb.height)
    image = rgb.convert("RGBA")
    image.putalpha(Image.fromarray(alpha, "L"))
    return image


# ---------------------------------------------------------------------------------------------------
# Drawings

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 45),
    "orange": (235, 130, 30),
    "yellow": (238, 200, 45),
    "green": (55, 160, 70),
    "teal": (30, 150, 150),
    "blue": (45, 85, 200),
    "purple": (130, 60, 170),
    "pink": (230, 115, 165),
    "brown": (135, 85, 45),
    "grey": (125, 125, 135),
    "navy": (30, 40, 95),
    "cream": (236, 228, 200),
}
PATTERNS = ("stripes", "dots", "checks", "diagonal", "zigzag", "band")
SKIN = ((255, 219, 180), (235, 185, 140), (198, 134, 90), (141, 85, 54), (95, 60, 40))
HAIR = ((30, 25, 20), (90, 55, 30), (200, 160, 80), (160, 60, 30), (120, 120, 120), (60, 30, 90))
OUTLINE = (35, 30, 35)


def _shade(colour, factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


class Canvas:
    """An RGBA drawing surface in unit coordinates, composited shape by shape with numpy.

    Each shape is rasterised into its own mask so a pattern can be clipped to it and its outline
    drawn on top; the canvas is drawn at a high resolution and downsampled at the end.
    """

    def __init__(self, size: int):
        self.size = size
        self.rgb = np.zeros((size, size, 3), np.float32)
        self.alpha = np.zeros((size, size), np.float32)
        self.line = max(2, round(size * 0.012))

    def _px(self, box):
        return [v * self.size for v in box]

    def _mask(self, shape: str, coords, **kwargs) -> np.ndarray:
        layer = Image.new("L", (self.size, self.size), 0)
        draw = ImageDraw.Draw(layer)
        getattr(draw, shape)(self._px(coords), **kwargs)
        return np.asarray(layer, np.float32) / 255.0

    def _paint(self, mask: np.ndarray, colour) -> None:
        m = mask[:, :, None]
        self.rgb = self.rgb * (1 - m) + np.asarray(colour, np.float32)[None, None, :] * m
        self.alpha = np.maximum(self.alpha, mask)

    def shape(self, shape: str, coords, fill, outline: bool = True, pattern: np.ndarray | None = None,
              pattern_colour=None, **kwargs) -> np.ndarray:
        """Fill a shape ('ellipse', 'rectangle', 'rounded_rectangle', 'polygon', 'pieslice', 'chord')."""
        if shape == "polygon":
            coords = [c for point in coords for c in point]
        mask = self._mask(shape, coords, fill=255, **kwargs)
        self._paint(mask, fill)
        if pattern is not None:
            self._paint(mask * pattern, pattern_colour)
        if outline:
            edge = self._mask(shape, coords, outline=255, width=self.line, **kwargs)
            self._paint(edge, OUTLINE)
        return mask

    def line_(self, points, colour=OUTLINE, width: float = 0.015) -> None:
        flat = [c for point in points for c in point]
        self._paint(self._mask("line", flat, fill=255, width=max(1, round(width * self.size)), joint="curve"), colour)

    def ring(self, box, colour, width: float) -> None:
        """An elliptical ring (a mug handle) with dark edges."""
        w = max(2, round(width * self.size))
        self._paint(self._mask("ellipse", box, outline=255, width=w + 2 * self.line), OUTLINE)
        inner = [box[0] + self.line / self.size, box[1] + self.line / self.size,
                 box[2] - self.line / self.size, box[3] - self.line / self.size]
        self._paint(self._mask("ellipse", inner, outline=255, width=w), colour)

    def finish(self, longest: int, light_angle: float) -> Image.Image:
        """Light the drawing from one side, crop to its mask and downsample to `longest`."""
        y, x = np.mgrid[0:self.size, 0:self.size] / self.size
        light = 1.08 - 0.22 * ((x - 0.5) * np.cos(light_angle) + (y - 0.5) * np.sin(light_angle) + 0.5)
        rgb = np.clip(self.rgb * light[:, :, None], 0, 255)
        rgba = np.dstack([rgb, self.alpha * 255]).astype(np.uint8)
        image = Image.fromarray(rgba, "RGBA")
        left, top, right, bottom = image.getchannel("A").point(lambda v: 255 if v > 8 else 0).getbbox()
        pad = self.line * 2
        image = image.crop((max(0, left - pad), max(0, top - pad), min(self.size, right + pad), min(self.size, bottom + pad)))
        return _fit(image, longest)


def make_pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 pattern over the whole canvas; shapes clip it to themselves."""
    y, x = np.mgrid[0:size, 0:size] / size
    period = rng.uniform(0.06, 0.11)
    if kind == "stripes":
        return ((y / period) % 1.0 < 0.45).astype(np.float32)
    if kind == "diagonal":
        return (((x + y) / period) % 1.0 < 0.4).astype(np.float32)
    if kind == "checks":
        return ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    if kind == "dots":
        cx = (x / period) % 1.0 - 0.5
        cy = (y / period) % 1.0 - 0.5
        return ((cx**2 + cy**2) < 0.09).astype(np.float32)
    if kind == "zigzag":
        wave = np.abs(((x / period) % 1.0) - 0.5) * period
        return (((y + wave) / period) % 1.0 < 0.35).astype(np.float32)
    if kind == "band":
        centre = rng.uniform(0.4, 0.6)
        return (np.abs(y - centre) < 0.07).astype(np.float32)
    raise ValueError(f"unknown pattern '{kind}'")


@dataclass
class Style:
    """What makes one variant of a kind differ from its siblings."""

    main: tuple[int, int, int]
    accent: tuple[int, int, int]
    pattern: str
    rng: np.random.Generator


def _draw_mug(c: Canvas, s: Style) -> None:
    r = s.rng
    w, h = r.uniform(0.4, 0.55), r.uniform(0.48, 0.66)
    x0, y0 = 0.5 - w / 2 - 0.08, 0.5 - h / 2 + 0.03
    x1, y1 = x0 + w, y0 + h
    hb = [x1 - 0.08, y0 + h * 0.18, x1 + r.uniform(0.14, 0.2), y0 + h * r.uniform(0.62, 0.78)]
    c.ring(hb, s.main, r.uniform(0.035, 0.06))
    c.shape("rounded_rectangle", [x0, y0, x1, y1], s.main, radius=round(c.size * 0.05),
            pattern=make_pattern(s.pattern, c.size, r), pattern_colour=s.accent)
    c.shape("ellipse", [x0, y0 - 0.035, x1, y0 + 0.035], _shade(s.main, 1.2))
    c.shape("ellipse", [x0 + 0.03, y0 - 0.02, x1 - 0.03, y0 + 0.02], (70, 40, 25), outline=False)


def _draw_balloon(c: Canvas, s: Style) -> None:
    r = s.rng
    w, h = r.uniform(0.4, 0.55), r.uniform(0.5, 0.62)
    cx, top = 0.5, 0.06
    knot_y = top + h
    sway = r.uniform(-0.08, 0.08)
    c.line_([(cx, knot_y), (cx + sway, knot_y + 0.12), (cx - sway, knot_y + 0.22), (cx + sway / 2, 0.95)], width=0.008)
    c.shape("polygon", [(cx - 0.03, knot_y + 0.035), (cx + 0.03, knot_y + 0.035), (cx, knot_y - 0.01)], _shade(s.main, 0.8))
    c.shape("ellipse", [cx - w / 2, top, cx + w / 2, top + h], s.main,
            pattern=make_pattern(s.pattern, c.size, r), pattern_colour=s.accent)
    c.shape("ellipse", [cx - w / 4, top + h * 0.12, cx - w / 12, top + h * 0.32], _mix(s.main, (255, 255, 255), 0.7), outline=False)


def _draw_robot(c: Canvas, s: Style) -> None:
    r = s.rng
    hw, hh = r.uniform(0.22, 0.32), r.uniform(0.16, 0.22)
    bw, bh = r.uniform(0.3, 0.42), r.uniform(0.26, 0.34)
    top = 0.1
    c.line_([(0.5, top), (0.5, top - 0.06)], width=0.012)
    c.shape("ellipse", [0.47, top - 0.09, 0.53, top - 0.03], s.accent)
    c.shape("rounded_rectangle", [0.5 - hw / 2, top, 0.5 + hw / 2, top + hh], s.main, radius=round(c.size * 0.03))
    eye = hh * 0.25
    for ex in (0.5 - hw / 4, 0.5 + hw / 4):
        c.shape("ellipse", [ex - eye / 2, top + hh * 0.2, ex + eye / 2, top + hh * 0.2 + eye], (250, 250, 240))
        c.shape("ellipse", [ex - eye / 5, top + hh * 0.3, ex + eye / 5, top + hh * 0.3 + eye / 2.5], s.accent, outline=False)
    c.shape("rectangle", [0.5 - hw / 4, top + hh * 0.68, 0.5 + hw / 4, top + hh * 0.85], (40, 40, 40), outline=False)
    body_top = top + hh + 0.03
    c.shape("rectangle", [0.47, top + hh, 0.53, body_top], (90, 90, 95))
    arm = r.uniform(0.05, 0.07)
    for side in (-1, 1):
        ax = 0.5 + side * (bw / 2 + arm / 2 + 0.01)
        c.shape("rounded_rectangle", [ax - arm / 2, body_top + 0.02, ax + arm / 2, body_top + bh * 0.9], _shade(s.main, 0.85), radius=round(c.size * 0.02))
    c.shape("rounded_rectangle", [0.5 - bw / 2, body_top, 0.5 + bw / 2, body_top + bh], s.main, radius=round(c.size * 0.03),
            pattern=make_pattern(s.pattern, c.size, r), pattern_colour=s.accent)
    c.shape("rectangle", [0.5 - bw / 4, body_top + bh * 0.25, 0.5 + bw / 4, body_top + bh * 0.6], (220, 225, 230))
    for i, colour in enumerate(((220, 40, 40), (40, 200, 60), (250, 210, 40))):
        bx = 0.5 - bw / 6 + i * bw / 6
        c.shape("ellipse", [bx - 0.018, body_top + bh * 0.37, bx + 0.018, body_top + bh * 0.37 + 0.036], colour, outline=False)
    leg_top = body_top + bh
    for lx in (0.5 - bw / 4, 0.5 + bw / 4):
        c.shape("rectangle", [lx - 0.035, leg_top, lx + 0.035, leg_top + 0.14], (110, 110, 120))
        c.shape("rounded_rectangle", [lx - 0.06, leg_top + 0.14, lx + 0.06, leg_top + 0.18], _shade(s.main, 0.7), radius=round(c.size * 0.01))


def _draw_house(c: Canvas, s: Style) -> None:
    r = s.rng
    w, h = r.uniform(0.55, 0.75), r.uniform(0.35, 0.45)
    x0, y1 = 0.5 - w / 2, 0.92
    y0 = y1 - h
    roof_h = r.uniform(0.22, 0.32)
    chim = x0 + w * r.uniform(0.6, 0.78)
    c.shape("rectangle", [chim, y0 - roof_h * 0.8, chim + 0.07, y0 - roof_h * 0.2], (150, 70, 50))
    c.shape("polygon", [(x0 - 0.05, y0), (0.5, y0 - roof_h), (x0 + w + 0.05, y0)], s.accent,
            pattern=make_pattern("stripes", c.size, r), pattern_colour=_shade(s.accent, 0.75))
    c.shape("rectangle", [x0, y0, x0 + w, y1], s.main, pattern=make_pattern(s.pattern, c.size, r), pattern_colour=_shade(s.main, 0.8))
    dw = w * 0.18
    dx = x0 + w * r.uniform(0.35, 0.5)
    c.shape("rounded_rectangle", [dx, y1 - h * 0.55, dx + dw, y1], _shade(s.accent, 0.6), radius=round(c.size * 0.01))
    c.shape("ellipse", [dx + dw * 0.7, y1 - h * 0.3, dx + dw * 0.85, y1 - h * 0.25], (240, 210, 60), outline=False)
    for wx in (x0 + w * 0.1, x0 + w * 0.72):
        box = [wx, y0 + h * 0.2, wx + w * 0.18, y0 + h * 0.48]
        c.shape("rectangle", box, (170, 210, 240))
        c.line_([((box[0] + box[2]) / 2, box[1]), ((box[0] + box[2]) / 2, box[3])], width=0.008)
        c.line_([(box[0], (box[1] + box[3]) / 2), (box[2], (box[1] + box[3]) / 2)], width=0.008)


def _draw_car(c: Canvas, s: Style) -> None:
    r = s.rng
    length, body_h = r.uniform(0.8, 0.9), r.uniform(0.16, 0.22)
    x0, y1 = 0.5 - length / 2, 0.72
    y0 = y1 - body_h
    cab0, cab1 = x0 + length * r.uniform(0.2, 0.3), x0 + length * r.uniform(0.65, 0.75)
    cab_h = r.uniform(0.14, 0.2)
    c.shape("polygon", [(cab0, y0), (cab0 + 0.07, y0 - cab_h), (cab1 - 0.05, y0 - cab_h), (cab1 + 0.03, y0)], s.main)
    mid = (cab0 + cab1) / 2
    c.shape("polygon", [(cab0 + 0.03, y0), (cab0 + 0.08, y0 - cab_h + 0.025), (mid - 0.01, y0 - cab_h + 0.025), (mid - 0.01, y0)], (175, 215, 235))
    c.shape("polygon", [(mid + 0.01, y0), (mid + 0.01, y0 - cab_h + 0.025), (cab1 - 0.06, y0 - cab_h + 0.025), (cab1 - 0.01, y0)], (175, 215, 235))
    c.shape("rounded_rectangle", [x0, y0, x0 + length, y1], s.main, radius=round(c.size * 0.04),
            pattern=make_pattern("band", c.size, r) * (make_pattern(s.pattern, c.size, r) if s.pattern != "band" else 1), pattern_colour=s.accent)
    c.shape("ellipse", [x0 + length - 0.05, y0 + 0.03, x0 + length - 0.01, y0 + 0.07], (250, 230, 120), outline=False)
    c.shape("rectangle", [x0 + 0.005, y0 + 0.04, x0 + 0.03, y0 + 0.07], (200, 40, 40), outline=False)
    wheel = r.uniform(0.15, 0.19)
    for wx in (x0 + length * 0.22, x0 + length * 0.78):
        c.shape("ellipse", [wx - wheel / 2, y1 - wheel / 2, wx + wheel / 2, y1 + wheel / 2], (30, 30, 30))
        c.shape("ellipse", [wx - wheel / 4.5, y1 - wheel / 4.5, wx + wheel / 4.5, y1 + wheel / 4.5], (190, 190, 195))


def _draw_lamp(c: Canvas, s: Style) -> None:
    r = s.rng
    shade_w_top, shade_w_bot = r.uniform(0.2, 0.3), r.uniform(0.4, 0.55)
    shade_h = r.uniform(0.22, 0.3)
    top = 0.06
    pole_bottom = 0.88
    c.shape("rectangle", [0.485, top + shade_h, 0.515, pole_bottom], _shade(s.accent, 0.8))
    c.shape("ellipse", [0.5 - 0.07, top + shade_h - 0.02, 0.5 + 0.07, top + shade_h + 0.1], (255, 235, 150))
    c.shape("polygon", [(0.5 - shade_w_top / 2, top), (0.5 + shade_w_top / 2, top), (0.5 + shade_w_bot / 2, top + shade_h),
                        (0.5 - shade_w_bot / 2, top + shade_h)], s.main,
            pattern=make_pattern(s.pattern, c.size, r), pattern_colour=_mix(s.main, (255, 255, 255), 0.55))
    base_w = r.uniform(0.3, 0.42)
    c.shape("ellipse", [0.5 - base_w / 2, pole_bottom - 0.03, 0.5 + base_w / 2, pole_bottom + 0.07], s.accent)
    c.shape("ellipse", [0.46, 0.55, 0.54, 0.61], s.accent)


def _draw_fish(c: Canvas, s: Style) -> None:
    r = s.rng
    length, height = r.uniform(0.6, 0.72), r.uniform(0.3, 0.42)
    cx, cy = 0.45, 0.5
    x0, x1 = cx - length / 2, cx + length / 2
    tail = r.uniform(0.16, 0.22)
    c.shape("polygon", [(x0 + 0.04, cy), (x0 - tail, cy - height * 0.45), (x0 - tail + 0.05, cy), (x0 - tail, cy + height * 0.45)], s.accent)
    c.shape("polygon", [(cx - 0.1, cy - height / 2 + 0.02), (cx, cy - height / 2 - 0.12), (cx + 0.12, cy - height / 2 + 0.03)], s.accent)
    c.shape("ellipse", [x0, cy - height / 2, x1, cy + height / 2], s.main,
            pattern=make_pattern(s.pattern, c.size, r), pattern_colour=s.accent)
    c.shape("ellipse", [x1 - 0.13, cy - 0.07, x1 - 0.05, cy + 0.01], (250, 250, 250))
    c.shape("ellipse", [x1 - 0.1, cy - 0.05, x1 - 0.065, cy - 0.015], (20, 20, 20), outline=False)
    c.shape("polygon", [(cx, cy + 0.03), (cx + 0.08, cy + 0.08), (cx - 0.02, cy + 0.1)], _shade(s.accent, 0.85))


def _draw_bird(c: Canvas, s: Style) -> None:
    r = s.rng
    bw, bh = r.uniform(0.42, 0.52), r.uniform(0.32, 0.4)
    cx, cy = 0.45, 0.55
    c.line_([(cx - 0.05, cy + bh / 2 - 0.02), (cx - 0.06, 0.92)], (230, 140, 40), 0.012)
    c.line_([(cx + 0.05, cy + bh / 2 - 0.02), (cx + 0.06, 0.92)], (230, 140, 40), 0.012)
    c.shape("polygon", [(cx - bw / 2 + 0.03, cy - 0.02), (cx - bw / 2 - 0.17, cy - 0.14), (cx - bw / 2 - 0.14, cy + 0.05)], _shade(s.main, 0.75))
    c.shape("ellipse", [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], s.main)
    c.shape("ellipse", [cx - bw / 4, cy - bh / 8, cx + bw / 2.6, cy + bh / 2 - 0.01], _mix(s.main, (255, 255, 255), 0.6), outline=False)
    head = r.uniform(0.2, 0.26)
    hx, hy = cx + bw / 2 - 0.06, cy - bh / 2 - 0.02
    c.shape("polygon", [(hx + head / 2 - 0.02, hy - 0.03), (hx + head / 2 + r.uniform(0.08, 0.13), hy + 0.01), (hx + head / 2 - 0.02, hy + 0.04)], (240, 170, 40))
    c.shape("ellipse", [hx - head / 2, hy - head / 2, hx + head / 2, hy + head / 2], s.main)
    c.shape("ellipse", [hx + 0.01, hy - 0.04, hx + 0.05, hy], (20, 20, 20), outline=False)
    c.shape("ellipse", [cx - bw / 2.5, cy - bh / 3, cx + bw / 6, cy + bh / 4], s.accent,
            pattern=make_pattern(s.pattern, c.size, r), pattern_colour=_shade(s.accent, 0.6))


def _draw_snail(c: Canvas, s: Style) -> None:
    r = s.rng
    body = _mix(s.accent, (235, 215, 170), 0.6)
    c.line_([(0.78, 0.68), (0.82, 0.42)], OUTLINE, 0.01)
    c.line_([(0.84, 0.7), (0.92, 0.46)], OUTLINE, 0.01)
    c.shape("ellipse", [0.79, 0.38, 0.85, 0.44], (30, 30, 30), outline=False)
    c.shape("ellipse", [0.89, 0.42, 0.95, 0.48], (30, 30, 30), outline=False)
    c.shape("rounded_rectangle", [0.08, 0.7, 0.92, 0.82], body, radius=round(c.size * 0.05))
    c.shape("ellipse", [0.74, 0.6, 0.92, 0.8], body)
    radius = r.uniform(0.25, 0.32)
    sx, sy = 0.42, 0.72 - radius
    c.shape("ellipse", [sx - radius, sy - radius, sx + radius, sy + radius], s.main,
            pattern=make_pattern(s.pattern, c.size, r), pattern_colour=_mix(s.main, (255, 255, 255), 0.4))
    # Spiral: nested circles shifted towards the centre, each drawn as a ring.
    for k in range(1, 4):
        rad = radius * (1 - k * 0.24)
        ox = sx + radius * 0.08 * k
        c.ring([ox - rad, sy - rad + 0.01 * k, ox + rad, sy + rad + 0.01 * k], _shade(s.main, 0.85 - 0.1 * k), 0.012)


def _draw_person(c: Canvas, s: Style) -> None:
    r = s.rng
    skin = SKIN[int(r.integers(len(SKIN)))]
    hair = HAIR[int(r.integers(len(HAIR)))]
    trousers = _shade(PALETTE[["navy", "brown", "grey", "green"][int(r.integers(4))]], 0.9)
    hairdo = ["short", "long", "bun", "spiky"][int(r.integers(4))]
    cx, head = 0.5, r.uniform(0.2, 0.25)
    head_top = 0.06
    hy = head_top + head / 2
    sw, sh = r.uniform(0.3, 0.38), r.uniform(0.3, 0.34)
    shirt_top = head_top + head + 0.03
    if hairdo == "long":
        c.shape("rounded_rectangle", [cx - head * 0.62, hy - head * 0.3, cx + head * 0.62, hy + head * 0.95], hair, radius=round(c.size * 0.04))
    for lx in (cx - sw / 4, cx + sw / 4):
        c.shape("rectangle", [lx - 0.05, shirt_top + sh - 0.02, lx + 0.05, 0.92], trousers)
        c.shape("ellipse", [lx - 0.07, 0.9, lx + 0.06, 0.96], (40, 35, 30))
    for side in (-1, 1):
        ax = cx + side * (sw / 2 + 0.035)
        c.shape("rounded_rectangle", [ax - 0.04, shirt_top + 0.02, ax + 0.04, shirt_top + sh * 0.85], _shade(s.main, 0.9), radius=round(c.size * 0.02))
        c.shape("ellipse", [ax - 0.04, shirt_top + sh * 0.8, ax + 0.04, shirt_top + sh * 0.8 + 0.07], skin)
    c.shape("rectangle", [cx - 0.04, head_top + head - 0.02, cx + 0.04, shirt_top + 0.02], skin)
    c.shape("rounded_rectangle", [cx - sw / 2, shirt_top, cx + sw / 2, shirt_top + sh], s.main, radius=round(c.size * 0.04),
            pattern=make_pattern(s.pattern, c.size, r), pattern_colour=s.accent)
    c.shape("ellipse", [cx - head / 2, head_top, cx + head / 2, head_top + head], skin)
    if hairdo in ("short", "long", "bun"):
        c.shape("chord", [cx - head / 2 - 0.01, head_top - 0.01, cx + head / 2 + 0.01, head_top + head * 0.75], hair, start=180, end=360)
    if hairdo == "bun":
        c.shape("ellipse", [cx - 0.055, head_top - 0.09, cx + 0.055, head_top + 0.02], hair)
    if hairdo == "spiky":
        spikes = [(cx - head / 2 + i * head / 6, head_top + (0.04 if i % 2 == 0 else -0.05)) for i in range(7)]
        c.shape("polygon", [(cx - head / 2, hy), *spikes, (cx + head / 2, hy)], hair)
    for ex in (cx - head / 5, cx + head / 5):
        c.shape("ellipse", [ex - 0.015, hy, ex + 0.015, hy + 0.03], (25, 25, 25), outline=False)
    c.shape("chord", [cx - head / 5, hy + head * 0.1, cx + head / 5, hy + head * 0.35], (170, 50, 60), start=0, end=180, outline=False)


@dataclass(frozen=True)
class DrawnKind:
    kind: str
    category: str
    draw: Callable[[Canvas, Style], None]


DRAWN_KINDS: tuple[DrawnKind, ...] = (
    DrawnKind("mug", "object", _draw_mug),
    DrawnKind("balloon", "object", _draw_balloon),
    DrawnKind("robot", "object", _draw_robot),
    DrawnKind("car", "object", _draw_car),
    DrawnKind("lamp", "object", _draw_lamp),
    DrawnKind("house", "place", _draw_house),
    DrawnKind("fish", "animal", _draw_fish),
    DrawnKind("bird", "animal", _draw_bird),
    DrawnKind("snail", "animal", _draw_snail),
    DrawnKind("cartoon_person", "person", _draw_person),
)


def variant_styles(kind: str, count: int, rng: np.random.Generator) -> list[Style]:
    """Styles for `count` variants of one kind: distinct main colours and patterns where possible.

    Colours and patterns are dealt from shuffled decks, so siblings differ visibly; a main colour
    and its accent are never the same.
    """
    names = list(PALETTE)
    colours = [names[i] for i in rng.permutation(len(names))]
    patterns = [PATTERNS[i] for i in rng.permutation(len(PATTERNS))]
    styles = []
    for i in range(count):
        main = colours[i % len(colours)]
        accent_choices = [n for n in names if n != main]
        accent = accent_choices[int(rng.integers(len(accent_choices)))]
        styles.append(Style(PALETTE[main], PALETTE[accent], patterns[i % len(patterns)], np.random.default_rng(rng.integers(2**63))))
    return styles


def render_drawing(kind: DrawnKind, style: Style, longest: int) -> Image.Image:
    """Draw one variant as an RGBA cut-out whose longest side is `longest`."""
    canvas = Canvas(max(64, longest * 2))
    kind.draw(canvas, style)
    return canvas.finish(longest, light_angle=float(style.rng.uniform(0, 2 * np.pi)))
