"""Repository promises: CI runs exactly the README's set-up commands; prompts are data, pinned."""

import re
from pathlib import Path

import yaml

from covip.config.schema import SCHEMA_PATH, render
from covip.prompts import PromptBook

ROOT = Path(__file__).resolve().parents[2]


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_them_verbatim():
    commands = setup_commands()
    assert len(commands) == 2, commands
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    run_lines = [line for line in ci_lines if not line.startswith(("set ", "cd "))]
    assert run_lines == commands


def test_generated_schema_sections_are_up_to_date():
    text = SCHEMA_PATH.read_text()
    assert render(text) == text, "run `covip config-schema` after changing a settings dataclass or a backend"


def test_config_files_name_only_known_stage_settings():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    for config_file in ("config.yaml", "paper.yaml"):
        config = yaml.safe_load((ROOT / "config" / config_file).read_text())
        for section, values in config.items():
            assert section in schema["properties"], f"{config_file}: unknown section {section}"
            props = schema["properties"][section].get("properties")
            if props and isinstance(values, dict) and schema["properties"][section].get("additionalProperties") is False:
                assert set(values) <= set(props), f"{config_file}: {section} has unknown keys"


def test_prompt_override_replaces_a_template(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("Describe $name in one line.")
    book = PromptBook({"dialogue_writer": str(mine)})
    assert book.render("dialogue_writer", name="Ada") == "Describe Ada in one line."
    assert book.fingerprint("dialogue_writer") != PromptBook().fingerprint("dialogue_writer")
