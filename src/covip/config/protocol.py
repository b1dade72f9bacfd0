"""The config's `protocol` key, applied at parse time (docs/protocol.md).

`apply_protocol(config)` fills every protocol switch (`covip.core.presets.SWITCHES`) that the config
leaves null with the named protocol's value, in place, so the rules' params and every job's settings
carry concrete values (a change of protocol reruns exactly the jobs whose settings changed). A switch
the config sets to another value, or an override of a measurement prompt, makes the run's protocol
"custom": the report then says so and prints no paper numbers beside ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from covip.core.presets import DEFAULT_PROTOCOL, MEASUREMENT_PROMPTS, PROTOCOLS, SWITCHES


class ProtocolError(ValueError):
    """An unknown protocol name or a switch section that is not a mapping."""


@dataclass(frozen=True)
class ProtocolChoice:
    """The protocol a run measures with."""

    name: str  # the config's `protocol`
    deviations: tuple[str, ...]  # 'capeval.letter_match=substring', 'prompts.capeval_judge', ...

    @property
    def comparable(self) -> bool:
        """True when the run measures exactly as a named protocol: its numbers may sit beside the paper's."""
        return not self.deviations

    @property
    def label(self) -> str:
        if self.comparable:
            return self.name
        return f"custom ({self.name} with {', '.join(self.deviations)})"


def apply_protocol(config: dict) -> ProtocolChoice:
    """Fill the null protocol switches of `config` in place; return the protocol the run measures with."""
    name = config.get("protocol") or DEFAULT_PROTOCOL
    if name not in PROTOCOLS:
        raise ProtocolError(f"protocol: {name!r} is not a protocol; choose from {list(PROTOCOLS)}")
    config["protocol"] = name
    deviations = []
    for switch in SWITCHES:
        section = config.setdefault(switch.section, {})
        if not isinstance(section, Mapping):
            raise ProtocolError(f"config '{switch.section}' must be a mapping to hold {switch.name}")
        wanted = switch.value(name)
        if section.get(switch.key) is None:
            section[switch.key] = wanted
        elif section[switch.key] != wanted:
            deviations.append(f"{switch.name}={section[switch.key]!r}")
    overrides = config.get("prompts") or {}
    deviations += [f"prompts.{prompt}" for prompt in MEASUREMENT_PROMPTS if prompt in overrides]
    return ProtocolChoice(name, tuple(deviations))
