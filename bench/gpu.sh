#!/usr/bin/env bash
# Issue 22's GPU checks and measurements in one command, on a machine with CUDA, most important
# first (a lent GPU is lent for minutes): the CUDA tests; bench_speed eager in fp32 on DeiT-S, ViT-B
# and the shipped model at batch 1, 32 and 256, the authors' ToMe and EViT timed beside ours, and
# where the time goes at batch 256 and 1 (bench_profile); the same in bf16; a short run of the
# training command (issue 23); then compiled on DeiT-S
# at batch 1 and 32: the fixed-rate methods, the compiled tests, and ATS, with whatever time is left
# (each bench_speed --compile run fills the README's section anew: the log holds every table).
# Each step is cut off at its share of DEADLINE seconds (default 540), so that one slow step cannot
# take the rest's time; a step that fails leaves the others to run. Each bench_speed run fills its own
# section of bench/README.md; bench_releases prints a table to paste. With $OUT set (the device
# machine's output folder) the README and the log are copied there after every step.
#
#   bash bench/gpu.sh                       # RELEASES=dir: a folder holding ToMe/ and evit/ checkouts
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG="${OUT:-/tmp}/gpu.log"
END=$((SECONDS + ${DEADLINE:-540}))
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the bench scripts import ats_viz from here
log() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
save() { [ -n "${OUT:-}" ] && cp bench/README.md "$OUT/README.md"; true; }
step() {  # step CAP_SECONDS command...: runs it for at most CAP seconds, and never past the deadline
  local cap=$1; shift
  local left=$((END - SECONDS)); ((left < cap)) && cap=$left
  if ((cap < 20)); then log "skipped (no time left): $*"; return; fi
  log "($cap s at most) $*"
  timeout "$cap" "$@" 2>&1 | tee -a "$LOG" | tail -40
  log "exit ${PIPESTATUS[0]}"
  save
}

log "$($PY -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__, torch.cuda.get_device_name())')"
step 90 $PY -m pytest -q tests/test_cuda.py -k "not compiled"
step 150 $PY bench/bench_speed.py --device cuda --batch 1,32,256 --models deit_s,vit_b,shipped
[ -n "${RELEASES:-}" ] && step 60 $PY bench/bench_releases.py --tome "$RELEASES/ToMe" --evit "$RELEASES/evit" \
  --device cuda --batch 1,32,256 --models deit_s,vit_b
step 60 $PY bench/bench_profile.py --device cuda --batch 256
step 30 $PY bench/bench_profile.py --device cuda --batch 1 --settings ats:all,topk:0.5 --top 8
step 100 $PY bench/bench_speed.py --device cuda --batch 1,32,256 --models deit_s,vit_b --dtype bf16
[ -n "${RELEASES:-}" ] && step 45 $PY bench/bench_releases.py --tome "$RELEASES/ToMe" --evit "$RELEASES/evit" \
  --device cuda --batch 1,32,256 --models deit_s,vit_b --dtype bf16
# Issue 23: the training command on the GPU, 400 steps (its log's img/s: how fast the GPU trains the
# shipped recipe; scenes drawn by --workers processes), its card in $OUT/train.
step 75 $PY -m ats_viz train --out "${OUT:-/tmp}/train" --steps 400 --ats-steps 20 --eval-per-class 10
# Compiled last, the fixed-rate methods (CUDA graphs) first: on 2026-11-30 compiling ATS on the
# H200 outlasted 235 s, so its step logs dynamo's recompiles, to show why.
step 200 $PY bench/bench_speed.py --device cuda --batch 1,32 --models deit_s --compile --methods topk,tome,evit,pitome
step 60 $PY -m pytest -q tests/test_cuda.py -k compiled
step 600 env TORCH_LOGS=recompiles $PY bench/bench_speed.py --device cuda --batch 1,32 --models deit_s --compile --methods ats
log done
