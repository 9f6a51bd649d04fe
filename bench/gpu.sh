#!/usr/bin/env bash
# Issue 22's GPU checks and measurements in one command, on a machine with CUDA, most important first
# (a lent GPU may be taken back before the end): the CUDA tests, then bench_speed eager in fp32 and bf16
# on DeiT-S, ViT-B and the shipped model at batch 1, 32 and 256, then compiled on DeiT-S at 1 and 32.
# Each bench_speed run fills its own section of bench/README.md; with $OUT set (the device machine's
# output folder) the README and a log are copied there after every step.
#
#   bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
log() { echo "== $(date +%T) $*" | tee -a "${OUT:-/tmp}/gpu.log"; }
save() { [ -n "${OUT:-}" ] && cp bench/README.md "$OUT/README.md"; true; }
step() { log "$*"; "$@" 2>&1 | tee -a "${OUT:-/tmp}/gpu.log" | tail -40; save; }

step python -m pytest -q -x tests/test_cuda.py
step python bench/bench_speed.py --device cuda --batch 1,32,256 --models deit_s,vit_b,shipped
step python bench/bench_speed.py --device cuda --batch 1,32,256 --models deit_s,vit_b --dtype bf16
step python bench/bench_speed.py --device cuda --batch 1,32 --models deit_s --compile
log done
