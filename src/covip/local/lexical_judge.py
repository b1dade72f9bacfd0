"""The lexical judge: an offline, deterministic stand-in for the CapEval-QA judge model.

It cannot read prose, so it works from `request.task`, the structured facts the prompt was rendered
from. For a CapEval question (`task['kind'] == 'capeval'`: `caption`, `question`, `options`) it
answers as a careful reader of the caption would, by this rule:

1. Subject. The capitalised words of the question that are not its opening question word (and not
   calendar words or 'I') are the names it asks about ('What habit of Lindsay did the user
   describe?' -> Lindsay; "What color was Judy's fur?" -> Judy). If the question has such names and
   none of them occurs in the caption (whole word, case-sensitive), the caption says nothing about
   the subject: answer D. This is what keeps a fact about one concept from answering a question
   about another, whose options are often generic ("Last weekend", "On the couch"). A question
   without any name skips this check.
2. Content. Each of options A-C is scored by the share of its content words (lower-cased,
   stopwords removed, dates and plurals normalised, as in stage 5) that occur in the text. The
   single best option wins if its share reaches `support_threshold`. The text is first the
   caption's sentences that name the subject (so another concept's fact elsewhere in the caption
   cannot tie with the subject's own), then, if that singles out no option, the whole caption (a
   caption may say 'he' after the name). A tie for best, or no option reaching the threshold, in
   both gives D (the caption does not single out one answer).

It replies the way the CapEval-QA prompt asks (the authors' format): a short reason, then
`Answer: \\boxed{X}` on a line of its own.

For an LAR diagnostic (`task['kind'] == 'lar_judge'`: `question`, `reference`, `response`) it
answers 'Correct' or 'Wrong' with `covip.local.lar_judge.lexical_lar_verdict`, so one registry
entry can judge both.

`spec.options` (all optional):

    support_threshold: minimum content-word share for an option to count as supported (0.6)
    answer_style:      'boxed' (a reason, then 'Answer: \\boxed{B}'), 'varied' (other boxed forms:
                       '\\boxed{ B }', '**Answer:** \\boxed{\\text{B}}', '$\\boxed{B}$', ..., chosen per
                       request, to exercise the reader) or 'letter' (a bare 'B', for the 'lenient'
                       rule of a judge prompt that asks for one letter) ('boxed')
    garble_rate:       share of CapEval replies that name no letter at all (0.0)
    error_rate:        share of calls that fail as a backend error would (0.0)

The rates are deterministic: decided from the request seed and task, so reruns agree.
"""

from __future__ import annotations

import json
import re

from covip.clients.base import ChatRequest, ChatResponse, Usage
from covip.core.seeding import pyrandom_for
from covip.core.text import content_tokens

ANSWER_STYLES = ("boxed", "varied", "letter")
CHOICES = ("A", "B", "C")

# Words that open a question with a capital letter without being a name.
_OPENERS = frozenset(
    """what when where which who whom whose why how on in at according during after before did does do
    is was were are has have had the a an for from to with by of as if since while about among between
    besides apart once""".split()
)
_CALENDAR = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday january february march april may june
    july august september october november december i""".split()
)
_CAPITALISED = re.compile(r"(?<![\w'’])([A-Z][\w-]*)(?:['’]s?)?")

# The reason the 'boxed' style gives before its answer line.
_REASON = {"D": "The description does not say which of A, B or C is right.",
           "option": "The description supports option {letter}."}
# Boxed surface forms for answer_style 'varied'; every one must be read by the 'exact' letter rule.
_VARIED = (
    "\\boxed{{{letter}}}",
    "Answer: \\boxed{{ {letter} }}",
    "**Answer:** \\boxed{{\\text{{{letter}}}}}",
    "The caption points to {letter}) {text}.\n\nAnswer: $\\boxed{{{letter}}}$",
    "Answer: \\boxed{{({letter})}}",
    "Final answer: \\boxed{{{letter}.}}",
)
_GARBLED = (
    "I cannot tell from the description.",
    "The description does not say enough to decide.",
    "Hmm, let me think about the photo again.",
)


def question_names(question: str) -> list[str]:
    """The capitalised names a question asks about (see the module docstring, rule 1)."""
    names = []
    for sentence in re.split(r"(?<=[.?!])\s+", question.strip()):
        for match in _CAPITALISED.finditer(sentence):
            word = match.group(1)
            lowered = word.lower()
            if lowered in _CALENDAR:
                continue
            if match.start() == 0 and lowered in _OPENERS:
                continue
            if word not in names:
                names.append(word)
    return names


def name_in_caption(name: str, caption: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", caption) is not None


def option_support(option: str, caption_tokens: set[str]) -> float:
    """Share of the option's content words found in the caption (0.0 for an option with none)."""
    tokens = set(content_tokens(option))
    if not tokens:
        return 0.0
    return len(tokens & caption_tokens) / len(tokens)


def lexical_choice(caption: str, question: str, options: dict[str, str], threshold: float) -> str:
    """The letter the lexical rule picks for one question (module docstring, rules 1-2)."""
    caption = caption or ""
    names = question_names(question)
    if names and not any(name_in_caption(name, caption) for name in names):
        return "D"
    scopes = [caption]
    if names:
        # Sentences that name the subject first, so that another concept's fact stated elsewhere in
        # the caption cannot tie with the subject's own; then the whole caption (pronouns).
        sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", caption) if any(name_in_caption(n, s) for n in names)]
        scopes.insert(0, " ".join(sentences))
    for scope in scopes:
        scope_tokens = set(content_tokens(scope))
        scores = {letter: option_support(options.get(letter) or "", scope_tokens) for letter in CHOICES}
        best = max(scores.values())
        winners = [letter for letter, score in scores.items() if score == best]
        if best >= threshold and len(winners) == 1:
            return winners[0]
    return "D"


class LexicalJudge:
    """A ChatModel that answers CapEval questions (and LAR judgements) from `request.task`."""

    def __init__(self, spec):
        self.spec = spec
        self.identity = spec.identity
        self.model = spec.model or "lexical-judge"
        self.options = spec.resolved_options()
        threshold = float(self.options["support_threshold"])
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"models.{spec.name}.options.support_threshold must be in (0, 1], got {threshold}")
        if self.options["answer_style"] not in ANSWER_STYLES:
            raise ValueError(
                f"models.{spec.name}.options.answer_style must be one of {list(ANSWER_STYLES)}, "
                f"got {self.options['answer_style']!r}"
            )
        for key in ("garble_rate", "error_rate"):
            if not 0.0 <= float(self.options[key]) <= 1.0:
                raise ValueError(f"models.{spec.name}.options.{key} must be in [0, 1], got {self.options[key]}")

    def complete(self, request: ChatRequest) -> ChatResponse:
        task = request.task or {}
        kind = task.get("kind")
        if kind not in ("capeval", "lar_judge"):
            raise ValueError(
                f"{self.identity}: the lexical judge serves only task kinds 'capeval' and 'lar_judge', got {kind!r}"
            )
        key = json.dumps(task, sort_keys=True, default=str)
        # Faults and surface form use separate generators, so turning faults on does not change the
        # wording of the replies that stay good.
        faults = pyrandom_for(request.seed or 0, "lexical-judge-faults", key)
        style = pyrandom_for(request.seed or 0, "lexical-judge-style", key)
        if faults.random() < float(self.options["error_rate"]):
            return ChatResponse(None, self.model, error="simulated backend error (lexical judge error_rate)")
        if kind == "lar_judge":
            try:
                from covip.local.lar_judge import lexical_lar_verdict
            except ImportError as error:
                raise RuntimeError(f"{self.identity}: LAR judging needs covip.local.lar_judge ({error})") from error
            text = lexical_lar_verdict(task["question"], task["reference"], task["response"])
        elif faults.random() < float(self.options["garble_rate"]):
            text = style.choice(_GARBLED)
        else:
            options = dict(task.get("options") or {})
            letter = lexical_choice(
                task.get("caption") or "", task.get("question") or "", options, float(self.options["support_threshold"])
            )
            if self.options["answer_style"] == "letter":
                text = letter
            elif self.options["answer_style"] == "varied":
                text = style.choice(_VARIED).format(letter=letter, text=options.get(letter, ""))
            else:
                reason = _REASON["D" if letter == "D" else "option"].format(letter=letter)
                text = f"{reason}\nAnswer: \\boxed{{{letter}}}"
        prompt_words = sum(len(message.text.split()) for message in request.messages)
        return ChatResponse(text, self.model, Usage(prompt_words, len(text.split())))
