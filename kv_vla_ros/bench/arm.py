"""``kv-vla bench arm``: what the robot-arm world costs and how its expert does (docs/arm.md).

1. Rendering: ms per camera frame of the arm scene with the Panda's collision meshes (what the task
   draws) and with its full visual meshes, at 64 and 96 px, and, when ``panda_gym`` is importable,
   ``PandaPickAndPlace-v3`` with its defaults (the figure the issue quotes).
2. The expert on ``--episodes`` held-out seeds of every variant: steps per episode, the distance
   from the cue's last frame to the decision, success, ms per simulated + rendered step.
3. A filmstrip PNG of one long-variant expert episode (cue lit, cue gone, carrying, decision, placed).

Writes arm_bench.json, arm_bench.md and arm_filmstrip.png into ``--out``.

    kv-vla bench arm --episodes 100 --out runs/bench-arm
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

FRAMES = 50  # frames per render timing


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=100, help="expert episodes (held-out seeds) per variant")
    parser.add_argument("--frame-size", type=int, default=64, help="camera side of the expert runs")
    parser.add_argument("--out", default="runs/bench-arm", help="output directory")
    parser.add_argument("--no-progress", action="store_true")


def time_render(size: int, robot_urdf: str | None) -> float:
    """ms per frame of the arm scene (a long-variant start) drawn at ``size`` px."""
    from kv_vla_ros.sim.arm.env import ArmRobot

    robot = ArmRobot("Arm-CueCarryLong", frame_size=size)
    try:
        if robot_urdf:
            robot.scene.robot_urdf = robot_urdf
        robot.reset(0)
        robot.render()
        t0 = time.perf_counter()
        for _ in range(FRAMES):
            robot.render()
        return (time.perf_counter() - t0) / FRAMES * 1e3
    finally:
        robot.close()


def time_panda_gym(size: int) -> float | None:
    """ms per frame of panda-gym's PandaPickAndPlace-v3 with its defaults; None if not installed."""
    try:
        import gymnasium as gym
        import panda_gym  # noqa: F401  (registers the Panda* ids)
    except ImportError:
        return None
    from kv_vla_ros.sim.arm.quiet import quiet_fds

    with quiet_fds(1):
        env = gym.make("PandaPickAndPlace-v3", render_mode="rgb_array", render_width=size, render_height=size)
        env.reset(seed=0)
        env.render()
        t0 = time.perf_counter()
        for _ in range(FRAMES // 5):
            env.render()
        ms = (time.perf_counter() - t0) / (FRAMES // 5) * 1e3
        env.close()
    return ms


def render_rows() -> list[dict]:
    from kv_vla_ros.sim.arm.scene import full_panda_urdf

    rows = []
    for size in (64, 96):
        rows.append({"scene": "arm task (Panda collision meshes)", "px": size, "ms_per_frame": time_render(size, None)})
        rows.append({"scene": "arm task with the full visual meshes", "px": size,
                     "ms_per_frame": time_render(size, full_panda_urdf())})
        gym_ms = time_panda_gym(size)
        if gym_ms is not None:
            rows.append({"scene": "panda-gym PandaPickAndPlace-v3 (defaults)", "px": size, "ms_per_frame": gym_ms})
    return rows


def expert_row(task: str, episodes: int, frame_size: int, progress: bool) -> dict:
    """The expert on ``episodes`` held-out seeds of ``task``; step time = simulation + rendering."""
    from kv_vla_ros.progress import progress_bar

    from kv_vla_ros.sim import eval_seeds
    from kv_vla_ros.sim.arm.env import ArmRobot
    from kv_vla_ros.sim.arm.expert import ArmExpert

    robot = ArmRobot(task, frame_size=frame_size)
    expert = ArmExpert(robot)
    steps, gaps, success, step_s = [], [], [], 0.0
    try:
        for seed in progress_bar(eval_seeds(episodes), desc=f"expert {task}", disable=not progress):
            robot.reset(seed)
            while not robot.done:
                action = expert.act()
                t0 = time.perf_counter()
                robot.step(action)
                step_s += time.perf_counter() - t0
            steps.append(robot.steps)
            success.append(robot.success)
            if robot.decision_step is not None:
                gaps.append(robot.decision_step - max(robot.cue_steps))
    finally:
        robot.close()
    return {"task": task, "episodes": episodes, "steps_mean": float(np.mean(steps)), "steps_min": int(min(steps)),
            "steps_max": int(max(steps)), "cue_to_decision_min": int(min(gaps)) if gaps else None,
            "cue_to_decision_mean": float(np.mean(gaps)) if gaps else None,
            "expert_success": float(np.mean(success)), "ms_per_step": step_s / sum(steps) * 1e3}


def filmstrip(path: Path, frame_size: int = 64, seed: int = 1_000_001) -> list[int]:
    """PNG of one long-variant expert episode; returns the steps shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kv_vla_ros.sim.arm.env import ArmRobot
    from kv_vla_ros.sim.arm.expert import ArmExpert

    robot = ArmRobot("Arm-CueCarryLong", frame_size=frame_size)
    expert = ArmExpert(robot)
    frame, _ = robot.reset(seed)
    frames = [frame]
    while not robot.done:
        frames.append(robot.step(expert.act()).frame)
    cue_last, decision = max(robot.cue_steps), robot.decision_step
    shown = [(0, f"t=0: cue lit ({robot.layout.cue_name})"), (cue_last + 1, f"t={cue_last + 1}: cue gone"),
             ((cue_last + decision) // 2, f"t={(cue_last + decision) // 2}: carrying"),
             (decision + 1, f"t={decision + 1}: decision"), (len(frames) - 1, f"t={len(frames) - 1}: placed")]
    robot.close()
    fig, axes = plt.subplots(1, len(shown), figsize=(2.4 * len(shown), 2.7))
    for ax, (t, title) in zip(axes, shown):
        ax.imshow(frames[t], interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"Arm-CueCarryLong-v0, seed {seed}: {frame_size} px frames the policy sees", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [t for t, _ in shown]


def markdown(result: dict) -> str:
    lines = ["| scene | px | ms per frame |", "| --- | --- | --- |"]
    lines += [f"| {r['scene']} | {r['px']} | {r['ms_per_frame']:.1f} |" for r in result["render"]]
    header = ("| variant | steps per episode | cue-to-decision (min / mean) | expert success | "
              "ms per simulated+rendered step |")
    lines += ["", header, "| --- | --- | --- | --- | --- |"]
    for r in result["expert"]:
        lines.append(f"| {r['task']} | {r['steps_mean']:.0f} ({r['steps_min']}-{r['steps_max']}) | "
                     f"{r['cue_to_decision_min']} / {r['cue_to_decision_mean']:.0f} | "
                     f"{r['expert_success']:.1%} of {r['episodes']} | {r['ms_per_step']:.2f} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.sim.arm.task import ARM_TASKS

    if args.episodes < 1:
        raise SystemExit("bench arm: --episodes must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"render": render_rows(),
              "expert": [expert_row(t, args.episodes, args.frame_size, not args.no_progress) for t in ARM_TASKS],
              "filmstrip_steps": filmstrip(out / "arm_filmstrip.png")}
    result["wall_s"] = time.perf_counter() - t0
    (out / "arm_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out / "arm_bench.md").write_text(table)
    print(table, end="")
    print(f"wrote {out / 'arm_bench.json'}, {out / 'arm_bench.md'}, {out / 'arm_filmstrip.png'}")
    return 0


__all__ = ["configure", "run", "expert_row", "render_rows", "filmstrip", "markdown"]
