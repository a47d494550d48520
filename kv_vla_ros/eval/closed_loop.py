"""Closed-loop episodes of a VLA on simulator seeds and their aggregate metrics per (task, cache
configuration): success rate, episode length, tokens seen / held, KV bytes, step latency p50/p99.
`kv_vla_ros.eval.grid` runs them over a grid of tasks and cache specs; the `kv-vla eval` command is
`kv_vla_ros.eval.closed_loop_cli`.
"""

from __future__ import annotations

import numpy as np

MINIGRID_MAX_STEPS = 100  # the step cap of MiniGrid/BabyAI episodes unless --max-steps says otherwise


def make_robot(task: str, max_steps: int | None = None):
    """The simulated robot of ``task`` (`kv_vla_ros.sim.make_sim`); ``max_steps`` caps its episodes
    only below the task's own limit (None: the task's own)."""
    from kv_vla_ros.sim import make_sim

    robot = make_sim(task)
    if max_steps and max_steps < robot.max_steps:  # a cap only ever shortens the env's own limit
        robot.close()
        robot = make_sim(task, max_steps=max_steps)
    return robot


def default_step_cap(task: str, max_steps: int | None) -> int | None:
    """``--max-steps`` for ``task``: as given, or when not given 100 for MiniGrid/BabyAI (their envs
    allow far longer wandering) and the task's own cap for an arm task."""
    from kv_vla_ros.sim import is_arm_task

    return max_steps if max_steps is not None or is_arm_task(task) else MINIGRID_MAX_STEPS


def make_session(model, cache_config, untrained_gate: bool = False, history: bool = True):
    """A `VLASession` for closed-loop episodes (`check_fits` tells whether it fits a task).

    ``untrained_gate``: ``gated`` scores with a randomly initialised gate (seeded by
    ``cache_config.seed``), the baseline of the paper's released code, not the checkpoint's.
    ``history``: False, the current frame alone (the spec ``no_history``; `VLASession`)."""
    from kv_vla_ros.vla import VLASession

    session = VLASession(model, cache_config, history=history)
    if untrained_gate:
        session.gate = None  # the cache then builds ChunkGate.untrained(seed=cache_config.seed)
    return session


def check_fits(robot, policy) -> None:
    """ValueError naming the mismatch when ``policy`` cannot drive ``robot``: MiniGrid takes
    discrete action ids; an arm takes ``robot.action_dim`` continuous actions (and the policy's
    robot state, if it takes one, must be the arm's joint state)."""
    if getattr(robot, "discrete", True):
        if not policy.discrete:
            raise ValueError(f"model: MiniGrid tasks take discrete actions; this {policy.model_type} checkpoint "
                             "has continuous ones (evaluate it on a bag: kv-vla bag eval)")
        return
    if policy.discrete or policy.action_dim != robot.action_dim:
        kind = "discrete action ids" if policy.discrete else f"{policy.action_dim}-dimensional actions"
        raise ValueError(f"model: {robot.task} takes {robot.action_dim}-dimensional continuous actions "
                         f"({', '.join(robot.action_names)}); this {policy.model_type} checkpoint has {kind}")
    if policy.state_dim not in (0, robot.state_dim):
        raise ValueError(f"model: {robot.task} gives a robot state of dimension {robot.state_dim} (joint "
                         f"positions); this checkpoint takes {policy.state_dim}")


def state_order(robot, policy) -> list[int] | None:
    """Indices that put ``robot.state()`` in the order of the joints the checkpoint was trained on
    (its recorded ``state_names``; a robot's recording may list them in its driver's order); None
    when they already agree or either side has no names. ValueError naming a joint the robot lacks."""
    want, have = getattr(policy, "state_names", None), getattr(robot, "state_names", None)
    if not want or not have or list(want) == list(have):
        return None
    missing = [n for n in want if n not in have]
    if missing:
        raise ValueError(f"model: its state joint {missing[0]!r} is not one of {robot.task}'s ({', '.join(have)})")
    return [list(have).index(n) for n in want]


def episode_probe(robot):
    """What follows the memory facts of an episode (the cue's frames, the decision): the MiniGrid
    Memory probe, the arm's own, or None for a task without a cue (BabyAI)."""
    from kv_vla_ros.sim import is_memory_task
    from kv_vla_ros.sim.minigrid.memory import MemoryEpisodeProbe

    if getattr(robot, "discrete", True) is False:
        from kv_vla_ros.sim.arm.env import ArmEpisodeProbe

        return ArmEpisodeProbe(robot)
    return MemoryEpisodeProbe(robot) if is_memory_task(robot.task) else None


def robot_command(robot, action):
    """The policy's action as ``robot.step`` takes it: an action id, or an arm command clamped to
    [-1, 1] (a non-finite one becomes a stop: no motion, the hand kept closed), as the node does."""
    if getattr(robot, "discrete", True):
        return int(action[0])
    arr = np.asarray(action, dtype=np.float64)
    if not np.isfinite(arr).all():
        return np.array([0.0, 0.0, 0.0, -1.0])
    return np.clip(arr, -1.0, 1.0)


def run_episode(robot, session, seed: int, delay_steps: int = 0, merge_rule: str = "replace",
                threshold: float | None = 0.0) -> dict:
    """One closed-loop episode; returns its record: scalars (outcome, length, tokens, and on
    tasks with a cue whether the decision was right and a cue chunk held then) plus
    ``latency_ms``, the latency of every inference. Records are all `summarize_task` needs, so
    episodes can run anywhere (`kv_vla_ros.eval.grid`). A chunked policy (π0) infers once per
    ``actions_per_inference`` steps: only the frames it read are in its cache.

    Inference delay, in simulated time (`kv_vla_ros.eval.delayed`): the world keeps stepping while
    the model thinks; an inference started from the observation of step ``t`` delivers at step
    ``t + delay_steps``, the queue meanwhile executes what it holds (or holds the last command,
    counted in ``stale_ticks``), and the chunk is merged by ``merge_rule`` as kv_vla_node merges it
    (the same `ActionQueue`). ``threshold``: the node's ``action_chunk_threshold``; None (auto):
    RTC's schedule: start with ``delay_steps`` actions queued and execute the checkpoint's
    ``actions_per_inference`` rows after the ``delay_steps`` overtaken ones (the node with
    ``actions_per_inference: n + D``, ``action_chunk_threshold: D / (n + D)``): an inference every
    ``n`` steps as without delay (this π0's history holds one frame per inference: a model
    trained at one frame per ``n`` steps is out of its distribution at another rate), the queue
    never dry; the chunk arrives as the last queued action is used, so ``replace`` and ``blend``
    act alike (no overlap left) and ``rtc`` guides it toward the old plan. ``delay_steps`` 0, threshold
    0: the synchronous loop (the world waits for the model)."""
    from kv_vla_ros.eval.delayed import DelayedChunks
    from kv_vla_ros.eval.motion import motion_record

    check_fits(robot, session.policy)
    per_inference = session.policy.default_actions_per_inference
    if threshold is None:  # auto: the checkpoint's actions after the delay (chunk rows delay .. delay + n)
        per_inference = min(per_inference + int(delay_steps), session.policy.action_chunk_length)
    chunks = DelayedChunks(session, per_inference, delay_steps, merge_rule, threshold)
    frame, instruction = robot.reset(seed)
    session.reset(instruction)
    probe = episode_probe(robot)
    wants_state = session.policy.state_dim > 0
    order = state_order(robot, session.policy)
    held, cue_held_at, cue_chunks, lat, policy_ms, scoring_ms = [], [], [], [], [], []
    commands, sources = [], []
    bytes_max = 0
    st = session.stats()
    while not robot.done:
        if probe is not None:
            # what the step's attention can read: held after the previous inference's eviction
            probe.observe(len(held))
            cue_held_at.append(cue_chunk_held(st, cue_chunks, session.steps))
        state = robot.state() if wants_state else None
        if chunks.maybe_infer(len(held), frame, state[order] if state is not None and order else state):
            if probe is not None and probe.cue_steps and probe.cue_steps[-1] == len(held):
                cue_chunks.append(session.steps - 1)  # this frame showed the cue: so does its chunk
            timings = session.stats()["latency_ms"]
            lat.append(timings["total"])
            policy_ms.append(timings.get("cache_policy", 0.0))
            scoring_ms.append(timings.get("cache_scoring", 0.0))
        action, source = chunks.action(len(held))
        st = session.stats()
        held.append(st["tokens_held"])
        bytes_max = max(bytes_max, st["bytes_held"])
        command = robot_command(robot, action)
        commands.append(np.atleast_1d(np.asarray(command, dtype=np.float64)))
        sources.append(source)
        frame = robot.step(command).frame
        if probe is not None:
            probe.after_step()
    record = {"seed": int(seed), "success": bool(robot.success), "length": len(held), "tokens_seen": st["tokens_seen"],
              "mean_held": float(np.mean(held)) if held else 0.0, "peak_held": max(held) if held else 0,
              "peak_bytes": bytes_max, "stale_ticks": chunks.stale_ticks}
    if probe is not None:
        decided = probe.decision_step is not None
        record["decision_correct"] = bool(probe.decision_correct) if decided else None
        record["cue_held_at_decision"] = cue_held_at[probe.decision_step] if decided else None
    record["latency_ms"] = lat
    record["cache_policy_ms"] = policy_ms
    record["cache_scoring_ms"] = scoring_ms
    record["commands"] = [c.tolist() for c in commands]
    if not getattr(robot, "discrete", True):
        record["motion"] = motion_record(np.stack(commands), sources, getattr(robot, "action_names", None))
    return record


def summarize_task(task: str, label: str, cache_config, records: list[dict]) -> dict:
    """Aggregate metrics of one (task, cache config) from its episode records, in seed order.
    ``per_episode`` carries every scalar field of the records (whatever `run_episode` returns)."""
    from kv_vla_ros.eval.motion import motion_summary

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
        "mean_stale_ticks": float(np.mean([r.get("stale_ticks", 0) for r in records])),
        **motion_summary(records),
        "per_episode": {k: [r[k] for r in records] for k in records[0]
                        if k not in ("latency_ms", "cache_policy_ms", "cache_scoring_ms", "motion", "commands")},
    }


def evaluate_task(model, task: str, cache_config, seeds: list[int], max_steps: int | None = None,
                  progress: bool = True, label: str = "", untrained_gate: bool = False) -> dict:
    """Run one task under one cache config; returns the aggregate metrics (+ per-episode lists).
    ``untrained_gate``: see `make_session`."""
    from kv_vla_ros.progress import progress_bar

    robot = make_robot(task, max_steps)
    try:
        session = make_session(model, cache_config, untrained_gate)
        records = [run_episode(robot, session, seed) for seed in
                   progress_bar(seeds, desc=f"{label or cache_config.eviction} {task}", disable=not progress,
                                leave=False)]
    finally:
        robot.close()
    return summarize_task(task, label or cache_config.eviction, cache_config, records)


def cue_chunk_held(stats: dict, cue_chunks: list[int], chunks: int) -> bool | None:
    """Whether the cache (``stats`` of a session) holds at least one of the chunks ``cue_chunks``
    made before the first ``chunks`` (the frames that showed the cue); None when there is none.
    Chunk ``k`` is the ``k``-th inference's frame (MiniGrid: control step ``k``): chunks not yet
    scored are in the recent window (held); scored ones are held if kept."""
    earlier = [c for c in cue_chunks if c < chunks]
    if not earlier:
        return None
    kept = set(stats.get("kept_chunks", []))
    scored = stats.get("chunks_scored", 0)
    return any(c >= scored or c in kept for c in earlier)


__all__ = ["MINIGRID_MAX_STEPS", "check_fits", "cue_chunk_held", "default_step_cap", "episode_probe", "evaluate_task",
           "make_robot", "make_session", "robot_command", "run_episode", "summarize_task"]
