"""The offline LAR verdict (covip.local.lar_judge): a response is correct when it covers enough of the
reference's content words."""

from __future__ import annotations

import pytest

from covip.local.lar_judge import lar_coverage, lexical_lar_verdict


@pytest.mark.parametrize(
    "response, expected",
    [
        ("You said you needed to go to the post office to return a package.", "Correct"),
        ("You were returning the packages at the post office.", "Correct"),
        ("You had to pick up your dry cleaning.", "Wrong"),
        ("I don't know.", "Wrong"),
        (None, "Wrong"),
    ],
)
def test_lexical_lar_verdict(response, expected):
    reference = "go to the post office to return this package"
    assert lexical_lar_verdict("What did I have to do?", reference, response) == expected


def test_lar_coverage_counts_content_words_only():
    # content words of the reference: post, office, return, package -> 2 of 4 covered
    assert lar_coverage("go to the post office to return this package", "the post office") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="threshold"):
        lexical_lar_verdict("q", "post office", "post office", threshold=0.0)
