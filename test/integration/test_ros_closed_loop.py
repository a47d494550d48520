"""The closed loop over DDS (simulator node + policy node, two processes) equals offline closed-loop
evaluation action for action; the launch files build; the demo fails in one line without a model."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest.importorskip("rclpy")

from kv_vla_ros.ros.worlds import demo  # noqa: E402
from ros_helpers import REPO, build_tiny_model  # noqa: E402


def offline_actions(model_dir, cache: dict, task: str, seed: int, max_steps: int) -> list[int]:
    import torch

    from kv_vla_ros.cache.config import CacheConfig
    from kv_vla_ros.sim import SimRobot
    from kv_vla_ros.vla import VLAModel, VLASession

    torch.set_num_threads(1)
    robot = SimRobot(task, max_steps=max_steps)
    session = VLASession(VLAModel.from_pretrained(model_dir), CacheConfig.from_dict(cache))
    frame, instruction = robot.reset(seed)
    session.reset(instruction)
    actions = []
    while not robot.done:
        actions.append(int(session.step(frame)[0]))
        frame = robot.step(actions[-1]).frame
    return actions


def test_demo_closed_loop_matches_offline_eval_action_for_action(tmp_path, capsys):
    model = build_tiny_model(tmp_path / "tiny")
    rc = demo.main(["--model", str(model), "--episodes", "2", "--max-steps", "12", "--out", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0, out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["offline"]["episodes_identical"] == 2
    # Timing is measured by `make demo` / `kv-vla bench ros`, not asserted here: a busy CI machine
    # stalls single steps. Only a real defect (no timer, publishing per frame or per inference)
    # leaves this band.
    assert 10.0 < summary["control_rate_hz"] < 30.0
    cache = summary["cache_config"]
    assert 0 < summary["peak_tokens_held"] <= cache["budget_tokens"] + cache["chunk_size"]  # + the open step
    for record in summary["per_episode"]:  # every action applied exactly once, in order
        expected = offline_actions(model, summary["cache_config"], record["task"], record["seed"], 12)
        assert record["actions"] == expected and record["steps"] == len(expected)


def test_demo_without_a_model_fails_in_one_line(tmp_path, capsys):
    assert demo.main(["--model", str(tmp_path / "nothing"), "--episodes", "1"]) == 1
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "no trained model" in out


def _load_launch(name: str):
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


POLICY_ARGUMENTS = {"model_path", "params_file", "namespace", "autostart", "use_sim_time", "image_topics",
                    "state_topic"}


@pytest.mark.parametrize("name, arguments", [
    ("kv_vla.launch.py", POLICY_ARGUMENTS),
    ("demo.launch.py", POLICY_ARGUMENTS | {"episodes", "task"}),
])
def test_launch_files_build(name, arguments):
    pytest.importorskip("launch_ros")
    from launch import LaunchContext, LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import Node

    description = _load_launch(name).generate_launch_description()
    assert isinstance(description, LaunchDescription)
    declared = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert arguments <= set(declared) and all(a.description for a in declared.values())
    context = LaunchContext()  # the arguments given on the command line, then every other's default
    context.launch_configurations.update({"model_path": "/models/pi0", "params_file": "pi0.yaml",
                                          "image_topics": "[cam_high/image_raw, cam_wrist/image_raw]"})
    for argument in declared.values():
        argument.execute(context)
    nodes = [n for e in description.entities if isinstance(e, OpaqueFunction) for n in e.execute(context)]
    assert any(isinstance(n, Node) for n in nodes)


def test_launch_arguments_override_the_params_file_only_when_given():
    pytest.importorskip("launch_ros")
    from kv_vla_ros.ros.node.launch_args import policy_overrides

    values = {"model_path": "/m", "namespace": "", "autostart": "true", "use_sim_time": "false",
              "image_topics": "", "state_topic": ""}
    assert policy_overrides(values) == {"model_path": "/m", "autostart": True, "use_sim_time": False}
    given = policy_overrides({**values, "autostart": "false", "image_topics": "[cam_high/image_raw, cam_wrist]",
                              "state_topic": "joint_states"})
    assert given["autostart"] is False and given["image_topics"] == ["cam_high/image_raw", "cam_wrist"]
    assert given["state_topic"] == "joint_states"
    for name in ("autostart", "use_sim_time"):  # `autostart:=1` once read as false, silently
        with pytest.raises(ValueError, match=f"{name}: expected one of true, false, True, False, got '1'"):
            policy_overrides({**values, name: "1"})
        assert policy_overrides({**values, name: "True"})[name] is True  # as ROS 2 guides write it
        assert policy_overrides({**values, name: "False"})[name] is False


def test_launch_files_are_valid_python_without_launch_ros():
    for path in (REPO / "launch").glob("*.launch.py"):
        compile(path.read_text(), str(path), "exec")
