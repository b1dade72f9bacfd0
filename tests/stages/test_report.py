"""The report: the paper's tables with our rows beside them (only under the authors' protocol), the
protocol of every number, provenance, and the plots."""

from pathlib import Path

import pytest

from covip.stages.report import plots, sections, tables

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "reference" / "paper_results.csv"


def capeval_row(policy, k, acc_pos, acc_neg, stand_in=True, judge="lexical_judge"):
    return {
        "policy": policy, "judge": judge, "num_positives": k, "acc_pos": acc_pos, "acc_neg": acc_neg,
        "acc_pos_low": acc_pos - 5, "acc_pos_high": acc_pos + 5, "acc_neg_low": acc_neg - 5,
        "acc_neg_high": min(100, acc_neg + 5), "n_pos_questions": 30, "n_neg_questions": 40, "n_unparseable": 2,
        "policy_identity": f"{policy}:reference_{policy}", "judge_identity": "lexical_judge:local_lexical_judge",
        "stand_in": stand_in,
    }


def diag_row(policy, task, mode, score):
    return {"policy": policy, "task": task, "mode": mode, "score": score, "score_low": score - 3,
            "score_high": score + 3, "n": 8, "n_failed": 0, "scorer": "token_f1",
            "model_identity": f"{policy}:x", "stand_in": True}


@pytest.fixture
def rows():
    capeval = [capeval_row("oracle", k, 90.0 - k, 99.0) for k in (0, 1, 2, 3, 4)]
    capeval += [capeval_row("blind", k, 1.0, 100.0) for k in (0, 1, 2, 3, 4)]
    diagnostics = [diag_row(p, t, m, 50.0 if p == "oracle" else 0.0)
                   for p in ("oracle", "blind") for t in ("lsd", "lar", "itr") for m in ("direct", "cag")]
    return capeval, diagnostics


def test_reference_copy_of_paper_results_matches_shared():
    shared = ROOT.parent / "shared" / "paper_results.csv"
    if not shared.exists():
        pytest.skip("../shared is not beside the repository")
    assert PAPER.read_text() == shared.read_text()


def test_capeval_table_has_paper_rows_and_ours(rows):
    capeval, _ = rows
    paper = tables.load_paper_results(PAPER)
    table = tables.capeval_table(capeval, paper, "authors-code")
    lines = table.splitlines()
    gpt4o = next(line for line in lines if line.startswith("| GPT-4o (paper)"))
    assert "| paper | 34.2 | 98.2 | 21.6 | 98.6 | 20.4 | 99.3 | 15.3 | 99.2 |" in gpt4o
    oracle = next(line for line in lines if "ours: oracle" in line)
    assert tables.STAND_IN_MARK in oracle and "| authors-code | 89.0 | 99.0 | 88.0 |" in oracle
    assert len(lines) == 2 + paper[paper.table == "capeval"].system.nunique() + 2


def test_downstream_table_and_provenance_name_the_protocol(rows):
    capeval, diagnostics = rows
    paper = tables.load_paper_results(PAPER)
    table = tables.downstream_table(diagnostics, paper, "default")
    assert "| Gemini-3.0-Pro (paper) | paper | 76.2 | 89.3 | 9.4 | 44.0 | 89.4 | 19.0 |" in table
    assert "ours: oracle" in table and "| default | 50.0 |" in table
    provenance = tables.provenance_table(capeval, diagnostics, "default")
    assert "`oracle:reference_oracle`" in provenance and "`lexical_judge:local_lexical_judge`" in provenance
    assert "| protocol |" in provenance and all("| default |" in line for line in provenance.splitlines()[2:])


def test_paper_rows_only_under_the_authors_protocol(rows):
    """A run that departs from a named protocol (a switch flipped, a measurement prompt replaced) shows
    its own rows only, each naming the custom protocol."""
    capeval, diagnostics = rows
    paper = tables.load_paper_results(PAPER)
    label = "custom (default with capeval.letter_match='lenient')"
    for table in (tables.capeval_table(capeval, paper, label, comparable=False),
                  tables.downstream_table(diagnostics, paper, label, comparable=False)):
        assert "(paper)" not in table and f"| {label} |" in table
    text = tables.render_summary(capeval, diagnostics, paper, run_name="t", stand_in_note="", capeval_plot="a.png",
                                 diagnostics_plot="b.png", protocol=label, comparable=False)
    assert f"## Measurement protocol: `{label}`" in text and "not printed beside ours" in text
    assert "(paper)" not in text
    text = tables.render_summary(capeval, diagnostics, paper, run_name="t", stand_in_note="", capeval_plot="a.png",
                                 diagnostics_plot="b.png", protocol="authors-code")
    assert "## Measurement protocol: `authors-code`" in text and text.count("(paper)") >= 18


def test_summary_and_plots_are_written(rows, tmp_path):
    capeval, diagnostics = rows
    paper = tables.load_paper_results(PAPER)
    plots.plot_capeval_by_count(capeval, tmp_path / "a.png", paper)
    plots.plot_direct_vs_cag(diagnostics, tmp_path / "b.png", paper)
    plots.plot_capeval_by_count(capeval, tmp_path / "c.png")  # no paper reference (a custom protocol)
    for name in ("a.png", "b.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = {"models": {"judge": {"backend": "local_lexical_judge"}, "p": {"backend": "openai", "model": "gpt-4o"}}}
    text = tables.render_summary(capeval, diagnostics, paper, run_name="t", stand_in_note=tables.backends_note(config),
                                 capeval_plot="a.png", diagnostics_plot="b.png")
    assert "| judge | local_lexical_judge |" in text and "| p | openai | gpt-4o | no |" in text
    assert "not estimates of the paper's numbers" in text
    assert "![Acc+ and Acc- against the number of concepts](a.png)" in text


def test_capeval_plot_has_a_panel_per_judge_and_a_style_per_policy(rows, tmp_path, monkeypatch):
    """Readable at a glance: a row of panels per judge, every policy its own colour and marker (the same
    in every panel), and the legend outside the panels."""
    import matplotlib.figure

    capeval, _ = rows
    capeval = capeval + [{**row, "judge": "ngram_judge"} for row in capeval]
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    plots.plot_capeval_by_count(capeval, tmp_path / "a.png", tables.load_paper_results(PAPER))
    fig = saved[0]
    assert len(fig.axes) == 4 and {ax.get_title().split("judge: ")[1] for ax in fig.axes} == {"lexical_judge", "ngram_judge"}
    assert all(not ax.get_legend() for ax in fig.axes) and fig.legends
    styles = plots.policy_styles(["oracle", "blind"])
    assert styles["oracle"][0] != styles["blind"][0] and styles["oracle"][1] != styles["blind"][1]
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert any(label.startswith("paper:") for label in labels) and any(label.startswith("oracle") for label in labels)


def test_bad_paper_csv_is_named(tmp_path):
    bad = tmp_path / "p.csv"
    bad.write_text("system,value\nx,1\n")
    with pytest.raises(ValueError, match="p.csv: expected columns"):
        tables.load_paper_results(bad)


def effect_row(policy, condition, value, intact, metric="acc_pos", mode="", judge="lexical_judge"):
    drop = intact - value
    return {"policy": policy, "condition": condition, "metric": metric, "mode": mode, "judge": judge,
            "num_positives": 0, "value": value, "intact": intact, "drop": drop,
            "drop_low": None if condition == "intact" else drop - 4, "drop_high": None if condition == "intact" else drop + 4,
            "n_samples": 10, "policy_identity": f"{policy}:reference_{policy}",
            "judge_identity": "lexical_judge:local_lexical_judge", "stand_in": True}


def test_does_it_look_section_states_drops_backends_and_agreement(tmp_path):
    effects = [effect_row("looking", "intact", 80.0, 80.0), effect_row("looking", "swapped_context", 20.0, 80.0),
               effect_row("looking", "intact", 70.0, 70.0, metric="acc_neg"),
               effect_row("looking", "swapped_context", 90.0, 70.0, metric="acc_neg"),
               effect_row("oracle", "intact", 95.0, 95.0), effect_row("oracle", "swapped_context", 95.0, 95.0),
               effect_row("oracle", "intact", 40.0, 40.0, metric="lsd", mode="direct", judge="token_f1")]
    changes = [{"condition": "swapped_context", "dataset": "test", "sample_id": "s1", "field": "context_images", "index": 0,
                "change": "swapped", "source_sample_id": "s2", "sha_before": "a", "sha_after": "b"}]
    agreement = [{"condition": "all", "policy": "all", "judge_a": "lexical_judge", "judge_b": "ngram_judge", "n_items": 40,
                  "agreement": 0.9, "kappa": None, "acc_pos_a": 90.0, "acc_neg_a": 95.0, "acc_pos_b": 85.0,
                  "acc_neg_b": 90.0, "unparseable_a": 0.0, "unparseable_b": 2.5, "judge_a_identity": "lexical_judge:x",
                  "judge_b_identity": "ngram_judge:y", "stand_in": True}]
    text = sections.controls_section(effects, changes, agreement, [{}] * 4, "controls.png")
    assert "Does it look?" in text and "| swapped_context | test | swapped | 1 |" in text
    looking = next(line for line in text.splitlines() if line.startswith("| looking"))
    assert "`looking:reference_looking`" in looking and "`lexical_judge:local_lexical_judge`" in looking
    assert "20.0 (−60.0 [56.0, 64.0])" in looking and looking.split("|")[4].strip() == "80.0"
    assert "| undefined | 90.0% |" in text and "2.5" in text and "4 questions" in text
    assert "90.0 (+20.0 [16.0, 24.0])" in text  # a rise, with its interval as a rise
    assert "### LSD direct" in text
    plots.plot_controls(effects, tmp_path / "controls.png")
    assert (tmp_path / "controls.png").stat().st_size > 1000


def test_failed_captions_and_diagnostic_rows_are_counted_in_the_tables(rows):
    capeval, diagnostics = rows
    capeval = [dict(r, n_caption_failed=3 if r["policy"] == "blind" and r["num_positives"] == 0 else 0) for r in capeval]
    diagnostics = [dict(r, n_failed=1) if r["policy"] == "blind" and r["task"] == "lar" else r for r in diagnostics]
    paper = tables.load_paper_results(PAPER)
    blind = next(line for line in tables.capeval_table(capeval, paper).splitlines() if "ours: blind" in line)
    assert blind.endswith("| 3 |")
    blind = next(line for line in tables.downstream_table(diagnostics, paper).splitlines() if "ours: blind" in line)
    assert blind.endswith("| 2 / 50 |")  # 2 LAR rows (direct, cag) of 6 x 8 scored + 2 failed
    text = tables.render_summary(capeval, diagnostics, paper, run_name="t", stand_in_note="", capeval_plot="a.png",
                                 diagnostics_plot="b.png")
    assert "captions failed" in text and "never judged as an empty caption" in text
