"""The measurement protocols: which value each protocol switch takes (docs/protocol.md).

The config's top-level `protocol` names one of `PROTOCOLS`. Both measure with the authors' protocol
(their prompts' meaning, caps, sampling, parsing and scoring); they differ only where we depart from
the authors' code on purpose, each departure one switch below:

- `default`: our fixes of defects in the authors' code, and stricter checks;
- `authors-code`: every switch set back to what the authors' code does.

A stage setting that is a switch defaults to null, meaning "as `protocol` says"; the workflow fills it
in at parse time (`covip.config.protocol`), and a settings object built without the workflow (a test,
the command line) resolves null to the `default` protocol's value (`resolve`). Pure data and lookups:
no other covip module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROTOCOLS = ("default", "authors-code")
DEFAULT_PROTOCOL = "default"
AUTHORS_CODE = "authors-code"


@dataclass(frozen=True)
class Switch:
    """One deliberate difference from the authors' code: its config key and its value per protocol."""

    section: str
    key: str
    values: tuple[tuple[str, Any], ...]  # (protocol, value) for every protocol

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def value(self, protocol: str) -> Any:
        return dict(self.values)[protocol]


SWITCHES = (
    # The letter of a CapEval-QA reply: the first box must hold one letter (default), or the expected
    # letter only has to occur somewhere in the first box's text (the authors' `a in pred`).
    Switch("capeval", "letter_match", (("default", "exact"), ("authors-code", "substring"))),
    # A judge call that failed: counted as D and reported (default), or the sample left out of every
    # accuracy (the authors' try/except around a sample).
    Switch("capeval", "failed_calls", (("default", "as_d"), ("authors-code", "drop_sample"))),
    # A caption cut off at the token cap: not judged and counted with the failed captions (default),
    # or judged as written (the authors' notebook scores whatever text came back).
    Switch("capeval", "truncated_captions", (("default", "fail"), ("authors-code", "judge"))),
    # The caption prompt's layout: 1-based dialogue numbers and a blank line after each dialogue, as
    # the authors train and run the diagnostics (default), or 0-based and no blank line, as their
    # test-set captioning notebook does.
    Switch("captioning", "layout", (("default", "training"), ("authors-code", "test_notebook"))),
    # <think> blocks removed from a caption before it is judged (default), or kept (the authors').
    Switch("captioning", "strip_thinking", (("default", True), ("authors-code", False))),
    # LSD: ask for \boxed{} and read the last \boxed{} or //boxed{} (default), or ask for //boxed{}
    # and read it the authors' way (last //boxed{...}, else the text after the last '//').
    Switch("diagnostics", "lsd_box", (("default", "latex"), ("authors-code", "slashes"))),
    # LAR verdict: the leading Correct/Wrong word, 'incorrect' being wrong (default), or 'correct'
    # anywhere in the lower-cased reply, so 'Incorrect' counts as correct (the authors').
    Switch("diagnostics", "lar_verdict", (("default", "strict"), ("authors-code", "substring"))),
)
SWITCH_BY_NAME = {switch.name: switch for switch in SWITCHES}

# Prompts whose wording is part of the measurement: overriding one makes the run's protocol custom.
MEASUREMENT_PROMPTS = ("caption", "capeval_judge", "diagnostic_questions", "lar_judge")


def preset(section: str, key: str, protocol: str = DEFAULT_PROTOCOL) -> Any:
    """The value protocol `protocol` gives the switch `section.key`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    return SWITCH_BY_NAME[f"{section}.{key}"].value(protocol)


def resolve(value: Any, section: str, key: str) -> Any:
    """`value`, or the default protocol's value of the switch when `value` is None (not set)."""
    return preset(section, key) if value is None else value


def switch_help(section: str, key: str, text: str) -> str:
    """A switch's help text: what it does, then what null means and each protocol's value."""
    values = ", ".join(f"{protocol}: {preset(section, key, protocol)!r}" for protocol in PROTOCOLS)
    return f"{text} Null: as the top-level `protocol` says ({values})."
