"""`covip plan`: the model calls, tokens, dollars and GPU-hours a config will take, before anything runs.

Counts come from the config's sizes: synthesized samples, the share the filter keeps
(`plan.kept_fraction`), the context size implied by `synthesis.positives_weights` and the negatives
settings (their mean), the split sizes, questions per concept, policies, judges, control conditions,
diagnostic items, tasks and modes, and the GSPO runs' schedules. Input tokens come from the prompt
templates rendered, through the same builders the stages use where the layout is code
(`covip.protocol`), on representative inputs whose texts have the expected lengths; text is counted
as characters / `plan.chars_per_token` (4; benchmarks/plan_tokens.py checks it against a real
tokenizer on real requests) and every image with its backend's own rule (OpenAI's tiles, Gemini's
258-token tiles, Qwen-VL's 28-pixel patches; a stand-in reads no pixels). Output tokens are the expected reply
lengths of `plan.output_tokens`, capped by the max_tokens each request carries. Dollars use the
config's `prices:`; GPU-hours use `plan.throughput` of `plan.gpu`, plus `plan.load_seconds` for every
engine or server start the jobs make (covip.planning.engines). `prefix_share` is the part of a
rule's input tokens a prefix cache can reuse (covip.planning.prefix). Only first attempts are
counted: re-asks, repairs and retries come on top (the usage report measures them).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from string import Template

from covip.clients.backends import BACKENDS
from covip.clients.base import ChatRequest
from covip.clients.spec import ModelSpec
from covip.clients.usage import estimated_cost
from covip.config.prepare import Prepared
from covip.config.schema import settings_class
from covip.core.schemas import NONE_OPTION
from covip.core.settings import settings_from
from covip.planning import engines
from covip.planning.prefix import distinct, reusable_share
from covip.planning.settings import PlanSettings
from covip.prompts import PromptBook
from covip.protocol.judging import build_judge_request, build_lar_judge_request
from covip.protocol.requests import build_cag_request, build_caption_request, build_direct_request, diagnostic_as_split_row

TEXT_ONLY = "text_only"  # the control that removes the context images


def text_tokens(chars: float, chars_per_token: float) -> float:
    """Tokens of `chars` characters of prompt or reply text: the plan's one conversion from characters to
    tokens (plan.chars_per_token; benchmarks/plan_tokens.py checks it against a real tokenizer)."""
    return chars / chars_per_token


def request_text(request: ChatRequest) -> str:
    """The text of a request as the plan counts it: every message's text parts (images apart)."""
    return "".join(m.text for m in request.messages)


def _filler(tokens: float, chars_per_token: float) -> str:
    """Text that the plan counts as about `tokens` tokens: `chars_per_token` characters a token, so a
    filler stands for its expected length whatever plan.chars_per_token says."""
    n = max(0, int(round(tokens * chars_per_token)))
    return ("abc " * (n // 4 + 1))[:n]


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    return buffer.getvalue()


def image_tokens(spec: ModelSpec, side: int) -> int:
    """Input tokens of one square image of `side` pixels for this entry's model."""
    if spec.is_local:
        return 0  # a stand-in reads the request's task, not pixels
    if spec.backend == "openai" and spec.dialect == "openai":  # OpenAI, high detail: 512-px tiles
        size = min(side, 2048)
        size = min(size, 768)  # the shortest side is scaled down to 768
        return 85 + 170 * math.ceil(size / 512) ** 2
    if spec.backend == "gemini":  # 258 tokens per image up to 384 px, else per 768-px tile
        return 258 if side <= 384 else 258 * math.ceil(side / 768) ** 2
    return math.ceil(side / 28) ** 2  # Qwen-VL (vLLM, transformers, a served Qwen): 28-px patches after merging


def rendered_chars(prompts: PromptBook, name: str, counts: Mapping[str, int] | None = None, **fields) -> int:
    """Characters of a template rendered with `fields` (texts; any other placeholder: 12 characters). For
    a sectioned template, `counts` says how often each section is used (default once)."""
    source = prompts.source(name)
    if "[[" not in source:
        return len(_fill(Template(source), fields))
    sections = prompts.sections(name)
    return sum(len(_fill(template, fields)) * (counts or {}).get(section, 1) for section, template in sections.items())


def _fill(template: Template, fields: Mapping[str, str]) -> str:
    names = {m.group("named") or m.group("braced") for m in template.pattern.finditer(template.template)} - {None}
    return template.substitute({name: str(fields.get(name, "x" * 12)) for name in names}).strip()


def _cap(expected: int, *samplings: Mapping | None) -> int:
    """The expected reply length, capped by the first max_tokens among the samplings in effect."""
    for sampling in samplings:
        if sampling and sampling.get("max_tokens"):
            return min(expected, int(sampling["max_tokens"]))
    return expected


class _Plan:
    """Rows of schemas.PLAN, added per (rule, role)."""

    def __init__(self, prepared: Prepared, settings: PlanSettings):
        self.prepared, self.settings, self.rows = prepared, settings, []
        self.prompts = prepared.prompts

    def tokens(self, chars: float) -> float:
        """Tokens of `chars` characters of text (plan.chars_per_token)."""
        return text_tokens(chars, self.settings.chars_per_token)

    def filler(self, tokens: float) -> str:
        """Stand-in text the plan counts as `tokens` tokens."""
        return _filler(tokens, self.settings.chars_per_token)

    def add(self, rule: str, role: str, jobs: int, calls: float, images: float, text_tokens: float, image_side: int,
            out_tokens: float, basis: str, spec: ModelSpec | None = None) -> None:
        spec = spec or self.prepared.models[role]
        calls = int(round(calls))
        input_tokens = int(round(calls * text_tokens + images * image_tokens(spec, image_side)))
        output_tokens = int(round(calls * out_tokens))
        kind = BACKENDS[spec.backend].kind
        row = {"rule": rule, "role": role, "backend": spec.backend, "model": spec.model, "kind": kind, "jobs": jobs,
               "calls": calls, "images": int(round(images)), "input_tokens": input_tokens, "output_tokens": output_tokens,
               "estimated_cost_usd": estimated_cost(spec.model, input_tokens, output_tokens,
                                                    self.prepared.config.get("prices") or {}),
               "gpu_hours": None, "engine_starts": 0, "server_starts": 0, "load_gpu_hours": 0.0, "prefix_share": None,
               "basis": basis}
        if kind == "in_process" and spec.gpus == 0:
            row["gpu_hours"] = 0.0  # a job of an entry with `gpus: 0` gets no GPU: it runs on the CPU
        elif kind == "in_process":
            rates = self.settings.throughput[self.settings.gpu]
            if spec.backend == "open_clip":
                seconds = images / self.settings.embed_images_per_s
            else:
                speed = self.settings.backend_speed.get(spec.backend, 1.0)
                seconds = (input_tokens / rates["prefill"] + output_tokens / rates["decode"]) / speed
            row["gpu_hours"] = seconds / 3600 * max(1, spec.gpus)
        self.rows.append(row)


def _section(config: Mapping, section: str):
    return settings_from(settings_class(section), config.get(section), f"config '{section}'")


def estimate(prepared: Prepared, settings: PlanSettings | None = None) -> tuple[list[dict], list[str]]:
    """(rows of schemas.PLAN, the assumptions behind them, one sentence each)."""
    config = prepared.config
    settings = settings or settings_from(PlanSettings, config.get("plan"), "config 'plan'")
    out = settings.output_tokens
    synthesis, negatives, mcqa = _section(config, "synthesis"), _section(config, "negatives"), _section(config, "mcqa")
    dialogues, splits, captioning = _section(config, "dialogues"), _section(config, "splits"), _section(config, "captioning")
    diagnostics, pool = _section(config, "diagnostics"), _section(config, "concept_pool")
    plan = _Plan(prepared, settings)
    prompts, png = plan.prompts, _png()

    weights = synthesis.positives_weights
    share = [w / sum(weights) for w in weights]
    positives = sum((k + 1) * p for k, p in enumerate(share))
    context = sum(p * (k + 1 + negatives.mean_negatives(k + 1)) for k, p in enumerate(share))
    n_samples = synthesis.num_samples
    kept = n_samples * settings.kept_fraction
    test = min(splits.test_size, kept) if splits.test_size else kept * splits.test_fraction
    train = min(splits.train_size, kept - test) if splits.train_size else kept - test
    q = mcqa.questions_per_dialogue
    concept_side, query_side, diag_side = pool.image_size, synthesis.image_size, diagnostics.image_size
    dialogue_tokens = _cap(out["dialogue"], prepared.models["dialogue_writer"].sampling)
    facts_text = "\n".join(f"- (fact) {plan.filler(10)}" for _ in range(dialogues.facts_per_dialogue))

    # Stages 2-6 ------------------------------------------------------------------------------------
    spec = prepared.models["image_generator"]
    text = rendered_chars(prompts, "query_synthesis", concept_list="\n".join(f"- {plan.filler(6)}" for _ in range(round(positives))))
    plan.add("synthesize_queries", "image_generator", 1, n_samples, n_samples * positives, plan.tokens(text), concept_side,
             settings.image_output_tokens if BACKENDS[spec.backend].kind == "api" else 0,
             f"{n_samples} samples x 1 generation, {positives:.2f} reference images each")
    text = rendered_chars(prompts, "visual_fidelity", {"reference": round(positives)})
    verifier = prepared.models["verifier"]
    plan.add("filter_queries", "verifier", 1, n_samples, n_samples * positives, plan.tokens(text), concept_side,
             _cap(out["verifier"], verifier.sampling), f"{n_samples} queries x 1 fidelity question")
    # the query image of each fidelity question, at its own size
    plan.rows[-1]["input_tokens"] += int(n_samples * image_tokens(verifier, query_side))
    plan.rows[-1]["images"] += n_samples
    concepts = _pool_size(config, pool)
    unknown_pool = concepts is None
    if concepts is not None:
        plan.add("embed_concepts", "embedder", 1, concepts, concepts, 0, concept_side, 0,
                 f"{concepts} concepts x 1 embedding")
    n_dialogues = kept * context
    text = rendered_chars(prompts, "dialogue_writer", facts=facts_text)
    plan.add("write_dialogues", "dialogue_writer", 1, n_dialogues, n_dialogues, plan.tokens(text), concept_side, dialogue_tokens,
             f"{kept:.0f} kept samples x {context:.2f} context concepts")
    text = rendered_chars(prompts, "mcqa_writer", dialogue=plan.filler(dialogue_tokens), facts=facts_text, n=str(q),
                          none_option=NONE_OPTION)
    plan.add("write_mcqas", "mcqa_writer", 1, n_dialogues, 0, plan.tokens(text), concept_side,
             _cap(round(out["mcqa"] * q / 3), prepared.models["mcqa_writer"].sampling), f"{n_dialogues:.0f} dialogues x 1")

    # Stages 9-11 -----------------------------------------------------------------------------------
    caption_tokens_of = {}
    row = {"sample_id": "plan", "context_images": [png] * round(context), "query_image": png,
           "context_dialogues": [plan.filler(dialogue_tokens)] * round(context)}
    caption_text = len(request_text(build_caption_request(row, prompts)))
    caption_sampling = dict(captioning.sampling or {})
    if captioning.max_tokens and "max_tokens" not in caption_sampling:
        caption_sampling["max_tokens"] = captioning.max_tokens
    for condition in prepared.conditions:
        context_images = 0 if condition == TEXT_ONLY else context
        for policy in config["evaluation"]["policies"]:
            spec = prepared.models[policy]
            caption_tokens = _cap(out["caption"], caption_sampling, spec.sampling)
            caption_tokens_of[policy] = caption_tokens
            plan.add("caption", policy, 1, test, test * context_images, plan.tokens(caption_text), concept_side, caption_tokens,
                     f"{test:.0f} test samples under '{condition}'")
            plan.rows[-1]["input_tokens"] += int(test * image_tokens(spec, query_side))
            plan.rows[-1]["images"] += int(round(test))
    question = {"question": plan.filler(12), "options": {k: plan.filler(5) for k in "ABC"} | {"D": NONE_OPTION}}
    for condition, key in prepared.capeval_keys():
        policy, judge = key.split("/")
        spec = prepared.models[judge]
        text = len(request_text(build_judge_request(plan.filler(caption_tokens_of[policy]), question, prompts, seed=0)))
        calls = test * context * q
        rule = "capeval_one_pass" if prepared.capeval_one_pass(judge) else "capeval"
        plan.add(rule, judge, 1, calls, 0, plan.tokens(text), 0, _cap(out["judge"], spec.sampling),
                 f"{test:.0f} test samples x {context:.2f} concepts x {q} questions, {policy}'s captions, '{condition}'")
        # all questions on one caption (its context concepts x q) share the caption's prefix
        plan.rows[-1]["prefix_share"] = _judge_prefix_share(caption_tokens_of[policy], context * q, prompts,
                                                             settings.chars_per_token)
    _diagnostics(plan, prepared, diagnostics, diag_side, png)
    for run in prepared.training.runs:
        _training(plan, prepared, run, train, context, q, caption_text, concept_side, query_side)
    assumptions = _assumptions(settings, positives, context, kept, test, train)
    if unknown_pool:
        assumptions.append(f"embed_concepts is left out: the concept pool ({pool.path}) cannot be counted before it exists")
    assumptions += _engine_assumptions(settings)
    return _with_starts(_merge(plan.rows), engines.starts(prepared, settings)), assumptions


def _judge_prefix_share(caption_tokens: float, questions: float, prompts: PromptBook, chars_per_token: float) -> float:
    """Reusable prompt share of CapEval judge requests: `questions` requests per caption."""
    def build(group: int, item: int):
        question = {"question": distinct(item, 12, chars_per_token),
                    "options": {k: distinct(item, 5, chars_per_token) for k in "ABCD"}}
        return build_judge_request(distinct(group, caption_tokens, chars_per_token), question, prompts, seed=0)

    return reusable_share(build, questions)


def _with_starts(rows: list[dict], starts: dict[tuple[str, str], dict]) -> list[dict]:
    """Rows with the jobs the rules make and the engine and server starts in them; loading's
    GPU-hours are added to the row's (a served entry's row then counts its loading only). A (rule,
    role) whose calls the plan does not estimate (general_benchmark) gets a row of its starts."""
    by_key = {(r["rule"], r["role"]): r for r in rows}
    for (rule, role), entry in starts.items():
        row = by_key.get((rule, role))
        if row is None:
            spec = entry["spec"]
            row = {"rule": rule, "role": role, "backend": spec.backend, "model": spec.model,
                   "kind": BACKENDS[spec.backend].kind, "calls": 0, "images": 0, "input_tokens": 0,
                   "output_tokens": 0, "estimated_cost_usd": 0.0, "gpu_hours": None, "prefix_share": None,
                   "basis": "engine starts only: calls not estimated"}
            rows.append(row)
        row.update(jobs=entry["jobs"], engine_starts=entry["engine_starts"], server_starts=entry["server_starts"],
                   load_gpu_hours=entry["load_gpu_hours"])
        if entry["load_gpu_hours"]:
            row["gpu_hours"] = (row["gpu_hours"] or 0.0) + entry["load_gpu_hours"]
    for row in rows:
        if row["kind"] == "stand_in":
            row["prefix_share"] = None  # a stand-in has no prefix cache to reuse it
    return rows


def _engine_assumptions(settings: PlanSettings) -> list[str]:
    loads = ", ".join(f"{k} {v:g}" for k, v in settings.load_seconds.items())
    return [
        "every job loads each in-process model it runs once (an engine start) and starts each served entry it calls "
        "once (a server start); a sharded rule runs one job per shard",
        f"loading from local disk holds the job's GPUs for plan.load_seconds per start ({loads}); those GPU-hours "
        "are in GPU-h, and are all of a served entry's GPU-h",
        "prefix: the share of a rule's prompt tokens a prefix cache (vLLM's automatic prefix caching) can reuse: "
        "the CapEval judge's requests on one sample repeat its instructions and the text judged, the LAR judge's "
        "its instructions; blank where not estimated and for stand-ins",
    ]


def _pool_size(config: Mapping, pool) -> int | None:
    """Concepts in the pool: the builtin pool's count, a manifest's rows, a folder's images; None unknown."""
    from pathlib import Path

    if pool.source == "builtin":
        from covip.content import concept_art

        return len(concept_art.PHOTOS) + len(concept_art.DRAWN_KINDS) * pool.drawn_per_kind
    path = Path(pool.path or "")
    if pool.source == "manifest" and path.is_file():
        return max(0, len(path.read_text(encoding="utf-8").splitlines()) - 1)
    if pool.source == "folder" and path.is_dir():
        return sum(1 for p in path.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    return None


def _diagnostics(plan: _Plan, prepared: Prepared, diagnostics, side: int, png: bytes) -> None:
    config, out, prompts = prepared.config, plan.settings.output_tokens, plan.prompts
    c = plan.settings.chars_per_token
    items = diagnostics.items_per_task
    d = diagnostics.dialogues_per_item
    item = {"sample_id": "plan", "task": "lsd", "images_context": [png] * d, "dialogues_context": [plan.filler(60)] * d,
            "query_image": png, "question": plan.filler(15), "answer": plan.filler(3), "target_index": 0}
    direct = len(request_text(build_direct_request(item, prompts)))
    caption_request = build_caption_request(diagnostic_as_split_row(item), prompts)
    for condition, job in prepared.diagnostic_keys():
        policy, rest = job.split("/")
        task, mode = rest.split(".")
        spec = prepared.models[policy]
        images = 0 if condition == TEXT_ONLY else d
        answer = _cap(out["answer"], diagnostics.answer_sampling, spec.sampling)
        where = f"{items} {task} items, {mode}, '{condition}'"
        if mode == "direct":
            plan.add("diagnose", policy, 1, items, items * (images + 1), plan.tokens(direct), side, answer, where)
        else:
            caption = _cap(out["caption"], diagnostics.caption_sampling, spec.sampling)
            cag = build_cag_request(caption_request, plan.filler(caption), item["question"], prompts=prompts)
            cag_chars = len(request_text(cag))
            first = len(request_text(caption_request))
            plan.add("diagnose", policy, 1, 2 * items, 2 * items * (images + 1), plan.tokens(first + cag_chars) / 2, side,
                     (caption + answer) / 2, where + " (a caption, then the answer)")
        if task == "lar":
            judge = config["evaluation"]["diagnostic_judge"]
            text = len(request_text(build_lar_judge_request(plan.filler(15), plan.filler(10), plan.filler(answer), prompts)))
            plan.add("diagnose", judge, 1, items, 0, plan.tokens(text), 0,
                     _cap(out["lar_verdict"], prepared.models[judge].sampling), f"{where}: one verdict per answer")
            # one verdict per answer: only the instructions before the question repeat
            plan.rows[-1]["prefix_share"] = reusable_share(lambda g, i: build_lar_judge_request(
                distinct(g, 15, c), distinct(g, 10, c), distinct(g, answer, c), prompts), 1)


def _training(plan: _Plan, prepared: Prepared, run: str, train: float, context: float, q: int, caption_chars: int,
              concept_side: int, query_side: int) -> None:
    settings = prepared.training_settings(run)
    out = plan.settings.output_tokens
    records = min(settings.max_samples or train, train)
    procs = max(1, settings.gpus)
    steps_per_generation, iterations = settings.schedule()
    completions = records * settings.num_train_epochs * settings.num_generations
    if settings.max_steps > 0:
        # TRL generates a batch of (device batch x steps_per_generation) completions per process every
        # steps_per_generation x num_iterations micro-steps, so a step limit counts whole generation batches.
        generations = math.ceil(settings.max_steps * settings.gradient_accumulation_steps / (steps_per_generation * iterations))
        completions = generations * settings.batch_plan(procs).generation_batch
    mixture = settings.mixture()
    caption_share = sum(w for t, w in mixture.items() if t in ("caption", "joint")) / sum(mixture.values())
    rollout = min(out["rollout"], settings.max_completion_length)
    if settings.judge and caption_share:
        spec = prepared.models[settings.judge]
        text = len(request_text(build_judge_request(plan.filler(rollout), {"question": plan.filler(12), "options": {
            k: plan.filler(5) for k in "ABCD"}}, plan.prompts, seed=0)))
        calls = completions * caption_share * context * q
        plan.add("train_gspo", settings.judge, 1, calls, 0, plan.tokens(text), 0, _cap(out["judge"], spec.sampling),
                 f"run {run}: {completions:.0f} rollouts x {caption_share:.2f} caption share x {context:.2f} concepts "
                 f"x {q} questions")
        plan.rows[-1]["prefix_share"] = _judge_prefix_share(rollout, context * q, plan.prompts,
                                                             plan.settings.chars_per_token)
    policy = engines.training_policy(prepared, run)
    images = completions * (context + 1)
    plan.add("train_gspo", f"training.runs.{run}", 1, completions, images, plan.tokens(caption_chars), concept_side, rollout,
             f"run {run}: {records:.0f} records x {settings.num_train_epochs:g} epochs x {settings.num_generations} "
             f"rollouts{'' if settings.max_steps <= 0 else f', at most {settings.max_steps} steps'}", spec=policy)
    row = plan.rows[-1]
    row["input_tokens"] += int(completions * image_tokens(policy, query_side))
    rates = plan.settings.throughput[plan.settings.gpu]
    tokens = row["input_tokens"] + row["output_tokens"]
    # rollouts (vLLM-speed generation) + forward/backward over prompt and completion, once per iteration
    seconds = row["input_tokens"] / rates["prefill"] + row["output_tokens"] / rates["decode"] + tokens * iterations / rates["train"]
    row["gpu_hours"] = seconds / 3600 if settings.gpus else 0.0  # gpus: 0 trains on the CPU


def _merge(rows: list[dict]) -> list[dict]:
    """One row per (rule, role): jobs, calls, images, tokens, dollars and GPU-hours summed; bases joined."""
    merged: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["rule"], row["role"])
        if key not in merged:
            merged[key] = dict(row, basis=[row["basis"]])
            continue
        target = merged[key]
        if row["prefix_share"] is not None:  # weighted by prompt tokens
            total = target["input_tokens"] + row["input_tokens"]
            target["prefix_share"] = ((target["prefix_share"] or 0.0) * target["input_tokens"]
                                      + row["prefix_share"] * row["input_tokens"]) / total if total else row["prefix_share"]
        for name in ("jobs", "calls", "images", "input_tokens", "output_tokens", "estimated_cost_usd"):
            target[name] += row[name]
        if row["gpu_hours"] is not None:
            target["gpu_hours"] = (target["gpu_hours"] or 0.0) + row["gpu_hours"]
        target["basis"].append(row["basis"])
    for row in merged.values():
        bases = row["basis"]
        row["basis"] = bases[0] if len(bases) == 1 else f"{len(bases)} jobs, e.g. {bases[0]}"
    return list(merged.values())


def _assumptions(settings: PlanSettings, positives: float, context: float, kept: float, test: float, train: float) -> list[str]:
    rates = settings.throughput[settings.gpu]
    out = ", ".join(f"{k} {v}" for k, v in settings.output_tokens.items())
    return [
        f"the filter keeps {settings.kept_fraction:.0%} of the synthesized samples: {kept:.0f} kept, {train:.0f} train, "
        f"{test:.0f} test (plan.kept_fraction, splits)",
        f"a sample has {positives:.2f} positives and {context:.2f} context concepts on average (synthesis.positives_weights, "
        "the mean of negatives.min_negatives and the most negatives)",
        "first attempts only: re-asks and repairs of invalid outputs, and client retries, come on top",
        f"text is {settings.chars_per_token:g} characters a token (plan.chars_per_token; checked against a real tokenizer in "
        "BENCHMARKS.md), chat-template tokens not counted; an image costs its backend's tokens (OpenAI "
        "512-px tiles, Gemini 258 per 768-px tile, Qwen-VL one per 28x28 pixels; stand-ins none)",
        f"expected output lengths in tokens, capped by each request's max_tokens: {out}; a generated image bills "
        f"{settings.image_output_tokens} tokens",
        f"GPU-hours at {settings.gpu}: {rates['prefill']:g} prefill, {rates['decode']:g} decode, {rates['train']:g} training "
        f"tokens/s per GPU for an ~8B VLM (plan.throughput); transformers at "
        f"{settings.backend_speed.get('transformers', 1.0):g} x vLLM's speed; open_clip {settings.embed_images_per_s:g} images/s",
        "dollars from the config's prices (USD per 1M tokens); a model without a price costs 0",
        "GPU-h counts in-process models, GSPO training and loading only (an entry with gpus: 0 runs on the CPU); a "
        "self-hosted server's GPUs (vllm serve) are also busy for as long as its calls take: see BENCHMARKS.md for "
        "measured judge throughput",
    ]


def format_plan(rows: list[dict], assumptions: list[str]) -> str:
    """The plan as a plain-text table, totals and assumptions."""
    lines = [f"{'rule':<20} {'role':<28} {'backend':<22} {'jobs':>5} {'starts':>6} {'calls':>10} {'input tok':>13} "
             f"{'prefix':>6} {'output tok':>12} {'USD':>10} {'load-h':>7} {'GPU-h':>8}"]
    for r in rows:
        gpu = "" if r["gpu_hours"] is None else f"{r['gpu_hours']:.2f}"
        prefix = "" if r["prefix_share"] is None else f"{r['prefix_share']:.2f}"
        starts = r["engine_starts"] + r["server_starts"]
        lines.append(f"{r['rule']:<20} {r['role'][:28]:<28} {r['backend'][:22]:<22} {r['jobs']:>5} {starts:>6} "
                     f"{r['calls']:>10,} {r['input_tokens']:>13,} {prefix:>6} {r['output_tokens']:>12,} "
                     f"{r['estimated_cost_usd']:>10.2f} {r['load_gpu_hours']:>7.2f} {gpu:>8}")
    total = {k: sum(r[k] for r in rows) for k in ("calls", "input_tokens", "output_tokens", "estimated_cost_usd",
                                                  "engine_starts", "server_starts", "load_gpu_hours")}
    hours = sum(r["gpu_hours"] or 0.0 for r in rows)
    starts = total["engine_starts"] + total["server_starts"]
    lines.append(f"{'total':<20} {'':<28} {'':<22} {'':>5} {starts:>6} {total['calls']:>10,} "
                 f"{total['input_tokens']:>13,} {'':>6} {total['output_tokens']:>12,} "
                 f"{total['estimated_cost_usd']:>10.2f} {total['load_gpu_hours']:>7.2f} {hours:>8.2f}")
    lines.append(f"starts: {total['engine_starts']} in-process engine loads, {total['server_starts']} server starts; "
                 f"loading {total['load_gpu_hours']:.2f} of the {hours:.2f} GPU-h")
    return "\n".join(lines) + "\n\nAssumptions:\n" + "\n".join(f"- {a}" for a in assumptions)

