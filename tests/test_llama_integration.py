"""Dialogues and MCQAs through the openai backend against a real llama.cpp server (Gemma 3 270M).

The model is tiny and often writes malformed dialogues or JSON. What is tested is the plumbing and
the guarantees: the stages finish, and every row is either valid or marked failed with its reason
and raw text.
"""

import pytest
from PIL import Image

from covip import schemas
from covip.clients.registry import ModelRegistry
from covip.io import encode_png, to_table
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
