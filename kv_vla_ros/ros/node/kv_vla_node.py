"""`kv_vla_node`: a VLA policy as a ROS 2 lifecycle (managed) node (see docs/ros.md for the interface).

Lifecycle: constructing the node only declares its parameters; ``configure`` loads the checkpoint,
builds the session, the inputs and the outputs (`NodeRuntime`); ``activate`` starts acting (the
control timer publishes); ``deactivate`` publishes stop and pauses (no inference, no commands);
``cleanup`` frees the model; ``shutdown`` publishes stop (when acting) and frees everything. With
``autostart`` (the default, so that ``ros2 run`` just works) ``main`` configures and activates it.

Threads: the control timer ticks in its own callback group at ``control_rate_hz`` whatever the
inference rate, executing the policy's action chunk one action per tick; an `InferenceWorker`
thread runs the model on the newest inputs (cameras, robot state) once the loop asks for the next
chunk; subscriptions only hand messages over. Everything decided per tick lives in `ControlLoop`
(pure, tested alone); what is published per tick in `CommandOutputs`.
"""

from __future__ import annotations

import gc
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

from kv_vla_ros.ros.node.params import apply_parameters
from kv_vla_ros.ros.node.runtime import INSTRUCTION_QOS, LATCHED_INSTRUCTION_QOS, STEADY, NodeRuntime
from kv_vla_ros.ros.node.param_specs import NODE_PARAMS, POLICY_PARAMS
from kv_vla_ros.ros.node.param_descriptors import coerce_parameters, declare_specs
from kv_vla_ros.ros.node.session_setup import StartupError
from kv_vla_ros.ros.usage import asks_for_help
from kv_vla_ros.ros.signals import catch_stop_signals, ignore_stop_signals

NODE_NAME = "kv_vla_node"


class KVVLANode(LifecycleNode):
    def __init__(self, session_factory=None, **node_kwargs):
        super().__init__(NODE_NAME, **node_kwargs)
        self._now = time.monotonic
        self._session_factory = session_factory
        self._specs = {spec.name: spec for spec in NODE_PARAMS}
        self.p = self._declare([spec for spec in NODE_PARAMS if spec.name not in POLICY_PARAMS])
        self.autostart = bool(self.p["autostart"])
        self.rt: NodeRuntime | None = None  # everything configure builds
        self.active = False
        self.finished = False  # the shutdown transition ran: main exits
        self._tick_lock = threading.Lock()  # a tick never publishes after deactivate's stop
        self._lifecycle_state = "unconfigured"
        self.add_pre_set_parameters_callback(lambda params: coerce_parameters(params, self._specs))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Diagnostics on the steady clock: they go out whatever the ROS clock does (use_sim_time
        # without /clock stops every ROS-time timer; the node must still say what it waits for).
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._clock_warned = False
        self.create_timer(1.0, self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup(),
                          clock=Clock(clock_type=STEADY))

    def _declare(self, specs) -> dict:
        try:
            return declare_specs(self, specs)
        except ValueError as exc:
            raise StartupError(f"bad parameter {exc}") from None

    def waiting_for_clock(self) -> bool:
        """use_sim_time is on and no /clock message came yet (the ROS clock still reads 0)."""
        return bool(self.get_parameter("use_sim_time").value) and self.get_clock().now().nanoseconds == 0

    # ---- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.rt = NodeRuntime(self)
        except StartupError as exc:
            self.get_logger().error(str(exc))
            return TransitionCallbackReturn.FAILURE
        self._lifecycle_state = "inactive"
        self.rt.log_ready()
        # The model, the tokenizer and the session are long-lived: out of the collector's sight, so
        # that a full collection no longer walks them (a 310 ms pause of every thread, the control
        # tick's included, measured in a soak before this).
        gc.collect()
        gc.freeze()
        self.rt.gc_watch.max_pause_ms = 0.0  # that collection was start-up, not a pause of the control loop
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # the lifecycle publishers first
        with self._tick_lock:
            self.active = True
            self._lifecycle_state = "active"
        self.rt.worker.wake()
        self.get_logger().info("active: publishing commands")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_acting()
        self.get_logger().info("inactive: stop published, inference paused")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("unconfigured: model freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.active:
            self._stop_acting()
        self._release()
        self._lifecycle_state, self.finished = "finalized", True
        self.get_logger().info("finalized: model freed, exiting")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in a lifecycle transition from {state.label}: stopping and freeing the model")
        if self.active:
            self._stop_acting()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_acting(self) -> None:
        """No tick after this; the stop command goes out while the publishers are still active."""
        with self._tick_lock:
            self.active = False
            self._lifecycle_state = "inactive"
        if self.rt is not None:
            self.rt.outputs.publish_stop(self.rt.loop.period_s)

    def _release(self) -> None:
        if self.rt is not None:
            self.rt.destroy()
            self.rt = None
            gc.unfreeze()  # what configure froze may be garbage now
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self._lifecycle_state = "unconfigured"

    # ---- control tick -----------------------------------------------------------------------
    def _tick(self) -> None:
        with self._tick_lock:
            if self.active and self.rt is not None:
                self.rt.tick()

    def _publish_diagnostics(self) -> None:
        if self.waiting_for_clock():
            if not self._clock_warned:
                self.get_logger().warning("use_sim_time is true and no /clock message has arrived: waiting for "
                                          "/clock (the control timer runs on the ROS clock)")
                self._clock_warned = True
            reason = "use_sim_time is true and no /clock message has arrived"
            level, message = 1, f"waiting: {reason}"
            values = [("state", "waiting"), ("reason", reason), ("lifecycle", self._lifecycle_state)]
        elif self.rt is None:
            level, message = 0, self._lifecycle_state
            values = [("state", self._lifecycle_state), ("reason", ""), ("lifecycle", self._lifecycle_state)]
        else:
            level, message, values = self.rt.status(self._lifecycle_state)
        status = DiagnosticStatus(level=bytes([level]), name=f"{self.get_name()}: policy", message=message,
                                  hardware_id=self.get_fully_qualified_name(),
                                  values=[KeyValue(key=k, value=v) for k, v in values])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)

    # ---- live parameters --------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        values = {p.name: p.value for p in params}
        try:
            note = apply_parameters(self, values)
        except ValueError as exc:
            self.get_logger().warning(f"parameter change rejected: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True, reason=note)



def _spin(executor, spinning: threading.Event) -> None:
    """``executor.spin()`` that survives rclpy's destroy-while-waiting race: an entity destroyed in a
    callback (the latched instruction subscription after its window, the entities of ``cleanup``)
    while another executor thread builds its wait set raises ``InvalidHandle`` out of ``spin()``,
    which ended the node (exit 0, no stop reason) in 2 of 2 failing CI runs; the next wait set no
    longer holds the entity, so spinning on is correct."""
    from rclpy.exceptions import InvalidHandle
    from rclpy.executors import ExternalShutdownException, ShutdownException

    while spinning.is_set() and executor.context.ok():
        try:
            executor.spin_once(timeout_sec=0.1)
        except InvalidHandle:
            continue
        except (ExternalShutdownException, ShutdownException):
            break

def main(argv: list[str] | None = None, session_factory=None, stop=None) -> int:
    """Console script ``kv_vla_node``: exit 1 with one error line when the node cannot start
    (bad parameters; with ``autostart``, a checkpoint that does not load), 0 after a stop signal
    (any number of them, at any moment) or the lifecycle ``shutdown`` transition."""
    stop = stop or catch_stop_signals()
    if asks_for_help(NODE_NAME, argv[1:] if argv is not None else None):
        return 0
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = KVVLANode(session_factory=session_factory)
    except StartupError as exc:
        rclpy.logging.get_logger(NODE_NAME).error(str(exc))
        rclpy.try_shutdown()
        ignore_stop_signals()
        return 1
    # The inference thread runs Python (transformers) between torch kernels; with the default
    # 5 ms GIL switch interval a waking timer thread waits behind it long enough that rcl skips
    # ticks under load (measured: 47.2 Hz at 50 Hz); 1 ms keeps the rate (49.8 Hz).
    sys.setswitchinterval(0.001)
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    spinning = threading.Event()
    spinning.set()
    spinner = threading.Thread(target=_spin, args=(executor, spinning), daemon=True)
    spinner.start()
    code = 0
    if not node.autostart:  # say how to go on: a node that only waits would look hung
        name = node.get_fully_qualified_name()
        node.get_logger().info(f"autostart is false: unconfigured; `ros2 lifecycle set {name} configure`, then "
                               f"`ros2 lifecycle set {name} activate`")
    if node.autostart and not stop.is_set():
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            code = 1  # the reason is logged (one line)
        elif not stop.is_set():
            node.trigger_activate()
    while code == 0 and not node.finished and spinner.is_alive() and not stop.wait(0.2):
        pass
    if code == 0 and not spinner.is_alive() and not node.finished and not stop.is_set():
        node.get_logger().error("the executor stopped unexpectedly (see the traceback above): shutting down")
        code = 1
    if not node.finished:
        node.trigger_shutdown()  # publishes stop when acting, frees the model
    time.sleep(0.1)  # let the stop command leave before the publishers go
    spinning.clear()
    executor.shutdown(timeout_sec=2.0)
    node.destroy_node()
    rclpy.try_shutdown()
    ignore_stop_signals()
    return code


__all__ = ["KVVLANode", "main", "NODE_NAME", "INSTRUCTION_QOS", "LATCHED_INSTRUCTION_QOS"]


if __name__ == "__main__":
    sys.exit(main())
