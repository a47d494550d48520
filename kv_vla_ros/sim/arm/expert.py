"""The scripted expert of the cue-carry task: privileged (it reads the cue from the episode's layout
and the commanded grasp point from the robot), deterministic, re-planned from the current state at
every step, so it also relabels states a student policy reached (DAgger-style).

Phases, by where the commanded grasp point is:
1. lift: straight up to the carry height (the lamp is lit meanwhile);
2. carry: along the lane at ``CARRY_SPEED`` (3.5 mm per step), steering back to its centre line;
3. turn: at the lane's end, to above the pad the cue means, at up to 1 cm per step per axis;
4. lower to the release height;
5. open the hand once the measured grasp point is within 1 cm of the commanded one (the motors
   have caught up), so the cube drops onto the pad.
"""

from __future__ import annotations

import numpy as np

from kv_vla_ros.sim.arm.env import ArmRobot
from kv_vla_ros.sim.arm.task import CARRY_Z, MAX_DELTA, PAD_Y, PLACE_Z

CARRY_SPEED = 0.35  # action units along x while carrying (x MAX_DELTA = 3.5 mm per step)
STEER_GAIN = 0.3  # fraction of the lateral offset corrected per step
TOLERANCE = 0.002  # metres: a phase's goal counts as reached within this
SETTLED = 0.01  # metres between commanded and measured grasp point before the hand opens


def _towards(delta: np.ndarray, limit: float = 1.0) -> np.ndarray:
    """A displacement in metres -> action units, each axis clipped to ``limit``."""
    return np.clip(delta / MAX_DELTA, -limit, limit)


class ArmExpert:
    """``act()`` -> float32 (4,) action for ``robot``'s current state."""

    def __init__(self, robot: ArmRobot):
        if not isinstance(robot, ArmRobot):
            raise ValueError(f"robot must be an ArmRobot, got {type(robot).__name__}")
        self.robot = robot

    def act(self) -> np.ndarray:
        robot = self.robot
        if robot.done:
            raise RuntimeError("ArmExpert.act() needs a running episode: call robot.reset(seed) first")
        v, here = robot.variant, robot.target
        action = np.zeros(4)
        action[3] = -1.0  # hold the cube
        side = robot.layout.target_side
        above_pad = np.array([v.lane_end, side * PAD_Y, CARRY_Z])
        if here[2] < CARRY_Z - TOLERANCE and here[0] < v.lane_end - TOLERANCE:  # lift
            action[:3] = _towards(np.array([0.0, -STEER_GAIN * here[1], CARRY_Z - here[2]]))
        elif here[0] < v.lane_end - TOLERANCE:  # carry
            dx = min(CARRY_SPEED, (v.lane_end - here[0]) / MAX_DELTA)
            action[:3] = [dx, *_towards(np.array([-STEER_GAIN * here[1], CARRY_Z - here[2]]))]
        elif np.abs(above_pad[:2] - here[:2]).max() > TOLERANCE:  # turn towards the pad
            action[:3] = _towards(above_pad - here)
        elif here[2] > PLACE_Z + TOLERANCE:  # lower
            action[:3] = _towards(np.array([0.0, 0.0, PLACE_Z - here[2]]))
        elif np.linalg.norm(robot.scene.grasp_position() - here) <= SETTLED:  # release
            action[3] = 1.0
        return action.astype(np.float32)


__all__ = ["CARRY_SPEED", "ArmExpert"]
