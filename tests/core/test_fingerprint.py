"""Code fingerprints follow imports: they change with the code a stage runs and nothing else."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from covip.core.fingerprint import code_fingerprint, module_closure
print(code_fingerprint(*sys.argv[1:]))
"""


def fingerprint_in(src: Path, *modules: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def test_closure_follows_relative_and_absolute_imports(tmp_path):
    pkg = tmp_path / "covip"
    shutil.copytree(ROOT / "src" / "covip", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "stages" / "probe_stage.py").write_text("from ..core.io import read_rows\nimport covip.core.seeding\n")
    (pkg / "stages" / "other_stage.py").write_text("x = 1\n")
    before = fingerprint_in(tmp_path, "covip.stages.probe_stage")
    # An edit to a module imported relatively changes it...
    io_module = pkg / "core" / "io.py"
    io_module.write_text(io_module.read_text() + "\n# edit\n")
    after_io = fingerprint_in(tmp_path, "covip.stages.probe_stage")
    assert after_io != before
    # ...so does one imported absolutely...
    (pkg / "core" / "seeding.py").write_text((pkg / "core" / "seeding.py").read_text() + "\n# edit\n")
    after_seeding = fingerprint_in(tmp_path, "covip.stages.probe_stage")
    assert after_seeding != after_io
    # ...but an edit to a module it does not import does not.
    (pkg / "stages" / "other_stage.py").write_text("x = 2\n")
    assert fingerprint_in(tmp_path, "covip.stages.probe_stage") == after_seeding


def test_registry_does_not_pull_in_every_backend():
    from covip.core.fingerprint import module_closure

    closure = module_closure("covip.clients.registry")
    assert "covip.clients.cache" in closure
    assert not any(name.startswith("covip.local") for name in closure)
    assert "covip.clients.openai_backend" not in closure
