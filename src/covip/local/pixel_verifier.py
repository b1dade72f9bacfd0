"""Offline stand-in for the visual-fidelity VLM: looks for each reference cut-out in the query's pixels.

`PixelVerifier` (backend 'local_pixel_verifier') implements `ChatModel` for requests whose task is
`{'kind': 'visual_fidelity', 'concept_ids': [...], 'query_image_index': k}`: the request's images
are the references in concept order with the query at index k. It never sees a generator's layout,
only pixels.

For each reference it runs masked normalised cross-correlation over the query at a range of scales
and both horizontal orientations:

- only the cut-out's own pixels count (alpha above one half, eroded by a pixel so blended edges do
  not), so the background around the concept in the query is irrelevant;
- each colour channel is centred on its own masked mean, which absorbs brightness offsets and a
  colour cast, and the three channels share one normalisation, which absorbs contrast and overall
  brightness gain but keeps colour: a blue mug does not match a red mug of the same shape;
- a match is a placement with the whole template inside the frame ("valid" correlation), so a
  concept that is cut off by the border cannot score well, and an occluded one loses the hidden
  part of its correlation.

The concept counts as present when its best score reaches `threshold`. The answer is `yes (...)`
with the scores, or `no: <concept> not found (score 0.31); ...` naming every concept that failed.
The search runs on a copy of the query whose longest side is `work_size`, with FFTs shared across
templates, so a 320 px query with four concepts takes well under a second.

Options (`models.<name>.options`): threshold, work_size, scale_range (template longest side as a
fraction of the query's longest side), scale_step (ratio between neighbouring scales).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from covip.clients.base import ChatRequest, ChatResponse
from covip.clients.registry import ModelSpec
from covip.io import decode_image

DEFAULT_OPTIONS = {
    "threshold": 0.7,
    "work_size": 224,
    "coarse_size": 128,
    "scale_range": [0.14, 0.56],
    "scale_step": 1.08,
    "gain_tolerance": 0.4,
    "cast_tolerance": 0.12,
    "contrast_tolerance": 0.5,
}
_MIN_MASK_PIXELS = 40
_MIN_STD = 2.0  # grey levels; a reference flatter than this has nothing to match
_REFINE_TOP = 3  # coarse candidates (scale, orientation) re-scored at full working resolution


class PixelVerifier:
    """Deterministic template-matching verifier standing in for a VLM judge of visual fidelity."""

    def __init__(self, spec: ModelSpec):
        unknown = set(spec.options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ValueError(f"models.{spec.name}.options: unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
        options = {**DEFAULT_OPTIONS, **spec.options}
        where = f"models.{spec.name}.options"
        self.threshold = float(options["threshold"])
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"{where}.threshold must be in (0, 1), got {self.threshold}")
        self.work_size = int(options["work_size"])
        if not 48 <= self.work_size <= 1024:
            raise ValueError(f"{where}.work_size must be in [48, 1024], got {self.work_size}")
        lo, hi = map(float, options["scale_range"])
        if not 0.02 <= lo <= hi <= 1.0:
            raise ValueError(f"{where}.scale_range must satisfy 0.02 <= low <= high <= 1, got {[lo, hi]}")
        self.scale_step = float(options["scale_step"])
        if not 1.01 <= self.scale_step <= 1.5:
            raise ValueError(f"{where}.scale_step must be in [1.01, 1.5], got {self.scale_step}")
        count = int(np.floor(np.log(hi / lo) / np.log(self.scale_step))) + 1
        self.scales = [lo * self.scale_step**k for k in range(count)]
        self.coarse_size = int(options["coarse_size"])
        if not 32 <= self.coarse_size <= self.work_size:
            raise ValueError(f"{where}.coarse_size must be in [32, work_size={self.work_size}], got {self.coarse_size}")
        self.tolerances = {}
        for key in ("gain_tolerance", "cast_tolerance", "contrast_tolerance"):
            value = float(options[key])
            if not 0.0 < value <= 3.0:
                raise ValueError(f"{where}.{key} must be in (0, 3], got {value}")
            self.tolerances[key] = value
        self.spec = spec
        self.identity = spec.identity

    def complete(self, request: ChatRequest) -> ChatResponse:
        """Answer the visual-fidelity question from pixels; raises on a request it cannot interpret."""
        task = request.task or {}
        if task.get("kind") != "visual_fidelity":
            raise ValueError(f"pixel verifier answers only task kind 'visual_fidelity', got {task.get('kind')!r}")
        concept_ids = list(task.get("concept_ids") or [])
        images = request.images
        index = task.get("query_image_index")
        if not isinstance(index, int) or not 0 <= index < len(images):
            raise ValueError(f"visual_fidelity task: query_image_index {index!r} does not index the request's {len(images)} image(s)")
        references = [image for i, image in enumerate(images) if i != index]
        if len(references) != len(concept_ids) or not concept_ids:
            raise ValueError(f"visual_fidelity task: {len(concept_ids)} concept id(s) for {len(references)} reference image(s)")
        names = list(task.get("concept_names") or [])
        query = decode_image(images[index].data, f"visual_fidelity request image {index} (query)", mode="RGB")
        coarse, fine = self._matchers(query)
        scores = [
            self._best(coarse, fine, decode_image(ref.data, f"visual_fidelity request reference for {cid}", mode="RGBA"))
            for ref, cid in zip(references, concept_ids)
        ]
        labels = [f"{cid} ({names[i]})" if i < len(names) and names[i] else cid for i, cid in enumerate(concept_ids)]
        failed = [(label, score) for label, score in zip(labels, scores) if score < self.threshold]
        if failed:
            text = "no: " + "; ".join(f"{label} not found (score {score:.2f})" for label, score in failed)
        else:
            text = "yes (" + ", ".join(f"{label} {score:.2f}" for label, score in zip(labels, scores)) + ")"
        return ChatResponse(text=text, model="pixel_verifier")

    # -----------------------------------------------------------------------------------------------

    def best_score(self, query: Image.Image, reference: Image.Image) -> float:
        """Best consistency-weighted masked NCC of `reference` (RGBA cut-out) fully inside `query`."""
        return self._best(*self._matchers(query), reference)

    def _matchers(self, query: Image.Image) -> tuple["_Matcher", "_Matcher"]:
        return _Matcher(query, self.coarse_size, self.tolerances), _Matcher(query, self.work_size, self.tolerances)

    def _best(self, coarse: "_Matcher", fine: "_Matcher", reference: Image.Image) -> float:
        """Coarse to fine: every other scale, both orientations, on a small copy of the query; then
        the best few candidates and their neighbouring scales at full working resolution."""
        candidates = []
        for k in range(0, len(self.scales), 2):
            for flipped in (False, True):
                candidates.append((coarse.score(reference, self.scales[k], flipped), k, flipped))
        candidates.sort(key=lambda c: -c[0])
        tried: set[tuple[int, bool]] = set()
        best = 0.0
        for _, k, flipped in candidates[:_REFINE_TOP]:
            for j in (k - 1, k, k + 1):
                if 0 <= j < len(self.scales) and (j, flipped) not in tried:
                    tried.add((j, flipped))
                    best = max(best, fine.score(reference, self.scales[j], flipped))
        return best


class _Matcher:
    """One query prepared for repeated masked-NCC searches (its FFTs are computed once)."""

    def __init__(self, query: Image.Image, work_size: int, tolerances: dict[str, float]):
        self.gain_tol = tolerances["gain_tolerance"]
        self.cast_tol = tolerances["cast_tolerance"]
        self.contrast_tol = tolerances["contrast_tolerance"]
        scale = min(1.0, work_size / max(query.size))
        if scale < 1.0:
            size = (max(1, round(query.width * scale)), max(1, round(query.height * scale)))
            query = query.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        q = np.asarray(query, np.float64)
        self.shape = q.shape[:2]
        self.longest = max(self.shape)
        # Channel FFTs, plus the FFT of the per-pixel sum of squares, shared by all templates.
        self.fq = np.fft.rfft2(np.moveaxis(q, 2, 0))
        self.fq2 = np.fft.rfft2((q**2).sum(axis=2))

    def score(self, reference: Image.Image, scale: float, flipped: bool) -> float:
        """Best score of the reference resized so its longest side is `scale` of the query's."""
        factor = scale * self.longest / max(reference.size)
        w, h = round(reference.width * factor), round(reference.height * factor)
        if w < 6 or h < 6 or w > self.shape[1] or h > self.shape[0]:
            return 0.0
        template = reference.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
        if flipped:
            template = template.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self._score(template)

    def _score(self, template: Image.Image) -> float:
        alpha = Image.fromarray(((np.asarray(template.getchannel("A")) > 127) * 255).astype(np.uint8))
        mask = np.asarray(alpha.filter(ImageFilter.MinFilter(3)), np.float64) / 255.0
        n = mask.sum()
        if n < _MIN_MASK_PIXELS:
            return 0.0
        t = np.asarray(template.convert("RGB"), np.float64)
        on = mask > 0
        mean_t = t[on].mean(axis=0)
        centred = (t - mean_t) * mask[:, :, None]
        var_t = (centred**2).sum()
        if var_t / (3 * n) < _MIN_STD**2:
            return 0.0
        h, w = mask.shape
        H, W = self.shape
        stack = np.concatenate([np.moveaxis(centred, 2, 0), mask[None]], axis=0)
        ft = np.conj(np.fft.rfft2(stack, s=(H, W)))
        # Correlations: template with the query (numerator), mask with each channel (local sums) and
        # mask with the sum of squares; keep only placements fully inside the frame.
        products = np.concatenate(
            [
                (self.fq * ft[:3]).sum(axis=0)[None],
                self.fq * ft[3][None],
                (self.fq2 * ft[3])[None],
            ]
        )
        corr = np.fft.irfft2(products, s=(H, W))[:, : H - h + 1, : W - w + 1].reshape(5, -1)
        numerator, sums, sum_sq = corr[0], corr[1:4], corr[4]
        var_q = sum_sq - (sums**2).sum(axis=0) / n
        # Flat query windows cannot hold the concept; keep them from dividing by ~0.
        ncc = np.where(var_q > (_MIN_STD**2) * 3 * n, numerator / np.sqrt(var_t * np.maximum(var_q, 1e-9)), 0.0)
        # Only windows that could win need the (costlier) consistency check.
        keep = np.flatnonzero(ncc > 0.5 * ncc.max())
        if keep.size == 0 or ncc.max() <= 0:
            return 0.0
        factor = self._consistency(mean_t, var_t, sums[:, keep] / n, var_q[keep])
        return float((ncc[keep] * factor).max())

    def _consistency(self, mean_t, var_t, mean_q, var_q):
        """1 where a window's colour and contrast are within lighting tolerance of the template's.

        NCC ignores gain and offset entirely, so on its own a smooth brown template can match a
        grey gravel patch. Lighting changes the mean colour by a common gain and a mild per-channel
        cast, and the contrast by a bounded factor; a window outside those bounds is a different
        thing. The factor falls linearly to 0 over one more tolerance width past each bound.
        """
        # Log-ratios of the mean colours; the offset keeps near-black channels from exploding.
        log_ratio = np.log((mean_q + 20.0) / (mean_t[:, None] + 20.0))
        gain = log_ratio.mean(axis=0)
        cast = np.abs(log_ratio - gain[None]).max(axis=0)
        contrast = 0.5 * np.log(np.maximum(var_q, 1e-9) / var_t)
        factor = np.ones_like(gain)
        for value, tolerance in ((np.abs(gain), self.gain_tol), (cast, self.cast_tol), (np.abs(contrast), self.contrast_tol)):
            factor *= np.clip(1.0 - (value - tolerance) / tolerance, 0.0, 1.0)
        return factor
