"""Helpers of the ROS tests: a tiny VLA checkpoint, a probe node in the test process (real rclpy,
real DDS on a private domain), and image message builders."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "kv_vla.yaml"


def params_file_value(name: str):
    """A parameter's value in the shipped params file (config/kv_vla.yaml)."""
    import yaml

    return yaml.safe_load(PARAMS_FILE.read_text())["/**/kv_vla_node"]["ros__parameters"][name]


def build_tiny_model(directory: Path) -> Path:
    """A tiny random VLA shaped like the shipped one (56 px frames, 8 px patches pooled to 4 tokens,
    16-token prefix: chunk_size 5, sink_tokens 16), so config/kv_vla.yaml loads into it."""
    import torch

    from kv_vla_ros.vla import VLAConfig, VLAModel

    torch.manual_seed(0)
    backbone = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 8192}
    cfg = VLAConfig(backbone=backbone, image_size=56, patch_size=8, vision_hidden=32, frame_tokens=4,
                    max_instruction_tokens=16)
    VLAModel(cfg).save_pretrained(directory)
    return directory


def rgb_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


class FakeImage:
    """Duck-typed sensor_msgs/Image for the pure conversion tests."""

    def __init__(self, height, width, encoding, step, data, is_bigendian=0):
        self.height, self.width, self.encoding, self.step, self.data = height, width, encoding, step, data
        self.is_bigendian = is_bigendian


class Probe:
    """A node in the test process: publishes frames/instructions, records actions, cmd_vel and
    diagnostics with arrival times, sets parameters and calls services. Spins in a thread."""

    def __init__(self, domain_id: int, name: str = "test_probe", namespace: str = ""):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Twist
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import Float32MultiArray, String

        from kv_vla_ros.ros.node.kv_vla_node import INSTRUCTION_QOS

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        os.environ.pop("ROS_LOCALHOST_ONLY", None)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.ns = namespace.rstrip("/")  # the policy node's namespace: relative topics and its services
        self.node = rclpy.create_node(name, context=self.context, namespace=namespace or None)
        self.lock = threading.Lock()
        self.actions: list[tuple[float, list[float], list[str]]] = []
        self.twists: list[tuple[float, float, float]] = []
        self.diagnostics: list[tuple[float, dict, int, str]] = []
        self.node.create_subscription(Float32MultiArray, "action", self._on_action, 100)
        self.node.create_subscription(Twist, "cmd_vel", self._on_twist, 100)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.image_pub = self.node.create_publisher(Image, "image", qos_profile_sensor_data)
        self.compressed_pub = self.node.create_publisher(CompressedImage, "image/compressed", qos_profile_sensor_data)
        self.instruction_pub = self.node.create_publisher(String, "instruction", INSTRUCTION_QOS)
        self._Image, self._CompressedImage, self._String = Image, CompressedImage, String
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_action(self, msg):
        with self.lock:
            self.actions.append((time.monotonic(), list(msg.data), [d.label for d in msg.layout.dim]))

    def _on_twist(self, msg):
        with self.lock:
            self.twists.append((time.monotonic(), msg.linear.x, msg.angular.z))

    def _on_diag(self, msg):
        for status in msg.status:
            if status.name.startswith("kv_vla_node"):
                with self.lock:
                    self.diagnostics.append((time.monotonic(), {kv.key: kv.value for kv in status.values},
                                             status.level[0] if isinstance(status.level, bytes) else status.level,
                                             status.message))

    # ---- publishing -------------------------------------------------------------------------
    def stamp(self):
        return self.node.get_clock().now().to_msg()

    def publish_image(self, height=None, width=None, encoding="rgb8", step=None, data=None, rgb=None, seed=0):
        msg = self._Image()
        if rgb is None and data is None:
            rgb = rgb_image(height or 40, width or 40, seed)
        if rgb is not None:
            height, width = rgb.shape[:2]
            data = rgb.tobytes()
            step = width * 3 if step is None else step
        msg.height, msg.width, msg.encoding = int(height), int(width), encoding
        msg.step = int(step if step is not None else width * 3)
        msg.data = bytes(data)
        msg.header.stamp = self.stamp()
        self.image_pub.publish(msg)

    def publish_compressed(self, data: bytes, fmt: str = "jpeg"):
        msg = self._CompressedImage(format=fmt, data=bytes(data))
        msg.header.stamp = self.stamp()
        self.compressed_pub.publish(msg)

    def publish_instruction(self, text: str):
        self.instruction_pub.publish(self._String(data=text))

    def stream_frames(self, seconds: float, rate_hz: float = 25.0, seed: int = 0):
        """Publish random 40x40 rgb8 frames for ``seconds`` (blocking)."""
        end, k = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            self.publish_image(40, 40, seed=seed + k)
            k += 1
            time.sleep(1.0 / rate_hz)

    # ---- services ---------------------------------------------------------------------------
    def _call(self, srv_type, name: str, request, timeout: float = 10.0):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} not available")
            future = client.call_async(request)
            end = time.monotonic() + timeout
            while not future.done() and time.monotonic() < end:
                time.sleep(0.01)
            if not future.done():
                raise TimeoutError(f"service {name} did not answer")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_params(self, node_name: str = "kv_vla_node", **values):
        """-> list of SetParametersResult (one per parameter, in order)."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(parameters=[Parameter(k.replace("__", "."), value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        return self._call(SetParameters, f"{self.ns}/{node_name}/set_parameters", request).results

    def get_params(self, names: list[str], node_name: str = "kv_vla_node") -> dict:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        result = self._call(GetParameters, f"{self.ns}/{node_name}/get_parameters", GetParameters.Request(names=names))
        return {n: parameter_value_to_python(v) for n, v in zip(names, result.values)}

    def list_params(self, node_name: str = "kv_vla_node") -> list[str]:
        from rcl_interfaces.srv import ListParameters

        answer = self._call(ListParameters, f"{self.ns}/{node_name}/list_parameters", ListParameters.Request())
        return list(answer.result.names)

    def reset(self, node_name: str = "kv_vla_node"):
        from std_srvs.srv import Trigger

        return self._call(Trigger, f"{self.ns}/{node_name}/reset", Trigger.Request())

    # ---- reading ----------------------------------------------------------------------------
    def actions_since(self, t: float):
        with self.lock:
            return [a for a in self.actions if a[0] >= t]

    def last_diag(self, after: float = 0.0, timeout: float = 4.0) -> dict:
        """The first diagnostics received after ``after`` (waits for it)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                fresh = [d for d in self.diagnostics if d[0] > after]
            if fresh:
                return fresh[0][1]
            time.sleep(0.05)
        raise TimeoutError("no diagnostics")

    def wait_for(self, predicate, timeout: float = 10.0, period: float = 0.05) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(period)
        return False

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def wait_until_up(probe: Probe, proc, log: Path, timeout: float = 90.0, lifecycle: str = "active") -> None:
    """Wait for the node's diagnostics to report its ``lifecycle`` state (a lifecycle node reports
    before ``configure`` has loaded the checkpoint); fail with its log if it exits or never does."""
    import pytest

    def up():
        return proc.poll() is not None or any(d[1].get("lifecycle", "active") == lifecycle for d in probe.diagnostics)

    if not probe.wait_for(up, timeout=timeout):
        pytest.fail(f"kv_vla_node did not come up ({lifecycle}):\n" + log.read_text())
    assert proc.poll() is None, log.read_text()


@contextlib.contextmanager
def serving(probe: Probe, proc, log: Path, timeout: float = 90.0, lifecycle: str = "active"):
    """The node process ``proc`` up, as ``probe`` (with ``.proc`` and ``.log``); on exit: probe
    closed, node stopped with SIGINT, its log tail printed, and a clean exit checked."""
    from kv_vla_ros.ros.processes import stop_node

    try:
        wait_until_up(probe, proc, log, timeout, lifecycle)
        probe.proc, probe.log = proc, log
        yield probe
    finally:
        probe.close()
        rc = stop_node(proc)
        print(log.read_text()[-3000:])
        assert rc == 0, f"kv_vla_node exited with {rc} on SIGINT"
