"""Evaluation on Ray workers (kv_vla_ros.parallel.runner): the closed-loop grid, the bag evaluator
and the gate's rollout collection give the sequential run's results item by item; a worker
process killed mid-run loses and repeats nothing. Real Ray (a local runtime, two worker
processes), real tiny models, real MiniGrid envs, real bags."""

from __future__ import annotations

import argparse
import json
import os
import signal

import pytest
import torch

from kv_vla_ros.parallel.runner import Runner, RunnerConfig, runner_config

TINY = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 4096}
TASK = "MiniGrid-MemoryS7-v0"


def _strip(record: dict) -> dict:
    """An episode record without its step timings (``latency_ms``, ``cache_policy_ms``: the fields
    that differ between runs by nature)."""
    return {k: v for k, v in record.items() if not k.endswith("_ms")}


def _square(state, item, tick):  # a module-level work function: Ray ships it by reference
    for _ in range(item):
        tick(1)
    return state + item * item


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from kv_vla_ros.vla import VLAConfig, VLAModel

    torch.manual_seed(0)
    model = VLAModel(VLAConfig(backbone=dict(TINY), vision_hidden=16, max_instruction_tokens=8)).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("ck") / "tiny")


@pytest.fixture(scope="module")
def model(ckpt):
    from kv_vla_ros.vla import VLAModel

    return VLAModel.from_pretrained(str(ckpt))


@pytest.fixture(scope="module")
def ray_runtime():
    """One light local Ray runtime for the module (every Runner below uses it and leaves it up)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def test_runner_in_process_orders_ticks_and_validates():
    with Runner(lambda: 10, config=RunnerConfig(workers=1, progress=False), total=9, unit="frame") as runner:
        assert runner.map(_square, [3, 1, 2], units=[3, 1, 2]) == [19, 11, 14]
        assert runner.map(_square, [3], units=[3]) == [19] and runner.done_units == 9
        with pytest.raises(ValueError, match="units"):
            runner.map(_square, [1, 2], units=[1])
    with pytest.raises(ValueError, match="workers"):
        RunnerConfig(workers=0)
    with pytest.raises(ValueError, match="ray_address"):
        RunnerConfig(ray_address=" ")
    with pytest.raises(ValueError, match="--workers"):
        runner_config(argparse.Namespace(workers=0, ray_address=None))
    assert not RunnerConfig(workers=1).uses_ray and RunnerConfig(workers=1, ray_address="auto").uses_ray


def test_eval_grid_on_two_workers_equals_sequential(ray_runtime, ckpt, model, tmp_path):
    from kv_vla_ros.eval.closed_loop import evaluate_task
    from kv_vla_ros.eval.closed_loop_cli import configure, run
    from kv_vla_ros.sim import eval_seeds

    def cli(out, workers):
        parser = argparse.ArgumentParser()
        configure(parser)
        args = parser.parse_args(["--model", str(ckpt), "--tasks", "MiniGrid-MemoryS7", "MiniGrid-MemoryS9",
                                  "--episodes", "3", "--max-steps", "6", "--cache", "full",
                                  "--cache", "window:budget_frac=0.5", "--cache", "random:budget_tokens=120",
                                  "--out", str(out), "--no-progress", "--workers", str(workers)])
        assert run(args) == 0
        return json.loads((out / "results.json").read_text())

    seq, par = cli(tmp_path / "seq", 1), cli(tmp_path / "par", 2)
    assert par["meta"]["workers"] == 2 and par["meta"]["ray"] and not seq["meta"]["ray"]
    assert sum(par["meta"]["episodes_per_process"]) == 18 and len(par["meta"]["episodes_per_process"]) >= 2
    assert len(seq["results"]) == len(par["results"]) == 6
    for a, b in zip(seq["results"], par["results"]):
        assert a["per_episode"] == b["per_episode"]  # seeds, outcomes, lengths, tokens: episode by episode
        assert a["per_episode"]["seed"] == eval_seeds(3)
        assert "decision_correct" in b["per_episode"]  # the episode's own diagnostics flow through as is
        for key in ("success_rate", "mean_length", "mean_tokens_seen", "mean_tokens_held", "peak_kv_bytes",
                    "cache_label", "cache"):
            assert a[key] == b[key], key
    # ... and both equal the plain one-task-at-a-time loop (no runner at all).
    ref = evaluate_task(model, TASK, model.config.cache.replace(eviction="full"), eval_seeds(3), 6, progress=False)
    assert ref["per_episode"] == par["results"][0]["per_episode"]
    assert (tmp_path / "par" / "results.png").stat().st_size > 1000


def test_killed_worker_is_retried_and_every_episode_reported_once(ray_runtime, ckpt, model):
    from kv_vla_ros.eval.grid import episode_item, worker_state
    from kv_vla_ros.sim import eval_seeds

    cfg = model.config.cache.replace(eviction="full")
    items = [(TASK, cfg, False, seed, 8) for seed in eval_seeds(24)]
    want = [_strip(episode_item(worker_state(str(ckpt), model), item)) for item in items]
    reported, killed = [], []
    # no local_state: only the two workers run items, so the kill always hits one holding work
    with Runner(worker_state, (str(ckpt),), RunnerConfig(workers=2, progress=False)) as runner:
        before = [pid for pid, _ in runner.worker_locations()]

        def on_result(i, record):
            reported.append(i)
            if not killed:  # first result: the run has just begun
                os.kill(before[0], signal.SIGKILL)
                killed.append(len(reported))

        got = runner.map(episode_item, items, on_result=on_result)
        after = [pid for pid, _ in runner.worker_locations()]
        made_by = list(runner.item_pids)
        with pytest.raises(ValueError, match="unpack"):  # an error in the work function: raised as itself
            runner.map(episode_item, [(TASK, cfg)])
    assert killed == [1]
    assert sorted(reported) == list(range(len(items)))  # every episode once, none lost, none twice
    assert [_strip(r) for r in got] == want
    assert after[0] != before[0] and after[1] == before[1]  # Ray restarted the killed worker ...
    assert after[0] in made_by  # ... and the restarted process ran episodes
    with pytest.raises(ProcessLookupError):
        os.kill(before[0], 0)


def test_many_bags_on_workers_equal_each_bag_alone(ray_runtime, ckpt, model, tmp_path):
    from kv_vla_ros.eval import bag_eval_cli
    from kv_vla_ros.data.generate import generate_bag
    from kv_vla_ros.eval.bag_eval import evaluate_bag

    bags = tmp_path / "bags"
    for k in range(3):
        generate_bag(bags / f"b{k}", TASK, episodes=2, seed_offset=10 * k, storage="mcap" if k == 1 else "sqlite3",
                     max_steps=6)
    parser = argparse.ArgumentParser()
    bag_eval_cli.configure(parser)
    args = parser.parse_args([str(bags), "--model", str(ckpt), "--cache", "window:budget_tokens=120",
                              "--out", str(tmp_path / "out"), "--no-progress", "--workers", "2", "--flops-every", "0"])
    assert bag_eval_cli.run(args) == 0
    doc = json.loads((tmp_path / "out" / "bag_eval.json").read_text())
    alone = [evaluate_bag(bags / f"b{k}", model, ["window:budget_tokens=120"], flops_every=0, progress=False)
             for k in range(3)]
    assert doc["meta"]["episodes"] == 6 and doc["meta"]["workers"] == 2 and len(doc["meta"]["bags"]) == 3
    for label in ("full", "window:budget_tokens=120"):
        want = [[a.tolist() for a in ep] for r in alone for ep in r["actions"][label]]
        assert doc["actions"][label] == want
    for k, bag in enumerate(doc["per_bag"]):
        assert bag["bag"].endswith(f"b{k}")
        for got, ref in zip(bag["results"], alone[k]["results"]):
            assert got["agreement_recorded"] == ref["agreement_recorded"] and got["steps"] == ref["steps"]
            assert got["peak_tokens_held"] == ref["peak_tokens_held"]
    steps = sum(r["meta"]["steps"] for r in alone)
    assert doc["results"][0]["steps"] == steps and doc["results"][0]["agreement_full"]["match"] == 1.0


def test_gate_rollouts_on_workers_equal_sequential(ray_runtime, ckpt, model):
    from kv_vla_ros.train.gate_train import collect

    kw = dict(tasks=[TASK], episodes=3, seed_offset=500_000, progress=False, max_steps=6)
    seq = collect(model, **kw)
    par = collect(model, runner=RunnerConfig(workers=2, progress=False), model_path=str(ckpt), **kw)
    assert len(seq) == len(par) == 3
    for a, b in zip(seq, par):
        assert torch.equal(a.features, b.features) and torch.equal(a.mass, b.mass) and a.success == b.success
