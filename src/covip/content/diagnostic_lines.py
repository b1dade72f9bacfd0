"""The dialogue lines of the LSD / LAR / ITR diagnostic sets, read from diagnostic_lines.yaml (or a
user's file of the same shape, the config's `content.diagnostic_lines`)."""

from __future__ import annotations

from dataclasses import dataclass

from covip.content.book import ContentError, load_content


@dataclass(frozen=True)
class DialogueLines:
    """The line pairs and actions of diagnostic_lines.yaml (or a user's file of the same shape)."""

    openers: tuple[tuple[str, str], ...]
    small_talk: tuple[tuple[str, str], ...]
    closers: tuple[tuple[str, str], ...]
    action_lines: tuple[tuple[str, str], ...]
    instruction_lines: tuple[tuple[str, str], ...]
    actions: tuple[str, ...]

    @classmethod
    def load(cls, path: str | None = None) -> "DialogueLines":
        data = load_content("diagnostic_lines", path) or {}
        where = path or "diagnostic_lines.yaml"

        def pairs(key):
            value = data.get(key)
            if not isinstance(value, list) or not value or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) and s.strip() for s in p) for p in value):
                raise ContentError(f"{where}: '{key}' must be a non-empty list of [user line, assistant line] pairs")
            return tuple(tuple(p) for p in value)

        actions = data.get("actions")
        if not isinstance(actions, list) or not all(isinstance(a, str) and a.strip() for a in actions):
            raise ContentError(f"{where}: 'actions' must be a list of non-empty strings")
        return cls(pairs("openers"), pairs("small_talk"), pairs("closers"), pairs("action_lines"),
                   pairs("instruction_lines"), tuple(actions))
