#!/usr/bin/env bash
# `make ablation`: the recipe's two ingredients, measured (issue #10). The shipped recipe
# (training under eviction, 4 pooled tokens per frame, auxiliary cue targets) on a Memory-only mix,
# with the auxiliary loss on/off x 4 vs 49 tokens per frame: equal wall time (MINUTES each) and
# batch tokens, then closed loop on 100 held-out seeds of S13Random and S37 with the full cache.
# About 4 x (MINUTES + 1-3) minutes on 2 CPU cores. Writes OUT/ablation.{md,json,png}.
set -eu
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/ablation}
MINUTES=${MINUTES:-14}
MIX="MiniGrid-MemoryS7=1000 MiniGrid-MemoryS13Random=2000 MiniGrid-MemoryS37=1000"
run() {  # name, extra train args
  name=$1; shift
  echo "$(date +%T) train $name ($MINUTES min)"
  .venv/bin/kv-vla train --out "$OUT/$name" --minutes "$MINUTES" --max-steps 100000 --batch-tokens 4096 \
      --dagger-at --data-dir runs/data --no-progress --tasks $MIX "$@" > "$OUT/$name.train.log" 2>&1
  echo "$(date +%T) eval $name"
  .venv/bin/kv-vla eval --model "$OUT/$name" --tasks MiniGrid-MemoryS13Random MiniGrid-MemoryS37 --episodes 100 \
      --out "$OUT/$name/eval" --no-progress > "$OUT/$name.eval.log" 2>&1
}
mkdir -p "$OUT"
run recipe_4tok_aux
run 4tok_noaux --aux-weight 0
run 49tok_aux --vla '{"frame_tokens": null}'
run 49tok_noaux --vla '{"frame_tokens": null}' --aux-weight 0
.venv/bin/python scripts/ablation_report.py "$OUT"
