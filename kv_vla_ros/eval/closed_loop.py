"""Closed-loop episodes of a VLA on simulator seeds and their aggregate metrics per (task, cache
configuration): success rate, episode length, tokens seen / held, KV bytes, step latency p50/p99.
`kv_vla_ros.eval.grid` runs them over a grid of tasks and cache specs; the `kv-vla eval` command is
`kv_vla_ros.eval.closed_loop_cli`.
"""

from __future__ import annotations

import numpy as np



def make_robot(task: str, max_steps: int | None = None):
    """A `SimRobot` for ``task``; ``max_steps`` caps its episodes only below the env's own limit."""
    from kv_vla_ros.sim import SimRobot

    robot = SimRobot(task)
    if max_steps and max_steps < robot.max_steps:  # a cap only ever shortens the env's own limit
        robot.close()
        robot = SimRobot(task, max_steps=max_steps)
    return robot


def make_session(model, cache_config, untrained_gate: bool = False):
    """A `VLASession` for closed-loop MiniGrid episodes (discrete actions only).

    ``untrained_gate``: ``gated`` scores with a randomly initialised gate (seeded by
    ``cache_config.seed``), the baseline of the paper's released code, not the checkpoint's."""
    from kv_vla_ros.vla import VLASession

    session = VLASession(model, cache_config)
    if untrained_gate:
        session.gate = None  # the cache then builds ChunkGate.untrained(seed=cache_config.seed)
    if not session.policy.discrete:
        raise ValueError(f"model: MiniGrid tasks take discrete actions; this {session.policy.model_type} checkpoint "
                         "has continuous ones (evaluate it on a bag: kv-vla bag eval)")
    return session


def run_episode(robot, session, seed: int) -> dict:
    """One closed-loop episode; returns its record: scalars (outcome, length, tokens, and on
    Memory tasks whether the decision was right and the cue's chunk held then) plus
    ``latency_ms``, the latency of every inference. Records are all `summarize_task` needs, so
    episodes can run anywhere (`kv_vla_ros.eval.grid`)."""
    from kv_vla_ros.sim import is_memory_task
    from kv_vla_ros.sim.memory import MemoryEpisodeProbe
    from kv_vla_ros.vla.action_queue import ActionQueue

    queue = ActionQueue(session.policy.default_actions_per_inference)  # chunked policies: one chunk, many steps
    frame, instruction = robot.reset(seed)
    session.reset(instruction)
    probe = MemoryEpisodeProbe(robot) if is_memory_task(robot.task) else None
    held, cue_held_at, lat, policy_ms, scoring_ms = [], [], [], [], []
    bytes_max = 0
    st = session.stats()
    while not robot.done:
        if probe is not None:
            # what the step's attention can read: held after the previous step's eviction
            probe.observe(len(held))
            cue_held_at.append(cue_chunk_held(st, probe.cue_steps, len(held)))
        if queue.needs_inference:
            queue.push(session.step_chunk(frame))
            timings = session.stats()["latency_ms"]
            lat.append(timings["total"])
            policy_ms.append(timings.get("cache_policy", 0.0))
            scoring_ms.append(timings.get("cache_scoring", 0.0))
        action = queue.pop()
        st = session.stats()
        held.append(st["tokens_held"])
        bytes_max = max(bytes_max, st["bytes_held"])
        frame = robot.step(int(action[0])).frame
        if probe is not None:
            probe.after_step()
    record = {"seed": int(seed), "success": bool(robot.success), "length": len(held), "tokens_seen": st["tokens_seen"],
              "mean_held": float(np.mean(held)) if held else 0.0, "peak_held": max(held) if held else 0,
              "peak_bytes": bytes_max}
    if probe is not None:
        decided = probe.decision_step is not None
        record["decision_correct"] = bool(probe.decision_correct) if decided else None
        record["cue_held_at_decision"] = cue_held_at[probe.decision_step] if decided else None
    record["latency_ms"] = lat
    record["cache_policy_ms"] = policy_ms
    record["cache_scoring_ms"] = scoring_ms
    return record


def summarize_task(task: str, label: str, cache_config, records: list[dict]) -> dict:
    """Aggregate metrics of one (task, cache config) from its episode records, in seed order.
    ``per_episode`` carries every scalar field of the records (whatever `run_episode` returns)."""
    memory_metrics = {}
    if records and "decision_correct" in records[0]:
        made = [r["decision_correct"] for r in records if r["decision_correct"] is not None]
        known = [r["cue_held_at_decision"] for r in records if r["cue_held_at_decision"] is not None]
        memory_metrics = {"decision_accuracy": float(np.mean(made)) if made else float("nan"),
                          "decisions": len(made),
                          "cue_held_at_decision": float(np.mean(known)) if known else float("nan")}
    lat = [v for r in records for v in r["latency_ms"]]
    policy_ms = [v for r in records for v in r.get("cache_policy_ms", [])]
    scoring_ms = [v for r in records for v in r.get("cache_scoring_ms", [])]
    return {
        "task": task, "policy": label, "cache": cache_config.to_dict(), **memory_metrics,
        "episodes": len(records), "success_rate": float(np.mean([r["success"] for r in records])),
        "mean_length": float(np.mean([r["length"] for r in records])),
        "mean_tokens_seen": float(np.mean([r["tokens_seen"] for r in records])),
        "mean_tokens_held": float(np.mean([r["mean_held"] for r in records])),
        "peak_tokens_held": float(np.max([r["peak_held"] for r in records])),
        "peak_kv_bytes": float(np.max([r["peak_bytes"] for r in records])),
        "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
        # the cache policy's share of inference time (gate scoring + eviction; 0 for full)
        "cache_policy_share": float(np.sum(policy_ms) / max(np.sum(lat), 1e-9)) if policy_ms else 0.0,
        # its scoring part alone (the gate's share, for `gated`)
        "cache_scoring_share": float(np.sum(scoring_ms) / max(np.sum(lat), 1e-9)) if scoring_ms else 0.0,
        "per_episode": {k: [r[k] for r in records] for k in records[0]
                        if k not in ("latency_ms", "cache_policy_ms", "cache_scoring_ms")},
    }


def evaluate_task(model, task: str, cache_config, seeds: list[int], max_steps: int | None = None,
                  progress: bool = True, label: str = "", untrained_gate: bool = False) -> dict:
    """Run one task under one cache config; returns the aggregate metrics (+ per-episode lists).
    ``untrained_gate``: see `make_session`."""
    from tqdm import tqdm

    robot = make_robot(task, max_steps)
    try:
        session = make_session(model, cache_config, untrained_gate)
        records = [run_episode(robot, session, seed) for seed in
                   tqdm(seeds, desc=f"{label or cache_config.policy} {task}", disable=not progress, leave=False)]
    finally:
        robot.close()
    return summarize_task(task, label or cache_config.policy, cache_config, records)


def cue_chunk_held(stats: dict, cue_steps: list[int], step: int) -> bool | None:
    """Whether the cache (``stats`` of a session) holds the chunk of at least one earlier frame
    that showed the cue; None when no earlier frame did. Chunk ``k`` is control step ``k``:
    chunks not yet scored are in the recent window (held); scored ones are held if kept."""
    earlier = [c for c in cue_steps if c < step]
    if not earlier:
        return None
    kept = set(stats.get("kept_chunks", []))
    scored = stats.get("chunks_scored", 0)
    return any(c >= scored or c in kept for c in earlier)


__all__ = ["cue_chunk_held", "make_robot", "make_session", "run_episode", "summarize_task", "evaluate_task"]
