"""Prompt templates are data: one `.txt` file per prompt in this folder, loaded by name.

Templates use `string.Template` syntax (`$name`, `${name}`), so JSON braces in a prompt need no
escaping. A user replaces any prompt by pointing the config's `prompts:` mapping at their own file;
no code changes.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from string import Template


class PromptError(KeyError):
    pass


def available_prompts() -> list[str]:
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt"))


def fill_section(template: Template, prompt_name: str, section: str, /, **values) -> str:
    """Substitute a section parsed by `PromptBook.sections`; a placeholder nobody fills is a PromptError
    naming the prompt and section. Values a section does not use are ignored."""
    try:
        return template.substitute(**values).strip()
    except KeyError as error:
        raise PromptError(f"prompt '{prompt_name}' section [[{section}]] needs a value for {error}") from error
    except ValueError as error:
        raise PromptError(f"prompt '{prompt_name}' section [[{section}]] has a malformed placeholder: {error}") from error


class PromptBook:
    """Loads built-in templates, with per-name overrides from the config (name -> file path)."""

    def __init__(self, overrides: dict[str, str] | None = None):
        self.overrides = dict(overrides or {})
        unknown = set(self.overrides) - set(available_prompts())
        if unknown:
            raise PromptError(f"prompts: no built-in prompt named {sorted(unknown)}; known: {available_prompts()}")
        # Each template is read and parsed once: a judge stage renders one per request, and reading the
        # file each time was a measurable share of its client CPU (BENCHMARKS.md). An override file is
        # keyed by its modification time too, so an edit is still seen.
        self._parsed: dict[tuple[str, int | None], tuple[str, Template]] = {}
        self._sections: dict[tuple[str, int | None], dict[str, Template]] = {}

    def source(self, name: str) -> str:
        return self._parsed[self._load(name)][0]

    def _load(self, name: str) -> tuple[str, int | None]:
        """The cache key of a template, read and parsed on first use."""
        stamp = None
        if name in self.overrides:
            path = Path(self.overrides[name])
            try:
                stamp = path.stat().st_mtime_ns
            except OSError:
                stamp = -1
        key = (name, stamp)
        if key not in self._parsed:
            text = self._read(name)
            self._parsed[key] = (text, Template(text))
        return key

    def _read(self, name: str) -> str:
        if name in self.overrides:
            path = Path(self.overrides[name])
            if not path.is_file():
                raise PromptError(f"prompts.{name}: override file {path} does not exist")
            return path.read_text(encoding="utf-8")
        resource = resources.files(__name__) / f"{name}.txt"
        if not resource.is_file():
            raise PromptError(f"no prompt named '{name}'; known: {available_prompts()}")
        return resource.read_text(encoding="utf-8")

    def render(self, prompt_name: str, /, **values) -> str:
        try:
            return self._parsed[self._load(prompt_name)][1].substitute(**values).strip()
        except KeyError as error:
            raise PromptError(f"prompt '{prompt_name}' needs a value for {error}") from error

    def render_section(self, prompt_name: str, section: str, /, **values) -> str:
        """Render one `[[section]]` of a sectioned template (for prompts interleaved with images)."""
        return fill_section(self.sections(prompt_name, [section])[section], prompt_name, section, **values)

    def sections(self, prompt_name: str, required=()) -> dict[str, Template]:
        """Split a sectioned template (`[[name]]` header lines) into one template per section.

        Prompts that interleave text with images (a label before each reference image, a header
        before the query, the question after it) keep all their text in one file this way.
        """
        key = self._load(prompt_name)
        if key not in self._sections:
            self._sections[key] = self._split(prompt_name, self._parsed[key][0])
        split = self._sections[key]
        missing = [name for name in required if name not in split]
        if missing:
            raise PromptError(f"prompt '{prompt_name}': missing section(s) {['[[' + m + ']]' for m in missing]}; have {sorted(split)}")
        return dict(split)

    @staticmethod
    def _split(prompt_name: str, source: str) -> dict[str, Template]:
        parts: dict[str, list[str]] = {}
        current = None
        for line in source.splitlines():
            header = re.fullmatch(r"\s*\[\[(\w+)\]\]\s*", line)
            if header:
                current = header.group(1)
                if current in parts:
                    raise PromptError(f"prompt '{prompt_name}': section [[{current}]] appears twice")
                parts[current] = []
            elif current is None:
                if line.strip():
                    raise PromptError(f"prompt '{prompt_name}': text before the first [[section]] header: {line.strip()[:60]!r}")
            else:
                parts[current].append(line)
        return {key: Template("\n".join(lines).strip()) for key, lines in parts.items()}

    def fingerprint(self, *names: str) -> str:
        """Hash of the named templates' text, for Snakemake params (a prompt edit reruns the stage)."""
        digest = hashlib.sha256()
        for name in sorted(names):
            digest.update(name.encode() + b"\0" + self.source(name).encode() + b"\0")
        return digest.hexdigest()[:16]
