"""Production image embedder: an open_clip vision tower (the paper retrieves negatives with CLIP ViT-L/14).

The registry entry names the architecture (`model`, e.g. 'ViT-L-14-quickgelu') and the weights
(`pretrained`): either an open_clip tag such as 'openai', resolved from the local hub cache, or the
path of a checkpoint file. `options` may carry:

- `batch_size` (int, default 32): images per forward pass;
- `model_config` (path): an open_clip model config JSON to register before building, so a custom
  architecture can be named by the file's stem;
- `cache_dir` (path): where tagged weights are looked up;
- `precision` ('fp32' default; 'fp16'/'bf16' on a GPU);
- `background` ([r, g, b], default white): colour behind transparent pixels of cut-out concepts.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from covip.clients.base import BackendUnavailableError
from covip.clients.spec import ModelSpec
from covip.core.io import decode_image

def resolve_device(device: str) -> str:
    """'auto' means the first GPU when torch sees one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def flatten_alpha(image, background: tuple[int, int, int]):
    """Composite an image with transparency onto a solid background and return it as RGB.

    Concept photos are cut-outs whose alpha marks the concept; the colour hidden under transparent
    pixels is arbitrary, so converting straight to RGB would show CLIP garbage around the concept.
    """
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


class OpenClipEmbedder:
    """Embeds images with an open_clip model; rows come out float32 and L2-normalised."""

    def __init__(self, spec: ModelSpec):
        options = spec.resolved_options()
        try:
            import open_clip
            import torch
        except ImportError as error:  # optional heavy dependency: checked when built, not at import
            raise BackendUnavailableError(
                f"models.{spec.name} uses backend 'open_clip', which needs the packages open_clip_torch and torch "
                f"({error}); install them or switch the entry to backend 'local_color_texture'"
            ) from error
        self._torch = torch
        self.spec = spec
        self.batch_size = int(options["batch_size"])
        if self.batch_size < 1:
            raise ValueError(f"models.{spec.name}.options.batch_size must be >= 1, got {self.batch_size}")
        background = options["background"]
        if len(background) != 3 or not all(0 <= int(c) <= 255 for c in background):
            raise ValueError(f"models.{spec.name}.options.background must be three ints in 0..255, got {background!r}")
        self.background = tuple(int(c) for c in background)
        if not spec.model:
            raise ValueError(f"models.{spec.name}: backend 'open_clip' needs `model` (an architecture, e.g. 'ViT-L-14-quickgelu')")

        config_path = options["model_config"]
        if config_path:
            if not os.path.isfile(config_path):
                raise BackendUnavailableError(f"models.{spec.name}.options.model_config: no file at {config_path}")
            open_clip.add_model_config(config_path)
        if spec.model not in open_clip.list_models():
            raise BackendUnavailableError(
                f"models.{spec.name}: open_clip knows no architecture '{spec.model}'"
                + (" (the model_config file's name must match `model`)" if config_path else "")
            )

        self.device = resolve_device(spec.device)
        precision = options["precision"]
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model,
                pretrained=spec.pretrained,
                precision=precision,
                device=self.device,
                cache_dir=options["cache_dir"],
            )
        except Exception as error:  # noqa: BLE001 - open_clip raises RuntimeError for missing weights, etc.
            where = spec.pretrained or "(random initialisation)"
            raise BackendUnavailableError(
                f"models.{spec.name}: cannot load open_clip model '{spec.model}' with weights '{where}': {error}. "
                "A tag (e.g. 'openai') must already be in the local hub cache; a path must be an existing checkpoint"
            ) from error
        model.eval()
        self.model = model
        self.preprocess = preprocess
        self.dtype = next(model.parameters()).dtype
        weights = os.path.basename(spec.pretrained) if spec.pretrained and os.path.isfile(spec.pretrained) else spec.pretrained
        self.identity = f"{spec.identity}:{weights}" if weights else f"{spec.identity}:random-init"

    def embed(self, images: list[bytes]) -> np.ndarray:
        """Return one L2-normalised float32 row per image, in input order."""
        torch = self._torch
        dim = int(self.model.visual.output_dim)
        if not images:
            return np.zeros((0, dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                tensors = [
                    self.preprocess(flatten_alpha(decode_image(data, f"{self.spec.name} input image {start + i}"), self.background))
                    for i, data in enumerate(chunk)
                ]
                batch = torch.stack(tensors).to(self.device, dtype=self.dtype)
                features = self.model.encode_image(batch).float()
                features = torch.nn.functional.normalize(features, dim=-1)
                out.append(features.cpu().numpy())
        return np.concatenate(out, axis=0).astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        """What was loaded, for logs."""
        return {"model": self.spec.model, "pretrained": self.spec.pretrained, "device": self.device, "identity": self.identity}
