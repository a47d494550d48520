#!/usr/bin/env python3
"""Which old steps an eviction keeps on the arm (issue 30: "if h2o ties, report which steps it keeps
and why"): closed-loop episodes under each cache spec; at the decision step, the old chunks the cache
holds (beyond the recent window), each labelled by what its frame showed: ``cue`` (the lit cue
lamp), ``flash`` (the distractor lamp lit), ``slide`` (the sliding block on the table), ``plain``.

    python scripts/kept_steps.py --model models/kv-vla-arm-pi0 --task Arm-CueCarryDistract \\
        --cache h2o:budget_tokens=99 --cache gated:budget_tokens=99,gate_threshold=0 --episodes 10

Prints one Markdown row per spec: success, how often each label is among the kept old steps at the
decision, and the kept steps of the first episodes; ``--out FILE`` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter


def label(layout, variant, step: int) -> str:
    if variant.cue_lit(step):
        return "cue"
    if getattr(layout, "flashes", ()) and layout.flash_colour(step) is not None:
        return "flash"
    if getattr(layout, "slide", None) and layout.slide_progress(step) is not None:
        return "slide"
    return "plain"


def episode(robot, session, seed: int) -> dict:
    """One closed-loop episode; the old steps held when the decision was taken (control-step numbers)."""
    from kv_vla_ros.eval.closed_loop import robot_command
    from kv_vla_ros.vla.action_queue import ActionQueue

    queue = ActionQueue(session.policy.default_actions_per_inference)
    frame, instruction = robot.reset(seed)
    session.reset(instruction)
    chunk_steps, kept_at_decision = [], None
    while not robot.done:
        if queue.needs_inference:
            chunk_steps.append(robot.steps)  # chunk k holds the frame of this control step
            queue.push(session.step_action_chunk(frame, robot.state()))
        st = session.stats()
        frame = robot.step(robot_command(robot, queue.pop())).frame
        if kept_at_decision is None and robot.decision_step is not None:
            kept_at_decision = [chunk_steps[c] for c in st["kept_chunks"]]
    labels = [label(robot.layout, robot.variant, s) for s in kept_at_decision or []]
    return {"seed": seed, "success": bool(robot.success), "decided": kept_at_decision is not None,
            "kept_steps": kept_at_decision or [], "kept_labels": labels}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/kv-vla-arm-pi0")
    parser.add_argument("--task", default="Arm-CueCarryDistract")
    parser.add_argument("--cache", action="append", required=True, metavar="SPEC")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    from kv_vla_ros.cache.spec import parse_spec
    from kv_vla_ros.eval.closed_loop import make_robot, make_session
    from kv_vla_ros.sim import eval_seeds
    from kv_vla_ros.vla import load_policy

    torch.set_num_threads(1)
    model = load_policy(args.model)
    robot = make_robot(args.task)
    result = {}
    print("| cache | episodes | success | held at the decision: cue / flash / slide / plain (share of episodes) "
          "| kept old steps (first 3 episodes) |\n|---|---|---|---|---|")
    try:
        for spec in args.cache:
            changes, _ = parse_spec(spec, model.default_cache_config())
            session = make_session(model, model.default_cache_config().replace(**changes))
            eps = [episode(robot, session, s) for s in eval_seeds(args.episodes, args.seed_offset)]
            decided = [e for e in eps if e["decided"]]
            share = Counter(lab for e in decided for lab in set(e["kept_labels"]))
            held = " / ".join(f"{share[k] / max(len(decided), 1):.0%}" for k in ("cue", "flash", "slide", "plain"))
            first = "; ".join(",".join(f"{s}{lab[0]}" for s, lab in zip(e["kept_steps"], e["kept_labels"]))
                              for e in eps[:3])
            print(f"| {spec} | {len(eps)} | {sum(e['success'] for e in eps) / len(eps):.0%} | {held} | {first} |",
                  flush=True)
            result[spec] = eps
    finally:
        robot.close()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
