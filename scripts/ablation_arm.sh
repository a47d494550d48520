#!/usr/bin/env bash
# `make ablation-arm`: what each part of the arm recipe from bags (issue 22) buys, at equal wall
# time. The recipe (`make model-arm`: the tail-actions auxiliary loss at weight 4, eviction masks on
# half the episodes from half-way) against the same run with the auxiliary loss off and with
# eviction training off; each trains MINUTES on the same bags, gets its gate from the same bags, and
# runs closed loop on EPISODES held-out seeds with the full cache, no history, and window / gated at
# a quarter and gated / random / h2o at an eighth. The recipe's row is read from RECIPE (its
# `make model-arm` run, restricted to the same seeds). About 2 x (MINUTES + 8) minutes on 2 CPU
# cores. Writes OUT/ablation.{md,json,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
KV=${KV:-.venv/bin/kv-vla}
PY=${PY:-.venv/bin/python}
RECIPE=${RECIPE:-runs/arm}
OUT=${OUT:-runs/arm_ablation}
MINUTES=${MINUTES:-30}
EPISODES=${EPISODES:-40}
[ -d "$RECIPE/bags/train_long" ] || { echo "ablation-arm: no bags in $RECIPE/bags: run make model-arm first"; exit 1; }
run() {  # name, the train flags that differ from the recipe's
  local name=$1; shift
  echo "$(date +%T) train $name ($MINUTES min)"
  $KV train --bags "$RECIPE/bags" --state-topic /joint_states --out "$OUT/$name" --minutes "$MINUTES" \
      --no-progress "$@" > "$OUT/$name.train.log" 2>&1
  echo "$(date +%T) gate $name"
  $KV train-gate --bags "$RECIPE/bags" --state-topic /joint_states --model "$OUT/$name" --max-episodes 60 \
      --epochs 30 --no-progress > "$OUT/$name.gate.log" 2>&1
  echo "$(date +%T) eval $name"
  $KV eval --model "$OUT/$name" --tasks Arm-CueCarryLong --episodes "$EPISODES" --workers 2 --out "$OUT/$name/eval" \
      --no-progress --cache full --cache window:recent_chunks=1,budget_tokens=33 \
      --cache window:budget_frac=0.25 --cache gated:budget_frac=0.25 --cache h2o:budget_frac=0.125 \
      --cache random:budget_frac=0.125 --cache gated:budget_frac=0.125 > "$OUT/$name.eval.log" 2>&1
}
mkdir -p "$OUT"
run no_aux_loss --aux-weight 0 --evict-from 0.5
run no_eviction_training --aux-weight 4 --evict-prob 0
$PY scripts/ablation_arm_report.py --out "$OUT" "recipe=$RECIPE/kv-vla-arm:$RECIPE/eval" \
    "no auxiliary loss=$OUT/no_aux_loss:$OUT/no_aux_loss/eval" \
    "no eviction training=$OUT/no_eviction_training:$OUT/no_eviction_training/eval"
