"""kv_vla_node as a ROS 2 user meets it, over real DDS in separate processes: the shipped
model without a params file is bounded, an unbounded cache warns with its growth, a default-QoS
`ros2 topic pub` instruction works (and a latched one sent before start-up still arrives, once),
layout cache changes apply from the next episode, wrong types are named, and reset / new
instructions mid-episode keep a closed loop with the simulator running."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("rclpy")

from kv_vla_ros.ros.processes import (POLICY_MODULE, SIM_MODULE, pick_domain_id, pick_free_domain_id,  # noqa: E402
                                      spawn_node, stop_node)
from ros_helpers import PARAMS_FILE, Probe, build_tiny_model, serving, wait_until_up  # noqa: E402


def _stream(probe: Probe, seconds: float) -> threading.Thread:
    thread = threading.Thread(target=probe.stream_frames, args=(seconds, 20.0), daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped model, no params file (as `ros2 run kv_vla_ros kv_vla_node`); a latched
    instruction was published before the node started."""
    from std_msgs.msg import String

    from kv_vla_ros.ros.node.kv_vla_node import LATCHED_INSTRUCTION_QOS

    tmp = tmp_path_factory.mktemp("shipped")
    domain = pick_free_domain_id(salt=41)
    probe = Probe(domain)
    latched = probe.node.create_publisher(String, "instruction", LATCHED_INSTRUCTION_QOS)
    latched.publish(String(data="go to the red ball"))
    proc = spawn_node(POLICY_MODULE, domain, {"stale_timeout_s": 2.0}, None, tmp / "node.log")
    with serving(probe, proc, tmp / "node.log") as probe:
        yield probe


def test_shipped_model_without_params_file_runs_a_bounded_cache(shipped):
    from kv_vla_ros.vla import DEFAULT_MODEL_PATH

    shipped_budget = json.loads((DEFAULT_MODEL_PATH / "config.json").read_text())["cache"]["budget_tokens"]
    diag = shipped.last_diag(after=time.monotonic())
    cache = json.loads(diag["cache_config"])
    assert cache["eviction"] != "full" and shipped_budget is not None, cache
    assert cache["budget_tokens"] == shipped_budget, cache
    assert shipped.get_params(["cache.budget_tokens"])["cache.budget_tokens"] == shipped_budget
    assert "UNBOUNDED" not in shipped.log.read_text()


def test_latched_and_default_qos_instructions_both_arrive_once(shipped):
    from std_msgs.msg import String

    # the latched instruction published before start-up: one episode, not two (two subscriptions)
    assert shipped.wait_for(lambda: shipped.last_diag(after=time.monotonic())["instruction"] == "go to the red ball")
    assert int(shipped.last_diag(after=time.monotonic())["episodes"]) == 1
    plain = shipped.node.create_publisher(String, "instruction", 10)  # what `ros2 topic pub` offers
    assert shipped.wait_for(lambda: shipped.node.count_subscribers("instruction") >= 1, timeout=5)
    time.sleep(0.5)  # discovery of the reverse direction
    plain.publish(String(data="go to the key"))
    assert shipped.wait_for(lambda: shipped.last_diag(after=time.monotonic())["instruction"] == "go to the key",
                            timeout=8)
    assert int(shipped.last_diag(after=time.monotonic())["episodes"]) == 2
    assert "incompatible QoS" not in shipped.log.read_text()


def test_layout_cache_changes_apply_from_the_next_episode(shipped):
    shipped.publish_instruction("go to the key")
    _stream(shipped, 1.5).join()
    assert int(shipped.last_diag(after=time.monotonic())["tokens_seen"]) > 0  # an episode is open
    (result,) = shipped.set_params(**{"cache.eviction": "window"})
    assert result.successful, result.reason
    assert shipped.wait_for(lambda: "eviction=window (applies from the next episode" in shipped.log.read_text())
    diag = shipped.last_diag(after=time.monotonic())
    assert json.loads(diag["cache_config"])["eviction"] == "gated"  # the running cache keeps its layout
    assert json.loads(diag["cache_config_pending"])["eviction"] == "window"
    (result,) = shipped.set_params(**{"cache.budget_tokens": 80})  # stacks on the pending change
    assert result.successful
    shipped.publish_instruction("go to the door")
    _stream(shipped, 1.5).join()
    diag = shipped.last_diag(after=time.monotonic())
    cache = json.loads(diag["cache_config"])
    assert (cache["eviction"], cache["budget_tokens"], diag["cache_config_pending"]) == ("window", 80, "")
    results = shipped.set_params(**{"cache.eviction": "gated", "cache.static": True})
    assert all(r.successful for r in results), results
    assert shipped.reset().success
    start = time.monotonic()
    _stream(shipped, 2.0).join()
    diag = shipped.last_diag(after=time.monotonic())
    cache = json.loads(diag["cache_config"])
    assert cache["static"] is True and cache["eviction"] == "gated"
    assert 0 < int(diag["tokens_held"]) <= 80 and int(diag["inference_errors"]) == 0
    assert any(a[1] for a in shipped.actions_since(start))  # acting under the static cache
    (result,) = shipped.set_params(**{"cache.layer_budgets": [500]})  # one budget for a 4-layer model
    assert not result.successful and result.reason.startswith("cache."), result.reason
    assert all(r.successful for r in shipped.set_params(**{"cache.static": False, "cache.budget_tokens": 96}))


def test_a_tighter_budget_shows_in_diagnostics_at_once(shipped):
    """A live tighter budget evicts at once: diagnostics show the tokens held under it (and its
    config) from the next report, not the figures of the last frame until another frame comes."""
    shipped.publish_instruction("go to the key")
    _stream(shipped, 3.0).join()  # ~60 frames: 16 + 5 per step seen, far over the budget of 96
    diag = shipped.last_diag(after=time.monotonic())
    assert json.loads(diag["cache_config"])["budget_tokens"] == 96
    assert int(diag["tokens_seen"]) > 96 and 48 < int(diag["tokens_held"]) <= 96, diag
    bytes_before = int(diag["kv_bytes"])
    try:
        (result,) = shipped.set_params(**{"cache.budget_tokens": 48})  # no frame comes after this
        assert result.successful, result.reason
        diag = shipped.last_diag(after=time.monotonic())
        assert json.loads(diag["cache_config"])["budget_tokens"] == 48
        assert 0 < int(diag["tokens_held"]) <= 48, diag
        assert 0 < int(diag["kv_bytes"]) < bytes_before
    finally:
        assert shipped.set_params(**{"cache.budget_tokens": 96})[0].successful


def test_diagnostics_show_the_gates_last_scores_and_the_chunks_it_keeps(shipped):
    shipped.publish_instruction("go to the key")
    _stream(shipped, 2.0).join()  # ~40 steps: chunks leave the window and are scored, many evicted
    diag = shipped.last_diag(after=time.monotonic())
    assert json.loads(diag["cache_config"])["eviction"] == "gated"
    scores, kept = json.loads(diag["gate_scores"]), json.loads(diag["kept_chunks"])
    assert scores and all(0.0 <= v <= 1.0 for v in scores.values()), diag["gate_scores"]
    steps = int(diag["steps"])
    assert all(0 <= int(c) < steps for c in scores)
    assert kept == sorted(kept) and len(kept) * 5 < int(diag["tokens_held"]) <= 96, diag


def test_wrong_parameter_types_are_named(shipped):
    (result,) = shipped.set_params(control_rate_hz="fast")
    assert not result.successful
    assert "control_rate_hz" in result.reason and "double" in result.reason and "string" in result.reason
    (result,) = shipped.set_params(enabled=3)
    assert not result.successful and "bool" in result.reason and "integer" in result.reason
    assert shipped.set_params(control_rate_hz=25)[0].successful  # an integer for a double: taken as 25.0
    value = shipped.get_params(["control_rate_hz"])["control_rate_hz"]
    assert value == 25.0 and isinstance(value, float)
    assert shipped.set_params(control_rate_hz=20.0)[0].successful


def _run_node(args: list[str], timeout: float = 90) -> tuple[int, str]:
    env = {**__import__("os").environ, "ROS_DOMAIN_ID": str(pick_domain_id(salt=47))}
    proc = subprocess.run([sys.executable, "-m", POLICY_MODULE, "--ros-args", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_unbounded_cache_warns_at_start_up_with_its_growth(tmp_path):
    from kv_vla_ros.cache import kv_bytes_per_token
    from kv_vla_ros.vla import VLAModel

    model_dir = build_tiny_model(tmp_path / "tiny")  # its own cache config: full, no budget
    model = VLAModel.from_pretrained(model_dir)
    per_step = kv_bytes_per_token(model.backbone.config, 4) * model.config.tokens_per_step
    domain = pick_free_domain_id(salt=43)
    probe = Probe(domain)
    proc = spawn_node(POLICY_MODULE, domain, {"model_path": str(model_dir)}, None, tmp_path / "node.log")
    try:
        wait_until_up(probe, proc, tmp_path / "node.log")
    finally:
        probe.close()
        stop_node(proc)
    warnings = [line for line in (tmp_path / "node.log").read_text().splitlines() if "UNBOUNDED" in line]
    assert len(warnings) == 1 and "WARN" in warnings[0], warnings
    assert f"{per_step} bytes per control step" in warnings[0]


def test_wrong_parameter_type_at_start_up_names_the_types():
    rc, output = _run_node(["-p", "control_rate_hz:=fast"])
    assert rc == 1 and "Traceback" not in output, output
    assert "control_rate_hz: expected a double" in output and "got a string ('fast')" in output


def test_cuda_without_a_gpu_says_so():
    import torch

    from kv_vla_ros.ros.node.session_setup import StartupError, load_session

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(StartupError, match="no CUDA device is available"):
        load_session("", "cuda", "float32", 1)
    with pytest.raises(StartupError, match="^device: 'gpu0' is not a torch device"):
        load_session("", "gpu0", "float32", 1)


def test_reset_and_new_instructions_mid_episode_keep_the_closed_loop_running(tmp_path):
    """The simulator re-sends its view with the same stamp until an action for it arrives; a reset
    that drops that view's pending action must not leave the node filtering it as a repeat."""
    from std_msgs.msg import String

    from kv_vla_ros.ros.worlds.sim_node_common import RESULTS_QOS

    model = build_tiny_model(tmp_path / "tiny")
    domain = pick_free_domain_id(salt=45)
    probe = Probe(domain)
    results = []
    probe.node.create_subscription(String, "minigrid_sim_node/episode", lambda m: results.append(json.loads(m.data)),
                                   RESULTS_QOS)
    policy = spawn_node(POLICY_MODULE, domain, {"model_path": str(model)}, PARAMS_FILE, tmp_path / "policy.log")
    sim = None
    try:
        wait_until_up(probe, policy, tmp_path / "policy.log")
        sim = spawn_node(SIM_MODULE, domain, {"task": "MiniGrid-MemoryS13Random-v0", "episodes": 3, "max_steps": 20},
                         None, tmp_path / "sim.log")
        assert probe.wait_for(lambda: any(a[1] for a in probe.actions), timeout=60), (tmp_path / "sim.log").read_text()
        for k in range(6):  # resets at many phases of the frame / action cycle
            if k % 3 == 0:
                assert probe.reset().success
            elif k % 3 == 1:
                probe.publish_instruction(f"go to the door {k}")
            else:
                assert probe.set_params(instruction=f"go to the key {k}")[0].successful
            time.sleep(0.37)
        ok = probe.wait_for(lambda: len(results) == 3, timeout=90)
        logs = (tmp_path / "policy.log").read_text()[-2000:] + (tmp_path / "sim.log").read_text()[-2000:]
        assert ok, f"{len(results)} of 3 episodes finished after resets mid-episode\n{logs}"
        assert all(r["steps"] > 0 for r in results)
        assert int(probe.last_diag(after=time.monotonic())["episodes"]) >= 3 + 6
    finally:
        probe.close()
        if sim is not None:
            stop_node(sim)
        stop_node(policy)


def test_a_live_value_that_does_not_fit_the_loaded_model_is_refused_at_once(shipped):
    """``ros2 param set /kv_vla_node cache.layer_budgets "[30, ...]"`` with one budget too many is
    refused with the model's layer count, the running cache unchanged; a fitting value applies."""
    from kv_vla_ros.vla import DEFAULT_MODEL_PATH, VLASession, load_policy

    layers = VLASession(load_policy(DEFAULT_MODEL_PATH)).attention_layers
    before = json.loads(shipped.last_diag(after=time.monotonic())["cache_config"])
    budget = before["budget_tokens"]
    (result,) = shipped.set_params(**{"cache.layer_budgets": [budget] * (layers + 6)})
    assert not result.successful
    assert f"{layers + 6} budgets for {layers} attention layers" in result.reason, result.reason
    assert json.loads(shipped.last_diag(after=time.monotonic())["cache_config"])["layer_budgets"] is None
    try:
        (result,) = shipped.set_params(**{"cache.layer_budgets": [budget] * layers})
        assert result.successful, result.reason
    finally:
        assert shipped.set_params(**{"cache.layer_budgets": [-1]})[0].successful
