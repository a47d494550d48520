"""`--workers 2` on a private local runtime (what a user gets on one machine): this process is one
of the two workers and runs episodes while Ray starts on a background thread, one actor does the
rest; the results equal the sequential run's item by item, and the runtime is gone afterwards.
(test_parallel.py shares one runtime across its tests, so it exercises the other path: a runtime
the caller started.)"""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch

from kv_vla_ros.parallel.runner import Runner, RunnerConfig

TINY = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 4096}


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.endswith("_ms")}  # step timings differ by nature


def _ray_processes_of(pid: int) -> list[str]:
    """Command lines of this process's descendants that are Ray's (GCS, raylet, agents, workers)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, stack = [], list(children.get(pid, []))
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in cmd:
            out.append(cmd[:120])
    return out


def _episode_once_ray_is_up(state, item, tick):
    """`episode_item`; in the calling process (its state says so), first wait for Ray to be up, so
    that the actor surely gets items however fast this process alone would be."""
    from kv_vla_ros.eval.grid import episode_item

    if state.get("caller"):
        import ray

        while not ray.is_initialized():
            time.sleep(0.05)
        if not state.get("waited"):  # once: time for the launch to create the actor and hand it out
            state["waited"] = True
            time.sleep(0.5)
    return episode_item(state, item, tick)


def test_private_runtime_caller_works_and_results_equal_sequential(tmp_path):
    ray = pytest.importorskip("ray")
    from kv_vla_ros.eval.grid import episode_item, worker_state
    from kv_vla_ros.sim import eval_seeds
    from kv_vla_ros.vla import VLAConfig, VLAModel

    assert not ray.is_initialized()
    torch.manual_seed(2)
    path = str(VLAModel(VLAConfig(backbone=dict(TINY), vision_hidden=16, max_instruction_tokens=8)).eval()
               .save_pretrained(tmp_path / "tiny"))
    model = VLAModel.from_pretrained(path)
    cfg = model.config.cache.replace(eviction="full")
    items = [(task, cfg, False, seed, 8) for task in ("MiniGrid-MemoryS7-v0", "MiniGrid-MemoryS9-v0")
             for seed in eval_seeds(8, 70)]
    want = [_strip(episode_item(worker_state(path, model), item)) for item in items]
    local = {**worker_state(path, model), "caller": True}
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    reported = []
    with Runner(worker_state, (path,), RunnerConfig(workers=2, progress=False), local_state=local) as runner:
        got = runner.map(_episode_once_ray_is_up, items, on_result=lambda i, _: reported.append(i))
        made_by, workers, works = list(runner.item_pids), runner.workers, runner.driver_works
    assert [_strip(r) for r in got] == want  # seeds, outcomes, lengths, tokens: item by item
    assert sorted(reported) == list(range(len(items)))  # each once
    assert works and workers == 2 and os.getpid() in made_by and len(set(made_by)) == 2  # caller + 1 actor
    t = runner.timings
    assert 0 < t["ray_init_s"] <= t["startup_s"] and t["shutdown_s"] >= 0 and len(t["actors_ready_s"]) == 1
    assert not ray.is_initialized() and _ray_processes_of(os.getpid()) == []  # nothing left running
