"""Stage 3: consistency checks, the visual-fidelity question, answer parsing and the pixel verifier."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from covip.core import schemas
from covip.clients.base import ChatResponse, ImagePart, ImageRequest, TextPart
from covip.clients.cached import wrap
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.core.io import encode_png, to_table
from covip.local.compositor import Compositor
from covip.local.pixel_verifier import PixelVerifier
from covip.prompts import PromptBook, PromptError
from covip.core.settings import settings_from
from covip.stages.filtering import (
    FilterError,
    FilterSettings,
    build_fidelity_request,
    filter_queries,
    parse_yes_no,
    summarize_decisions,
)
from covip.stages.synthesis import SynthesisSettings, render_instruction, synthesize_queries

QUIET = io.StringIO()


@pytest.fixture(scope="module")
def pool(builtin_pool):
    return builtin_pool


@pytest.fixture(scope="module")
def verifier():
    return ModelRegistry({"verifier": {"backend": "local_pixel_verifier", "concurrency": 2}}).chat("verifier")


def _by_kind(pool, kind, n=0):
    return [row for row in pool if row["kind"] == kind][n]


def _compose(pool_rows, seed=3, size=320, **options):
    """A composite of exactly these concepts (clean unless options say otherwise)."""
    compositor = Compositor(ModelSpec("g", "local_compositor", options={"defect_rate": 0.0, **options}))
    request = ImageRequest("ignored", tuple(ImagePart(r["image"]) for r in pool_rows), seed=seed,
                           task={"kind": "compose", "concept_ids": [r["concept_id"] for r in pool_rows], "image_size": size})
    return compositor.generate(request)


def _query_row(prompts, claimed, image, sample_id="s0000", **overrides):
    row = {
        "sample_id": sample_id,
        "positive_concept_ids": [r["concept_id"] for r in claimed],
        "num_positives": len(claimed),
        "instruction": render_instruction(prompts, claimed, 320),
        "image": image,
        "generator": "test",
        "layout": None,  # the verifier must work from pixels alone
        "status": "ok",
        "error": None,
    }
    row.update(overrides)
    return row


# ---------------------------------------------------------------------------------------------------
# answer parsing and the prompt


@pytest.mark.parametrize(
    "text, expected",
    [
        ("yes", True),
        ("Yes.", True),
        ("YES - all three are there", True),
        ("**Yes**, every subject is visible.", True),
        ('"yes"', True),
        ("Answer: yes", True),
        ("<think>the mug looks fine</think>\nYes", True),
        ("no", False),
        ("No: the red mug is cut off by the border.", False),
        ("  no, Jeffrey is missing", False),
        ("Final answer - NO", False),
        ("Not sure", None),
        ("nope", None),
        ("Yesterday it was there", None),
        ("I think yes", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


def test_fidelity_request_interleaves_labels_and_images(pool, prompts):
    concepts = [_by_kind(pool, "mug"), _by_kind(pool, "cat")]
    request = build_fidelity_request(prompts, concepts, b"query-bytes")
    (message,) = request.messages
    kinds = [type(p).__name__ for p in message.parts]
    assert kinds == ["TextPart", "ImagePart", "TextPart", "ImagePart", "TextPart", "ImagePart", "TextPart"]
    texts = [p.text for p in message.parts if isinstance(p, TextPart)]
    mug, cat = concepts
    assert texts[0] == f"Reference image 1: {mug['name']} (object)"
    assert texts[1] == f"Reference image 2: {cat['name']} (animal)"
    assert texts[2] == "Generated image:"
    assert texts[3].startswith(f"The generated image above was meant to show all 2 subject(s) from the reference images: {mug['name']}, {cat['name']}.")
    assert "not cut off by the edge of the image" in texts[3]
    assert texts[3].endswith("After no, add a colon and name each subject that fails and why.")
    assert [p.data for p in request.images] == [mug["image"], cat["image"], b"query-bytes"]
    assert request.task == {
        "kind": "visual_fidelity",
        "concept_ids": [mug["concept_id"], cat["concept_id"]],
        "concept_names": [mug["name"], cat["name"]],
        "query_image_index": 2,
    }


def test_sectioned_prompt_errors_are_clear(tmp_path, pool):
    bad = tmp_path / "vf.txt"
    bad.write_text("[[reference]]\nRef $index\n[[question]]\nOK?\n")
    with pytest.raises(PromptError, match=r"missing section\(s\) \['\[\[query\]\]'\]"):
        build_fidelity_request(PromptBook({"visual_fidelity": str(bad)}), pool[:1], b"q")
    bad.write_text("preamble\n[[reference]]\nx\n[[query]]\ny\n[[question]]\nz\n")
    with pytest.raises(PromptError, match="text before the first"):
        build_fidelity_request(PromptBook({"visual_fidelity": str(bad)}), pool[:1], b"q")
    bad.write_text("[[reference]]\n$colour\n[[query]]\ny\n[[question]]\nz\n")
    with pytest.raises(PromptError, match=r"\[\[reference\]\] needs a value for 'colour'"):
        build_fidelity_request(PromptBook({"visual_fidelity": str(bad)}), pool[:1], b"q")


# ---------------------------------------------------------------------------------------------------
# the verifier on real composites


def test_clean_composite_is_kept(pool, prompts, verifier):
    concepts = [_by_kind(pool, "mug", 1), _by_kind(pool, "cat"), _by_kind(pool, "face", 2), _by_kind(pool, "robot")]
    response = _compose(concepts)
    (decision,) = filter_queries([_query_row(prompts, concepts, response.image)], pool, verifier, prompts, FilterSettings(), progress_file=QUIET)
    assert decision["kept"], decision
    assert decision["reason"] == "" and decision["detail"].startswith("yes")
    assert decision["verifier"] == "verifier:local_pixel_verifier"


def test_removed_concept_is_rejected_by_name(pool, prompts, verifier):
    shown = [_by_kind(pool, "bird"), _by_kind(pool, "car", 2)]
    missing = _by_kind(pool, "lamp")
    response = _compose(shown)
    row = _query_row(prompts, shown + [missing], response.image)
    (decision,) = filter_queries([row], pool, verifier, prompts, FilterSettings(), progress_file=QUIET)
    assert not decision["kept"] and decision["reason"] == "verifier_no"
    assert decision["detail"].startswith(f"no: {missing['concept_id']} ({missing['name']}) not found")
    assert shown[0]["concept_id"] not in decision["detail"] and shown[1]["concept_id"] not in decision["detail"]


def test_concept_replaced_by_another_cutout_is_rejected(pool, prompts, verifier):
    kept = _by_kind(pool, "house")
    claimed = _by_kind(pool, "fish", 1)
    impostor = _by_kind(pool, "balloon")
    response = _compose([kept, impostor], seed=11)
    row = _query_row(prompts, [kept, claimed], response.image)
    (decision,) = filter_queries([row], pool, verifier, prompts, FilterSettings(), progress_file=QUIET)
    assert decision["reason"] == "verifier_no"
    assert claimed["concept_id"] in decision["detail"] and kept["concept_id"] not in decision["detail"]


def test_same_shape_other_colour_is_rejected(pool, prompts, verifier):
    # Two mugs of the same kind but different colours: colour must count, not only shape.
    claimed, impostor = _by_kind(pool, "mug", 0), _by_kind(pool, "mug", 2)
    response = _compose([impostor], seed=5)
    (decision,) = filter_queries([_query_row(prompts, [claimed], response.image)], pool, verifier, prompts, FilterSettings(), progress_file=QUIET)
    assert decision["reason"] == "verifier_no" and claimed["concept_id"] in decision["detail"]


@pytest.mark.parametrize("defect", ["out_of_frame", "occluded"])
def test_cut_off_or_occluded_concept_is_rejected_by_name(pool, prompts, verifier, defect):
    concepts = [_by_kind(pool, "snail", 1), _by_kind(pool, "astronaut"), _by_kind(pool, "robot", 2)]
    rows, victims = [], []
    for seed in range(3):
        response = _compose(concepts, seed=seed, defect_rate=1.0, defect_kinds={defect: 1.0})
        victim = next(cid for cid, entry in response.layout.items() if entry["defect"] == defect)
        assert response.layout[victim]["visible_fraction"] <= 0.5
        victims.append(victim)
        rows.append(_query_row(prompts, concepts, response.image, sample_id=f"s{seed:04d}"))
    decisions = filter_queries(rows, pool, verifier, prompts, FilterSettings(), progress_file=QUIET)
    for decision, victim in zip(decisions, victims):
        assert decision["reason"] == "verifier_no", decision
        assert f"{victim} (" in decision["detail"]


def test_verifier_accepts_a_clean_four_concept_query(pool):
    """The hardest clean case: four concepts share the canvas, each smaller; all must be found.
    (Its speed is a benchmark concern, see benchmarks/, not a test's.)"""
    concepts = [_by_kind(pool, "cup"), _by_kind(pool, "horse"), _by_kind(pool, "fish", 2), _by_kind(pool, "cartoon_person", 1)]
    response = _compose(concepts, seed=8)
    request = build_fidelity_request(PromptBook(), concepts, response.image)
    verifier = PixelVerifier(ModelSpec("v", "local_pixel_verifier"))
    answer = verifier.complete(request)
    assert answer.text.startswith("yes"), answer.text


def test_agreement_with_compositor_ground_truth(pool, prompts, verifier):
    """On ~50 compositor samples (30% with a defect), the verifier's keep/drop must match the
    layout's ground truth (every concept at least 90% visible) almost always."""
    registry = ModelRegistry({"g": {"backend": "local_compositor", "options": {"defect_rate": 0.3}}})
    queries = synthesize_queries(pool, registry.image_generator("g"), prompts, SynthesisSettings(num_samples=50), seed=21, progress_file=QUIET)
    truth = [min(e["visible_fraction"] for e in json.loads(q["layout"]).values()) >= 0.9 for q in queries]
    assert 5 <= truth.count(False) <= 30  # both outcomes are exercised
    stripped = [{**q, "layout": None} for q in queries]
    decisions = filter_queries(stripped, pool, verifier, prompts, FilterSettings(), progress_file=QUIET)
    agreement = float(np.mean([d["kept"] == t for d, t in zip(decisions, truth)]))
    print(f"\npixel verifier agreement with compositor layout on {len(queries)} samples: {agreement:.1%} "
          f"({truth.count(False)} defective); decisions: {summarize_decisions(decisions)}")
    assert agreement >= 0.9


# ---------------------------------------------------------------------------------------------------
# consistency checks and verifier failures


def _png(array) -> bytes:
    return encode_png(Image.fromarray(np.asarray(array, np.uint8)))


def _Canned(text=None, error=None, raise_error=False):
    """A chat model that answers every request with the same text (or raises), wrapped like a registry model."""
    return wrap(_CannedModel(text, error, raise_error))


class _CannedModel:
    """A chat model that answers every request with the same text (or raises)."""

    identity = "canned"

    def __init__(self, text=None, error=None, raise_error=False):
        self.text, self.error, self.raise_error = text, error, raise_error
        self.calls = 0

    def complete(self, request):
        self.calls += 1
        if self.raise_error:
            raise ConnectionError("server went away")
        return ChatResponse(self.text, "canned", error=self.error)


def test_consistency_checks_and_reasons(pool, prompts):
    concepts = [_by_kind(pool, "cat"), _by_kind(pool, "mug")]
    noisy = _png(np.random.default_rng(0).integers(0, 255, (120, 120, 3)))
    rows = [
        _query_row(prompts, concepts, noisy, "s0000"),
        _query_row(prompts, concepts, None, "s0001", status="failed", error="attempt 1: quota exceeded"),
        _query_row(prompts, concepts, b"not a png", "s0002"),
        _query_row(prompts, concepts, _png(np.full((320, 320, 3), 128)), "s0003"),
        _query_row(prompts, concepts, _png(np.random.default_rng(1).integers(0, 255, (40, 40, 3))), "s0004"),
        _query_row(prompts, concepts, _png(np.random.default_rng(2).integers(0, 255, (80, 400, 3))), "s0005"),
        _query_row(prompts, concepts, noisy, "s0006", num_positives=3),
        _query_row(prompts, concepts, noisy, "s0007", instruction="Draw a picture of two things."),
        _query_row(prompts, [concepts[0], concepts[0]], noisy, "s0008"),
        _query_row(prompts, concepts, noisy, "s0009", status="pending"),
    ]
    canned = _Canned("yes")
    decisions = filter_queries(rows, pool, canned, prompts, FilterSettings(), progress_file=QUIET)
    to_table(decisions, schemas.FILTER_DECISIONS, "decisions")
    assert [d["sample_id"] for d in decisions] == [r["sample_id"] for r in rows]
    reasons = [d["reason"] for d in decisions]
    assert reasons == [
        "",
        "generation_failed",
        "undecodable_image",
        "blank_image",
        "image_too_small",
        "bad_aspect_ratio",
        "positive_count_mismatch",
        "instruction_mismatch",
        "duplicate_concept",
        "bad_status",
    ]
    assert canned.inner.calls == 1  # only the row that passed every check reached the verifier
    assert decisions[0]["verifier"] == "canned"
    assert all(d["verifier"] == "consistency_checks" for d in decisions[1:])
    assert decisions[1]["detail"] == "attempt 1: quota exceeded"
    assert "queries row 2 (sample_id=s0002) field 'image'" in decisions[2]["detail"]
    assert concepts[1]["name"] in decisions[7]["detail"]
    assert summarize_decisions(decisions)["kept"] == 1


@pytest.mark.parametrize(
    "model, reason, detail",
    [
        (_Canned("Maybe? Hard to tell."), "unparseable_verifier_answer", "Maybe? Hard to tell."),
        (_Canned("No: the cat is hidden."), "verifier_no", "No: the cat is hidden."),
        (_Canned(None, error="RateLimitError: 429"), "verifier_error", "RateLimitError: 429"),
        (_Canned(raise_error=True), "verifier_error", "ConnectionError: server went away"),
    ],
)
def test_verifier_answers_and_failures(pool, prompts, model, reason, detail):
    concepts = [_by_kind(pool, "cat")]
    image = _png(np.random.default_rng(0).integers(0, 255, (100, 100, 3)))
    (decision,) = filter_queries([_query_row(prompts, concepts, image)], pool, model, prompts, FilterSettings(), progress_file=QUIET)
    assert (decision["kept"], decision["reason"], decision["detail"]) == (False, reason, detail)


def test_without_visual_fidelity_no_model_is_needed(pool, prompts):
    concepts = [_by_kind(pool, "cat")]
    image = _png(np.random.default_rng(0).integers(0, 255, (100, 100, 3)))
    rows = [_query_row(prompts, concepts, image), _query_row(prompts, concepts, None, "s0001", status="failed", error="x")]
    decisions = filter_queries(rows, pool, None, prompts, FilterSettings(visual_fidelity=False), progress_file=QUIET)
    assert [d["kept"] for d in decisions] == [True, False]
    assert "not checked" in decisions[0]["detail"]


def test_input_errors_raise_with_row_and_field(pool, prompts):
    concepts = [_by_kind(pool, "cat")]
    image = _png(np.random.default_rng(0).integers(0, 255, (100, 100, 3)))
    row = _query_row(prompts, concepts, image, "s0042", positive_concept_ids=["c999"])
    with pytest.raises(FilterError, match=r"queries row 0 \(sample_id=s0042\) field 'positive_concept_ids': concept 'c999'"):
        filter_queries([row], pool, _Canned("yes"), prompts, FilterSettings(), progress_file=QUIET)
    broken = [dict(r) for r in pool]
    index = next(i for i, r in enumerate(broken) if r["concept_id"] == concepts[0]["concept_id"])
    broken[index]["image"] = b"corrupt"
    with pytest.raises(ValueError, match=rf"concepts row {index} \(concept_id={concepts[0]['concept_id']}\) field 'image'"):
        filter_queries([_query_row(prompts, concepts, image)], broken, _Canned("yes"), prompts, FilterSettings(), progress_file=QUIET)


def test_pixel_verifier_rejects_malformed_tasks_and_options(pool):
    verifier = PixelVerifier(ModelSpec("v", "local_pixel_verifier"))
    request = build_fidelity_request(PromptBook(), pool[:2], pool[3]["image"])
    with pytest.raises(ValueError, match="query_image_index"):
        verifier.complete(type(request)(request.messages, task={**request.task, "query_image_index": 7}))
    with pytest.raises(ValueError, match=r"3 concept id\(s\) for 2 reference"):
        verifier.complete(type(request)(request.messages, task={**request.task, "concept_ids": ["a", "b", "c"], "query_image_index": 0}))
    with pytest.raises(ValueError, match="task kind"):
        verifier.complete(type(request)(request.messages, task={"kind": "caption"}))
    with pytest.raises(ValueError, match="options.threshold"):
        PixelVerifier(ModelSpec("v", "local_pixel_verifier", options={"threshold": 1.5}))


@pytest.mark.parametrize(
    "section, pattern",
    [
        ({"min_image_side": 0}, "filtering.min_image_side"),
        ({"max_aspect_ratio": 0.5}, "filtering.max_aspect_ratio"),
        ({"blank_std": -1}, "filtering.blank_std"),
        ({"require_all": True}, "unknown setting"),
    ],
)
def test_settings_are_checked(section, pattern):
    with pytest.raises(ValueError, match=pattern):
        settings_from(FilterSettings, section, "filtering")
