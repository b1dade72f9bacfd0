#!/usr/bin/env bash
# Snakemake runs this once in the new env (activated), from the directory it runs in: install the
# covip package itself, editable and WITHOUT its dependencies, because the env's YAML pins them (the
# vLLM envs deliberately differ from pyproject.toml's torch and transformers).
set -euo pipefail
if [[ ! -f src/covip/__init__.py ]]; then
    echo "covip post-deploy: run Snakemake from the covip repository's root (no src/covip in $(pwd))" >&2
    exit 1
fi
python -m pip install --no-deps --editable .
