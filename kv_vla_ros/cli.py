"""`kv-vla`: one command line for the offline tools.

Each subcommand lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so ``kv-vla bench cache`` never imports
rclpy and ``kv-vla --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command, module, one-line help). Nested groups ("bench cache") use a space.
COMMANDS: list[tuple[str, str, str]] = [
    ("bench cache", "kv_vla_ros.bench.cache", "per-step latency and KV bytes of cache policies vs full"),
    ("bench ros", "kv_vla_ros.bench.control_rate",
     "policy node publish intervals p50/p99 at 20/50 Hz and frames dropped"),
    ("bench image", "kv_vla_ros.bench.image", "per-frame decode/convert/resize: the node's OpenCV path vs pillow"),
    ("bench soak", "kv_vla_ros.bench.soak",
     "drive the policy node over DDS for hours: memory, tokens, latency start vs end"),
    ("bench paper", "kv_vla_ros.bench.paper", "latency, KV bytes, FLOPs vs history at paper scale, vs the paper"),
    ("bench dtype", "kv_vla_ros.bench.dtype",
     "action agreement of a bfloat16/float16 (or compiled) session vs float32"),
    ("bench eval-scaling", "kv_vla_ros.bench.eval_scaling",
     "closed-loop eval sequential vs --workers N: speedup, same episodes"),
    ("bench train-scaling", "kv_vla_ros.bench.train_scaling",
     "π0 training from bags: 2 workers vs 1 worker of 1 or 2 threads (and a 2-node cluster), memory per worker"),
    ("bench budget-sweep", "kv_vla_ros.bench.budget_sweep",
     "every eviction at 1/4, 1/8, 1/16 of the history and the floor, closed loop: success vs KV bytes"),
    ("bench arm", "kv_vla_ros.bench.arm",
     "robot-arm world: ms per rendered frame vs panda-gym, expert table, filmstrip"),
    ("train", "kv_vla_ros.train.cli", "behaviour-clone the VLA on simulator expert demonstrations"),
    ("train-gate", "kv_vla_ros.train.gate_cli", "train the chunk gate on a frozen VLA's rollouts (or bags: --bags)"),
    ("calibrate", "kv_vla_ros.train.calibrate", "per-layer attention selectivity and per-layer budgets (ScaleKV)"),
    ("eval", "kv_vla_ros.eval.closed_loop_cli", "closed-loop success and cache cost per task and cache policy"),
    ("gate-report", "kv_vla_ros.eval.gate_report", "trained gate vs every baseline at equal budgets, with plots"),
    ("bag generate", "kv_vla_ros.data.generate_cli", "write simulator expert episodes into a bag (no ROS graph)"),
    ("bag eval", "kv_vla_ros.eval.bag_eval_cli", "replay a bag offline through VLASession under several cache configs"),
    ("bag rewrite", "kv_vla_ros.data.robot_recording",
     "write a lockstep bag again as a real arm records it (multi-rate, JPEG, Float64 commands, one bag per episode)"),
    ("bag inspect", "kv_vla_ros.data.inspect_cli",
     "per bag: topics, rates, jitter, what the reader uses, episodes and ticks at the control rate"),
    ("bag record", "kv_vla_ros.ros.bags.record", "record live topics into a bag (rclpy, raw CDR)"),
    ("bag play", "kv_vla_ros.ros.bags.play", "publish a bag onto live topics with its original timing"),
]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kv-vla", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    groups: dict[str, argparse._SubParsersAction] = {}
    for command, module, help_text in COMMANDS:
        words = command.split()
        sub = top
        if len(words) == 2:
            if words[0] not in groups:
                group = top.add_parser(words[0], help=f"{words[0]} tools")
                groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
                groups[words[0]].required = True
            sub = groups[words[0]]
        sub.add_parser(words[-1], help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    module = _module_for(argv)
    if module is None:
        # No known subcommand: argparse prints the help or the usage error and exits.
        _build_parser().parse_args(argv)
        return 2
    mod = importlib.import_module(module)
    words = next(c for c, m, _ in COMMANDS if m == module).split()
    parser = argparse.ArgumentParser(prog="kv-vla " + " ".join(words), description=mod.__doc__)
    mod.configure(parser)
    args = parser.parse_args(argv[len(words):])
    return int(mod.run(args) or 0)


def _module_for(argv: list[str]) -> str | None:
    for command, module, _ in sorted(COMMANDS, key=lambda c: -len(c[0].split())):
        words = command.split()
        if argv[: len(words)] == words:
            return module
    return None


if __name__ == "__main__":
    sys.exit(main())
