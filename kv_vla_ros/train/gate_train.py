"""`kv-vla train-gate`: train the chunk gate with the VLA frozen.

Target: future utility (see `gate_data`), as a per-episode percentile, with a logit BCE loss. The
gate reads chunks in order through its LSTM exactly as the cache feeds it online, so training and
inference see the same causal sequence. The trained gate is saved as `gate.safetensors` beside
the checkpoint and is loaded with it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from kv_vla_ros.cache import ChunkGate, gate_input_dim


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.parallel.runner import add_runner_arguments
    from kv_vla_ros.vla import DEFAULT_MODEL_PATH

    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH), help="VLA checkpoint directory (frozen)")
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks to roll out (default: the eval tasks)")
    parser.add_argument("--episodes", type=int, default=120, help="rollouts per task (default 120)")
    parser.add_argument("--epochs", type=int, default=40, help="passes over the rollouts (default 40)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=64, help="gate LSTM width (default 64)")
    parser.add_argument("--reduce", choices=("mean", "max"), default="mean",
                        help="how heads/layers are combined in the utility target (default mean)")
    parser.add_argument("--target", choices=("utility", "value", "distill"), default="utility",
                        help="utility: future attention utility (percentile, BCE); value: how much keeping the "
                             "chunk alone beside the recent window brings the actions back to the full-cache "
                             "ones (percentile, BCE); distill: end-to-end KL to the full-cache actions under a "
                             "budget penalty (see README)")
    parser.add_argument("--budget-weight", type=float, default=0.05,
                        help="distill only: weight of the mean-score (budget) penalty (default 0.05)")
    parser.add_argument("--recent-chunks", type=int, default=None,
                        help="recent window the gate is trained for (default: the checkpoint's cache config)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seed-offset", type=int, default=500_000,
                        help="first train seed of the rollouts (train range, apart from the BC demonstrations)")
    parser.add_argument("--out", default=None, help="where gate.safetensors goes (default: the checkpoint directory)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the gate training "
                        "(and of the rollouts with --workers 1)")
    add_runner_arguments(parser)


def train_gate(items: list, recent_chunks: int, in_dim: int, epochs: int, lr: float, hidden: int,
               reduce: str = "mean", seed: int = 0, progress: bool = True,
               values: list[torch.Tensor] | None = None) -> tuple[ChunkGate, dict]:
    """Fit a gate on ``items`` (`EpisodeAttention`); returns the gate and its training log.

    The target is each chunk's percentile within its episode of its future attention utility, or
    of ``values[i]`` (``[chunks]`` per item, e.g. `gate_value.keep_alone_value`) when given."""
    from tqdm import tqdm

    from kv_vla_ros.train.gate_data import future_utility, rank_targets, split_and_init

    data = []
    for i, item in enumerate(items):
        raw = values[i] if values is not None else future_utility(item.mass, recent_chunks, reduce)
        target = rank_targets(raw)
        if (~torch.isnan(target)).any():
            # clone: the rollouts were made under inference_mode, autograd needs normal tensors
            data.append((item.features.clone().unsqueeze(0), target.clone().unsqueeze(0)))
    if len(data) < 2:
        raise ValueError("episodes: need at least two rollouts with chunks that leave the recent window")
    rng, train, val, gate = split_and_init(data, seed, in_dim, hidden)
    opt = torch.optim.Adam(gate.parameters(), lr=lr)

    def loss_of(feats, target):
        logits, _ = gate.logits(feats)
        valid = ~torch.isnan(target)
        return F.binary_cross_entropy_with_logits(logits[valid], target[valid])

    def evaluate(split):
        with torch.no_grad():
            return sum(float(loss_of(f, t)) for f, t in split) / len(split)

    log = {"train_loss": [evaluate(train)], "val_loss": [evaluate(val)]}
    bar = tqdm(range(epochs), desc="train-gate", disable=not progress)
    for _ in bar:
        gate.train()
        rng.shuffle(train)
        for feats, target in train:
            opt.zero_grad()
            loss = loss_of(feats, target)
            loss.backward()
            opt.step()
        gate.eval()
        log["train_loss"].append(evaluate(train))
        log["val_loss"].append(evaluate(val))
        bar.set_postfix(train=f"{log['train_loss'][-1]:.4f}", val=f"{log['val_loss'][-1]:.4f}")
    log.update(episodes_train=len(train), episodes_val=len(val), parameters=gate.num_parameters())
    return gate.eval(), log


def attention_item(model, item: tuple, tick=None):
    """A `Runner` work item ``(task, seed, max_steps, with_episode)``: one full-cache rollout seen
    through the backbone (``(episode, attention)`` with ``with_episode``)."""
    from kv_vla_ros.train.gate_data import episode_attention, policy_rollouts

    task, seed, max_steps, with_episode = item
    ep = policy_rollouts(model, task, [seed], max_steps=max_steps)[0]
    att = episode_attention(model, ep)
    return (ep, att) if with_episode else att


def collect(model, tasks: list[str], episodes: int, seed_offset: int, progress: bool = True,
            with_episodes: bool = False, runner=None, model_path: str | None = None,
            max_steps: int | None = None) -> list:
    """``EpisodeAttention`` per full-cache rollout (``(episode, attention)`` pairs with
    ``with_episodes``), task-major, in seed order; on the workers of ``runner`` (a `RunnerConfig`,
    each loading ``model_path``) or in-process."""
    from kv_vla_ros.parallel.runner import Runner, RunnerConfig
    from kv_vla_ros.sim import train_seeds
    from kv_vla_ros.vla import VLAModel

    runner = runner or RunnerConfig(workers=1, progress=progress)
    if runner.uses_ray and model_path is None:
        raise ValueError("model_path: workers load the model from its directory; give it with a RunnerConfig")
    items = [(task, seed, max_steps, with_episodes) for task in tasks
             for seed in train_seeds(episodes, offset=seed_offset)]
    with Runner(VLAModel.from_pretrained, (model_path,), runner, desc=f"rollouts {len(tasks)} task(s)",
                local_state=model) as pool:
        return pool.map(attention_item, items)


def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.sim.tasks import EVAL_TASKS
    from kv_vla_ros.parallel.runner import runner_config
    from kv_vla_ros.vla import VLAModel

    for name in ("episodes", "epochs", "hidden", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"kv-vla train-gate: --{name} must be >= 1")
    torch.set_num_threads(args.threads)
    try:
        runner = runner_config(args)
        model = VLAModel.from_pretrained(args.model)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"kv-vla train-gate: {exc}") from None
    t0 = time.time()
    pairs = collect(model, args.tasks or EVAL_TASKS, args.episodes, args.seed_offset, with_episodes=True,
                    runner=runner, model_path=args.model)
    bb = model.backbone_config
    in_dim = gate_input_dim(bb.num_hidden_layers, getattr(bb, "head_dim", None) or bb.hidden_size // bb.num_attention_heads)
    recent = model.config.cache.recent_chunks if args.recent_chunks is None else args.recent_chunks
    if args.target == "distill":
        from kv_vla_ros.train.gate_distill import distill_item, train_gate_distill

        items = [distill_item(model, ep, att.features) for ep, att in pairs]
        gate, log = train_gate_distill(model, items, recent, in_dim, args.epochs, args.lr, args.hidden,
                                       args.budget_weight, args.seed)
        target = f"end-to-end distillation (KL to full-cache actions + {args.budget_weight} x mean score)"
    elif args.target == "value":
        from tqdm import tqdm

        from kv_vla_ros.train.gate_value import keep_alone_value

        values = [keep_alone_value(model, ep, recent) for ep, _ in tqdm(pairs, desc="keep-alone values")]
        gate, log = train_gate([att for _, att in pairs], recent, in_dim, args.epochs, args.lr, args.hidden,
                               seed=args.seed, values=values)
        target = "value of keeping the chunk alone (KL gain over the window, percentile), BCE"
    else:
        gate, log = train_gate([att for _, att in pairs], recent, in_dim, args.epochs, args.lr, args.hidden,
                               args.reduce, args.seed)
        target = "future attention utility (percentile), BCE"
    out = Path(args.out or args.model)
    path = gate.save(str(out))
    log.update(seconds=time.time() - t0, tasks=args.tasks or EVAL_TASKS, episodes_per_task=args.episodes,
               reduce=args.reduce, target=target, recent_chunks=recent)
    (out / "gate_training.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"gate ({args.target}): {log['parameters']} parameters, val loss {log['val_loss'][0]:.4f} -> "
          f"{log['val_loss'][-1]:.4f}; wrote {path}")
    return 0
