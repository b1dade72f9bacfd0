"""Offline stand-ins for model backends: deterministic, fast, and named for what they are."""
