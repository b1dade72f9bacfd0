#!/usr/bin/env bash
# Device check on one GPU, with no network, in under 8 minutes (benchmarks/gpu_check.py):
#   1. covip.workflow.gpu_slots against nvidia-smi (pool, placement of a slot's job, refusal);
#   2. the tiny random Qwen-VL captioning through the transformers backend on CUDA in bf16;
#   3. four GSPO optimiser steps of it in bf16 on CUDA (TRL's GRPOTrainer, the workflow's trainer).
# Prints each step's seconds; writes them as JSON under benchmarks/results/ (or --out DIR).
#
#   benchmarks/gpu_check.sh                  on the GPU machine (exit 0: passed, 1: failed, 2: no GPU)
#   benchmarks/gpu_check.sh --allow-cpu      without a GPU: steps 2-3 on the CPU (the code paths only)
set -euo pipefail
cd "$(dirname "$0")/.."
# Nothing may reach the network: the tiny model is built offline, and every hub lookup must fail fast.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
allow_cpu=0
for arg in "$@"; do [[ $arg == --allow-cpu ]] && allow_cpu=1; done
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    if ((allow_cpu == 0)); then
        echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or lists no GPU). This check needs one;" \
             "run it on the GPU machine, or with --allow-cpu to exercise the same code paths on the CPU." >&2
        exit 2
    fi
    echo "gpu_check: no GPU; running the captioning and GSPO steps on the CPU (--allow-cpu)" >&2
else
    nvidia-smi -L
fi
started=$(date +%s)
status=0
timeout --signal=TERM --kill-after=20 480 python -m benchmarks.gpu_check "$@" || status=$?
echo "gpu_check: $(( $(date +%s) - started )) s in all (limit 480 s); exit status $status"
((status != 124)) || echo "gpu_check: TIMED OUT after 8 minutes" >&2
exit "$status"
