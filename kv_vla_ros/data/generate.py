"""Write simulator episodes straight into a bag, with no ROS graph running: the expert's
demonstrations, or (``--driver model``) a closed-loop run of a checkpoint with the full cache.

Per episode: the instruction (``std_msgs/String``) on the instruction topic, then one
``sensor_msgs/Image`` rgb8 frame per step (header stamps one frame period apart), each followed by
the action taken (expert's or model's) as ``std_msgs/Float32MultiArray`` labelled ``frame_stamp=`` with the frame's
stamp (the policy node's convention), and at the end a ``std_msgs/String`` JSON record on the
episode topic (the simulator node's ``~/episode`` format). Seeds are the simulator's held-out
eval seeds (``kv_vla_ros.sim.eval_seeds``), so a bag and ``kv-vla eval`` cover the same levels.
The bag appears at ``--output`` only when complete.
"""

from __future__ import annotations

import argparse
import json
import time


from kv_vla_ros.data.bagio import STORAGES, AtomicBagWriter, normalize_topic
from kv_vla_ros.data.errors import cli_errors
from kv_vla_ros.data.messages import FLOAT32_ARRAY, IMAGE, STRING, make_action, make_image, make_string

# The action goes out this long after its frame (an inference delay); a frame period at most.
ACTION_DELAY_NS = 20_000_000


def generate_bag(output, task: str, episodes: int, seed_offset: int = 0, storage: str = "sqlite3",
                 frame_rate_hz: float = 10.0, frame_size: int = 56, max_steps: int | None = None,
                 start_time_ns: int | None = None, topics: dict | None = None, progress: bool = False,
                 model=None) -> dict:
    """Roll out ``episodes`` eval seeds into a new bag at ``output``; returns a summary.

    The expert acts, or ``model`` (a ``VLAModel``) does, through a ``VLASession`` with the full
    cache: a closed-loop run recorded as the policy node would see and answer it.
    """
    from tqdm import tqdm

    from kv_vla_ros.sim import SimRobot, eval_seeds, make_expert

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes: must be an int >= 1, got {episodes!r}")
    if not frame_rate_hz > 0:
        raise ValueError(f"frame_rate_hz: must be > 0, got {frame_rate_hz!r}")
    names = {"image": "/image", "instruction": "/instruction", "action": "/action", "episode": "/episode"}
    names.update({k: normalize_topic(v, f"{k}_topic") for k, v in (topics or {}).items()})
    seeds = eval_seeds(episodes, seed_offset)
    robot = SimRobot(task, frame_size=frame_size, max_steps=max_steps)
    if model is None:
        expert, session = make_expert(robot), None
    else:
        from kv_vla_ros.vla import VLASession

        expert, session = None, VLASession(model, model.config.cache.replace(policy="full"))
    period = int(round(1e9 / frame_rate_hz))
    delay = min(ACTION_DELAY_NS, period // 2)
    t = int(time.time_ns() if start_time_ns is None else start_time_ns)
    summary = {"task": robot.task, "driver": "expert" if model is None else "model", "episodes": episodes, "seeds": seeds, "steps": 0, "successes": 0}
    with AtomicBagWriter(output, storage) as bag:
        ts = bag.typestore
        for topic, msgtype in ((names["instruction"], STRING), (names["image"], IMAGE),
                               (names["action"], FLOAT32_ARRAY), (names["episode"], STRING)):
            bag.add_connection(topic, msgtype)
        for index, seed in enumerate(tqdm(seeds, desc=f"bag generate {robot.task}", disable=not progress)):
            frame, instruction = robot.reset(seed)
            bag.write(names["instruction"], t, make_string(ts, instruction), STRING)
            if session is not None:
                session.reset(instruction)
            t += period  # the simulator node lets an instruction settle before the first frame
            actions = []
            while not robot.done:
                action = expert.act() if session is None else int(session.step(frame)[0])
                bag.write(names["image"], t, make_image(ts, frame, t, "minigrid_camera"), IMAGE)
                bag.write(names["action"], t + delay, make_action(ts, [action], source_stamp_ns=t), FLOAT32_ARRAY)
                actions.append(int(action))
                frame = robot.step(action).frame
                t += period
            record = {"episode": index, "success": bool(robot.success), "steps": robot.steps, "seed": int(seed),
                      "task": robot.task, "instruction": instruction, "actions": actions}
            bag.write(names["episode"], t, make_string(ts, json.dumps(record)), STRING)
            t += period
            summary["steps"] += len(actions)
            summary["successes"] += int(robot.success)
    robot.close()
    summary["output"] = str(output)
    return summary


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--task", default="MiniGrid-MemoryS13Random-v0", help="simulator task")
    parser.add_argument("--episodes", type=int, default=10, help="episodes (eval seeds) to write")
    parser.add_argument("--seed-offset", type=int, default=0, help="offset into the eval seed range")
    parser.add_argument("--storage", choices=sorted(STORAGES), default="sqlite3")
    parser.add_argument("--frame-rate", type=float, default=10.0, help="camera rate in Hz (header stamp spacing)")
    parser.add_argument("--frame-size", type=int, default=56, help="frame side in pixels")
    parser.add_argument("--max-steps", type=int, default=None, help="episode step cap (default: the env's)")
    parser.add_argument("--start-time", type=float, default=None,
                        help="first stamp in seconds since the epoch (default: now)")
    for role in ("image", "instruction", "action", "episode"):
        parser.add_argument(f"--{role}-topic", default=f"/{role}")
    parser.add_argument("--driver", choices=("expert", "model"), default="expert",
                        help="who acts: the simulator's expert, or --model in closed loop (full cache)")
    parser.add_argument("--model", default=None, help="checkpoint for --driver model (default: the shipped model)")
    parser.add_argument("--no-progress", action="store_true")


@cli_errors("bag generate")
def run(args: argparse.Namespace) -> int:
    start = None if args.start_time is None else int(args.start_time * 1e9)
    topics = {r: getattr(args, f"{r}_topic") for r in ("image", "instruction", "action", "episode")}
    model = None
    if args.driver == "model":
        from pathlib import Path

        import torch

        from kv_vla_ros.vla import DEFAULT_MODEL_PATH, VLAModel

        torch.set_num_threads(1)
        path = Path(args.model or DEFAULT_MODEL_PATH)
        if not (path / "config.json").is_file():
            raise ValueError(f"--model: no checkpoint at {path} (expected config.json there)")
        model = VLAModel.from_pretrained(str(path))
    elif args.model:
        raise ValueError("--model: only used with --driver model")
    s = generate_bag(args.output, args.task, args.episodes, args.seed_offset, args.storage, args.frame_rate,
                     args.frame_size, args.max_steps, start, topics, progress=not args.no_progress, model=model)
    rate = s["successes"] / s["episodes"]
    print(f"wrote {s['output']} ({args.storage}): {s['episodes']} episodes of {s['task']}, {s['steps']} steps, "
          f"{s['driver']} success {rate:.0%}")
    return 0


__all__ = ["generate_bag", "configure", "run"]
