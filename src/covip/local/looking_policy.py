"""A reference policy that LOOKS: the positive control of the visual-context controls.

The oracle, the context dump and the blind policy read the task, never the pixels, so no control can
move them; that shows what a control does to the metric itself. A control experiment also needs the
opposite reference, a policy whose scores depend on the images by construction, to show that the
controls can detect looking at all. `LookingPolicy` (backend 'reference_looking') is that policy:

- it decides which context concepts are in the query image from the pixels alone, by template
  matching each context image against the query with the offline pixel verifier
  (`covip.local.pixel_verifier`, the stage-3 stand-in): a context concept counts as present when its
  score reaches the verifier's threshold;
- it then writes what the oracle would write for THOSE concepts (their names and stored facts), and
  answers CAG and diagnostic questions from the evidence of the concept(s) it found (for one-person
  diagnostic items: the best-scoring context entry, if any reaches the threshold).

It never reads `positive_indices`, `target_index` or a diagnostic item's answer. With the right
images it approaches the oracle; with no context images (text_only), another sample's images
(swapped_context) or a blank query (blank_query) it finds nothing or the wrong concepts, and its
Acc+ must fall. Like the
verifier it cannot tell the builtin pool's low-resolution faces apart reliably.

Options: those of the pixel verifier (threshold, work_size, ...).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from covip.clients.base import ChatRequest, ChatResponse, Usage
from covip.core.io import decode_image
from covip.local.pixel_verifier import PixelVerifier
from covip.local.reference_policies import OraclePolicy, ReferencePolicyError, _dialogues


SEEN_LIMIT = 4096  # image sets remembered by one policy object


class LookingPolicy(OraclePolicy):
    """The oracle's writing, with the positives found in the pixels instead of read from the task."""

    label = "looking"

    def __init__(self, spec):
        super().__init__(spec)
        self.verifier = PixelVerifier(spec)
        self._seen: dict[str, list[float]] = {}  # image set -> scores (see _scores)

    def complete(self, request: ChatRequest) -> ChatResponse:
        task = request.task
        if not isinstance(task, Mapping) or "kind" not in task:
            raise ReferencePolicyError("LookingPolicy works from request.task and the request's images; this request has no task")
        found, _ = self.find(request, task)
        seen = dict(task)
        for truth in ("target_index", "answer", "last_action"):  # it answers from what it found, never the truth
            seen.pop(truth, None)
        seen["positive_indices"] = found
        text = self.caption(seen) if task["kind"] == "caption" else None
        if task["kind"] in ("cag_answer", "diagnostic"):
            text = self.answer(seen)
        if text is None:
            raise ReferencePolicyError(f"LookingPolicy serves task kinds 'caption', 'cag_answer' and 'diagnostic', not {task['kind']!r}")
        return ChatResponse(text, self.spec.model or self.label, Usage(0, len(text.split())))

    def _scores(self, images) -> list[float]:
        """Every context image's match score in the query (the last image). Remembered by the images'
        bytes: a diagnostic item is matched for its direct answer, its CAG caption and its CAG answer
        on the same images, and template matching is this policy's whole cost."""
        key = hashlib.sha256(b"".join(hashlib.sha256(image.data).digest() for image in images)).hexdigest()
        scores = self._seen.get(key)
        if scores is None:
            query = decode_image(images[-1].data, "looking policy query image", mode="RGB")
            coarse, fine = self.verifier._matchers(query)
            scores = [self.verifier._best(coarse, fine, decode_image(image.data, f"looking policy context image {k}",
                                                                     mode="RGBA"))
                      for k, image in enumerate(images[:-1])]
            if len(self._seen) >= SEEN_LIMIT:
                self._seen.clear()
            self._seen[key] = scores
        return list(scores)

    def find(self, request: ChatRequest, task: Mapping) -> tuple[list[int], list[float]]:
        """Context indices judged present in the query image, and every context image's score.

        The request's images are the context images in context order and then the query image (the
        captioning and diagnostic layouts); only the query means there are no context images to match.
        """
        n = len(_dialogues(task))
        images = request.images
        if task["kind"] == "cag_answer":
            images = request.messages[0].images  # the caption request's turn holds the images
        if len(images) != n + 1:
            return [], []
        scores = self._scores(images)
        present = [k for k, score in enumerate(scores) if score >= self.verifier.threshold]
        if task["kind"] == "caption" and task.get("context_facts"):
            return present, scores
        # One person per diagnostic item: the best match, if it is a match at all.
        best = max(range(n), key=scores.__getitem__) if n else None
        return ([best] if best is not None and scores[best] >= self.verifier.threshold else []), scores
