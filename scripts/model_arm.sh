#!/usr/bin/env bash
# make model-arm: the arm recipe from bags only (issue 22). Bags of expert demonstrations ->
# π0 trained with a streamed, budgeted history -> its gate from the same bags -> the closed-loop
# table on 200 held-out seeds of the long variant. Outputs: runs/arm/{bags,kv-vla-arm,eval}.
# Timings (2 CPU cores, quiet): bag generation ~3 min, training 30 min, gate ~2 min, evaluation the rest.
set -euo pipefail
KV=${KV:-.venv/bin/kv-vla}
OUT=${OUT:-runs/arm}
TASK=Arm-CueCarryLong
mkdir -p "$OUT/bags"
[ -d "$OUT/bags/train_long" ] || $KV bag generate --task $TASK --split train --episodes 200 -o "$OUT/bags/train_long" \
    --workers 1 --no-progress
# --aux-weight 4 --evict-from 0.5: the run that learned the memory (docs/pi0.md, 2026-12-02: full 100%,
# gated at a quarter 100%, window at a quarter 55% on 40 held-out seeds; 30 min on a quiet machine)
$KV train --bags "$OUT/bags" --state-topic /joint_states --out "$OUT/kv-vla-arm" --minutes 30 --aux-weight 4 \
    --evict-from 0.5
$KV train-gate --bags "$OUT/bags" --state-topic /joint_states --model "$OUT/kv-vla-arm" --max-episodes 60 \
    --epochs 30 --no-progress
# no history = one step held (16 image + 17 prompt tokens); a quarter and an eighth of the mean history
$KV eval --model "$OUT/kv-vla-arm" --tasks $TASK --episodes 200 --workers 2 --out "$OUT/eval" \
    --cache full --cache window:recent_chunks=1,budget_tokens=33 \
    --cache window:budget_frac=0.25 --cache gated:budget_frac=0.25 \
    --cache window:budget_frac=0.125 --cache sink_window:budget_frac=0.125 --cache h2o:budget_frac=0.125 \
    --cache key_norm:budget_frac=0.125 --cache random:budget_frac=0.125 --cache gated:budget_frac=0.125
