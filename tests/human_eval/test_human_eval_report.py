"""The report's human-evaluation section and plot, from summary rows."""

from PIL import Image

from covip.stages.report import plots, sections
from covip.stages.human_eval import summarize_human_eval


def vote(rater, sample, a, b, preferred):
    x, y = sorted((a, b))
    choice = {a: "A", b: "B", "tie": "tie"}[preferred]
    return {"rater": rater, "plan_version": "p", "item_id": f"{sample}:{x}:{y}", "position": 0, "sample_id": sample,
            "policy_a": a, "policy_b": b, "choice_context": choice, "choice_image": choice,
            "preferred_context": preferred, "preferred_image": preferred, "shown_at": None, "submitted_at": "t"}


def answer(policy, sample, positive, correct):
    return {"judge": "lexical_judge", "policy": policy, "sample_id": sample, "num_positives": 1, "is_positive": positive,
            "correct": correct, "unparseable": False, "raw_answer": "A"}


def test_the_section_shows_pairs_ranking_and_agreement(tmp_path):
    votes = [vote("r1", "s1", "oracle", "blind", "oracle"), vote("r1", "s2", "blind", "oracle", "oracle"),
             vote("r2", "s1", "blind", "oracle", "oracle"), vote("r2", "s2", "oracle", "blind", "tie")]
    answers = [answer(p, s, positive, p == "oracle" or not positive)
               for p in ("oracle", "blind") for s in ("s1", "s2") for positive in (True, False)]
    pairs, ranking, agreement = summarize_human_eval(votes, answers)
    text = sections.human_eval_section(pairs, ranking, agreement, "human_eval.png")
    assert "## Human evaluation: pairwise caption preference" in text
    # blind vs oracle on context: 0 blind wins, 1 tie, 3 oracle wins of 4 votes, with Wilson intervals.
    assert "| blind vs oracle | 4 | 0.0 (0.0–49.0) | 25.0 (4.6–69.9) | 75.0 (30.1–95.4) | 2 |" in text
    assert "Bradley–Terry ranking: 1. oracle (+" in text and "2. blind (-" in text
    assert "| context | preferred caption has the higher Acc+ | lexical_judge | 100.0 (" in text
    assert "![Human preference per pair](human_eval.png)" in text
    path = tmp_path / "human_eval.png"
    plots.plot_human_eval(pairs, path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 600
