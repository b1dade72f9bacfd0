"""Offline stand-in for the image generator (backend 'local_compositor').

It cannot read the instruction: it works from `request.task` (the concept ids and the wanted image
size) and the reference images, and hands them to `covip.content.scenes.SceneComposer`, which pastes
the cut-outs onto a real texture scene, with a deliberate defect at the configured rate. The options
of its registry entry are the composer's (see that module), declared with their defaults in
`covip.clients.backends`.
"""

from __future__ import annotations

from covip.clients.base import ImageRequest, ImageResponse
from covip.clients.spec import ModelSpec
from covip.content.scenes import DEFECT_KINDS, DEFAULT_OPTIONS, SceneComposer  # noqa: F401 - re-exported for tests

__all__ = ["Compositor", "DEFAULT_OPTIONS", "DEFECT_KINDS"]


class Compositor:
    """Deterministic scene compositor standing in for an image-generation model."""

    def __init__(self, spec: ModelSpec):
        self.composer = SceneComposer(spec.resolved_options(), where=f"models.{spec.name}.options")
        self.spec = spec
        self.identity = spec.identity

    def __getattr__(self, name: str):  # defect_rate, scale_range, ... of the composer
        if name == "composer":
            raise AttributeError(name)
        return getattr(self.composer, name)

    def generate(self, request: ImageRequest) -> ImageResponse:
        """Compose one scene from the request's reference cut-outs; raises on a malformed request."""
        task = dict(request.task or {})
        refs = [image.data for image in request.reference_images]
        ids = list(task.get("concept_ids") or [f"ref{i}" for i in range(len(refs))])
        image, layout, note = self.composer.compose(refs, ids, task.get("image_size"), request.seed)
        return ImageResponse(image=image, model="compositor", text=note, layout=layout)
