"""Offline stand-in for the visual-fidelity VLM: looks for each reference cut-out in the query's pixels.

`PixelVerifier` (backend 'local_pixel_verifier') implements `ChatModel` for requests whose task is
`{'kind': 'visual_fidelity', 'concept_ids': [...], 'query_image_index': k}` (optionally
`concept_names`): the request's images are the references in concept order with the query at index
k. It never sees a generator's layout, only pixels.

For each reference it runs masked normalised cross-correlation over the query at a range of scales
and both horizontal orientations:

- only the cut-out's own pixels count (alpha above one half, eroded by a pixel so blended edges do
  not), so the background around the concept in the query is irrelevant;
- each colour channel is centred on its own masked mean and the three channels share one
  normalisation, so brightness and contrast changes cancel while colour structure still counts;
- NCC alone ignores gain and offset, so a smooth brown horse could "match" grey gravel; each window
  is therefore also weighted by how plausible its mean colour (common gain, per-channel cast) and
  its contrast are as a relit copy of the template (tolerances in the options);
- a match is a placement with the whole template inside the frame ("valid" correlation), so a
  concept cut off by the border cannot score well, and an occluded one loses the hidden part.

The search is coarse to fine: every scale and both orientations on a `coarse_size` copy of the
query; promising candidates are confirmed on a copy large enough to show the template with at least
`min_template_side` pixels (up to the query's own size), and a confirmed match ends the search.
FFTs run in single precision and the query's are computed once per resolution. On one core a 320 px
query with four concepts takes about 0.2 s when they are present and about 0.4-0.6 s when all four
are missing.

The concept counts as present when its confirmed score reaches `threshold`. The answer is
`yes (...)` with the confirming scores (the first match found above the threshold, not necessarily
the best), or `no: <concept> not found (score 0.31); ...` with the best score for every concept
that failed.

Known limits (measured on the builtin pool): cut-outs with fine stripes or checks shown small score
lower (worst clean score seen about 0.70), and the low-resolution LFW faces are too alike for this
matcher to tell apart reliably (a face swapped for another face scores up to about 0.8), so it
catches occlusion, cropping, omission and substitution by a different-looking concept, not subtle
identity changes.

Options (`models.<name>.options`): threshold, work_size, coarse_size, min_template_side,
scale_range (template longest side as a fraction of the query's longest side), scale_step (ratio
between neighbouring scales), gain_tolerance, cast_tolerance, contrast_tolerance (natural-log units).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from scipy import fft as sfft

from covip.clients.backends import PIXEL_VERIFIER_OPTIONS
from covip.clients.base import ChatRequest, ChatResponse
from covip.clients.spec import ModelSpec
from covip.core.io import decode_image

DEFAULT_OPTIONS = PIXEL_VERIFIER_OPTIONS  # declared once, in covip.clients.backends
_MIN_MASK_PIXELS = 40
_MIN_STD = 2.0  # grey levels; a reference flatter than this has nothing to match
_REFINE_TOP = 3
_CHECK_FLOOR = 0.3


class PixelVerifier:
    """Deterministic template-matching verifier standing in for a VLM judge of visual fidelity."""

    def __init__(self, spec: ModelSpec):
        options = spec.resolved_options()
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
        self.min_template_side = int(options["min_template_side"])
        if not 8 <= self.min_template_side <= 256:
            raise ValueError(f"{where}.min_template_side must be in [8, 256], got {self.min_template_side}")
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

    def _matchers(self, query: Image.Image) -> tuple["_Matcher", "_FineMatchers"]:
        return _Matcher(query, self.coarse_size, self.tolerances), _FineMatchers(query, self)

    def _best(self, coarse: "_Matcher", fine: "_FineMatchers", reference: Image.Image) -> float:
        """Coarse to fine search for one reference.

        Every scale (largest first) and both orientations are scored on a small copy of the query.
        A coarse score that beats the best so far and reaches the threshold is confirmed at once on
        a copy large enough to show the template with `min_template_side` pixels (with its
        neighbouring scales); a confirmed match ends the search, so a present concept usually costs
        a fraction of the full search. Otherwise the best few coarse candidates are re-scored the
        same way and the best confirmed score is returned. Only confirmed scores count, so the
        decision never rests on the coarse copy.
        """
        best = 0.0
        tried: set[tuple[int, bool]] = set()

        def confirm(k: int, flipped: bool) -> float:
            nonlocal best
            for j in (k, k - 1, k + 1):
                if 0 <= j < len(self.scales) and (j, flipped) not in tried:
                    tried.add((j, flipped))
                    best = max(best, fine.for_scale(self.scales[j]).score(reference, self.scales[j], flipped))
            return best

        candidates = []
        coarse_best = 0.0
        for k in reversed(range(len(self.scales))):
            for flipped in (False, True):
                score = coarse.score(reference, self.scales[k], flipped)
                candidates.append((score, k, flipped))
                if score >= self.threshold and score > coarse_best:
                    coarse_best = score
                    if confirm(k, flipped) >= self.threshold:
                        return best
        candidates.sort(key=lambda c: -c[0])
        for _, k, flipped in candidates[:_REFINE_TOP]:
            confirm(k, flipped)
        return best


class _FineMatchers:
    """Matchers for one query at a few resolutions, built on first use.

    Small concepts are matched on a larger copy of the query (up to its own size): at the base
    working size a concept a fifth of the frame wide is only ~30 px, where fine stripes alias and
    random texture matches too easily.
    """

    def __init__(self, query: Image.Image, verifier: "PixelVerifier"):
        self.query, self.verifier = query, verifier
        native = max(query.size)
        base = min(verifier.work_size, native)
        self.levels = sorted({min(native, round(base * f)) for f in (1.0, 1.5, 2.0)})
        self.built: dict[int, _Matcher] = {}

    def for_scale(self, scale: float) -> "_Matcher":
        level = next((size for size in self.levels if scale * size >= self.verifier.min_template_side), self.levels[-1])
        if level not in self.built:
            self.built[level] = _Matcher(self.query, level, self.verifier.tolerances)
        return self.built[level]


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
        q = np.asarray(query, np.float32)
        # Centring on the global channel means keeps the single-precision local variances
        # (sum of squares minus squared sum) well conditioned; masked NCC does not see the offset.
        self.offset = q.reshape(-1, 3).mean(axis=0)
        q = q - self.offset
        self.shape = q.shape[:2]
        self.longest = max(self.shape)
        # Channel FFTs, plus the FFT of the per-pixel sum of squares, shared by all templates.
        self.fq = sfft.rfft2(np.moveaxis(q, 2, 0), workers=1)
        self.fq2 = sfft.rfft2((q**2).sum(axis=2), workers=1)

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
        mask = np.asarray(alpha.filter(ImageFilter.MinFilter(3)), np.float32) / 255.0
        n = float(mask.sum())
        if n < _MIN_MASK_PIXELS:
            return 0.0
        t = np.asarray(template.convert("RGB"), np.float32)
        on = mask > 0
        mean_t = t[on].mean(axis=0)
        centred = (t - mean_t) * mask[:, :, None]
        var_t = float((centred**2).sum())
        if var_t / (3 * n) < _MIN_STD**2:
            return 0.0
        h, w = mask.shape
        H, W = self.shape
        stack = np.concatenate([np.moveaxis(centred, 2, 0), mask[None]], axis=0)
        ft = np.conj(sfft.rfft2(stack, s=(H, W), workers=1))
        # Correlations: template with the query (numerator), mask with each channel (local sums) and
        # mask with the sum of squares; keep only placements fully inside the frame.
        products = np.concatenate(
            [
                (self.fq * ft[:3]).sum(axis=0)[None],
                self.fq * ft[3][None],
                (self.fq2 * ft[3])[None],
            ]
        )
        corr = sfft.irfft2(products, s=(H, W), workers=1)[:, : H - h + 1, : W - w + 1].reshape(5, -1)
        numerator, sums, sum_sq = corr[0], corr[1:4], corr[4]
        var_q = sum_sq - (sums**2).sum(axis=0) / n
        # Flat query windows cannot hold the concept; keep them from dividing by ~0.
        ncc = np.where(var_q > (_MIN_STD**2) * 3 * n, numerator / np.sqrt(var_t * np.maximum(var_q, 1e-6)), 0.0)
        # Only windows that could matter need the consistency check: those above a floor well under
        # any sensible threshold (scores below it are reported approximately), or else the best one.
        keep = np.flatnonzero(ncc >= _CHECK_FLOOR)
        if keep.size == 0:
            keep = np.array([int(np.argmax(ncc))])
        mean_q = sums[:, keep] / n + self.offset[:, None]
        factor = self._consistency(mean_t, var_t, mean_q, var_q[keep])
        return float(max(0.0, (ncc[keep] * factor).max()))

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
