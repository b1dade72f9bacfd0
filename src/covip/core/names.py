"""The names the workflow's wildcards take, declared once: the rules build their wildcard constraints
from these, and the stages check their inputs against the same tuples."""

from __future__ import annotations

# Visual-context controls (covip.stages.controls): 'intact' is the normal input.
INTACT = "intact"
CONDITIONS = ("intact", "text_only", "corrupted_context", "swapped_context", "blank_query")
CONTROL_CONDITIONS = tuple(c for c in CONDITIONS if c != INTACT)

# LSD / LAR / ITR diagnostics (covip.stages.diagnostics), answered directly or after a caption (CAG).
DIAGNOSTIC_TASKS = ("lsd", "lar", "itr")
DIAGNOSTIC_MODES = ("direct", "cag")

# The tables a control rewrites: the test split and each diagnostic set.
DATASETS = ("test", *DIAGNOSTIC_TASKS)

# Registry entries, training runs and released-caption names: letters, digits, '_', '.', '-'.
NAME_PATTERN = r"[A-Za-z0-9_.-]+"
