"""Offline evaluation of a checkpoint on a bag: every cache config steps through the same frames in
lockstep (so machine load hits them alike), open loop, faster than real time, no ROS graph.

Per config: agreement with the recorded actions (exact match for discrete actions, mean L1 and L2
distance for continuous ones) and with the full cache (the reference run, added when no ``full``
spec is given), tokens seen/held, KV bytes held, latency p50/p99, FLOPs per inference counted with
``torch.utils.flop_counter.FlopCounterMode`` on every ``flops_every``-th inference (those are left
out of the latency figures, since counting slows them down).

The inference schedule is the node's and the closed loop's (`ActionQueue`): a chunked policy (π0)
infers on one recorded frame in ``actions_per_inference`` (default: the checkpoint's), and each
frame's action is the next row of the chunk it is executing, so only the frames it would have read
enter its cache; the package's own VLA infers on every frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kv_vla_ros.data.bagio import BagReader
from kv_vla_ros.data.episodes import BagTopics, iter_episode_events
from kv_vla_ros.data.errors import BagError


@dataclass
class PolicyRun:
    """One cache config's session and everything measured on it."""

    label: str
    cache_config: object
    session: object
    actions: list[list[np.ndarray]] = field(default_factory=list)  # per episode, per step
    tokens_held: list[int] = field(default_factory=list)  # per step, over the whole bag
    bytes_held: list[int] = field(default_factory=list)
    tokens_seen_end: list[int] = field(default_factory=list)  # per episode
    latency_ms: list[float] = field(default_factory=list)
    flops: list[int] = field(default_factory=list)
    gate_scores: list[tuple[int, int, float]] = field(default_factory=list)  # (episode, chunk, score)
    queue: object = None  # the `ActionQueue` of the chunk being executed (dropped with the session)
    inferences: int = 0


def build_configs(policy, specs: list[str]) -> list[tuple[str, object]]:
    """``["full", "gated:budget_tokens=256"]`` -> [(label, CacheConfig)], full reference first.

    Specs are parsed by ``kv_vla_ros.cache.spec.parse_spec`` (the one spec syntax of the CLI);
    ``budget_frac`` needs the mean history length, unknown until the bag is read: use budget_tokens.
    """
    from kv_vla_ros.cache.spec import parse_spec
    from kv_vla_ros.vla.policy import as_policy

    base = as_policy(policy).default_cache_config()
    out, seen = [], set()
    for spec in specs or ["full"]:
        changes, frac = parse_spec(spec, base)
        if frac is not None:
            raise ValueError(f"--cache {spec}: budget_frac is not supported by bag eval; give budget_tokens")
        if changes.pop("_history", None):
            raise ValueError(f"--cache {spec}: history=none (no_history) is a closed-loop baseline (kv-vla eval)")
        if spec in seen:
            raise ValueError(f"--cache {spec}: given twice")
        seen.add(spec)
        out.append((spec, base.replace(**changes)))
    if not any(cfg.eviction == "full" for _, cfg in out):
        out.insert(0, ("full", base.replace(**parse_spec("full", base)[0])))
    out.sort(key=lambda item: item[1].eviction != "full")  # stable: the first full is the reference
    return out


def flop_counter():
    """A ``FlopCounterMode`` that also counts CPU SDPA: torch registers a formula for the CUDA
    flash/efficient kernels only, so on CPU the attention FLOPs (the part a bounded cache
    shrinks) would be missing. Same count as torch's ``sdpa_flop`` (QK^T and PV matmuls, masking
    ignored), with grouped-query heads allowed."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    extra = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=extra)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    *batch, s_q, d_q = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * int(np.prod(batch)) * s_q * s_k * (d_q + d_v)


def _step(run: PolicyRun, frame, flops_every: int) -> None:
    """One recorded frame (every camera, and the state): an inference when the queued chunk is used
    up (`ActionQueue`), then the chunk's next action is the one compared with the frame's recorded
    action."""
    inferred = run.queue.needs_inference
    if inferred:
        count_flops = flops_every > 0 and run.inferences % flops_every == 0
        if count_flops:
            with flop_counter() as counter:
                chunk = run.session.step_action_chunk(frame.images, frame.state)
            run.flops.append(int(counter.get_total_flops()))
        else:
            chunk = run.session.step_action_chunk(frame.images, frame.state)
        run.queue.push(np.asarray(chunk))
        run.inferences += 1
    st = run.session.stats()
    if inferred and not count_flops:
        run.latency_ms.append(float(st["latency_ms"]["total"]))
    run.actions[-1].append(np.asarray(run.queue.pop()).reshape(-1).copy())
    run.tokens_held.append(int(st["tokens_held"]))
    run.bytes_held.append(int(st["bytes_held"]))
    if not inferred or run.cache_config.eviction != "gated":
        return  # other policies report their ranking utility there (recency, norms), not a gate score
    episode = len(run.actions) - 1
    scored = {c for e, c, _ in run.gate_scores[-64:] if e == episode}
    for chunk, score in (st.get("gate_scores") or {}).items():
        if int(chunk) not in scored:
            run.gate_scores.append((episode, int(chunk), float(score)))


@dataclass
class BagReplay:
    """One bag replayed under every config: the runs (their sessions dropped, so a replay can travel
    between processes), the recorded actions and instructions, and the bag's metadata."""

    runs: list[PolicyRun]
    recorded: list[list[np.ndarray | None]]
    instructions: list[str]
    steps: int
    meta: dict


def check_inputs(policy, topics: BagTopics) -> None:
    """The topics give the policy what it takes per step (cameras, robot state); ValueError if not."""
    if 1 + len(topics.extra_images) != policy.num_cameras:
        raise ValueError(f"image topics: {1 + len(topics.extra_images)} given, the policy takes {policy.num_cameras} "
                         "camera(s) per step")
    if policy.state_dim and not topics.state:
        raise ValueError(f"state topic: the policy takes a robot state of dimension {policy.state_dim}; "
                         "give the bag's JointState or Float32MultiArray topic")


def replay_bag(bag_path, model, configs: list[tuple[str, object]], topics: BagTopics | None = None,
               flops_every: int = 25, max_episodes: int | None = None, actions_per_inference: int | None = None,
               tick=None) -> BagReplay:
    """Step every config of ``configs`` (`build_configs`) through ``bag_path`` in lockstep, one
    inference per ``actions_per_inference`` frames (None: the checkpoint's default); ``tick(1)`` is
    called after each frame (progress)."""
    from kv_vla_ros.vla import VLASession
    from kv_vla_ros.vla.action_queue import ActionQueue
    from kv_vla_ros.vla.policy import as_policy

    policy = as_policy(model)
    topics = topics or BagTopics()
    if flops_every < 0:
        raise ValueError(f"flops_every: must be >= 0, got {flops_every}")
    check_inputs(policy, topics)
    per_inference = policy.default_actions_per_inference if actions_per_inference is None else actions_per_inference
    runs = [PolicyRun(label, cfg, VLASession(policy, cfg), queue=ActionQueue(per_inference)) for label, cfg in configs]
    counters: dict = {}
    recorded: list[list[np.ndarray | None]] = []
    instructions: list[str] = []
    step_index = 0
    with BagReader(bag_path) as bag:
        info: dict = {}
        for kind, payload in iter_episode_events(bag, topics, policy.frame_size, counters, info):
            if kind == "start":
                if max_episodes is not None and len(instructions) >= max_episodes:
                    break
                instructions.append(payload)
                for run in runs:
                    run.session.reset(payload)
                    run.queue.clear()
                    run.actions.append([])
            elif kind == "frame":
                for run in runs:
                    _step(run, payload, flops_every)
                step_index += 1
                if tick is not None:
                    tick(1)
            else:  # end
                recorded.append(payload.aligned())
                for run in runs:
                    run.tokens_seen_end.append(int(run.session.stats()["tokens_seen"]))
        meta = {"bag": str(bag.path), "bag_duration_s": bag.duration_ns / 1e9,
                "typestore": bag.store_name, "ros_distro": bag.distro, "lockstep": info.get("lockstep"),
                "control_rate_hz": info.get("control_rate_hz")}
    if step_index == 0:
        raise BagError(f"bag {bag_path}: no frame follows an instruction on {topics.instruction}; nothing to evaluate")
    recorded = recorded[: len(instructions)]
    for run in runs:  # an episode cut by max_episodes has no "end": close its bookkeeping
        while len(run.tokens_seen_end) < len(run.actions):
            run.tokens_seen_end.append(int(run.session.stats()["tokens_seen"]))
        run.session = run.queue = None
    while len(recorded) < len(instructions):
        recorded.append([None] * len(runs[0].actions[len(recorded)]))
    meta.update({"episodes": len(instructions), "steps": step_index, "actions_per_inference": per_inference,
                 **counters})
    return BagReplay(runs, recorded, instructions, step_index, meta)


def _concat_runs(runs: list[PolicyRun], episodes_before: list[int]) -> PolicyRun:
    """One config's runs over several bags as one run (episodes numbered across the bags)."""
    out = PolicyRun(runs[0].label, runs[0].cache_config, None)
    for run, offset in zip(runs, episodes_before):
        for name in ("actions", "tokens_held", "bytes_held", "tokens_seen_end", "latency_ms", "flops"):
            getattr(out, name).extend(getattr(run, name))
        out.gate_scores.extend((e + offset, c, s) for e, c, s in run.gate_scores)
    return out


def merge_replays(replays: list[BagReplay], model, topics: BagTopics | None, flops_every: int) -> dict:
    """The result dict of one or many bags: rows over all their episodes (as if the bags were one),
    plus, for several bags, ``per_bag`` rows and ``meta["bags"]``."""
    from kv_vla_ros.vla.policy import as_policy

    policy = as_policy(model)
    topics = topics or BagTopics()
    discrete = policy.discrete
    before = np.cumsum([0] + [len(r.instructions) for r in replays]).tolist()
    runs = [_concat_runs([r.runs[k] for r in replays], before) for k in range(len(replays[0].runs))]
    recorded = [ep for r in replays for ep in r.recorded]
    rows = [_summarize(run, runs[0], recorded, discrete) for run in runs]
    if len(replays) == 1:
        meta = dict(replays[0].meta)
    else:
        meta = {"bag": f"{len(replays)} bags", "bags": [r.meta for r in replays],
                "bag_duration_s": sum(r.meta["bag_duration_s"] for r in replays),
                "typestore": ", ".join(sorted({r.meta["typestore"] for r in replays})),
                "ros_distro": ", ".join(sorted({str(r.meta["ros_distro"]) for r in replays})),
                **{k: sum(r.meta.get(k, 0) for r in replays)  # episodes, steps, counters (a reader's own ones too)
                   for k in dict.fromkeys(k for r in replays for k in r.meta)
                   if k not in ("bag", "bag_duration_s", "typestore", "ros_distro", "lockstep", "control_rate_hz")}}
    meta.update({"image_topic": topics.image, "extra_image_topics": list(topics.extra_images),
                 "state_topic": topics.state, "instruction_topic": topics.instruction,
                 "action_topic": topics.action, "reset_topic": topics.reset, "policy_type": policy.model_type,
                 "action_kind": "discrete" if discrete else "continuous", "flops_every": flops_every})
    result = {"meta": meta, "results": rows, "instructions": [i for r in replays for i in r.instructions],
              "series": {run.label: {"tokens_held": run.tokens_held, "gate_scores": run.gate_scores} for run in runs},
              "actions": {run.label: run.actions for run in runs}, "recorded": recorded}
    if len(replays) > 1:
        result["per_bag"] = [{"bag": r.meta["bag"], "results": [_summarize(run, r.runs[0], r.recorded, discrete)
                                                               for run in r.runs]} for r in replays]
    return result


def evaluate_bag(bag_path, model, specs: list[str], topics: BagTopics | None = None, flops_every: int = 25,
                 max_episodes: int | None = None, progress: bool = True,
                 actions_per_inference: int | None = None) -> dict:
    """Replay ``bag_path`` through one ``VLASession`` per cache spec; returns the result dict
    (``results`` rows, ``series`` for the plots, and per-episode ``actions``/``recorded`` arrays)."""
    from kv_vla_ros.progress import progress_bar

    from kv_vla_ros.vla.policy import as_policy

    policy = as_policy(model)
    topics = topics or BagTopics()
    configs = build_configs(policy, specs)
    check_inputs(policy, topics)
    with BagReader(bag_path) as bag:
        total = bag.topics.get(topics.image, (None, 0))[1]
    with progress_bar(total=total, desc=f"bag eval {len(configs)} configs", unit="frame", disable=not progress) as bar:
        replay = replay_bag(bag_path, policy, configs, topics, flops_every, max_episodes, actions_per_inference,
                            bar.update)
    return merge_replays([replay], policy, topics, flops_every)


def replay_item(model, item: tuple, tick=None) -> BagReplay:
    """A `Runner` work item ``(bag_path, configs, topics, flops_every, max_episodes, actions_per_inference)``:
    one bag."""
    return replay_bag(item[0], model, *item[1:], tick=tick)


def _agreement(pred: list[np.ndarray], ref: list[np.ndarray | None], discrete: bool) -> dict:
    pairs = [(p, r) for p, r in zip(pred, ref) if r is not None]
    if not pairs:
        return {"n": 0}
    p = np.stack([a for a, _ in pairs]).astype(np.float64)
    r = np.stack([b.reshape(-1) for _, b in pairs]).astype(np.float64)
    if p.shape != r.shape:
        raise BagError(f"action: recorded actions have {r.shape[1]} values, the model's have {p.shape[1]}")
    if discrete:
        return {"n": len(pairs), "match": float(np.mean(np.all(np.rint(r) == p, axis=1)))}
    return {"n": len(pairs), "l1": float(np.mean(np.abs(p - r))), "l2": float(np.mean(np.linalg.norm(p - r, axis=1)))}


def _summarize(run: PolicyRun, ref: PolicyRun, recorded, discrete: bool) -> dict:
    pred = [a for ep in run.actions for a in ep]
    rec = [a for ep in recorded for a in ep]
    full = [a for ep in ref.actions for a in ep]
    lat = run.latency_ms or [float("nan")]
    return {
        "policy": run.label, "cache": run.cache_config.to_dict(), "steps": len(pred), "episodes": len(run.actions),
        "agreement_recorded": _agreement(pred, rec, discrete),
        "agreement_full": _agreement(pred, full, discrete),
        "mean_tokens_seen": float(np.mean(run.tokens_seen_end)) if run.tokens_seen_end else 0.0,
        "mean_tokens_held": float(np.mean(run.tokens_held)), "peak_tokens_held": int(np.max(run.tokens_held)),
        "mean_kv_bytes": float(np.mean(run.bytes_held)), "peak_kv_bytes": int(np.max(run.bytes_held)),
        "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
        "flops_per_step": float(np.mean(run.flops)) if run.flops else None, "flops_steps": len(run.flops),
    }


__all__ = ["PolicyRun", "BagReplay", "build_configs", "check_inputs", "replay_bag", "merge_replays", "evaluate_bag",
           "replay_item"]
