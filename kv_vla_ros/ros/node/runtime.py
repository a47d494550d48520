"""What kv_vla_node's ``configure`` transition builds and ``cleanup`` destroys (`NodeRuntime`): the
checkpoint's session, the control loop, the inference worker, the subscriptions, the command
outputs and the control timer; the input callbacks and the tick."""

from __future__ import annotations

import collections
import functools
import json
import math
import threading

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, String
from std_srvs.srv import Trigger

from kv_vla_ros.ros.node.control import ControlCommand, ControlLoop, RollingStats, TwistAdapter, check_merge_rule
from kv_vla_ros.ros.node.control_thread import ControlThread
from kv_vla_ros.ros.node.diagnostics import GcWatch, input_values, policy_status
from kv_vla_ros.data.image_conversion import compressed_to_rgb, image_to_rgb, shrink_for_model
from kv_vla_ros.ros.node.inference import InferenceWorker
from kv_vla_ros.ros.node.outputs import CommandOutputs, check_output
from kv_vla_ros.ros.node.param_specs import (cache_changes_from_params, cache_param_specs, coerce_param,
                                             policy_param_specs)
from kv_vla_ros.ros.node.session_setup import (StartupError, cache_error, check_inputs, load_session, pending_json,
                                               state_from_msg, unbounded_cache_warning, warm_up)

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
STEADY = ClockType.STEADY_TIME
VIEWS_INDEXED = 1024  # first-camera stamps remembered for lockstep (wait_for_action_view)
LOCKSTEP_REPEATS = 4  # re-sends of the newest view that show a lockstep world waits for an action
class NodeRuntime:
    """What ``configure`` builds on the node and ``cleanup`` destroys: the checkpoint's session,
    the control loop, the inference worker, the subscriptions, the command outputs and the timer.
    Every failure is one StartupError line."""

    def __init__(self, node):
        # the current values: a parameter set while the node was unconfigured applies from here
        node.p.update({name: coerce_param(node._specs[name], node.get_parameter(name).value) for name in node.p})
        self.node, p = node, node.p
        self.policy, self.session = load_session(p["model_path"], p["device"], p["dtype"], p["num_threads"],
                                                 node._session_factory)
        self._entities: list = []  # subscriptions, services, timers to destroy on cleanup
        try:
            self._build(p)
        except Exception:
            self.destroy()
            raise

    def _build(self, p: dict) -> None:
        node, policy = self.node, self.policy
        self.discrete, action_dim = policy.discrete, policy.action_dim
        self.state_note = check_inputs(policy, p["image_topics"], p["state_topic"], p["state_type"])
        self.image_topics = list(p["image_topics"])
        self.state_topic = p["state_topic"] if policy.state_dim else ""
        self.state_joint_names = [n for n in p["state_joint_names"] if n]
        cache_specs = cache_param_specs(self.session.cache_config)
        late_specs = policy_param_specs(policy.action_chunk_length)
        node._specs.update({spec.name: spec for spec in late_specs + cache_specs})
        # declared on the first configure; a later one (after cleanup) takes their current values
        p.update(node._declare([s for s in late_specs if not node.has_parameter(s.name)]))
        p.update({s.name: node.get_parameter(s.name).value for s in late_specs})
        node._declare([s for s in cache_specs if not node.has_parameter(s.name)])
        cache_values = {s.name: node.get_parameter(s.name).value for s in cache_specs}
        inputs = self.image_topics + ([self.state_topic] if self.state_topic else [])
        self.rate_hz = p["control_rate_hz"]
        try:  # parameter overrides (params file, command line) on top of the model's cache config
            try:
                self.session.set_cache_config(self.session.cache_config.replace(
                    **cache_changes_from_params(cache_values)))
                self.session.set_compile(p["compile"])
            except ValueError as exc:
                raise cache_error(exc) from None
            per_inference = int(p["actions_per_inference"]) or policy.default_actions_per_inference
            self.loop = ControlLoop(self.discrete, policy.num_actions, action_dim, p["stale_timeout_s"],
                                    p["enabled"], p["action.min"], p["action.max"], inputs, per_inference,
                                    1.0 / self.rate_hz)
            self.loop.set_safety(p["safety.max_step"], p["safety.max_jerk"], p["safety.reject_out_of_bounds"],
                                 p["safety.on_reject"])
            check_merge_rule(p["action_chunk_merge"], policy)
            self.loop.set_chunking(p["action_chunk_threshold"], p["action_chunk_merge"])
            self.loop.enable_required, self.loop.enable_timeout_s = bool(p["enable_topic"]), p["enable_timeout_s"]
            joint_names = check_output(p["action_output"], p["joint_names"], action_dim, self.discrete)
        except ValueError as exc:
            raise StartupError(f"bad parameter: {exc}") from None
        self.twist = TwistAdapter(self.discrete, p["twist.discrete_linear"], p["twist.discrete_angular"],
                                  p["twist.linear_index"], p["twist.angular_index"], p["max_linear"], p["max_angular"])
        try:
            self.outputs = CommandOutputs(node, p["action_output"], joint_names, self.twist,
                                          policy.action_chunk_length > 1, p["output_topic"], p["forward_command_stop"])
        except ValueError as exc:
            raise StartupError(f"bad parameter: {exc}") from None
        self.outputs.frame_id = p["twist.frame_id"]
        self.max_pixels = p["max_image_pixels"]
        if not self.state_joint_names:  # the joints the checkpoint recorded at training: a JointState read by name
            self.state_joint_names = list(getattr(policy, "state_names", None) or [])
        self.tick_interval_ms = RollingStats()
        self.ticks, self._last_tick, self._last_state, self.last_cmd = 0, None, "", None
        self._stamp_lock = threading.Lock()
        self._last_stamps: list = [None] * len(self.image_topics)
        self.frames_repeated, self.states_received, self.states_rejected, self.enable_messages = 0, 0, 0, 0
        self.wait_for_action_view = bool(p["wait_for_action_view"])
        self._view_index: collections.OrderedDict = collections.OrderedDict()  # first camera: stamp -> n-th view
        self._index_lock = threading.Lock()  # taken alone (under the stamp lock or the worker's)
        self._views_seen = 0
        self._newest_repeats = 0  # re-sends of the first camera's newest frame since the last new action
        self._recent_instructions: collections.deque = collections.deque(maxlen=16)
        self.warm_up_ms = warm_up(self.session)  # before the worker and the timer: the first ticks hold the rate
        self.worker = InferenceWorker(self.session, self._to_rgb, self._on_chunk, self._on_error, node._now,
                                      len(self.image_topics), self._ready_for_step, self.loop.inference_started,
                                      p["camera_sync_slop_s"], self._view_ok, self._rtc_guide)
        self._subscribe(p)
        self.gc_watch = GcWatch()
        if node.get_parameter("use_sim_time").value:  # ticks follow /clock: an rcl timer on the ROS clock
            self.control_timer = node.create_timer(1.0 / self.rate_hz, node._tick,
                                                   callback_group=MutuallyExclusiveCallbackGroup())
            self._entities.append(self.control_timer)
        else:  # wall-clock rate: a thread of its own, no executor in the path (see control_thread)
            self.control_timer = ControlThread(node._tick, 1.0 / self.rate_hz, self._on_tick_error,
                                               priority=p["control_thread_priority"])
            self.control_timer.start()
            if self.control_timer.scheduling_error:
                node.get_logger().warning(
                    f"control_thread_priority {p['control_thread_priority']}: SCHED_FIFO refused "
                    f"({self.control_timer.scheduling_error}); the control tick runs on the normal scheduler and "
                    "may start late under load. Allow it with an rtprio limit (e.g. '@realtime - rtprio 98' in "
                    "/etc/security/limits.conf, the user in group realtime) or CAP_SYS_NICE, or set 0 to silence "
                    "this")
        self.worker.start()
        if p["instruction"]:
            self.start_episode(p["instruction"])

    def _subscribe(self, p: dict) -> None:
        node, io_group = self.node, MutuallyExclusiveCallbackGroup()
        sub = functools.partial(node.create_subscription, callback_group=io_group)
        for camera, topic in enumerate(self.image_topics):
            on_image = functools.partial(self._on_image, camera)
            self._entities.append(sub(Image, topic, on_image, qos_profile_sensor_data))
            if p["use_compressed"]:
                self._entities.append(sub(CompressedImage, f"{topic}/compressed", on_image, qos_profile_sensor_data))
        if self.state_topic:  # sensor-data QoS matches reliable and best-effort publishers
            state_msg = JointState if p["state_type"] == "joint_state" else Float32MultiArray
            self._entities.append(sub(state_msg, self.state_topic, self._on_state, qos_profile_sensor_data))
        if p["enable_topic"]:  # reliable and best-effort heartbeats both match
            self._entities.append(sub(Bool, p["enable_topic"], self._on_enable, qos_profile_sensor_data))
        self._entities.append(sub(String, "instruction", self._on_instruction, INSTRUCTION_QOS))
        # The latched instruction a publisher sent before this node started arrives within discovery;
        # the transient-local subscription then goes, so that a later `ros2 topic pub` (volatile)
        # does not warn "incompatible QoS" on the publisher's side. Its own such events are muted:
        # a volatile publisher matches the subscription above.
        self._latched_sub = sub(String, "instruction", self._on_instruction, LATCHED_INSTRUCTION_QOS,
                                event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda _event: None))
        self._latched_timer = node.create_timer(LATCHED_WINDOW_S, self._end_latched_window, callback_group=io_group,
                                                clock=Clock(clock_type=STEADY))
        self._entities += [self._latched_timer, node.create_service(Trigger, "~/reset", self._on_reset,
                                                                    callback_group=io_group)]

    def log_ready(self) -> None:
        cfg, p = self.session.cache_config, self.node.p
        self.node.get_logger().info(
            f"configured: model {p['model_path'] or 'shipped'} ({self.policy.model_type}, "
            f"{'discrete' if self.discrete else 'continuous'} actions, action chunks of "
            f"{self.policy.action_chunk_length}, "
            f"{self.loop.queue.actions_per_inference} executed per inference), cameras {self.image_topics}, "
            f"state {self.state_topic or 'none'}, output action + {self.outputs.kind}, cache {cfg.eviction} "
            f"(budget {cfg.budget_tokens if cfg.budget_tokens is not None else 'none'}), {self.rate_hz:g} Hz")
        self.node.get_logger().info(f"warm-up inference: {self.warm_up_ms:.0f} ms")
        if self.state_note:
            self.node.get_logger().warning(self.state_note)
        self.warn_if_unbounded(cfg)

    def warn_if_unbounded(self, cfg) -> None:
        text = unbounded_cache_warning(cfg, self.policy)
        if text:
            self.node.get_logger().warning(text)

    def destroy(self) -> None:
        """Stop the worker, destroy every entity, drop the model (cleanup, shutdown, a failed configure)."""
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop()
        if getattr(self, "gc_watch", None) is not None:
            self.gc_watch.close()
        if isinstance(getattr(self, "control_timer", None), ControlThread):
            self.control_timer.cancel()
        for entity in self._entities + [getattr(self, "_latched_sub", None)]:
            if entity is not None:
                destroy = {"Subscription": self.node.destroy_subscription, "Timer": self.node.destroy_timer,
                           "Service": self.node.destroy_service}[type(entity).__name__]
                destroy(entity)
        self._entities, self._latched_sub = [], None
        if getattr(self, "outputs", None) is not None:
            self.outputs.destroy()
        self.worker = self.session = self.policy = None

    # ---- inputs -----------------------------------------------------------------------------
    def _on_image(self, camera: int, msg) -> None:
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._stamp_lock:
            if stamp != (0, 0) and stamp == self._last_stamps[camera]:  # the same frame again (a waiting simulator)
                self.frames_repeated += 1
                if camera == 0:
                    self._newest_repeats += 1
                return
            if camera == 0:
                self._newest_repeats = 0
            self._last_stamps[camera] = stamp
            if camera == 0:
                with self._index_lock:
                    self._view_index.pop(stamp, None)  # a view re-sent after a new episode: counted anew
                    self._view_index[stamp] = self._views_seen
                    self._views_seen += 1
                    if len(self._view_index) > VIEWS_INDEXED:
                        self._view_index.popitem(last=False)
            self.loop.input_received(camera, self.node._now())
            self.worker.submit(msg, stamp, camera)

    def _on_state(self, msg) -> None:
        self.states_received += 1
        try:
            state = state_from_msg(msg, self.policy, self.state_joint_names)
        except ValueError as exc:  # wrong dimension, NaN, a joint missing: not used (the state goes stale, then stop)
            self.states_rejected += 1
            self.loop.input_rejected(len(self.image_topics), str(exc))
            self.node.get_logger().error(f"bad robot state dropped ({self.state_topic}): {exc}",
                                         throttle_duration_sec=2.0)
            return
        self.loop.input_received(len(self.image_topics), self.node._now())
        header = getattr(msg, "header", None)  # JointState: paired with the frame by stamp; an array has none
        self.worker.submit_state(state, (header.stamp.sec, header.stamp.nanosec) if header is not None else None)

    def _on_enable(self, msg: Bool) -> None:
        self.enable_messages += 1
        self.loop.enable_received(bool(msg.data), self.node._now())

    def _ready_for_step(self) -> bool:
        """The worker may step: active, the loop wants a chunk, every input is fresh, the deadman allows."""
        return self.node.active and self.loop.needs_chunk and self.loop.input_problem(self.node._now()) is None

    def _view_ok(self, stamp):
        """Lockstep (``wait_for_action_view``): whether the first camera's frame ``stamp`` came after
        the newest action ran: row ``k`` of a chunk inferred on view ``v`` is answered by view
        ``v + k + 1`` (a lockstep world sends one new view per action it applies; a camera faster
        than the control rate has sent that many long before). None: lockstep off."""
        if not self.wait_for_action_view:
            return None
        sent = self.loop.last_sent()
        if sent is None or sent[0] is None or stamp is None:
            return True
        with self._index_lock:
            base, index = self._view_index.get(tuple(sent[0])), self._view_index.get(tuple(stamp))
            newest = index is not None and index == self._views_seen - 1
        if base is None or index is None or index >= base + sent[1] + 1:
            return True
        # A view sent once and lost on the way (best-effort camera QoS, a busy machine) leaves the
        # count one short for ever; a world that keeps re-sending its newest view is waiting for an
        # action: that view is the one after the last, whatever the count says.
        return newest and self._newest_repeats >= LOCKSTEP_REPEATS

    def _rtc_guide(self):
        """``action_chunk_merge: rtc``: the guide of the inference starting now, for the delay the
        recent inferences took (their p50 latency in control periods, rounded up)."""
        latency_ms = self.worker.latency_ms.percentile(50)
        delay = 0 if latency_ms != latency_ms else math.ceil(latency_ms * 1e-3 / self.loop.period_s)
        return self.loop.inference_guide(delay)

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
            self.node.destroy_subscription(self._latched_sub)
            self._latched_sub = None

    def _on_instruction(self, msg: String, info) -> None:
        key = (info["source_timestamp"], msg.data)
        if key in self._recent_instructions:  # the same latched message, on the second subscription
            return
        self._recent_instructions.append(key)
        if not msg.data.strip():
            self.node.get_logger().error("instruction: empty instruction ignored", throttle_duration_sec=2.0)
            return
        self.start_episode(msg.data)

    def _on_reset(self, request, response):
        instruction = self.worker.episode_instruction or self.node.get_parameter("instruction").value
        if not instruction:
            response.success, response.message = False, "no instruction yet: nothing to reset"
            return response
        self.start_episode(instruction)
        response.success, response.message = True, f"new episode: {instruction!r}"
        return response

    def start_episode(self, instruction: str) -> None:
        with self._stamp_lock:
            # The worker drops the frame it has not taken (it belongs to the old episode); a
            # waiting camera (the simulator) re-sends that view with the same stamp, which the
            # repeat filter would then ignore for ever: forget the stamp so it counts as new.
            episode = self.worker.start_episode(instruction)
            self._last_stamps = [None] * len(self.image_topics)
        # After the worker's id moved on: a chunk of the old episode that an inference under way
        # reports from now on is dropped, and one reported before is in the queue dropped here.
        self.loop.episode_started(self.node._now(), episode)
        self.node.get_logger().info(f"new episode: {instruction!r}")

    # ---- worker callbacks (inference thread) ------------------------------------------------
    def _on_chunk(self, chunk, source_stamp, now: float, episode: int, started=None) -> None:
        reason = self.loop.action_ready(chunk, source_stamp, now, episode, started)
        if reason:
            self.node.get_logger().error(f"action chunk rejected whole ({reason}): "
                                         f"{'holding' if self.loop.on_reject == 'hold' else 'publishing stop'}",
                                         throttle_duration_sec=2.0)

    def _on_tick_error(self, exc: Exception) -> None:
        self.node.get_logger().error(f"control tick failed: {type(exc).__name__}: {exc}", throttle_duration_sec=2.0)

    def _on_error(self, kind: str, message: str) -> None:
        if kind == "inference":
            self.loop.inference_failed(message)
            self.node.get_logger().error(f"inference failed, publishing stop: {message}", throttle_duration_sec=2.0)
        else:
            self.node.get_logger().error(f"bad frame dropped: {message}", throttle_duration_sec=2.0)

    # ---- control tick (the node holds its tick lock) -----------------------------------------
    def tick(self) -> None:
        now = self.node._now()
        popped = self.loop.queue.popped
        cmd = self.loop.tick(now)
        if cmd.state in ("waiting", "stale") and self.worker.episode_instruction is None:
            # nothing runs before an instruction: say so, not only which inputs or actions are missing
            topic = self.node.resolve_topic_name("instruction")
            missing = f"; {cmd.reason}" if cmd.reason.startswith("no message received yet") else ""
            cmd = ControlCommand(None, None, "waiting", f"no instruction yet: publish one on {topic} "
                                 f"(std_msgs/String) or set the instruction parameter{missing}")
        if self.loop.queue.popped != popped:  # a new action goes out: only re-sends after it count
            self._newest_repeats = 0
        self.outputs.publish(cmd, self.loop.period_s)
        if self.loop.needs_chunk:
            self.worker.wake()
        if self._last_tick is not None:
            self.tick_interval_ms.add((now - self._last_tick) * 1e3)
        self._last_tick, self.ticks, self.last_cmd = now, self.ticks + 1, cmd
        if cmd.state != self._last_state:
            text = f"state {self._last_state or 'start'} -> {cmd.state}" + (f": {cmd.reason}" if cmd.reason else "")
            if cmd.state in ("stale", "error", "deadman", "holding"):  # rclpy pins one severity per call site
                self.node.get_logger().warning(text)
            else:
                self.node.get_logger().info(text)
            self._last_state = cmd.state

    def status(self, lifecycle: str) -> tuple[int, str, list[tuple[str, str]]]:
        cmd = self.last_cmd if lifecycle == "active" else None
        state = cmd.state if cmd else ("waiting" if lifecycle == "active" else lifecycle)
        reason = cmd.reason if cmd else ("starting" if lifecycle == "active" else "")
        loop = self.loop
        return policy_status(
            state, reason, self.worker, self.rate_hz, self.tick_interval_ms, self.ticks, self.session.cache_config,
            {"lifecycle": lifecycle, "frames_repeated": self.frames_repeated, "rejected_actions": loop.rejected_actions,
             "rejected_chunks": json.dumps(loop.rejections), "stale_chunks": loop.stale_chunks,
             "frames_unpaired": self.worker.frames_unpaired, "action_output": self.outputs.kind,
             "trajectories_sent": self.outputs.trajectories,
             "ticks_skipped": getattr(self.control_timer, "skipped", 0), "enable_messages": self.enable_messages,
             "control_scheduling": getattr(self.control_timer, "scheduling", "rcl timer (use_sim_time)"),
             "enabled": loop.enabled, "cache_config_pending": pending_json(self.session), **self.gc_watch.values(),
             **(self.control_timer.take_timing() if isinstance(self.control_timer, ControlThread) else {}),
             **input_values(loop, self.node._now(), self.states_received, self.states_rejected)})


__all__ = ["NodeRuntime", "INSTRUCTION_QOS", "LATCHED_INSTRUCTION_QOS", "LATCHED_WINDOW_S"]
