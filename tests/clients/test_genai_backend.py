"""The Gemini backend, against a fake google-genai client: request building, retries, image output."""

from types import SimpleNamespace

import pytest

from covip.clients import genai_backend
from covip.clients.base import ChatRequest, ImagePart, ImageRequest, Message
from covip.clients.spec import ModelSpec


class FakeModels:
    def __init__(self, response):
        self.response = response
        self.calls = []

    def generate_content(self, **kwargs):
        self.calls.append(kwargs)
        return self.response


class FakeClient:
    created = []

    def __init__(self, api_key, http_options):
        self.api_key = api_key
        self.http_options = http_options
        self.models = FakeModels(FakeClient.response)
        FakeClient.created.append(self)


@pytest.fixture
def fake_genai(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "sk-test")
    monkeypatch.setattr("google.genai.Client", FakeClient)
    FakeClient.created = []
    return FakeClient


def usage(prompt, completion):
    return SimpleNamespace(prompt_token_count=prompt, candidates_token_count=completion)


def test_chat_request_retries_and_usage(fake_genai):
    fake_genai.response = SimpleNamespace(text="yes", usage_metadata=usage(120, 1))
    spec = ModelSpec(name="verifier", backend="gemini", model="gemini-2.5-flash", max_retries=5, timeout_s=30)
    model = genai_backend.GeminiChatModel(spec)
    request = ChatRequest(
        (Message.system("be strict"), Message.user("is it there?", ImagePart(b"\x89PNG..."))),
        {"temperature": 0.0, "max_tokens": 8, "top_k": 20}, response_schema={"type": "object"}, seed=7,
    )
    response = model.complete(request)
    assert response.text == "yes" and response.usage.prompt_tokens == 120 and response.usage.completion_tokens == 1
    client = fake_genai.created[0]
    # The SDK does not retry unless told to: our registry entry's retries are passed on.
    retry = client.http_options.retry_options
    assert retry.attempts == 6 and client.http_options.timeout == 30000
    call = client.models.calls[0]
    assert call["model"] == "gemini-2.5-flash"
    config = call["config"]
    assert config.system_instruction == "be strict" and config.temperature == 0.0 and config.top_k == 20
    assert config.max_output_tokens == 8 and config.seed == 7 and config.response_mime_type == "application/json"
    contents = call["contents"]
    assert len(contents) == 1 and contents[0].role == "user"
    assert contents[0].parts[0].text == "is it there?"
    assert contents[0].parts[1].inline_data.data == b"\x89PNG..."


def test_image_generation_returns_the_image_or_a_recorded_error(fake_genai):
    image_part = SimpleNamespace(inline_data=SimpleNamespace(data=b"IMG"), text=None)
    text_part = SimpleNamespace(inline_data=None, text="here you go")
    candidate = SimpleNamespace(content=SimpleNamespace(parts=[text_part, image_part]))
    fake_genai.response = SimpleNamespace(candidates=[candidate], usage_metadata=usage(300, 1290))
    spec = ModelSpec(name="image_generator", backend="gemini", model="gemini-2.5-flash-image")
    generator = genai_backend.GeminiImageGenerator(spec)
    result = generator.generate(ImageRequest("put both in a park", (ImagePart(b"A"), ImagePart(b"B")), seed=3))
    assert result.ok and result.image == b"IMG" and result.text == "here you go"
    call = fake_genai.created[0].models.calls[0]
    parts = call["contents"][0].parts
    assert [p.inline_data.data for p in parts[:2]] == [b"A", b"B"] and parts[2].text == "put both in a park"
    assert call["config"].response_modalities == ["IMAGE", "TEXT"]
    refusal = SimpleNamespace(candidates=[SimpleNamespace(content=SimpleNamespace(parts=[text_part]))], usage_metadata=None)
    fake_genai.created[0].models.response = refusal
    failed = generator.generate(ImageRequest("again", (ImagePart(b"A"),), seed=4))
    assert not failed.ok and "returned no image" in failed.error
