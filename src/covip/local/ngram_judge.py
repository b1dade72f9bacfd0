"""A second offline CapEval-QA judge, with a decision rule unlike the lexical judge's.

A stand-in, like the lexical judge: it does not read prose, it measures string similarity. It exists
so the embedded default can score every caption with TWO judges on a CPU and report how much their
answers agree (covip.stages.agreement); the real test of a judge is the LLM judge (see
docs/evaluation.md).

Rule, for a CapEval question (`task['kind'] == 'capeval'`: caption, question, options):

1. The caption is cut into sentences. Each sentence, the question and options A-C become TF-IDF
   vectors of character 3-5-grams (scikit-learn `TfidfVectorizer(analyzer='char_wb')`, fitted on
   just these texts).
2. A sentence's relevance is its cosine similarity to the question, divided by the largest such
   similarity (the most question-like sentence counts fully); option k's support is the largest,
   over sentences, of cos(sentence, option k) x relevance.
3. The best-supported option wins if its support reaches `threshold` and beats the runner-up by
   `margin`; otherwise D (abstain: the caption does not single out an answer).

Unlike the lexical judge there is no subject-name gate and no word normalisation: partial words,
inflections and names all count as shared character n-grams. The two therefore disagree where the
metric is fragile (a fact stated about another concept, a paraphrase), which is what the agreement
table is for.

It replies with the prompt's answer line only, `Answer: \\boxed{X}`. `spec.options`: threshold (0.3),
margin (0.05). Deterministic.
"""

from __future__ import annotations

import re

from covip.clients.base import ChatRequest, ChatResponse, Usage

CHOICES = ("A", "B", "C")


def ngram_choice(caption: str, question: str, options: dict[str, str], threshold: float, margin: float) -> str:
    """The letter the n-gram rule picks for one question (module docstring)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", caption or "") if s.strip()]
    texts = [options.get(letter) or "" for letter in CHOICES]
    if not sentences or not any(t.strip() for t in texts):
        return "D"
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True)
    try:
        matrix = vectorizer.fit_transform(sentences + [question or ""] + texts)
    except ValueError:  # no n-gram at all (every text shorter than 3 characters)
        return "D"
    sims = (matrix @ matrix.T).toarray()  # rows are L2-normalised: dot product = cosine
    n = len(sentences)
    relevance = sims[n, :n].clip(min=0.0)
    if relevance.max() <= 0.0:
        return "D"  # no sentence shares anything with the question
    relevance = relevance / relevance.max()  # the most question-like sentence counts fully
    support = [float((sims[n + 1 + k, :n] * relevance).max()) for k in range(len(CHOICES))]
    ranked = sorted(range(len(CHOICES)), key=lambda k: support[k], reverse=True)
    best, second = support[ranked[0]], support[ranked[1]]
    if best >= threshold and best - second >= margin:
        return CHOICES[ranked[0]]
    return "D"


class NgramJudge:
    """A ChatModel that answers CapEval questions from `request.task` by character n-gram similarity."""

    def __init__(self, spec):
        self.spec = spec
        self.identity = spec.identity
        self.model = spec.model or "ngram-judge"
        self.options = spec.resolved_options()
        for key in ("threshold", "margin"):
            if not 0.0 <= float(self.options[key]) <= 1.0:
                raise ValueError(f"models.{spec.name}.options.{key} must be in [0, 1], got {self.options[key]}")

    def complete(self, request: ChatRequest) -> ChatResponse:
        task = request.task or {}
        if task.get("kind") != "capeval":
            raise ValueError(f"{self.identity}: the n-gram judge serves only task kind 'capeval', got {task.get('kind')!r}")
        letter = ngram_choice(task.get("caption") or "", task.get("question") or "", dict(task.get("options") or {}),
                              float(self.options["threshold"]), float(self.options["margin"]))
        prompt_words = sum(len(message.text.split()) for message in request.messages)
        text = f"Answer: \\boxed{{{letter}}}"  # the CapEval-QA prompt's answer line
        return ChatResponse(text, self.model, Usage(prompt_words, 2))
