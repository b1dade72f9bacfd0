"""OpenClipEmbedder through open_clip's real loading path, with a tiny random-weight ViT saved locally.

Nothing here touches the network: the architecture is registered from a config file written to a
temporary folder and the weights come from a checkpoint file saved next to it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from covip.clients.base import BackendUnavailableError  # noqa: E402
from covip.clients.openclip_backend import OpenClipEmbedder  # noqa: E402
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec  # noqa: E402
from covip.core.io import encode_png  # noqa: E402

MODEL = "covip-test-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # Any attempt to reach the hub would fail loudly instead of silently downloading.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Config file plus two checkpoints with different random weights."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    config = folder / f"{MODEL}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    checkpoints = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = open_clip.create_model(MODEL, pretrained=None)
        path = folder / f"tiny_{seed}.pt"
        torch.save(model.state_dict(), path)
        checkpoints.append(path)
    return config, checkpoints


def _spec(config, checkpoint, **options):
    return ModelSpec(
        name="embedder",
        backend="open_clip",
        model=MODEL,
        pretrained=str(checkpoint),
        device="auto",
        options={"model_config": str(config), **options},
    )


def _images(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        size = (40 + 7 * index, 30 + 5 * index)  # mixed sizes: preprocessing must resize
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        out.append(encode_png(Image.fromarray(pixels, "RGB")))
    return out


def test_loads_local_checkpoint_and_embeds(tiny):
    config, (first, _) = tiny
    embedder = OpenClipEmbedder(_spec(config, first, batch_size=3))
    vectors = embedder.embed(_images(7))
    assert vectors.shape == (7, TINY_CONFIG["embed_dim"])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Different images, different vectors: the model is not collapsing everything to one point.
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3
    assert embedder.identity == f"embedder:open_clip:{MODEL}:{first.name}"
    assert embedder.embed([]).shape == (0, TINY_CONFIG["embed_dim"])


def test_weights_come_from_the_checkpoint_and_are_deterministic(tiny):
    config, (first, second) = tiny
    images = _images(4, seed=3)
    a = OpenClipEmbedder(_spec(config, first, batch_size=2)).embed(images)
    b = OpenClipEmbedder(_spec(config, first, batch_size=4)).embed(images)
    c = OpenClipEmbedder(_spec(config, second)).embed(images)
    # Same checkpoint, fresh instance, other batching: same vectors.
    np.testing.assert_allclose(a, b, atol=1e-5)
    # Another checkpoint gives other vectors, so the file's weights were really loaded.
    assert np.abs(a - c).max() > 1e-2

    # And they match a model built and loaded by hand from the same file.
    torch.manual_seed(99)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=str(first))
    model.eval()
    from covip.core.io import decode_image

    with torch.inference_mode():
        batch = torch.stack([preprocess(decode_image(data, "test").convert("RGB")) for data in images])
        expected = torch.nn.functional.normalize(model.encode_image(batch), dim=-1).numpy()
    np.testing.assert_allclose(a, expected, atol=1e-5)


def test_hidden_pixels_under_transparency_do_not_matter(tiny):
    config, (first, _) = tiny
    embedder = OpenClipEmbedder(_spec(config, first))
    rng = np.random.default_rng(5)
    alpha = np.zeros((48, 48), dtype=np.uint8)
    alpha[10:38, 12:36] = 255
    concept = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    versions = []
    for hidden_seed in (1, 2):
        rgb = concept.copy()
        rgb[alpha == 0] = np.random.default_rng(hidden_seed).integers(0, 256, (int((alpha == 0).sum()), 3))
        versions.append(encode_png(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")))
    vectors = embedder.embed(versions)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


def test_registry_builds_it_and_bad_weights_fail_clearly(tiny, tmp_path):
    config, (first, _) = tiny
    registry = ModelRegistry(
        {"clip": {"backend": "open_clip", "model": MODEL, "pretrained": str(first), "options": {"model_config": str(config)}}}
    )
    assert registry.embedder("clip").embed(_images(1)).shape == (1, TINY_CONFIG["embed_dim"])

    with pytest.raises(BackendUnavailableError, match="not-a-tag-or-file"):
        OpenClipEmbedder(_spec(config, tmp_path / "not-a-tag-or-file.pt"))
    with pytest.raises(BackendUnavailableError, match="no-such-architecture"):
        OpenClipEmbedder(ModelSpec(name="e", backend="open_clip", model="no-such-architecture", pretrained=str(first)))
    with pytest.raises(ValueError, match="unknown key"):
        OpenClipEmbedder(_spec(config, first, batchsize=3))
