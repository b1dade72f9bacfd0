"""Stage 4: concept embeddings and contexts with hard negatives, using the offline embedder.

Retrieval quality is judged by measures the embedder never sees: the drawn concepts' shape and
colour labels, the mean colour of their visible pixels, and (for photos) which photo a crop came from.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from covip.core import schemas
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.core.io import BadImageError, encode_png, read_rows, write_artifact
from covip.local.embedder import ColorTextureEmbedder
from covip.stages.negatives import NegativeSettings, NegativesError, build_contexts, embed_concepts

SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
HUES = {"red": 0.0, "yellow": 0.15, "green": 0.33, "cyan": 0.5, "blue": 0.64, "magenta": 0.83}
SEED = 11


def draw_concept(shape: str, colour: str, rng: np.random.Generator, size: int = 112) -> Image.Image:
    """A cut-out: one jittered shape in one jittered colour, random noise hidden under alpha = 0."""
    hue = (HUES[colour] + rng.uniform(-0.03, 0.03)) % 1.0
    fill = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0)))
    mask = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(mask)
    radius = rng.uniform(0.22, 0.45) * size
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12) * size, size / 2 + rng.uniform(-0.12, 0.12) * size
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape in ("circle", "ring"):
        pen.ellipse(box, fill=255)
        if shape == "ring":
            pen.ellipse([cx - radius / 2, cy - radius / 2, cx + radius / 2, cy + radius / 2], fill=0)
    elif shape in ("square", "triangle"):
        pen.regular_polygon((cx, cy, radius), 4 if shape == "square" else 3, rotation=rng.uniform(0, 20), fill=255)
    elif shape == "star":
        angles = np.pi / 2 + np.pi * np.arange(10) / 5
        lengths = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
        pen.polygon(list(zip(cx + lengths * np.cos(angles), cy - lengths * np.sin(angles))), fill=255)
    else:  # cross
        arm = radius / 3
        pen.rectangle([cx - radius, cy - arm, cx + radius, cy + arm], fill=255)
        pen.rectangle([cx - arm, cy - radius, cx + arm, cy + radius], fill=255)
    alpha = np.asarray(mask)
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    rgb[alpha > 0] = fill
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def concept_row(index: int, image: Image.Image, kind: str, category: str = "object", name: str | None = None) -> dict:
    return {
        "concept_id": f"c{index:04d}",
        "category": category,
        "kind": kind,
        "source": "test-drawing",
        "name": name or f"Name{index:04d}",
        "image": encode_png(image),
        "width": image.width,
        "height": image.height,
    }


@pytest.fixture(scope="module")
def shape_pool():
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for shape in SHAPES:
        for colour in HUES:
            for _ in range(2):
                rows.append(concept_row(len(rows), draw_concept(shape, colour, rng), kind=shape))
                labels.append((shape, colour))
    return rows, labels


@pytest.fixture(scope="module")
def embedder():
    return ColorTextureEmbedder(ModelSpec(name="embedder", backend="local_color_texture"))


@pytest.fixture(scope="module")
def shape_embeddings(shape_pool, embedder):
    return embed_concepts(shape_pool[0], embedder)


def make_queries(concept_ids: list[str], count: int, seed: int = 3, drop_every: int = 7):
    """Queries with 1-4 random positives; every `drop_every`-th sample is not kept by the filter."""
    rng = np.random.default_rng(seed)
    queries, decisions = [], []
    for index in range(count):
        size = min(int(rng.integers(1, 5)), len(concept_ids))
        positives = [concept_ids[i] for i in rng.choice(len(concept_ids), size=size, replace=False)]
        sample_id = f"s{index:04d}"
        queries.append(
            {
                "sample_id": sample_id,
                "positive_concept_ids": positives,
                "num_positives": len(positives),
                "instruction": "compose",
                "image": b"",
                "generator": "test",
                "layout": None,
                "status": "ok",
                "error": None,
            }
        )
        kept = index % drop_every != 0
        decisions.append(
            {"sample_id": sample_id, "kept": kept, "reason": "" if kept else "fidelity", "detail": "", "verifier": "test"}
        )
    return queries, decisions


def settings(**overrides) -> NegativeSettings:
    return NegativeSettings(**{"exclude_same_name": False, **overrides})


def ranged(**overrides) -> NegativeSettings:
    """The count drawn in [min_negatives, max_negatives] per sample (per_positive: null)."""
    return settings(**{"per_positive": None, **overrides})


def test_embeddings_fit_schema_and_are_unit(tmp_path, shape_pool, shape_embeddings, embedder):
    rows, _ = shape_pool
    write_artifact(shape_embeddings, tmp_path / "emb.parquet", schemas.CONCEPT_EMBEDDINGS)
    back = read_rows(tmp_path / "emb.parquet", schemas.CONCEPT_EMBEDDINGS)
    assert [r["concept_id"] for r in back] == [r["concept_id"] for r in rows]
    assert {r["embedder"] for r in back} == {"embedder:local_color_texture"}
    matrix = np.array([r["embedding"] for r in back])
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    # Deterministic, and the batching of embed_concepts does not change the result.
    again = embed_concepts(rows, embedder, batch_size=5)
    np.testing.assert_allclose(matrix, np.array([r["embedding"] for r in again]), atol=1e-6)


def test_embedder_ignores_pixels_hidden_by_alpha(embedder):
    image = draw_concept("star", "blue", np.random.default_rng(1))
    pixels = np.asarray(image).copy()
    pixels[pixels[..., 3] == 0, :3] = np.random.default_rng(2).integers(0, 256, (int((pixels[..., 3] == 0).sum()), 3))
    a, b = embedder.embed([encode_png(image), encode_png(Image.fromarray(pixels, "RGBA"))])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_embed_concepts_names_the_bad_row(shape_pool, embedder):
    rows = [dict(r) for r in shape_pool[0][:3]]
    rows[2]["image"] = b"not a png"
    with pytest.raises(BadImageError, match=r"row 2 \(concept_id=c0002\) field 'image'"):
        embed_concepts(rows, embedder)
    rows = [shape_pool[0][0], shape_pool[0][0]]
    with pytest.raises(NegativesError, match="c0000"):
        embed_concepts(rows, embedder)


def test_context_invariants(shape_pool, shape_embeddings):
    concepts, _ = shape_pool
    queries, decisions = make_queries([c["concept_id"] for c in concepts], 160)
    s = ranged(min_negatives=2, max_negatives=4, candidate_pool=8)
    contexts = build_contexts(queries, decisions, shape_embeddings, s, SEED)

    kept = [d["sample_id"] for d in decisions if d["kept"]]
    assert [c["sample_id"] for c in contexts] == kept
    by_sample = {q["sample_id"]: q for q in queries}
    matrix = {r["concept_id"]: np.array(r["embedding"]) for r in shape_embeddings}
    counts, positives_first = set(), 0
    for context in contexts:
        positives = by_sample[context["sample_id"]]["positive_concept_ids"]
        ids = context["context_concept_ids"]
        assert len(ids) == len(set(ids)), "a concept appears twice in a context"
        assert sorted(ids[i] for i in context["positive_indices"]) == sorted(positives)
        assert context["positive_indices"] == sorted(context["positive_indices"])
        negatives = context["negative_concept_ids"]
        assert set(negatives).isdisjoint(positives)
        assert sorted(negatives + list(positives)) == sorted(ids)
        assert [c for c in ids if c not in positives] == negatives  # listed in context order
        assert 2 <= len(negatives) <= 4
        counts.add(len(negatives))
        for concept_id, sim in zip(negatives, context["negative_similarity"]):
            expected = max(float(matrix[concept_id] @ matrix[p]) for p in positives)
            assert sim == pytest.approx(expected, abs=1e-5)
        positives_first += context["positive_indices"] == list(range(len(positives)))
    assert counts == {2, 3, 4}
    # Shuffled: with 3-8 members, positives lead the context only by chance.
    assert positives_first < 0.5 * len(contexts)


@pytest.mark.parametrize("per_positive", [2, 1, 3])
def test_negatives_per_positive_match_the_released_ratio(shape_pool, shape_embeddings, per_positive):
    """The default: 2 negatives per positive, so 1, 2, 3 (4) positives give 3, 6, 9 (12) context concepts."""
    concepts, _ = shape_pool
    queries, decisions = make_queries([c["concept_id"] for c in concepts], 120)
    assert NegativeSettings().per_positive == 2
    contexts = build_contexts(queries, decisions, shape_embeddings, settings(per_positive=per_positive), SEED)
    by_sample = {q["sample_id"]: q for q in queries}
    sizes = {}
    for context in contexts:
        positives = len(by_sample[context["sample_id"]]["positive_concept_ids"])
        assert len(context["negative_concept_ids"]) == per_positive * positives
        sizes.setdefault(positives, set()).add(len(context["context_concept_ids"]))
    assert sizes == {n: {(per_positive + 1) * n} for n in (1, 2, 3, 4)}


def test_negatives_come_from_the_most_similar_candidates(shape_pool, shape_embeddings):
    concepts, _ = shape_pool
    queries, decisions = make_queries([c["concept_id"] for c in concepts], 40)
    matrix = {r["concept_id"]: np.array(r["embedding"]) for r in shape_embeddings}
    by_sample = {q["sample_id"]: q for q in queries}
    for s in (ranged(candidate_pool=6), settings(candidate_pool=6)):
        for context in build_contexts(queries, decisions, shape_embeddings, s, SEED):
            positives = by_sample[context["sample_id"]]["positive_concept_ids"]
            scores = sorted(
                (max(float(v @ matrix[p]) for p in positives) for c, v in matrix.items() if c not in positives), reverse=True
            )
            # From the 6 most similar, or from as many as the sample needs (2 per positive) when that is more.
            pool = max(6, len(context["negative_concept_ids"]))
            assert min(context["negative_similarity"]) >= scores[pool - 1] - 1e-6


def test_reproducible_and_independent_of_other_samples(shape_pool, shape_embeddings):
    concepts, _ = shape_pool
    queries, decisions = make_queries([c["concept_id"] for c in concepts], 60)
    s = settings()
    first = build_contexts(queries, decisions, shape_embeddings, s, SEED)
    assert build_contexts(queries, decisions, shape_embeddings, s, SEED) == first
    # Reversed order and a subset of samples: each sample's context is unchanged.
    subset = build_contexts(queries[::-2], decisions[::-2], list(reversed(shape_embeddings)), s, SEED)
    by_id = {c["sample_id"]: c for c in first}
    assert subset and all(c == by_id[c["sample_id"]] for c in subset)
    other = build_contexts(queries, decisions, shape_embeddings, s, SEED + 1)
    assert other != first


def _share_rate(contexts, by_sample, label_of, pool_ids):
    """Fraction of negatives sharing a label with a positive, and the same rate for random picks."""
    hits, expected, total = 0.0, 0.0, 0
    for context in contexts:
        positives = by_sample[context["sample_id"]]["positive_concept_ids"]
        wanted = {label_of[p] for p in positives}
        others = [c for c in pool_ids if c not in positives]
        base = np.mean([label_of[c] in wanted for c in others])
        for negative in context["negative_concept_ids"]:
            hits += label_of[negative] in wanted
            expected += base
            total += 1
    return hits / total, expected / total


def _mean_colour(png: bytes) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=np.float64)
    return pixels[pixels[..., 3] > 127, :3].mean(axis=0)


def test_retrieved_negatives_look_like_the_positives(shape_pool, shape_embeddings):
    concepts, labels = shape_pool
    ids = [c["concept_id"] for c in concepts]
    queries, decisions = make_queries(ids, 200, seed=5)
    contexts = build_contexts(queries, decisions, shape_embeddings, settings(), SEED)
    by_sample = {q["sample_id"]: q for q in queries}

    colour_of = {cid: label[1] for cid, label in zip(ids, labels)}
    shape_of = {cid: label[0] for cid, label in zip(ids, labels)}
    colour_rate, colour_base = _share_rate(contexts, by_sample, colour_of, ids)
    shape_rate, shape_base = _share_rate(contexts, by_sample, shape_of, ids)
    assert colour_rate > colour_base + 0.3, (colour_rate, colour_base)
    assert shape_rate > shape_base + 0.1, (shape_rate, shape_base)

    # Pixel measure: distance of a negative's mean visible colour to the nearest positive's.
    mean = {c["concept_id"]: _mean_colour(c["image"]) for c in concepts}
    retrieved, random_pick = [], []
    rng = np.random.default_rng(0)
    for context in contexts:
        positives = by_sample[context["sample_id"]]["positive_concept_ids"]
        others = [c for c in ids if c not in positives]
        for negative, baseline in zip(context["negative_concept_ids"], rng.choice(others, len(context["negative_concept_ids"]))):
            retrieved.append(min(np.linalg.norm(mean[negative] - mean[p]) for p in positives))
            random_pick.append(min(np.linalg.norm(mean[baseline] - mean[p]) for p in positives))
    assert np.mean(retrieved) < 0.7 * np.mean(random_pick), (np.mean(retrieved), np.mean(random_pick))

    # Drawing negatives from the whole pool instead loses that closeness.
    random_contexts = build_contexts(queries, decisions, shape_embeddings, settings(candidate_pool=0), SEED)
    hard = np.mean([s for c in contexts for s in c["negative_similarity"]])
    easy = np.mean([s for c in random_contexts for s in c["negative_similarity"]])
    assert hard > easy + 0.1


def test_photo_crops_retrieve_crops_of_the_same_photo(embedder):
    skdata = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(4)
    rows, source_of = [], {}
    for source in ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"]:
        photo = Image.fromarray(getattr(skdata, source)()).convert("RGB")
        width, height = photo.size
        for _ in range(4):
            w, h = int(width * rng.uniform(0.6, 0.9)), int(height * rng.uniform(0.6, 0.9))
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            crop = photo.crop((x, y, x + w, y + h)).resize((128, 128)).convert("RGBA")
            rows.append(concept_row(len(rows), crop, kind=source))
            source_of[rows[-1]["concept_id"]] = source
    embeddings = embed_concepts(rows, embedder)
    ids = [r["concept_id"] for r in rows]
    queries, decisions = make_queries(ids, 80, seed=9, drop_every=1000)
    for query in queries:  # one positive each, so 'same photo' has a single meaning
        query["positive_concept_ids"], query["num_positives"] = query["positive_concept_ids"][:1], 1
    contexts = build_contexts(queries, decisions, embeddings, ranged(min_negatives=3, max_negatives=3, candidate_pool=3), SEED)
    rate, base = _share_rate(contexts, {q["sample_id"]: q for q in queries}, source_of, ids)
    assert base < 0.15
    assert rate > 0.8, rate


def test_name_and_category_exclusions(shape_pool, shape_embeddings):
    concepts = [dict(c) for c in shape_pool[0]]
    for index, concept in enumerate(concepts):
        concept["name"] = f"Twin{index % 10}"  # every name is shared by several concepts
        concept["category"] = "animal" if index % 2 else "object"
    queries, decisions = make_queries([c["concept_id"] for c in concepts], 60)
    meta = {c["concept_id"]: c for c in concepts}
    s = NegativeSettings(exclude_same_name=True, same_category_only=True)
    contexts = build_contexts(queries, decisions, shape_embeddings, s, SEED, concepts_rows=concepts)
    by_sample = {q["sample_id"]: q for q in queries}
    for context in contexts:
        positives = by_sample[context["sample_id"]]["positive_concept_ids"]
        names = {meta[p]["name"] for p in positives}
        cats = {meta[p]["category"] for p in positives}
        for negative in context["negative_concept_ids"]:
            assert meta[negative]["name"] not in names
            assert meta[negative]["category"] in cats
    with pytest.raises(NegativesError, match="concepts_rows"):
        build_contexts(queries, decisions, shape_embeddings, NegativeSettings(), SEED)


def test_bad_inputs_fail_clearly(shape_pool, shape_embeddings):
    concepts, _ = shape_pool
    queries, decisions = make_queries([c["concept_id"] for c in concepts], 5, drop_every=1000)
    queries[3]["positive_concept_ids"] = ["c0001", "c9999"]
    with pytest.raises(NegativesError, match=r"sample s0003.*c9999"):
        build_contexts(queries, decisions, shape_embeddings, settings(), SEED)
    queries, decisions = make_queries([c["concept_id"] for c in concepts], 5)
    with pytest.raises(NegativesError, match="s0004"):
        build_contexts(queries, decisions[:4], shape_embeddings, settings(), SEED)
    tiny_pool = shape_embeddings[:3]
    queries, decisions = make_queries([r["concept_id"] for r in tiny_pool], 4, drop_every=1000)
    for query in queries:  # two positives leave one candidate, fewer than min_negatives = 2
        query["positive_concept_ids"], query["num_positives"] = ["c0000", "c0001"], 2
    with pytest.raises(NegativesError, match="min_negatives"):
        build_contexts(queries, decisions, tiny_pool, ranged(), SEED)
    with pytest.raises(NegativesError, match=r"sample s0001: 2 positive\(s\) x negatives.per_positive 2 need 4"):
        build_contexts(queries, decisions, tiny_pool, settings(), SEED)


@pytest.mark.parametrize(
    "overrides, field_name",
    [
        ({"min_negatives": -1}, "min_negatives"),
        ({"min_negatives": 3, "max_negatives": 2}, "max_negatives"),
        ({"candidate_pool": 3, "per_positive": None}, "candidate_pool"),
        ({"candidate_pool": -1}, "candidate_pool"),
        ({"per_positive": -1}, "per_positive"),
        ({"per_positive": 1.5}, "per_positive"),
    ],
)
def test_settings_reject_bad_values(overrides, field_name):
    with pytest.raises(ValueError, match=field_name):
        NegativeSettings(**overrides)


def test_registry_builds_the_offline_embedder():
    registry = ModelRegistry({"embedder": {"backend": "local_color_texture", "options": {"weights": {"shape": 0.0}}}})
    built = registry.embedder("embedder")
    vectors = built.embed([encode_png(draw_concept("ring", "red", np.random.default_rng(0)))])
    assert vectors.shape == (1, built.dim) and vectors.dtype == np.float32
    with pytest.raises(ValueError, match="unknown block"):
        ColorTextureEmbedder(ModelSpec(name="e", backend="local_color_texture", options={"weights": {"edges": 1}}))
