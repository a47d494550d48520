"""``kv-vla train --bags --policy-type kv_vla``: the package's own VLA (discrete action tokens)
trained on recorded bags by its behaviour-cloning loop (``kv_vla_ros.train.bc``: its batches,
eviction masks, checkpoints, log, curves and ``--resume``), from the episodes of the one bag reader
(``kv_vla_ros.train.bag_episodes`` over ``kv_vla_ros.data``) that π0 training reads too.

What fits: a bag whose action topic carries discrete action ids, one float per step holding an
integer in ``[0, action.num_actions)`` (what ``kv-vla bag generate --task MiniGrid-...``, the
MiniGrid simulator node and the policy node driving it record; ``kv-vla bag eval`` compares such
actions by exact match). A bag with continuous actions (several floats per step, or fractional
values: the arm's) or with ids outside the policy's action set is refused in one line naming the
bag and why, and the other bags still train. With ``--action-bins N`` (a new model) continuous
commands fit instead: each dimension binned into N bins over the bags' 1st-99th percentiles
(``ActionTokenizer``'s OpenVLA binning); a checkpoint of continuous actions keeps its own.

Conversion (``to_episodes``): the policy sees one camera and no robot state; a recorded episode
becomes a ``kv_vla_ros.sim.Episode`` with frames ``(T, H, W, 3)`` uint8 and actions ``(T,)`` int64
(or ``(T, dim)`` float32 commands, binned by the model's action tokenizer), step for step, and no
auxiliary labels (the simulator's are privileged; bags carry none).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from kv_vla_ros.data.errors import BagError
from kv_vla_ros.train.bag_episodes import RecordedEpisode

POLICY_TYPES = ("pi0", "kv_vla")  # the checkpoints' model_type (config.json), as `kv-vla bag eval` reports it
PI0_ONLY_FLAGS = ("chunk_size", "actions_per_inference", "episodes_per_step", "pi0_model")


def discrete_action_ids(ep: RecordedEpisode, num_actions: int, where: str) -> np.ndarray:
    """``(T,)`` int64 action ids of ``ep.actions (T, A)``; ``BagError`` (naming ``where`` and why)
    unless A is 1 and every value is an integer id in ``[0, num_actions)``."""
    actions = ep.actions
    if not np.isfinite(actions).all():
        raise BagError(f"{where}: non-finite recorded actions")
    if actions.shape[1] != 1 or not np.array_equal(actions, np.rint(actions)):
        what = f"{actions.shape[1]} floats per step" if actions.shape[1] != 1 else "fractional values"
        raise BagError(f"{where}: continuous actions ({what}) but this kv_vla policy takes discrete action ids: "
                       f"bin them (--action-bins N, a new model) or train π0 (--policy-type pi0)")
    ids = actions[:, 0].astype(np.int64)
    if ids.min() < 0 or ids.max() >= num_actions:
        raise BagError(f"{where}: action ids {ids.min()}..{ids.max()} outside the policy's {num_actions} actions "
                       f"(action.num_actions)")
    return ids


def fitting_actions(ep: RecordedEpisode, space, where: str) -> np.ndarray:
    """The actions the policy trains on: ``(T,)`` int64 ids for a discrete ``space``, else ``(T, dim)``
    float32 commands (binned by the action tokenizer; ``space`` None: a new binned space, any dim)."""
    if space is not None and space.kind == "discrete":
        return discrete_action_ids(ep, space.num_actions, where)
    if not np.isfinite(ep.actions).all():
        raise BagError(f"{where}: non-finite recorded actions")
    if space is not None and ep.actions.shape[1] != space.dim:
        raise BagError(f"{where}: {ep.actions.shape[1]} floats per step, the policy's actions have {space.dim} "
                       f"(action.dim)")
    return ep.actions.astype(np.float32)


def action_check(space, action_topic: str):
    """``check(path, episodes)`` for ``read_bags``: refuses a bag whose actions do not fit ``space``."""

    def check(path, episodes: list[RecordedEpisode]) -> None:
        for ep in episodes:
            fitting_actions(ep, space, f"bag {path}: {action_topic}")

    return check


def binned_space(recorded: list[RecordedEpisode], bins: int):
    """A continuous ``ActionSpaceConfig`` of ``bins`` bins per dimension over the bags' 1st-99th
    percentiles of each command (OpenVLA's binning, ``ActionTokenizer``)."""
    from kv_vla_ros.vla import ActionSpaceConfig, ActionTokenizer

    actions = np.concatenate([ep.actions for ep in recorded])
    q01, q99 = ActionTokenizer.stats(actions)
    return ActionSpaceConfig(kind="continuous", dim=int(actions.shape[1]), bins=bins, q01=q01, q99=q99, names=None)


def to_episodes(recorded: list[RecordedEpisode], space) -> list:
    """Recorded episodes (one camera) -> ``kv_vla_ros.sim.Episode`` (task ``bag:<source>``)."""
    from kv_vla_ros.sim import Episode

    out = []
    for k, ep in enumerate(recorded):
        if ep.frames.shape[1] != 1:
            raise ValueError(f"frames: the kv_vla policy sees one camera, {ep.source} has {ep.frames.shape[1]}")
        out.append(Episode(task=f"bag:{ep.source}", seed=k, instruction=ep.instruction,
                           frames=np.ascontiguousarray(ep.frames[:, 0]),
                           actions=fitting_actions(ep, space, ep.source), success=True))
    return out


def resolve_policy_type(args: argparse.Namespace) -> str:
    """``--policy-type``, else the model_type of the checkpoint trained on (``--init-from``, or
    ``OUT/checkpoint`` with ``--resume``), else ``pi0``; ``ValueError`` when they disagree."""
    from kv_vla_ros.vla.policy import checkpoint_model_type

    chosen = getattr(args, "policy_type", None)
    resumed = Path(args.out) / "checkpoint" if args.resume else None
    for flag, path in (("--init-from", args.init_from), ("--resume", resumed)):
        if path is None or (flag == "--resume" and not (Path(path) / "config.json").is_file()):
            continue
        found = checkpoint_model_type(path)
        if chosen is not None and found != chosen:
            raise ValueError(f"--policy-type {chosen}: {flag} {path} holds a {found} checkpoint")
        chosen = found
    chosen = chosen or "pi0"
    if chosen not in POLICY_TYPES:
        raise ValueError(f"--policy-type: expected one of {', '.join(POLICY_TYPES)}, got {chosen!r}")
    return chosen


def own_train_config(args: argparse.Namespace, cfg):
    """``cfg`` (the ``TrainConfig`` of the flags shared with simulator training) made the own policy's
    from bags: no DAgger (no expert), no auxiliary loss (no labels), warm-up over at most a tenth of
    the steps; ``ValueError`` naming a flag that does not apply."""
    for name in PI0_ONLY_FLAGS:
        if getattr(args, name, None) is not None:
            raise ValueError(f"--{name.replace('_', '-')}: a π0 flag; the kv_vla policy predicts one action per step")
    if args.image_topic and len(args.image_topic) > 1:
        raise ValueError(f"--image-topic: the kv_vla policy sees one camera, got {len(args.image_topic)}")
    if args.state_topic:
        raise ValueError("--state-topic: the kv_vla policy takes no robot state; leave it out (π0 takes one)")
    if args.aux_weight:
        raise ValueError(f"--aux-weight: the kv_vla policy's auxiliary targets are privileged simulator labels, "
                         f"which bags do not carry; leave it at 0, got {args.aux_weight}")
    cfg.bags = [str(p) for p in args.bags]
    cfg.aux_weight = 0.0
    if args.dagger_at is None:
        cfg.dagger_at = []
    cfg.warmup_steps = max(1, min(cfg.warmup_steps, cfg.max_steps // 10))
    cfg.validate()
    return cfg


def action_space(cfg, out: Path, resume: bool, bins: int | None = None):
    """The ``ActionSpaceConfig`` trained: the resumed checkpoint's, ``init_from``'s, or ``cfg.vla``'s;
    None with ``bins`` for a new model (binned over the bags' own percentiles, once they are read)."""
    from kv_vla_ros.vla import ActionSpaceConfig
    from kv_vla_ros.vla.policy import read_json_object

    if bins is not None and (isinstance(bins, bool) or not isinstance(bins, int) or bins < 2):
        raise ValueError(f"--action-bins: must be an int >= 2, got {bins!r}")
    resumed = out / "checkpoint"
    source = resumed if resume and (resumed / "train_state.json").is_file() else cfg.init_from
    if bins is not None and not source:
        return None
    fields = read_json_object(Path(source) / "config.json").get("action", {}) if source else cfg.vla.get("action", {})
    try:
        space = ActionSpaceConfig(**fields)
    except TypeError as exc:  # an unknown field in --vla's "action"
        raise ValueError(f"action: {exc}") from None
    if bins is not None and (space.kind != "continuous" or space.bins != bins):
        raise ValueError(f"--action-bins {bins}: {source} has {space.kind} actions"
                         + (f" of {space.bins} bins" if space.kind == "continuous" else "")
                         + " (the checkpoint's action space is trained)")
    return space


def run_own_bags(args: argparse.Namespace, cfg) -> int:
    """Bags -> episodes (bags whose actions do not fit refused) -> ``train.bc.train`` with ``cfg``
    (``kv_vla_ros.train.cli.train_config`` of the flags)."""
    from kv_vla_ros.train.bag_cli import read_bag_data
    from kv_vla_ros.train.bc import train

    from kv_vla_ros.train.bag_cli import data_parallel

    cfg = own_train_config(args, cfg)
    space = action_space(cfg, Path(args.out), args.resume, args.action_bins)
    if data_parallel(args):
        return run_own_bags_parallel(args, cfg, space)
    data = read_bag_data(args, check=action_check(space, ", ".join(args.action_topic or ["/action"])))
    if space is None:  # a new binned action space, from the bags that were read
        space = binned_space(data.episodes, args.action_bins)
        cfg.vla = {**cfg.vla, "action": dataclasses.asdict(space)}
    episodes = to_episodes(data.episodes, space)
    train(cfg, args.out, resume=args.resume, progress_bar=not args.no_progress, episodes=episodes)
    print(f"kv_vla policy trained on {len(episodes)} episodes; written to {args.out}", flush=True)
    return 0


def own_train_worker(cfg, bags: list[str], topics, control_rate_hz, out: str, resume: bool, space,
                     bins: int | None) -> dict:
    """One data-parallel worker of ``kv-vla train --bags --policy-type kv_vla``: every worker reads the
    bags whole (the same episodes, the same new binned space) and runs ``train.bc.train`` as one of
    the process group (the same global batch per step, its share of the rows, gradients summed)."""
    import resource

    from kv_vla_ros.train.bag_episodes import read_bags
    from kv_vla_ros.train.bc import train
    from kv_vla_ros.train.collective import Collective

    comm = Collective()
    data = read_bags([Path(b) for b in bags], topics, control_rate_hz=control_rate_hz, progress=False,
                     log=lambda line: None, check=action_check(space, topics.action))
    if space is None:
        space = binned_space(data.episodes, bins)
        cfg.vla = {**cfg.vla, "action": dataclasses.asdict(space)}
    train(cfg, out, resume=resume, progress_bar=False, episodes=to_episodes(data.episodes, space))
    return {"rank": comm.rank, "episodes": len(data.episodes), "refused": data.refused,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_own_bags_parallel(args: argparse.Namespace, cfg, space) -> int:
    """``--workers N`` / ``--ray-address``: `own_train_worker` on Ray workers."""
    import json
    import sys

    from kv_vla_ros.data.bagio import bag_paths
    from kv_vla_ros.parallel.data_parallel import WorkerFailed, run_data_parallel
    from kv_vla_ros.parallel.runner import RunnerConfig
    from kv_vla_ros.train.bag_cli import bag_topics

    bags = [str(p.resolve()) for p in bag_paths(args.bags)]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (cfg, bags, bag_topics(args), args.control_rate_hz, str(out), args.resume, space, args.action_bins)
    try:
        placement: list = []
        ranks = run_data_parallel(own_train_worker, work,
                                  RunnerConfig(workers=args.workers, ray_address=args.ray_address),
                                  threads=cfg.threads, placement=placement)
    except WorkerFailed as exc:
        print(f"kv-vla train: error: {exc}; continue from the last checkpoint with --resume", file=sys.stderr,
              flush=True)
        return 1
    for line in ranks[0]["refused"]:
        print(f"refused: {line}", file=sys.stderr, flush=True)
    for rank, (pid, node) in zip(ranks, placement):
        rank.update(pid=pid, node=node)
    (out / "train_workers.json").write_text(json.dumps(ranks, indent=1) + "\n")
    print(f"kv_vla policy trained on {ranks[0]['episodes']} episodes by {len(ranks)} workers; written to {out}",
          flush=True)
    return 0


__all__ = ["POLICY_TYPES", "action_check", "action_space", "binned_space", "discrete_action_ids", "fitting_actions",
           "own_train_config", "own_train_worker", "run_own_bags_parallel",
           "resolve_policy_type", "run_own_bags", "to_episodes"]
