"""Build a tiny, random-weight Qwen-VL model on disk, entirely offline.

The result is an ordinary Hugging Face model folder (config, safetensors weights, generation config,
tokenizer, image and video processors, chat template), so everything that loads a real Qwen2.5-VL or
Qwen3-VL checkpoint loads it unchanged::

    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)

It exists so that the code paths around a real VLM (the transformers and vLLM chat backends, the
GSPO trainer) can be run and tested on a CPU in seconds without downloading anything. Its outputs are
meaningless token soup; the report marks any number produced with it as coming from a stand-in.

What is built:

- a byte-level BPE tokenizer trained here on a small English corpus (the package's prompt templates
  plus seeded Faker prose), with Qwen's special tokens (`<|im_start|>`, `<|im_end|>`,
  `<|vision_start|>`, `<|image_pad|>`, ...) at the front of the vocabulary, left padding (batched
  generation with Qwen's multimodal rotary positions needs it) and a Qwen-style chat template that
  takes multi-image content lists and assistant turns. The corpus includes the installed prompt
  templates, so the same seed gives the same tokenizer only for the same prompts (and Faker version);
- the Qwen2-VL image processor with a small pixel budget, so an image becomes a handful of tokens;
- a Qwen2.5-VL or Qwen3-VL model with a few layers of width 64, whose special token ids agree with
  the tokenizer, initialised from `seed`.

Command line: ``covip build-tiny-vlm OUT_DIR [--architecture qwen3_vl] [--seed 0]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

ARCHITECTURES = ("qwen2_5_vl", "qwen3_vl")

# Qwen's special tokens, in Qwen's order. They take the first ids of the vocabulary.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen-style ChatML. Content is either a string or a list of parts ({"type": "text", "text": ...},
# {"type": "image", ...}); every image part becomes one vision span whose single <|image_pad|> the
# processor expands to the image's patch count. Whitespace control keeps the rendered text exact.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- elif part['type'] in ('image', 'image_url', 'image_pil') or 'image' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\n' -}}"
    "{%- endif -%}"
)


@dataclass
class TinyVLMSettings:
    """Sizes of the tiny model. The defaults give a model of well under a megabyte of weights."""

    architecture: str = field(default="qwen2_5_vl", metadata={"help": "One of 'qwen2_5_vl' or 'qwen3_vl'."})
    vocab_size: int = field(default=1024, metadata={"help": "Target BPE vocabulary size, special tokens included."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the language model."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Decoder layers of the language model."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads of the language model."})
    num_key_value_heads: int = field(default=2, metadata={"help": "Key/value heads (grouped-query attention)."})
    intermediate_size: int = field(default=128, metadata={"help": "MLP width of the language model."})
    vision_hidden_size: int = field(default=32, metadata={"help": "Width of the vision tower."})
    vision_depth: int = field(default=2, metadata={"help": "Blocks of the vision tower."})
    vision_heads: int = field(default=2, metadata={"help": "Attention heads of the vision tower."})
    vision_intermediate_size: int = field(default=64, metadata={"help": "MLP width of the vision tower."})
    patch_size: int | None = field(
        default=None, metadata={"help": "Vision patch size; None uses the architecture's own (14 for Qwen2.5-VL, 16 for Qwen3-VL)."}
    )
    min_image_tokens: int = field(default=4, metadata={"help": "Fewest language tokens an image becomes (after 2x2 merging)."})
    max_image_tokens: int = field(default=16, metadata={"help": "Most language tokens an image becomes (after 2x2 merging)."})
    max_position_embeddings: int = field(default=4096, metadata={"help": "Longest sequence the model claims to take."})
    initializer_range: float = field(
        default=0.2,
        metadata={"help": "Std of the random weight initialisation. Larger than a real model's 0.02 so that the tiny "
                          "model's output depends on the whole prompt and its images, not only on the last token."},
    )
    corpus_sentences: int = field(default=3000, metadata={"help": "Faker sentences added to the tokenizer's training corpus."})

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.vocab_size < len(SPECIAL_TOKENS) + 256 + 16:
            raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256 + 16} (specials + bytes + merges), got {self.vocab_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads ({self.num_key_value_heads})")
        if (self.hidden_size // self.num_attention_heads) % 8:
            raise ValueError("hidden_size / num_attention_heads must be a multiple of 8 (multimodal rotary sections)")
        if self.vision_hidden_size % self.vision_heads or (self.vision_hidden_size // self.vision_heads) % 4:
            raise ValueError("vision_hidden_size / vision_heads must be an integer multiple of 4 (2-D rotary embedding)")
        for name in ("num_hidden_layers", "vision_depth", "intermediate_size", "vision_intermediate_size", "corpus_sentences"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.min_image_tokens <= self.max_image_tokens:
            raise ValueError(f"need 1 <= min_image_tokens <= max_image_tokens, got {self.min_image_tokens}, {self.max_image_tokens}")
        if self.patch_size is not None and self.patch_size < 2:
            raise ValueError(f"patch_size must be >= 2, got {self.patch_size}")
        if self.initializer_range <= 0:
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range}")

    @property
    def effective_patch_size(self) -> int:
        return self.patch_size or (14 if self.architecture == "qwen2_5_vl" else 16)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mrope_section(self) -> list[int]:
        """Split of the rotary half-dimension into (time, height, width) sections, like Qwen's 2:1:1-ish split."""
        half = self.head_dim // 2
        height = width = half // 4
        return [half - height - width, height, width]


def tokenizer_corpus(seed: int, sentences: int) -> list[str]:
    """English text for the BPE tokenizer: the package's prompt templates plus seeded Faker prose."""
    from faker import Faker

    texts = []
    prompts = resources.files("covip.prompts")
    for entry in sorted(prompts.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".txt"):
            texts.append(entry.read_text(encoding="utf-8"))
    faker = Faker("en_US")
    faker.seed_instance(seed)
    for _ in range(sentences):
        texts.append(faker.sentence(nb_words=12))
    # A few structured strings the pipeline makes models emit (answers, JSON), so they tokenize compactly.
    texts += ['{"answer": "A"}', '{"answer": "B"}', "Answer: C", "Option D", "yes", "no", "The image shows"]
    return texts


def build_tokenizer(settings: TinyVLMSettings, seed: int):
    """A trained byte-level BPE wrapped as a left-padding PreTrainedTokenizerFast with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(tokenizer_corpus(seed, settings.corpus_sentences), trainer=trainer)
    # padding_side must be set in the constructor: Qwen's get_rope_index reads positions from the
    # attention mask assuming left padding, and batches of unequal prompts crash otherwise.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        padding_side="left",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
        model_max_length=settings.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(settings: TinyVLMSettings, tokenizer):
    """The architecture's processor with a small image budget (a few merged patches per image)."""
    from transformers import Qwen2VLImageProcessor

    patch, merge = settings.effective_patch_size, 2
    unit = (patch * merge) ** 2  # pixels per language token after 2x2 merging
    size = {"shortest_edge": unit * settings.min_image_tokens, "longest_edge": unit * settings.max_image_tokens}
    image_processor = Qwen2VLImageProcessor(
        size=size, patch_size=patch, merge_size=merge, temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    if settings.architecture == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as Processor
        from transformers import Qwen2VLVideoProcessor as VideoProcessor
    else:
        from transformers import Qwen3VLProcessor as Processor
        from transformers.models.qwen3_vl import Qwen3VLVideoProcessor as VideoProcessor
    video_processor = VideoProcessor(size=size, patch_size=patch, merge_size=merge, temporal_patch_size=2,
                                     image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return Processor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                     chat_template=CHAT_TEMPLATE)


def build_config(settings: TinyVLMSettings, tokenizer):
    """A model config whose special token ids are the tokenizer's."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    )}
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    s = settings
    text = dict(
        vocab_size=len(tokenizer), hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads, max_position_embeddings=s.max_position_embeddings,
        initializer_range=s.initializer_range, pad_token_id=pad_id,
    )
    vision = dict(
        depth=s.vision_depth, hidden_size=s.vision_hidden_size, intermediate_size=s.vision_intermediate_size,
        num_heads=s.vision_heads, patch_size=s.effective_patch_size, spatial_merge_size=2, temporal_patch_size=2,
        out_hidden_size=s.hidden_size, initializer_range=s.initializer_range,
    )
    # Untied input/output embeddings: with tied ones a random model mostly repeats its last input token.
    if s.architecture == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text.update(rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": s.mrope_section},
                    bos_token_id=pad_id, eos_token_id=eos_id, max_window_layers=s.num_hidden_layers)
        vision.update(fullatt_block_indexes=[s.vision_depth - 1], window_size=s.effective_patch_size * 8)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    from transformers import Qwen3VLConfig

    text.update(head_dim=s.head_dim,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": s.mrope_section,
                                 "mrope_interleaved": True})
    # Qwen3-VL feeds intermediate vision features into the first decoder layers ("deepstack").
    vision.update(num_position_embeddings=256, deepstack_visual_indexes=[0])
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def build_tiny_vlm(out_dir: str | Path, *, architecture: str = "qwen2_5_vl", seed: int = 0, **sizes) -> Path:
    """Build a tiny random-weight Qwen-VL model, save it to `out_dir` and return the folder.

    `architecture` is 'qwen2_5_vl' or 'qwen3_vl'; `seed` fixes the tokenizer corpus and the weights
    (the same arguments give byte-identical weights); `sizes` are any other TinyVLMSettings fields
    (e.g. `hidden_size=128`). The folder reloads with AutoModelForImageTextToText/AutoProcessor.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    known = {f.name for f in fields(TinyVLMSettings)} - {"architecture"}
    unknown = set(sizes) - known
    if unknown:
        raise ValueError(f"build_tiny_vlm: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    settings = TinyVLMSettings(architecture=architecture, **sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(settings, seed)
    processor = build_processor(settings, tokenizer)
    config = build_config(settings, tokenizer)

    # A private generator keeps the caller's global torch RNG untouched and makes weights a function of seed.
    fork_devices: list = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.eval()
    eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=32,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)  # also at top level, for code that loads only the tokenizer
    (out / "tiny_vlm.json").write_text(
        json.dumps({"builder": "covip.local.tiny_vlm", "seed": seed, "settings": settings.__dict__,
                    "note": "random weights: outputs are meaningless; for tests and dry runs only"}, indent=2),
        encoding="utf-8",
    )
    return out
