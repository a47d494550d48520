"""Action agreement of a half-precision (and/or compiled) session with the float32 session.

The float32 session drives the simulated robot; the session under test sees the very same frames
(each session feeds back its own decoded actions, as on a robot). Per step: whether the two
actions agree and how far apart the action logits are. Writes bench_dtype.json, .md and .png.

    kv-vla bench dtype --dtype bfloat16 --steps 300
    kv-vla bench dtype --dtype bfloat16 --compile --cache gated:budget_tokens=432,static=true
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from kv_vla_ros.progress import progress_bar

DEFAULT_TASK = "MiniGrid-MemoryS13Random-v0"


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.cache.spec import add_cache_argument

    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16",
                        help="dtype of the session under test (the reference is float32)")
    parser.add_argument("--compile", action="store_true",
                        help="run the session under test compiled (needs static=true)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_cache_argument(parser, repeat=False, default_help="the model's cache, for both sessions")
    parser.add_argument("--task", default=DEFAULT_TASK)
    parser.add_argument("--steps", type=int, default=300, help="control steps in total, over whole episodes")
    parser.add_argument("--seed-offset", type=int, default=0, help="first evaluation seed (offset)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_dtype")


def compare(model_path, task: str, cache_spec: str | None, dtype: str, compile: bool, device: str, steps: int,
            seed_offset: int = 0, progress: bool = True) -> dict:
    """Run episodes until ``steps`` control steps; returns per-step agreement and logit gaps."""
    from kv_vla_ros.cache.spec import parse_spec
    from kv_vla_ros.sim import SimRobot, eval_seeds
    from kv_vla_ros.vla import VLAModel, VLASession, model_path_or_default

    path = model_path_or_default(model_path)
    model = VLAModel.from_pretrained(path, device=device)
    cfg = model.config.cache
    if cache_spec:
        changes, _ = parse_spec(cache_spec, cfg)
        cfg = cfg.replace(**changes)
    reference = VLASession(model, cfg, device=device, dtype="float32")
    # a separate copy: the session under test casts its model to its own dtype
    other = VLAModel.from_pretrained(path, device=device)
    tested = VLASession(other, cfg, device=device, dtype=dtype, compile=compile)
    robot = SimRobot(task)
    agree, gaps, episodes = [], [], 0
    bar = progress_bar(total=steps, desc=f"float32 vs {dtype}{' compiled' if compile else ''}", disable=not progress)
    try:
        for seed in eval_seeds(10_000, seed_offset):
            frame, instruction = robot.reset(seed)
            reference.reset(instruction)
            tested.reset(instruction)
            episodes += 1
            while not robot.done and len(agree) < steps:
                a_ref, a_test = reference.step(frame), tested.step(frame)
                agree.append(bool(np.array_equal(a_ref, a_test)))
                gaps.append(float((reference.last_logits - tested.last_logits.float()).abs().max()))
                frame = robot.step(int(a_ref[0])).frame
                bar.update()
            if len(agree) >= steps:
                break
    finally:
        robot.close()
        bar.close()
    return {"task": task, "dtype": dtype, "compiled": tested.stats()["compiled"], "device": device,
            "cache": cfg.to_dict(), "steps": len(agree), "episodes": episodes,
            "agreement": float(np.mean(agree)) if agree else float("nan"),
            "max_logit_gap": max(gaps, default=0.0), "mean_logit_gap": float(np.mean(gaps)) if gaps else 0.0,
            "per_step_agree": agree, "per_step_logit_gap": gaps}


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agree = np.asarray(result["per_step_agree"], dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.plot(np.arange(1, len(agree) + 1), np.cumsum(agree) / np.arange(1, len(agree) + 1))
    ax.set(xlabel="control step", ylabel="cumulative action agreement", ylim=(0, 1.02),
           title=f"float32 vs {result['dtype']} ({result['compiled']}), {result['task']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise SystemExit("kv-vla bench dtype: --steps must be >= 1")
    torch.set_num_threads(args.threads)
    try:
        result = compare(args.model, args.task, args.cache, args.dtype, args.compile, args.device, args.steps,
                         args.seed_offset)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"kv-vla bench dtype: {exc}") from None
    md = "\n".join([
        "| task | cache | device | dtype | decode | steps (episodes) | action agreement vs float32 "
        "| max / mean logit gap |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result['task']} | {result['cache']['eviction']}{' static' if result['cache']['static'] else ''} | "
        f"{result['device']} | {result['dtype']} | {result['compiled']} | {result['steps']} ({result['episodes']}) | "
        f"{100 * result['agreement']:.1f}% | {result['max_logit_gap']:.3g} / {result['mean_logit_gap']:.3g} |",
    ])
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "bench_dtype")
    with open(stem + ".json", "w") as f:
        json.dump({"args": vars(args), **result}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(md + "\n")
    plot(result, stem + ".png")
    print(md)
    print(f"wrote {stem}.json, .md, .png")
    return 0
