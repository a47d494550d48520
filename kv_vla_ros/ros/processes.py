"""Run ROS nodes as child processes on a private DDS domain over loopback (demo, bench, tests).

Needs no ROS 2 install and no `ros2 run`: a node is ``python -m <module> --ros-args ...``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLICY_MODULE = "kv_vla_ros.ros.node.kv_vla_node"
SIM_MODULE = "kv_vla_ros.ros.worlds.minigrid_sim_node"
ARM_SIM_MODULE = "kv_vla_ros.ros.worlds.arm_sim_node"


def pick_domain_id(salt: int = 0) -> int:
    """A DDS domain unlikely to be shared with another run on this machine (1..100)."""
    return 1 + (os.getpid() * 7 + salt) % 100


def pick_free_domain_id(salt: int = 0, listen_s: float = 0.7, tries: int = 6) -> int:
    """Like ``pick_domain_id``, but skips a domain where some node already runs on this machine
    (another demo, test or bag replay would otherwise mix its messages into ours)."""
    import rclpy

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    domain = pick_domain_id(salt)
    for attempt in range(tries):
        domain = pick_domain_id(salt + 13 * attempt)
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        try:
            node = rclpy.create_node("kv_vla_domain_probe", context=context)
            time.sleep(listen_s)  # discovery on loopback announces within a few hundred ms
            others = [n for n in node.get_node_names() if n != "kv_vla_domain_probe"]
            node.destroy_node()
        finally:
            context.try_shutdown()
        if not others:
            return domain
    return domain


def ros_env(domain_id: int) -> dict[str, str]:
    """Environment of a child node: its own domain, discovery on this machine only."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # Kilted's replacement of ROS_LOCALHOST_ONLY
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated: rclpy warns when both are set
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def param_args(params: dict) -> list[str]:
    """``{"a": 1, "b": [1.0, 2.0]}`` -> ``["-p", "a:=1", "-p", "b:=[1.0, 2.0]"]``."""
    out = []
    for name, value in params.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(str(v) for v in value) + "]"
        else:
            text = str(value)
        out += ["-p", f"{name}:={text}"]
    return out


def spawn_node(module: str, domain_id: int, params: dict | None = None, params_file: str | Path | None = None,
               log_path: str | Path | None = None, extra_args: list[str] | None = None,
               script: str | Path | None = None, env_extra: dict | None = None) -> subprocess.Popen:
    """Start ``python -m module --ros-args ...`` (or ``python script``); output to ``log_path``."""
    ros_args = ["--ros-args"]
    if params_file:
        ros_args += ["--params-file", str(params_file)]
    ros_args += param_args(params or {}) + list(extra_args or [])
    cmd = [sys.executable] + ([str(script)] if script else ["-m", module]) + ros_args
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    try:
        env = {**ros_env(domain_id), **(env_extra or {})}
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log_path:
            out.close()


def stop_node(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT (the nodes publish stop and exit cleanly), then SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


# ---- a client of kv_vla_node's services (the benchmarks) -------------------------------------------
def _call(rclpy, node, srv_type, name: str, request, timeout: float = 10.0):
    client = node.create_client(srv_type, name)
    try:
        if not client.wait_for_service(timeout_sec=30):
            raise SystemExit(f"bench: service {name} of kv_vla_node did not come up")
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        return future.result()
    finally:
        node.destroy_client(client)


def set_params(rclpy, node, values: dict) -> list:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
    return _call(rclpy, node, SetParameters, "/kv_vla_node/set_parameters", request).results


def get_params(rclpy, node, names: list[str]) -> dict:
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    values = _call(rclpy, node, GetParameters, "/kv_vla_node/get_parameters", GetParameters.Request(names=names)).values
    return {name: parameter_value_to_python(v) for name, v in zip(names, values)}


def wait_active(rclpy, node, diagnostics: list, proc, timeout: float = 120.0) -> None:
    """Until kv_vla_node (a lifecycle node: its parameter services come up before configure has
    loaded the checkpoint) reports ``lifecycle: active`` on /diagnostics. ``diagnostics``: the
    ``(time, {key: value})`` pairs a subscription of ``node`` appends to."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if diagnostics and diagnostics[-1][1].get("lifecycle") == "active":
            return
        rclpy.spin_once(node, timeout_sec=0.2)
    raise SystemExit("bench: kv_vla_node did not become active (see its log)")


__all__ = ["set_params", "get_params", "wait_active", "pick_domain_id", "pick_free_domain_id", "ros_env", "param_args",
           "spawn_node", "stop_node",
           "POLICY_MODULE", "SIM_MODULE", "ARM_SIM_MODULE"]
