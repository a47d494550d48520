"""`kv_vla_node`: a VLA policy as a ROS 2 control node (see docs/ros.md for the interface).

Threads: the control timer ticks in its own callback group at ``control_rate_hz`` whatever the
inference rate, executing the policy's action chunk one action per tick; an `InferenceWorker`
thread runs the model on the newest inputs (cameras, robot state) once the chunk's
``actions_per_inference`` actions were used; subscriptions only hand messages over. Everything
decided per tick lives in `ControlLoop` (pure, tested alone).
"""

from __future__ import annotations

import collections
import functools
import math
import signal
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, MultiArrayDimension, String
from std_srvs.srv import Trigger

from kv_vla_ros.ros.control import (CHUNK_INDEX_PREFIX, ControlLoop, RollingStats, TwistAdapter, broadcast_limits,
                                    format_source_stamp)
from kv_vla_ros.ros.diagnostics import input_values, policy_status
from kv_vla_ros.data.image_conversion import compressed_to_rgb, image_to_rgb, shrink_for_model
from kv_vla_ros.ros.inference import InferenceWorker
from kv_vla_ros.ros.param_specs import (NODE_PARAMS, POLICY_PARAMS, RENAMED_PARAMS, apply_renamed_params,
                                        cache_changes_from_params, cache_param_specs, coerce_param,
                                        policy_param_specs, renamed_param_specs)
from kv_vla_ros.ros.param_descriptors import coerce_parameters, declare_specs
from kv_vla_ros.ros.session_setup import (StartupError, cache_error, check_inputs, load_session, pending_json,
                                          reconfigure, state_from_msg, unbounded_cache_warning)

NODE_NAME = "kv_vla_node"
# Two subscriptions on `instruction`: a volatile one matches every reliable publisher (a plain
# `ros2 topic pub` offers volatile durability, which a transient-local subscription refuses), and,
# for the first LATCHED_WINDOW_S after start-up, a transient-local one that also receives the
# instruction a latched publisher sent before this node started. A latched message arrives on
# both: deduplicated by its source timestamp.
INSTRUCTION_QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.VOLATILE)
LATCHED_INSTRUCTION_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
LATCHED_WINDOW_S = 5.0  # how long after start-up the transient-local subscription listens


class KVVLANode(Node):
    def __init__(self, session_factory=None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._now = time.monotonic
        p = self._declare([spec for spec in NODE_PARAMS if spec.name not in POLICY_PARAMS])
        self._stamp_lock = threading.Lock()
        self.policy, self.session = load_session(p["model_path"], p["device"], p["dtype"], p["num_threads"],
                                                 session_factory)
        self.discrete, action_dim = self.policy.discrete, self.policy.action_dim
        state_note = check_inputs(self.policy, p["image_topics"], p["state_topic"], p["state_type"])
        self.image_topics = list(p["image_topics"])
        self.state_topic = p["state_topic"] if self.policy.state_dim else ""
        cache_specs = cache_param_specs(self.session.cache_config)
        late_specs = policy_param_specs(self.policy.chunk_length)
        self._specs = {spec.name: spec for spec in NODE_PARAMS + late_specs + cache_specs + renamed_param_specs()}
        p.update(self._declare(late_specs))
        self._syncing_renamed = False
        cache_values = self._renamed(self._declare(cache_specs + renamed_param_specs()), at_start=True)
        inputs = self.image_topics + ([self.state_topic] if self.state_topic else [])
        try:  # parameter overrides (params file, command line) on top of the model's cache config
            try:
                self.session.set_cache_config(self.session.cache_config.replace(
                    **cache_changes_from_params(cache_values)))
                self.session.set_compile(p["compile"])
            except ValueError as exc:
                raise cache_error(exc) from None
            self.loop = ControlLoop(self.discrete, self.policy.num_actions, action_dim, p["stale_timeout_s"],
                                    p["enabled"], p["action.min"], p["action.max"], inputs,
                                    self._actions_per_inference(p["actions_per_inference"]))
        except ValueError as exc:
            raise StartupError(f"bad parameter: {exc}") from None
        self.twist = TwistAdapter(self.discrete, p["twist.discrete_linear"], p["twist.discrete_angular"],
                                  p["twist.linear_index"], p["twist.angular_index"], p["max_linear"], p["max_angular"])
        self.control_rate_hz = p["control_rate_hz"]
        self.max_pixels = p["max_image_pixels"]
        self.tick_interval_ms = RollingStats()
        self._ticks, self._last_tick, self._last_state = 0, None, ""
        self._last_cmd = None
        self._last_stamps: list = [None] * len(self.image_topics)
        self.frames_repeated = 0
        self.states_received, self.states_rejected = 0, 0
        self._recent_instructions: collections.deque = collections.deque(maxlen=16)
        self.worker = InferenceWorker(self.session, self._to_rgb, self._on_chunk, self._on_error, self._now,
                                      len(self.image_topics), self._ready_for_step)

        control_group = MutuallyExclusiveCallbackGroup()  # the tick never waits behind anything
        io_group = MutuallyExclusiveCallbackGroup()
        self.action_pub = self.create_publisher(Float32MultiArray, "action", 10)
        self.cmd_vel_pub = self.create_publisher(Twist, "cmd_vel", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        for camera, topic in enumerate(self.image_topics):
            on_image = functools.partial(self._on_image, camera)
            self.create_subscription(Image, topic, on_image, qos_profile_sensor_data, callback_group=io_group)
            if p["use_compressed"]:
                self.create_subscription(CompressedImage, f"{topic}/compressed", on_image, qos_profile_sensor_data,
                                         callback_group=io_group)
        if self.state_topic:  # sensor-data QoS matches reliable and best-effort publishers
            state_msg = JointState if p["state_type"] == "joint_state" else Float32MultiArray
            self.create_subscription(state_msg, self.state_topic, self._on_state, qos_profile_sensor_data,
                                     callback_group=io_group)
        self.create_subscription(String, "instruction", self._on_instruction, INSTRUCTION_QOS,
                                 callback_group=io_group)
        # The latched instruction a publisher sent before this node started arrives within discovery;
        # the transient-local subscription then goes, so that a later `ros2 topic pub` (volatile)
        # does not warn "incompatible QoS" on the publisher's side. Its own such events are muted:
        # a volatile publisher matches the subscription above.
        self._latched_sub = self.create_subscription(
            String, "instruction", self._on_instruction, LATCHED_INSTRUCTION_QOS, callback_group=io_group,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda _event: None))
        self._latched_timer = self.create_timer(LATCHED_WINDOW_S, self._end_latched_window, callback_group=io_group)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=io_group)
        self.control_timer = self.create_timer(1.0 / self.control_rate_hz, self._tick, callback_group=control_group)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup())
        self.add_pre_set_parameters_callback(lambda params: coerce_parameters(params, self._specs))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._sync_renamed)
        self.worker.start()
        if p["instruction"]:
            self._start_episode(p["instruction"])
        cfg = self.session.cache_config
        self.get_logger().info(
            f"ready: model {p['model_path'] or 'shipped'} ({self.policy.model_type}, "
            f"{'discrete' if self.discrete else 'continuous'} actions, chunks of {self.policy.chunk_length}, "
            f"{self.loop.queue.actions_per_inference} executed per inference), cameras {self.image_topics}, "
            f"state {self.state_topic or 'none'}, cache {cfg.eviction} "
            f"(budget {cfg.budget_tokens if cfg.budget_tokens is not None else 'none'}), {self.control_rate_hz:g} Hz")
        if state_note:
            self.get_logger().warning(state_note)
        self._warn_if_unbounded(cfg)

    def _actions_per_inference(self, value: int) -> int:
        """The ``actions_per_inference`` parameter (0: the checkpoint's default) -> actions executed."""
        return int(value) or self.policy.default_actions_per_inference

    def _warn_if_unbounded(self, cfg) -> None:
        text = unbounded_cache_warning(cfg, self.policy)
        if text:
            self.get_logger().warning(text)

    def _renamed(self, values: dict, at_start: bool = False) -> dict:
        """Old parameter names (``cache.policy``) given a value -> their new names, with a warning;
        at start-up the new parameter takes the value at once (later: `_sync_renamed`)."""
        given = [Parameter(old, value=values[old]) for old in RENAMED_PARAMS if values.get(old) not in ("", None)]
        values, notes = apply_renamed_params(values)
        for note in notes:
            self.get_logger().warning(note)
        if at_start:
            self._sync_renamed(given)
        return values

    def _sync_renamed(self, params: list[Parameter]) -> None:
        """After an old name was set: the new parameter holds the value, the old one is empty again
        (so that ``ros2 param get`` shows what runs)."""
        changed = [(p.name, p.value) for p in params if p.name in RENAMED_PARAMS and p.value not in ("", None)]
        if not changed or self._syncing_renamed:
            return
        self._syncing_renamed = True
        try:
            for old, value in changed:
                self.set_parameters([Parameter(RENAMED_PARAMS[old], value=value), Parameter(old, value="")])
        finally:
            self._syncing_renamed = False

    def _declare(self, specs) -> dict:
        try:
            return declare_specs(self, specs)
        except ValueError as exc:
            raise StartupError(f"bad parameter {exc}") from None

    # ---- inputs -----------------------------------------------------------------------------
    def _on_image(self, camera: int, msg) -> None:
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._stamp_lock:
            if stamp != (0, 0) and stamp == self._last_stamps[camera]:  # the same frame again (a waiting simulator)
                self.frames_repeated += 1
                return
            self._last_stamps[camera] = stamp
            self.loop.input_received(camera, self._now())
            self.worker.submit(msg, stamp, camera)

    def _on_state(self, msg) -> None:
        self.states_received += 1
        try:
            state = state_from_msg(msg, self.policy)
        except ValueError as exc:  # wrong dimension, NaN: not used (the state goes stale, then stop)
            self.states_rejected += 1
            self.get_logger().error(f"bad robot state dropped ({self.state_topic}): {exc}", throttle_duration_sec=2.0)
            return
        self.loop.input_received(len(self.image_topics), self._now())
        self.worker.submit_state(state)

    def _ready_for_step(self) -> bool:
        """The worker may step: the current chunk is used up and every input is fresh."""
        return self.loop.needs_chunk and self.loop.input_problem(self._now()) is None

    def _to_rgb(self, msg):
        if hasattr(msg, "encoding"):
            rgb = image_to_rgb(msg, self.max_pixels)
        else:
            rgb = compressed_to_rgb(msg, self.max_pixels)
        size = self.policy.frame_size or getattr(self.policy, "image_size", None)
        return shrink_for_model(rgb, size) if size else rgb

    def _end_latched_window(self) -> None:
        self._latched_timer.cancel()
        if self._latched_sub is not None:
            self.destroy_subscription(self._latched_sub)
            self._latched_sub = None

    def _on_instruction(self, msg: String, info) -> None:
        key = (info["source_timestamp"], msg.data)
        if key in self._recent_instructions:  # the same latched message, on the second subscription
            return
        self._recent_instructions.append(key)
        if not msg.data.strip():
            self.get_logger().error("instruction: empty instruction ignored", throttle_duration_sec=2.0)
            return
        self._start_episode(msg.data)

    def _on_reset(self, request, response):
        instruction = self.worker.episode_instruction or self.get_parameter("instruction").value
        if not instruction:
            response.success, response.message = False, "no instruction yet: nothing to reset"
            return response
        self._start_episode(instruction)
        response.success, response.message = True, f"new episode: {instruction!r}"
        return response

    def _start_episode(self, instruction: str) -> None:
        with self._stamp_lock:
            # The worker drops the frame it has not taken (it belongs to the old episode); a
            # waiting camera (the simulator) re-sends that view with the same stamp, which the
            # repeat filter would then ignore for ever: forget the stamp so it counts as new.
            episode = self.worker.start_episode(instruction)
            self._last_stamps = [None] * len(self.image_topics)
        # After the worker's id moved on: a chunk of the old episode that an inference under way
        # reports from now on is dropped, and one reported before is in the queue dropped here.
        self.loop.episode_started(self._now(), episode)
        self.get_logger().info(f"new episode: {instruction!r}")

    # ---- worker callbacks (inference thread) ------------------------------------------------
    def _on_chunk(self, chunk, source_stamp, now: float, episode: int) -> None:
        reason = self.loop.action_ready(chunk, source_stamp, now, episode)
        if reason:
            self.get_logger().error(f"{reason}: publishing stop instead", throttle_duration_sec=2.0)

    def _on_error(self, kind: str, message: str) -> None:
        if kind == "inference":
            self.loop.inference_failed(message)
            self.get_logger().error(f"inference failed, publishing stop: {message}", throttle_duration_sec=2.0)
        else:
            self.get_logger().error(f"bad frame dropped: {message}", throttle_duration_sec=2.0)

    # ---- control tick -----------------------------------------------------------------------
    def _tick(self) -> None:
        now = self._now()
        cmd = self.loop.tick(now)
        self.publish_command(cmd.action, cmd.source_stamp, cmd.chunk_index)
        if self.loop.needs_chunk:
            self.worker.wake()
        if self._last_tick is not None:
            self.tick_interval_ms.add((now - self._last_tick) * 1e3)
        self._last_tick, self._ticks, self._last_cmd = now, self._ticks + 1, cmd
        if cmd.state != self._last_state:
            text = f"state {self._last_state or 'start'} -> {cmd.state}" + (f": {cmd.reason}" if cmd.reason else "")
            if cmd.state in ("stale", "error"):  # rclpy pins one severity per call site: two calls
                self.get_logger().warning(text)
            else:
                self.get_logger().info(text)
            self._last_state = cmd.state

    def publish_command(self, action, source_stamp=None, chunk_index=None) -> None:
        """Publish ``action`` (None: stop = an empty array and a zero twist); a chunked policy's
        actions also name their row in the chunk (``chunk_index=<k>``)."""
        msg = Float32MultiArray()
        if action is not None:
            msg.data = [float(v) for v in action]
            msg.layout.dim = [MultiArrayDimension(label="action", size=len(msg.data), stride=len(msg.data))]
            if source_stamp is not None:
                msg.layout.dim.append(MultiArrayDimension(label=format_source_stamp(*source_stamp), size=1, stride=1))
            if chunk_index is not None and self.policy.chunk_length > 1:
                msg.layout.dim.append(MultiArrayDimension(label=f"{CHUNK_INDEX_PREFIX}{chunk_index}", size=1, stride=1))
        twist = Twist()
        twist.linear.x, twist.angular.z = self.twist(action)
        self.action_pub.publish(msg)
        self.cmd_vel_pub.publish(twist)

    def _publish_diagnostics(self) -> None:
        cmd = self._last_cmd
        level, message, values = policy_status(
            cmd.state if cmd else "waiting", cmd.reason if cmd else "starting", self.worker, self.control_rate_hz,
            self.tick_interval_ms, self._ticks, self.session.cache_config,
            {"frames_repeated": self.frames_repeated, "rejected_actions": self.loop.rejected_actions,
             "stale_chunks": self.loop.stale_chunks,
             "enabled": self.loop.enabled, "cache_config_pending": pending_json(self.session),
             **input_values(self.loop, self._now(), self.states_received, self.states_rejected)})
        status = DiagnosticStatus(level=bytes([level]), name=f"{self.get_name()}: policy", message=message,
                                  hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=v) for k, v in values])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)

    # ---- live parameters --------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        if self._syncing_renamed:  # the new name takes the value an old name already applied
            return SetParametersResult(successful=True)
        values = {p.name: p.value for p in params}
        try:
            note = self._apply_parameters(values)
        except ValueError as exc:
            self.get_logger().warning(f"parameter change rejected: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True, reason=note)

    def _apply_parameters(self, values: dict) -> str:
        """Validate everything first, then apply; raises ValueError (naming the field) to reject."""
        values = {name: coerce_param(self._specs[name], value) if name in self._specs else value
                  for name, value in values.items()}
        values = self._renamed(values)
        get = lambda name: values.get(name, self.get_parameter(name).value)  # noqa: E731
        lo, hi = get("action.min"), get("action.max")
        dim = self.loop.action_dim
        lo_arr, hi_arr = broadcast_limits("action.min", lo, dim), broadcast_limits("action.max", hi, dim)
        if any(math.isnan(v) for v in list(lo) + list(hi)) or any(a > b for a, b in zip(lo_arr, hi_arr)):
            raise ValueError(f"action.min: must be <= action.max (and not NaN), got {list(lo)} / {list(hi)}")
        note = ""
        changes = cache_changes_from_params(values)
        if changes:  # last check that can fail: the session validates against the model
            try:  # on top of a change still waiting for the next episode, if any
                cfg = self.session.requested_cache_config.replace(**changes)
            except ValueError as exc:
                raise cache_error(exc) from None
            live = self.worker.call(lambda session: reconfigure(session, cfg))
            if not live:
                note = "applies from the next episode: the running cache cannot take it live"
            self.get_logger().info(f"cache config: {', '.join(f'{k}={v}' for k, v in changes.items())}"
                                   + (f" ({note})" if note else " (live)"))
            self._warn_if_unbounded(cfg)
        if "action.min" in values or "action.max" in values:
            self.loop.set_limits(lo, hi)
        if "control_rate_hz" in values:
            self.control_rate_hz = float(values["control_rate_hz"])
            self.control_timer.timer_period_ns = int(1e9 / self.control_rate_hz)
            self.tick_interval_ms = RollingStats()
        if "actions_per_inference" in values:
            self.loop.set_actions_per_inference(self._actions_per_inference(values["actions_per_inference"]))
        if "stale_timeout_s" in values:
            self.loop.stale_timeout_s = float(values["stale_timeout_s"])
        if "enabled" in values:
            self.loop.enabled = bool(values["enabled"])
        if "max_image_pixels" in values:
            self.max_pixels = int(values["max_image_pixels"])
        twist_fields = {"twist.discrete_linear": "discrete_linear", "twist.discrete_angular": "discrete_angular",
                        "twist.linear_index": "linear_index", "twist.angular_index": "angular_index",
                        "max_linear": "max_linear", "max_angular": "max_angular"}
        for name, attr in twist_fields.items():
            if name in values:
                value = values[name]
                setattr(self.twist, attr, [float(v) for v in value] if isinstance(value, (list, tuple)) else value)
        if values.get("instruction"):
            self._start_episode(values["instruction"])
        return note

    def shutdown(self) -> None:
        """Stop the robot, then the worker (called before the context goes down)."""
        try:
            self.control_timer.cancel()
            self.publish_command(None)
        finally:
            self.worker.stop()


def main(argv: list[str] | None = None, session_factory=None) -> int:
    """Console script ``kv_vla_node``; exit 1 with one error line when the node cannot start."""
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = KVVLANode(session_factory=session_factory)
    except StartupError as exc:
        rclpy.logging.get_logger(NODE_NAME).error(str(exc))
        rclpy.try_shutdown()
        return 1
    # The inference thread runs Python (transformers) between torch kernels; with the default
    # 5 ms GIL switch interval a waking timer thread waits behind it long enough that rcl skips
    # ticks under load (measured: 47.2 Hz at 50 Hz); 1 ms keeps the rate (49.8 Hz).
    sys.setswitchinterval(0.001)
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    while not stop.wait(0.2) and spinner.is_alive():
        pass
    node.shutdown()  # publishes stop while the context is still up
    time.sleep(0.1)  # let the stop command leave before the publishers go
    executor.shutdown(timeout_sec=2.0)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
