"""The comparison plan: deterministic, shared items for agreement, random sides, failed captions never planned."""

from collections import Counter

import pytest

from covip.human_eval.plan import build_plan
from covip.human_eval.settings import HumanEvalSettings

SAMPLES = [f"s{k:02d}" for k in range(12)]
POLICIES = ["oracle", "blind", "dump"]


def captions(failed=(), texts=None):
    """policy -> sample -> (status, caption); `failed` lists (policy, sample) pairs marked failed."""
    table = {}
    for policy in POLICIES:
        table[policy] = {}
        for sample in SAMPLES:
            text = (texts or {}).get((policy, sample), f"{policy} caption of {sample}")
            table[policy][sample] = ("failed", None) if (policy, sample) in failed else ("ok", text)
    return table


def settings(**overrides):
    return HumanEvalSettings(**{"items_per_rater": 10, "shared_items": 4, **overrides})


def test_the_same_inputs_give_the_same_plan_and_version():
    a = build_plan(SAMPLES, captions(), POLICIES, settings(), seed=3)
    b = build_plan(list(SAMPLES), captions(), list(reversed(POLICIES)), settings(), seed=3)
    assert a.version == b.version
    assert a.for_rater("ana") == b.for_rater("ana")


@pytest.mark.parametrize("change", ["seed", "seed_offset", "items", "caption_text", "policies"])
def test_every_plan_input_changes_the_version(change):
    base = build_plan(SAMPLES, captions(), POLICIES, settings(), seed=3)
    if change == "seed":
        other = build_plan(SAMPLES, captions(), POLICIES, settings(), seed=4)
    elif change == "seed_offset":
        other = build_plan(SAMPLES, captions(), POLICIES, settings(seed_offset=1), seed=3)
    elif change == "items":
        other = build_plan(SAMPLES, captions(), POLICIES, settings(items_per_rater=11), seed=3)
    elif change == "caption_text":
        other = build_plan(SAMPLES, captions(texts={("blind", "s03"): "rewritten"}), POLICIES, settings(), seed=3)
    else:
        other = build_plan(SAMPLES, {p: captions()[p] for p in POLICIES[:2]}, POLICIES[:2], settings(), seed=3)
    assert other.version != base.version


def test_every_rater_sees_the_shared_items_and_their_own_draw_in_their_own_order():
    plan = build_plan(SAMPLES, captions(), POLICIES, settings(), seed=3)
    assert len(plan.comparisons) == len(SAMPLES) * 3
    shared = {c.item_id for c in plan.comparisons[:4]}
    lists = {rater: plan.for_rater(rater) for rater in ("ana", "ben", "cleo")}
    for items in lists.values():
        ids = [item.item_id for item in items]
        assert len(ids) == 10 and len(set(ids)) == 10
        assert shared <= set(ids)
        assert [item.position for item in items] == list(range(10))
    assert len({tuple(i.item_id for i in items) for items in lists.values()}) == 3  # orders differ
    extra = [set(i.item_id for i in items) - shared for items in lists.values()]
    assert not (extra[0] == extra[1] == extra[2])


def test_sides_are_drawn_per_item_and_balanced():
    plan = build_plan(SAMPLES, captions(), POLICIES, settings(items_per_rater=36, shared_items=36), seed=3)
    first_on_a = Counter()
    for rater in [f"r{k}" for k in range(20)]:
        for item in plan.for_rater(rater):
            assert {item.policy_a, item.policy_b} == {item.comparison.first, item.comparison.second}
            first_on_a[item.policy_a == item.comparison.first] += 1
    # 720 fair coin flips: a share outside 40-60% would be a bias, not chance.
    assert 0.4 < first_on_a[True] / 720 < 0.6


def test_failed_captions_are_never_planned_and_are_counted():
    failed = {("blind", "s00"), ("blind", "s01"), ("dump", "s01")}
    plan = build_plan(SAMPLES, captions(failed), POLICIES, settings(items_per_rater=100, shared_items=0), seed=3)
    planned = {(c.sample_id, p) for c in plan.comparisons for p in (c.first, c.second)}
    assert not planned & failed
    # s00: blind-dump and blind-oracle; s01: all three pairs.
    assert plan.n_excluded == 5
    assert plan.excluded_reasons == {"blind failed": 4, "dump failed": 2}
    assert len(plan.comparisons) == len(SAMPLES) * 3 - 5
    assert "5 comparison(s) left out" in plan.excluded_text()


def test_empty_or_missing_captions_count_as_unusable():
    table = captions()
    table["oracle"]["s05"] = ("ok", "   ")
    del table["dump"]["s06"]
    plan = build_plan(SAMPLES, table, POLICIES, settings(), seed=3)
    assert plan.excluded_reasons == {"oracle empty": 2, "dump missing": 2}


def test_a_rater_asking_for_more_than_exists_gets_everything_once():
    plan = build_plan(SAMPLES[:2], captions(), POLICIES, settings(items_per_rater=40, shared_items=10), seed=3)
    assert sorted(i.item_id for i in plan.for_rater("ana")) == sorted(c.item_id for c in plan.comparisons)


def test_settings_reject_inconsistent_sizes():
    with pytest.raises(ValueError, match="shared_items"):
        HumanEvalSettings(items_per_rater=5, shared_items=6)
    with pytest.raises(ValueError, match="agreement_level"):
        HumanEvalSettings(agreement_level="interval")
