"""`ArmRobot`: the cue-carry task (``kv_vla_ros.sim.arm.task``) as a robot for a VLA policy, with the
same interface as the MiniGrid `SimRobot` (``reset(seed) -> (frame, instruction)``,
``step(action) -> StepResult``), plus what an arm gives: ``state()`` (joint positions) and
continuous actions.

A control step (``control_hz``, 10 Hz): the action's end-effector delta moves the commanded grasp
point (clamped to the workspace box), PyBullet's IK turns it into joint targets, position-controlled
motors drive the joints through ``PHYSICS_HZ / control_hz`` physics steps, then the camera draws one
frame. An action whose gripper value is > 0 opens the hand: the cube falls (0.4 s more physics in
the same step) and the episode ends, a success if the cube rests on the pad the cue meant.

Privileged facts for the evaluator (never shown to the policy): ``cue_steps`` (the frames that
showed the lit lamp), ``decision_step`` (the step whose action first took the grasp point out of
the lane's band at its end) and ``decision_correct``.
"""

from __future__ import annotations

import numpy as np

from kv_vla_ros.sim.arm.scene import (CUE_COLOURS, FINGER_CLOSED, FINGER_OPEN, LAMP_OFF, PAD_RADIUS, STATE_JOINT_NAMES,
                                      ArmScene, Camera)
from kv_vla_ros.sim.arm.task import (
    ACTION_DIM,
    ACTION_NAMES,
    CUE_NAMES,
    INSTRUCTION,
    MAX_DELTA,
    STATE_DIM,
    VARIANTS,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    check_action,
    decision_side,
    draw_layout,
    pad_positions,
    placed_on,
)
from kv_vla_ros.sim.robot import EpisodeFlags, StepResult

SETTLE_S = 0.4  # physics after the hand opens, so the success test sees the cube at rest


def normalize_arm_task(task: str) -> str:
    """Canonical arm task id (``-v0`` optional); ValueError listing the arm tasks."""
    name = task.strip() if isinstance(task, str) else task
    if isinstance(name, str) and not name.endswith("-v0"):
        name += "-v0"
    if name not in VARIANTS:
        raise ValueError(f"task {task!r} is not an arm task; arm tasks: {', '.join(VARIANTS)}")
    return name


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


class ArmRobot(EpisodeFlags):
    """A Franka Panda carrying a cube to the pad a cue lamp named (see the module doc).

    Usage::

        robot = ArmRobot("Arm-CueCarryLong")
        frame, instruction = robot.reset(seed=0)     # frame: uint8 (64, 64, 3)
        state = robot.state()                        # float32 (9,): 7 arm joints + 2 fingers
        result = robot.step([0.35, 0.0, 0.0, -1.0])  # dx, dy, dz in [-1, 1] x 1 cm; gripper <= 0 holds

    Episodes are a pure function of ``(task, seed, actions)``.
    """

    discrete = False
    action_dim = ACTION_DIM
    state_dim = STATE_DIM
    action_names = ACTION_NAMES
    state_names = STATE_JOINT_NAMES  # the joints of ``state()``, in its order
    num_actions = 0  # continuous: no action ids

    def __init__(self, task: str, frame_size: int = 64, max_steps: int | None = None):
        self.task = normalize_arm_task(task)
        self.variant = VARIANTS[self.task]
        self.frame_size = _check_int("frame_size", frame_size, 16)
        self._max_steps = self.variant.max_steps if max_steps is None else _check_int("max_steps", max_steps, 1)
        self.scene = ArmScene(Camera(size=self.frame_size), self.variant.control_hz)
        self.steps = 0
        self.episode_id = 0
        self.seed: int | None = None
        self.instruction = ""
        self.layout = None
        self.target = np.zeros(3)
        self.cue_steps: list[int] = []
        self.decision_step: int | None = None
        self.decision_side = 0
        self.placed_side = 0
        self.last_action: np.ndarray | None = None
        self._done = True
        self._success = False

    @property
    def max_steps(self) -> int:
        return self._max_steps

    @property
    def decision_correct(self) -> bool | None:
        return None if self.decision_step is None else self.decision_side == self.layout.target_side

    @property
    def cue_visible(self) -> bool:
        """Whether the current frame shows the lit lamp."""
        return self.variant.cue_lit(self.steps) and not self._done

    def reset(self, seed: int) -> tuple[np.ndarray, str]:
        """Start the episode of ``seed``. Returns ``(frame uint8 (S, S, 3), instruction)``."""
        seed = _check_int("seed", seed, 0)
        self.layout = draw_layout(self.variant, seed)
        self.scene.build(np.asarray(self.layout.start), (self.variant.lane_start, self.variant.lane_end),
                         pad_positions(self.variant), distractors=self.variant.distractors)
        self.target = np.asarray(self.layout.start, dtype=np.float64)
        self.seed, self.steps, self.episode_id = seed, 0, self.episode_id + 1
        self.instruction = INSTRUCTION
        self.cue_steps, self.decision_step, self.decision_side, self.placed_side = [], None, 0, 0
        self.last_action = None
        self._done, self._success = False, False
        return self._observe(), self.instruction

    def step(self, action) -> StepResult:
        """Apply one action ``(dx, dy, dz, gripper)``, each in [-1, 1]; ValueError for a bad one."""
        arr = check_action(action)
        if self._done:
            raise RuntimeError("ArmRobot.step() called with no running episode; call reset(seed) first")
        self.target = np.clip(self.target + arr[:3] * MAX_DELTA, WORKSPACE_LOW, WORKSPACE_HIGH)
        release = bool(arr[3] > 0.0)
        scene = self.scene
        scene.drive(scene.solve_ik(self.target), FINGER_OPEN if release else FINGER_CLOSED)
        if release:
            scene.release()
        scene.simulate(scene.substeps + (round(SETTLE_S * 240) if release else 0))
        self.steps += 1
        self.last_action = arr
        side = decision_side(self.variant, scene.grasp_position())
        if self.decision_step is None and side != 0:
            self.decision_step, self.decision_side = self.steps - 1, side
        terminated = release
        if release:
            self.placed_side = placed_on(self.variant, scene.cube_position(), PAD_RADIUS)
            self._success = self.placed_side == self.layout.target_side
        truncated = not terminated and self.steps >= self._max_steps
        self._done = terminated or truncated
        frame = self._observe()
        info = {"steps": self.steps, "placed_side": self.placed_side, "decision_step": self.decision_step}
        return StepResult(frame, 1.0 if self._success else 0.0, terminated, truncated, self._success, info)

    def _observe(self) -> np.ndarray:
        lit = self.variant.cue_lit(self.steps)
        self.scene.set_lamp(CUE_COLOURS[self.layout.cue_name] if lit else LAMP_OFF)
        if self.variant.distractors:
            flash, slide = self.layout.flash_colour(self.steps), self.layout.slide_progress(self.steps)
            colour = CUE_COLOURS[CUE_NAMES[self.layout.slide[1]]]
            self.scene.set_distractors(LAMP_OFF if flash is None else CUE_COLOURS[CUE_NAMES[flash]], slide, colour)
        if lit and not self._done:
            self.cue_steps.append(self.steps)
        return self.scene.render()

    def state(self) -> np.ndarray:
        """float32 (9,): joint positions (``scene.STATE_JOINT_NAMES``) of the current frame."""
        return self.scene.joint_positions().astype(np.float32)

    def render(self) -> np.ndarray:
        return self.scene.render()

    def close(self) -> None:
        self.scene.close()

    def __repr__(self) -> str:
        return f"ArmRobot(task={self.task!r}, frame_size={self.frame_size}, seed={self.seed}, steps={self.steps})"


class ArmEpisodeProbe:
    """The evaluator's view of an arm episode's memory facts, with the interface of the MiniGrid
    ``MemoryEpisodeProbe``: ``observe(t)`` before frame ``t``'s action, ``after_step()`` after it;
    ``cue_steps`` (frames shown that showed the lit lamp), ``decision_step``, ``decision_correct``."""

    def __init__(self, robot: ArmRobot):
        self.robot = robot
        self.cue_steps: list[int] = []

    def observe(self, t: int) -> None:
        if self.robot.cue_visible:
            self.cue_steps.append(t)

    def after_step(self) -> None:
        """Nothing to do: the robot follows its decision itself."""

    @property
    def decision_step(self) -> int | None:
        return self.robot.decision_step

    @property
    def decision_correct(self) -> bool | None:
        return self.robot.decision_correct


__all__ = ["ArmEpisodeProbe", "ArmRobot", "normalize_arm_task"]
