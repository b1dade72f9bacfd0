"""Dialogues and MCQAs through the openai backend against a real llama.cpp server (Gemma 3 270M).

The model is tiny and often writes malformed dialogues or JSON. What is tested is the plumbing and
the guarantees: the stages finish, and every row is either valid or marked failed with its reason
and raw text.
"""

import json

import pytest
from PIL import Image

from covip.core import schemas
from covip.clients.registry import ModelRegistry
from covip.core.io import encode_png, to_table
from covip.prompts import PromptBook
from covip.stages.dialogues import DialogueSettings, write_dialogues
from covip.stages.mcqa import MCQASettings, validate_questions, write_mcqas

pytestmark = pytest.mark.integration


def concept(concept_id, name, category, colour):
    return {
        "concept_id": concept_id, "category": category, "kind": "test", "source": "test", "name": name,
        "image": encode_png(Image.new("RGBA", (32, 32), colour)), "width": 32, "height": 32,
    }


@pytest.fixture(scope="module")
def registry(llama_server, tmp_path_factory):
    entry = {
        "backend": "openai", "model": "gemma-3-270m", "base_url": llama_server,
        "sampling": {"temperature": 0.7, "max_tokens": 220}, "concurrency": 2, "max_retries": 1,
        "options": {"image_mode": "placeholder"},  # a text-only server: send "[image]" markers
    }
    models = {"dialogue_writer": entry, "mcqa_writer": dict(entry, structured_output="json_object",
                                                                 sampling={"temperature": 0.7, "max_tokens": 400})}
    return ModelRegistry(models, cache_path=str(tmp_path_factory.mktemp("cache") / "responses.sqlite"))


def test_dialogue_and_mcqa_stages_finish_with_valid_or_failed_rows(registry):
    concepts = [concept("c0", "Marisol", "animal", "orange"), concept("c1", "Teodor", "person", "blue")]
    contexts = [{
        "sample_id": "s0000", "context_concept_ids": ["c1", "c0"], "positive_indices": [1],
        "negative_concept_ids": ["c1"], "negative_similarity": [0.5], "embedder": "test",
    }]
    prompts = PromptBook()
    dialogues = write_dialogues(contexts, concepts, registry.chat("dialogue_writer"), prompts,
                                DialogueSettings(max_attempts=2), seed=7)
    to_table(dialogues, schemas.DIALOGUES, "dialogues")  # fits the declared schema
    assert len(dialogues) == 2
    for row in dialogues:
        assert row["writer"].startswith("dialogue_writer:openai:gemma-3-270m")
        if row["status"] == "ok":
            assert len(row["turns"]) == 6 and [t["role"] for t in row["turns"]] == ["user", "model"] * 3
            assert row["name"] in row["dialogue"]
        else:
            assert row["status"] == "failed" and row["failure_reason"] and row["raw_response"] is not None
    usage = registry.chat("dialogue_writer").usage
    assert usage.requests >= 2 and usage.completion_tokens > 0  # the server really answered

    # The tiny model rarely writes a valid dialogue, so the MCQA stage also gets dialogues from the
    # facts-first writer: that way the server is really asked for questions about valid dialogues.
    offline = ModelRegistry({"w": {"backend": "local_facts_writer"}}).chat("w")
    valid = write_dialogues(contexts, concepts, offline, prompts, DialogueSettings(), seed=7)
    assert all(row["status"] == "ok" for row in valid)
    mcqa_input = dialogues + valid
    mcqas = write_mcqas(mcqa_input, registry.chat("mcqa_writer"), prompts, MCQASettings(max_attempts=2), seed=7)
    to_table(mcqas, schemas.MCQAS, "mcqas")
    assert len(mcqas) == len(mcqa_input)
    assert registry.chat("mcqa_writer").usage.requests >= len(valid)
    for row, dialogue in zip(mcqas, mcqa_input):
        if row["status"] == "ok":
            assert validate_questions(row["questions"], 3) == []
        else:
            assert row["failure_reason"]
            if dialogue["status"] != "ok":
                assert "dialogue" in row["failure_reason"]


def test_captioning_and_judging_through_a_real_server(llama_server, benchmark_splits, tmp_path):
    """Caption two test samples with a real OpenAI-compatible server, then judge those captions with it.

    Gemma 3 270M is text-only (llama.cpp drops the image parts) and weak; the point is the whole path:
    interleaved multi-image requests accepted, captions stored with token counts, latency and model
    identity, every question judged, unparseable answers counted as D, and a schema-valid summary.
    """
    from covip.stages.capeval import CapEvalSettings, judge_captions, summarize_capeval
    from covip.stages.captioning import CaptioningSettings, caption_samples

    _, test = benchmark_splits
    # Text-only server: images become "[image]" markers, or llama.cpp would drop the whole message.
    entry = {"backend": "openai", "model": "gemma-3-270m", "base_url": llama_server, "concurrency": 2,
             "max_retries": 1, "options": {"image_mode": "placeholder"}}
    registry = ModelRegistry(
        {"policy": dict(entry, sampling={"max_tokens": 40}),
         "judge": dict(entry, sampling={"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 6})},
        cache_path=str(tmp_path / "responses.sqlite"),
    )
    samples = test[:2]
    captions = caption_samples(samples, "gemma", registry.chat("policy"), PromptBook(), CaptioningSettings(max_tokens=40), seed=3)
    to_table(captions, schemas.CAPTIONS, "captions")
    # The server says why each caption ended: one that used all 40 tokens was cut off ("length").
    assert [c["status"] for c in captions] == ["truncated" if c["completion_tokens"] >= 40 else "ok" for c in captions]
    # The server really read the interleaved dialogues (hundreds of prompt tokens) and answered.
    assert all(c["completion_tokens"] > 0 and c["prompt_tokens"] > 200 and c["latency_s"] > 0 for c in captions)
    assert {c["model_identity"] for c in captions} == {"policy:openai:gemma-3-270m"} and not captions[0]["stand_in"]

    # Cut-off captions judged as written (the authors' protocol), so every question reaches the server.
    answers = judge_captions(captions, samples, registry.chat("judge"), PromptBook(),
                             CapEvalSettings(n_bootstrap=50, truncated_captions="judge"), seed=3, judge_name="gemma")
    to_table(answers, schemas.CAPEVAL_ANSWERS, "answers")
    expected = sum(len(questions) for sample in samples for questions in sample["mcqa"])
    assert len(answers) == expected
    assert all(row["parsed"] in {"A", "B", "C", "D"} for row in answers)
    assert all(row["parsed"] == "D" for row in answers if row["unparseable"])
    summary = summarize_capeval(answers, 50, 3)
    to_table(summary, schemas.CAPEVAL_SUMMARY, "summary")
    pooled = next(row for row in summary if row["num_positives"] == 0)
    assert pooled["n_unparseable"] == sum(row["unparseable"] for row in answers)


def test_judge_agreement_lexical_vs_gemma(llama_server, benchmark_splits, tmp_path):
    """The same oracle captions judged by the lexical stand-in and by a real LLM judge (Gemma 3 270M
    via llama.cpp): kappa over the same questions, each judge's accuracy and unparseable rate."""
    from covip.stages.agreement import judge_agreement
    from covip.stages.capeval import CapEvalSettings, judge_captions
    from covip.stages.captioning import CaptioningSettings, caption_samples

    _, test = benchmark_splits
    samples = test[:3]
    registry = ModelRegistry(
        {"oracle": {"backend": "reference_oracle"}, "lexical": {"backend": "local_lexical_judge"},
         "gemma": {"backend": "openai", "model": "gemma-3-270m", "base_url": llama_server, "concurrency": 2,
                   "max_retries": 1, "sampling": {"temperature": 0.0, "max_tokens": 6}}},
        cache_path=str(tmp_path / "responses.sqlite"),
    )
    prompts = PromptBook()
    captions = caption_samples(samples, "oracle", registry.chat("oracle"), prompts, CaptioningSettings(), seed=3)
    answers = []
    for judge in ("lexical", "gemma"):
        answers += judge_captions(captions, samples, registry.chat(judge), prompts, CapEvalSettings(n_bootstrap=0),
                                  seed=3, judge_name=judge)
    agreement, disagreements = judge_agreement({"intact": answers})
    to_table(agreement, schemas.JUDGE_AGREEMENT, "agreement")
    to_table(disagreements, schemas.JUDGE_DISAGREEMENTS, "disagreements")
    pooled = next(r for r in agreement if r["condition"] == "all")
    questions = sum(len(q) for sample in samples for q in sample["mcqa"])
    assert (pooled["judge_a"], pooled["judge_b"], pooled["n_items"]) == ("gemma", "lexical", questions)
    gemma = [r for r in answers if r["judge"] == "gemma"]
    assert pooled["unparseable_a"] == pytest.approx(100.0 * sum(r["unparseable"] for r in gemma) / len(gemma))
    assert pooled["kappa"] is None or -1.0 <= pooled["kappa"] <= 1.0
    assert len(disagreements) == round((1 - pooled["agreement"]) * questions)
    # The lexical judge reads the oracle's captions near perfectly; what Gemma does is measured, not assumed.
    assert pooled["acc_pos_b"] >= 80.0
    print(f"\nkappa(gemma, lexical) = {pooled['kappa']}, agreement = {pooled['agreement']:.3f}, "
          f"Acc+ {pooled['acc_pos_a']:.1f}/{pooled['acc_pos_b']:.1f}, Acc- {pooled['acc_neg_a']:.1f}/{pooled['acc_neg_b']:.1f}, "
          f"unparseable {pooled['unparseable_a']:.1f}%/{pooled['unparseable_b']:.1f}%, n = {pooled['n_items']}")



class _RecordingProxy:
    """A loopback pass-through in front of the llama.cpp server that keeps every request body."""

    def __init__(self, upstream: str):
        import http.server
        import threading
        import urllib.request

        self.bodies: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.bodies.append(json.loads(raw))
                forward = urllib.request.Request(upstream.rstrip("/") + self.path.removeprefix("/v1"), data=raw,
                                                 headers={"Content-Type": "application/json"}, method="POST")
                try:
                    with urllib.request.urlopen(forward, timeout=120) as answer:
                        status, body = answer.status, answer.read()
                except urllib.error.HTTPError as error:
                    status, body = error.code, error.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("dialect, sent", [
    ("llama_cpp", {"top_k": 1, "min_p": 0.05, "repeat_penalty": 1.1}),
    ("vllm", {"top_k": 1, "min_p": 0.05, "repetition_penalty": 1.1}),
    ("openai", {}),
])
def test_sampling_extensions_reach_the_server_by_dialect(llama_server, dialect, sent):
    """The llama_cpp dialect sends top_k, min_p and the repetition penalty at the top level of the
    body, under the names llama.cpp reads, and the real server answers; the vllm dialect sends vLLM's
    names; the openai dialect leaves them out (the OpenAI API would answer 400)."""
    from covip.clients.base import ChatRequest, Message

    proxy = _RecordingProxy(llama_server)
    try:
        entry = {"backend": "openai", "model": "gemma-3-270m", "base_url": proxy.base_url, "api_dialect": dialect,
                 "max_retries": 1, "cache": False}
        model = ModelRegistry({"m": entry}).chat("m")
        sampling = {"temperature": 0.8, "top_k": 1, "min_p": 0.05, "repetition_penalty": 1.1, "max_tokens": 12}
        response = model.complete(ChatRequest((Message.user("Write one sentence about a red kite."),), sampling, seed=1))
    finally:
        proxy.close()
    assert response.ok and response.usage.completion_tokens > 0, response.error
    (body,) = proxy.bodies
    extensions = {k: body[k] for k in ("top_k", "min_p", "repeat_penalty", "repetition_penalty") if k in body}
    assert extensions == sent
    assert body["temperature"] == 0.8 and body["max_tokens"] == 12 and "extra_body" not in body
