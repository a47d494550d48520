#!/usr/bin/env bash
# make model-arm: the arm recipe from bags only (issue 22). Bags of expert demonstrations ->
# π0 trained with a streamed, budgeted history -> its gate from the same bags -> the closed-loop
# table on 200 held-out seeds of the long variant -> the shippable model directory with its card.
# Outputs: runs/arm/{bags,kv-vla-arm,eval,kv-vla-arm-pi0,recipe_timings.json}; to ship it:
#   rm -rf models/kv-vla-arm-pi0 && cp -r runs/arm/kv-vla-arm-pi0 models/
# Timings (2 CPU cores, quiet): bag generation ~3 min, training 30 min, gate ~2 min, evaluation the rest.
#
# Switches (environment variables; the defaults are the shipped long-variant recipe, unchanged):
#   TASK=Arm-CueCarryDistract  another arm task (bags in $OUT/bags/train_<variant>, model NAME below)
#   NAME=kv-vla-arm-distract-pi0  the shippable directory's name (default: kv-vla-arm-pi0 for the long
#                              variant, kv-vla-arm-<variant>-pi0 otherwise)
#   MAX_STEPS=4430             train to a step cap instead of 30 wall-clock minutes (the cosine LR then runs
#                              over the steps: a busy machine trains as many steps as a quiet one, only later);
#                              MINUTES is then the safety cap (default 120)
#   EPISODES=200               held-out seeds per evaluated cache; 0 stops after the gate (evaluate and ship by hand)
#   RECORDED=1                 train and gate from the same demonstrations written again as a real arm records
#                              them (`kv-vla bag rewrite`: 30 Hz JPEG camera, 100 Hz joint states in the driver's
#                              order, Float64MultiArray commands 20 ms after the frame, no instruction topic, one
#                              bag per episode, /tf /rosout /diagnostics beside), read at the control rate by the
#                              resampling rule (docs/bags.md)
#   CACHES="full gated:budget_frac=0.25"  evaluate only these rows (the shipping step is then skipped)
set -euo pipefail
KV=${KV:-.venv/bin/kv-vla}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/arm}
TASK=${TASK:-Arm-CueCarryLong}
TASK=${TASK%-v0}
VARIANT=$(echo "${TASK#Arm-CueCarry}" | tr '[:upper:]' '[:lower:]')
NAME=${NAME:-$([ "$VARIANT" = long ] && echo kv-vla-arm-pi0 || echo "kv-vla-arm-$VARIANT-pi0")}
EPISODES=${EPISODES:-200}
if [ -n "${MAX_STEPS:-}" ]; then LIMIT=(--max-steps "$MAX_STEPS" --minutes "${MINUTES:-120}"); else LIMIT=(--minutes 30); fi
mkdir -p "$OUT/bags"
declare -A TIMES
stage() {  # stage NAME COMMAND...: run it, record its wall time in recipe_timings.json (read by the card)
    local name=$1 t0=$SECONDS; shift
    "$@"
    TIMES[$name]=$((SECONDS - t0))
    local json="{" sep="" key
    for key in "bags" "rewrite" "training" "gate" "evaluation"; do
        [ -n "${TIMES[$key]:-}" ] && json+="$sep\"$key\": ${TIMES[$key]}" && sep=", "
    done
    echo "$json}" > "$OUT/recipe_timings.json"
}
[ -d "$OUT/bags/train_$VARIANT" ] || stage bags $KV bag generate --task $TASK --split train --episodes 200 \
    -o "$OUT/bags/train_$VARIANT" \
    --workers 1 --no-progress
TOPICS=(--state-topic /joint_states)
TRAIN_BAGS="$OUT/bags"
if [ "${RECORDED:-0}" = 1 ]; then
    [ -d "$OUT/recorded_bags" ] || stage rewrite $KV bag rewrite "$OUT/bags/train_$VARIANT" -o "$OUT/recorded_bags" \
        --no-progress
    TRAIN_BAGS="$OUT/recorded_bags"
    TOPICS=(--state-topic /joint_states --image-topic /camera/image_raw/compressed
            --action-topic /arm_controller/commands --instruction "$($PY -c 'from kv_vla_ros.sim.arm.task import INSTRUCTION; print(INSTRUCTION)')")
fi
# --aux-weight 4 --evict-from 0.5: the run that learned the memory (docs/pi0.md, 2026-12-02: full 100%,
# gated at a quarter 100%, window at a quarter 55% on 40 held-out seeds; 30 min on a quiet machine)
stage training $KV train --bags "$TRAIN_BAGS" "${TOPICS[@]}" --out "$OUT/kv-vla-arm" "${LIMIT[@]}" \
    --aux-weight 4 --evict-from 0.5
stage gate $KV train-gate --bags "$TRAIN_BAGS" "${TOPICS[@]}" --model "$OUT/kv-vla-arm" --max-episodes 60 \
    --epochs 30 --no-progress
[ "$EPISODES" = 0 ] && exit 0
if [ -n "${CACHES:-}" ]; then
    CACHE_ARGS=()
    for c in $CACHES; do CACHE_ARGS+=(--cache "$c"); done
    stage evaluation $KV eval --model "$OUT/kv-vla-arm" --tasks $TASK --episodes "$EPISODES" --workers 2 \
        --out "$OUT/eval" "${CACHE_ARGS[@]}"
    exit 0
fi
# one step held (16 image + 17 prompt tokens; not the no-history policy: `--cache no_history`, docs/pi0.md); a quarter and an eighth of the mean history
stage evaluation $KV eval --model "$OUT/kv-vla-arm" --tasks $TASK --episodes "$EPISODES" --workers 2 --out "$OUT/eval" \
    --cache full --cache window:recent_chunks=1,budget_tokens=33 \
    --cache window:budget_frac=0.25 --cache gated:budget_frac=0.25 \
    --cache window:budget_frac=0.125 --cache sink_window:budget_frac=0.125 --cache h2o:budget_frac=0.125 \
    --cache key_norm:budget_frac=0.125 --cache random:budget_frac=0.125 --cache gated:budget_frac=0.125
$PY scripts/ship_arm_model.py --run "$OUT" --out "$OUT/$NAME" --task "$TASK-v0"
