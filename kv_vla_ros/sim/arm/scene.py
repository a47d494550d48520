"""The arm's world in PyBullet: a Franka Panda (``pybullet_data``'s ``franka_panda/panda.urdf``) on a
table, a cube held in its gripper, a lane drawn on the table, two pads that look alike, and a cue
lamp; one fixed camera drawn by PyBullet's TinyRenderer (CPU, no OpenGL, no shadows).

Why the robot is drawn with its collision meshes: ``panda.urdf``'s visual meshes hold ~10 MB of
triangles and TinyRenderer's cost is per triangle, not per pixel: 14 ms per 64 px frame with
them, 0.6 ms with the collision meshes (same links, joints, masses and limits; coarser surfaces).
The lean URDF is the shipped one with ``meshes/visual/`` replaced by ``meshes/collision/``,
written once per process into a temporary directory (the package ships no copy of the model).

Coordinates: metres, the robot base at the origin, +x away from the robot along the lane, +y to
the robot's left, the table top at z = 0. Every body has a flat colour (no textures: cheaper).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from kv_vla_ros.sim.arm.quiet import quiet_fds

with quiet_fds(1, 2):  # pybullet prints its build time on import
    import pybullet
    import pybullet_data
    from pybullet_utils.bullet_client import BulletClient

# The Panda's links: 0-6 the arm's revolute joints, 9-10 the fingers, 11 the grasp point between them.
ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
GRASP_LINK = 11
STATE_JOINT_NAMES = tuple(f"panda_joint{i}" for i in range(1, 8)) + ("panda_finger_joint1", "panda_finger_joint2")
# A comfortable arm posture (the IK's null-space rest pose) and the joint limits of panda.urdf.
REST_POSE = (0.0, 0.2, 0.0, -2.4, 0.0, 2.6, 0.785)
JOINT_LOWER = (-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671)
JOINT_UPPER = (2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671)
JOINT_FORCES = (87.0,) * 4 + (12.0,) * 3
GRIPPER_DOWN = (1.0, 0.0, 0.0, 0.0)  # quaternion (x, y, z, w): the hand pointing at the table
FINGER_OPEN, FINGER_CLOSED = 0.04, 0.02  # finger joint positions (metres from the centre)

CUBE_HALF = 0.02
PAD_RADIUS = 0.06
PAD_HEIGHT = 0.004
LAMP_POSITION = (0.42, 0.30, 0.12)
LAMP_RADIUS = 0.06
LAMP_OFF = (0.25, 0.25, 0.25, 1.0)
CUE_COLOURS = {"red": (0.95, 0.1, 0.1, 1.0), "blue": (0.1, 0.25, 1.0, 1.0)}
# Distractors (Arm-CueCarryDistract): a second lamp as big as the cue lamp across the lane, lit in the
# cue's colours, and a block sliding along y on the far side of the table; visual only (no collision).
DISTRACTOR_LAMP_POSITION = (0.42, -0.30, 0.12)
SLIDER_HALF = (0.035, 0.035, 0.035)
SLIDER_X = 0.62
SLIDER_Y = (-0.42, 0.42)  # from the camera's side of the table to the far side
TABLE_COLOUR = (0.78, 0.72, 0.62, 1.0)
LANE_COLOUR = (0.55, 0.52, 0.48, 1.0)
PAD_COLOUR = (0.5, 0.5, 0.55, 1.0)
CUBE_COLOUR = (0.95, 0.75, 0.1, 1.0)

PHYSICS_HZ = 240  # PyBullet's default time step; a control step runs PHYSICS_HZ / control_hz of them


def full_panda_urdf() -> str:
    """``pybullet_data``'s ``franka_panda/panda.urdf`` as shipped (its visual meshes)."""
    return os.path.join(pybullet_data.getDataPath(), "franka_panda", "panda.urdf")


@functools.lru_cache(maxsize=1)
def lean_panda_urdf() -> str:
    """Path of ``franka_panda/panda.urdf`` drawn with its collision meshes (see the module doc): one
    file per installed ``pybullet_data`` and user in the temporary directory, written atomically."""
    root = os.path.dirname(full_panda_urdf())
    with open(full_panda_urdf(), encoding="utf-8") as f:
        text = f.read()
    text = text.replace("package://meshes/visual/", "package://meshes/collision/")
    text = text.replace("package://meshes/", os.path.join(root, "meshes") + "/")
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"kv_vla_panda_lean_{os.getuid()}_{key}.urdf")
    if not os.path.isfile(path):
        fd, part = tempfile.mkstemp(dir=tempfile.gettempdir(), suffix=".urdf.part")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(part, path)  # several processes may write it at once: each rename is whole
    return path


@dataclass(frozen=True)
class Camera:
    """A fixed camera beyond the lane's end, to the robot's right, looking down at the table."""

    size: int = 64
    eye: tuple[float, float, float] = (1.10, -0.55, 0.85)
    target: tuple[float, float, float] = (0.45, 0.0, 0.05)
    fov_deg: float = 50.0

    def matrices(self) -> tuple[list[float], list[float]]:
        view = pybullet.computeViewMatrix(self.eye, self.target, (0.0, 0.0, 1.0))
        proj = pybullet.computeProjectionMatrixFOV(self.fov_deg, 1.0, 0.1, 3.0)
        return view, proj


@dataclass
class Bodies:
    robot: int
    cube: int
    lamp: int
    pads: tuple[int, int]
    distractor_lamp: int = -1
    slider: int = -1


class ArmScene:
    """One PyBullet DIRECT client holding the world; ``build`` re-creates it for every episode
    (``resetSimulation``: an episode's physics never depends on the one before)."""

    def __init__(self, camera: Camera, control_hz: float, robot_urdf: str | None = None):
        self.robot_urdf = robot_urdf or lean_panda_urdf()  # another URDF: e.g. the full meshes, to time them
        with quiet_fds(1):  # and "argv[0]=" on every connection
            self.client = BulletClient(connection_mode=pybullet.DIRECT)
        self.camera = camera
        self.substeps = max(1, round(PHYSICS_HZ / control_hz))
        self._view, self._proj = camera.matrices()
        self.bodies: Bodies | None = None
        self._grasp: int | None = None

    # ---- building -----------------------------------------------------------------------------
    def _box(self, half, position, colour, mass=0.0) -> int:
        c = self.client
        visual = c.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=colour)
        collision = c.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half) if mass or half[2] > 0.005 else -1
        return c.createMultiBody(mass, collision, visual, position)

    def build(self, start_grasp: np.ndarray, lane: tuple[float, float], pad_xy: tuple[np.ndarray, np.ndarray],
              distractors: bool = False):
        """World for one episode: the hand at ``start_grasp`` (x, y, z of the grasp point) holding
        the cube; the lane from ``lane[0]`` to ``lane[1]`` along x at y = 0; pads at ``pad_xy``;
        ``distractors``: the second lamp and the sliding block too (hidden until shown)."""
        c = self.client
        c.resetSimulation()
        c.setGravity(0.0, 0.0, -9.81)
        c.setPhysicsEngineParameter(fixedTimeStep=1.0 / PHYSICS_HZ, deterministicOverlappingPairs=1)
        self._box((0.55, 0.45, 0.02), (0.45, 0.0, -0.02), TABLE_COLOUR)
        length = lane[1] - lane[0]
        self._box((length / 2 + 0.03, 0.035, 0.0005), ((lane[0] + lane[1]) / 2, 0.0, 0.0005), LANE_COLOUR)
        pads = []
        for xy in pad_xy:
            visual = c.createVisualShape(pybullet.GEOM_CYLINDER, radius=PAD_RADIUS, length=PAD_HEIGHT,
                                         rgbaColor=PAD_COLOUR)
            pads.append(c.createMultiBody(0.0, -1, visual, (float(xy[0]), float(xy[1]), PAD_HEIGHT / 2)))
        post = c.createVisualShape(pybullet.GEOM_CYLINDER, radius=0.01, length=LAMP_POSITION[2], rgbaColor=LAMP_OFF)
        c.createMultiBody(0.0, -1, post, (LAMP_POSITION[0], LAMP_POSITION[1], LAMP_POSITION[2] / 2))
        lamp_shape = c.createVisualShape(pybullet.GEOM_SPHERE, radius=LAMP_RADIUS, rgbaColor=LAMP_OFF)
        lamp = c.createMultiBody(0.0, -1, lamp_shape, LAMP_POSITION)
        robot = c.loadURDF(self.robot_urdf, (0.0, 0.0, 0.0), useFixedBase=True)
        self.bodies = Bodies(robot=robot, cube=-1, lamp=lamp, pads=(pads[0], pads[1]))
        if distractors:
            post = c.createVisualShape(pybullet.GEOM_CYLINDER, radius=0.01, length=DISTRACTOR_LAMP_POSITION[2],
                                       rgbaColor=LAMP_OFF)
            c.createMultiBody(0.0, -1, post, (*DISTRACTOR_LAMP_POSITION[:2], DISTRACTOR_LAMP_POSITION[2] / 2))
            shape = c.createVisualShape(pybullet.GEOM_SPHERE, radius=LAMP_RADIUS, rgbaColor=LAMP_OFF)
            self.bodies.distractor_lamp = c.createMultiBody(0.0, -1, shape, DISTRACTOR_LAMP_POSITION)
            shape = c.createVisualShape(pybullet.GEOM_BOX, halfExtents=SLIDER_HALF, rgbaColor=LAMP_OFF)
            self.bodies.slider = c.createMultiBody(0.0, -1, shape, self._slider_position(None))
        joints = list(REST_POSE)
        for _ in range(3):  # IK starts from the current joints: a few rounds place the start pose exactly
            for j, q in zip(ARM_JOINTS, joints):
                c.resetJointState(robot, j, q)
            joints = self.solve_ik(start_grasp)
        for j, q in zip(ARM_JOINTS, joints):
            c.resetJointState(robot, j, q)
        for j in FINGER_JOINTS:
            c.resetJointState(robot, j, FINGER_CLOSED)
        self.bodies.cube = self._box((CUBE_HALF,) * 3, tuple(self.grasp_position()), CUBE_COLOUR, mass=0.1)
        for link in range(-1, c.getNumJoints(robot)):  # the held cube never pushes the fingers apart
            c.setCollisionFilterPair(robot, self.bodies.cube, link, -1, 0)
        self._grasp = c.createConstraint(robot, GRASP_LINK, self.bodies.cube, -1, pybullet.JOINT_FIXED,
                                         (0, 0, 0), (0, 0, 0), (0, 0, 0))
        c.changeConstraint(self._grasp, maxForce=200.0)
        self.drive(joints, FINGER_CLOSED)

    # ---- acting -------------------------------------------------------------------------------
    def solve_ik(self, grasp_target: np.ndarray) -> list[float]:
        """Arm joint angles (7,) that put the grasp point at ``grasp_target`` with the hand down."""
        ranges = [hi - lo for lo, hi in zip(JOINT_LOWER, JOINT_UPPER)]
        joints = self.client.calculateInverseKinematics(
            self.bodies.robot, GRASP_LINK, [float(v) for v in grasp_target], GRIPPER_DOWN,
            lowerLimits=list(JOINT_LOWER), upperLimits=list(JOINT_UPPER), jointRanges=ranges,
            restPoses=list(REST_POSE), maxNumIterations=50, residualThreshold=1e-5)
        return list(joints[:7])

    def drive(self, arm_joints, finger: float) -> None:
        c, robot = self.client, self.bodies.robot
        c.setJointMotorControlArray(robot, list(ARM_JOINTS), pybullet.POSITION_CONTROL, targetPositions=arm_joints,
                                    forces=list(JOINT_FORCES))
        c.setJointMotorControlArray(robot, list(FINGER_JOINTS), pybullet.POSITION_CONTROL,
                                    targetPositions=[finger, finger], forces=[40.0, 40.0])

    def simulate(self, substeps: int | None = None) -> None:
        for _ in range(self.substeps if substeps is None else substeps):
            self.client.stepSimulation()

    def release(self) -> None:
        """Open the hand: the grasp constraint goes, the cube falls under gravity."""
        if self._grasp is not None:
            self.client.removeConstraint(self._grasp)
            self._grasp = None

    def set_lamp(self, colour) -> None:
        self.client.changeVisualShape(self.bodies.lamp, -1, rgbaColor=colour)

    def set_distractors(self, lamp_colour, slide: float | None, slide_colour) -> None:
        """The second lamp's colour; the block at ``slide`` (0..1 across the table) in ``slide_colour``,
        or parked out of the camera's view (None). Visual only: physics never sees them."""
        c, b = self.client, self.bodies
        c.changeVisualShape(b.distractor_lamp, -1, rgbaColor=lamp_colour)
        c.resetBasePositionAndOrientation(b.slider, self._slider_position(slide), (0.0, 0.0, 0.0, 1.0))
        c.changeVisualShape(b.slider, -1, rgbaColor=slide_colour)

    @staticmethod
    def _slider_position(slide: float | None) -> tuple[float, float, float]:
        if slide is None:
            return (SLIDER_X, 0.0, -1.0)  # under the table
        return (SLIDER_X, SLIDER_Y[0] + slide * (SLIDER_Y[1] - SLIDER_Y[0]), SLIDER_HALF[2])

    # ---- reading ------------------------------------------------------------------------------
    def grasp_position(self) -> np.ndarray:
        return np.asarray(self.client.getLinkState(self.bodies.robot, GRASP_LINK)[4], dtype=np.float64)

    def cube_position(self) -> np.ndarray:
        return np.asarray(self.client.getBasePositionAndOrientation(self.bodies.cube)[0], dtype=np.float64)

    def joint_positions(self) -> np.ndarray:
        """float64 (9,): the 7 arm joints then the 2 finger joints (``STATE_JOINT_NAMES``)."""
        states = self.client.getJointStates(self.bodies.robot, list(ARM_JOINTS) + list(FINGER_JOINTS))
        return np.asarray([s[0] for s in states], dtype=np.float64)

    def render(self) -> np.ndarray:
        """uint8 (size, size, 3) RGB from the fixed camera (TinyRenderer, no shadows)."""
        size = self.camera.size
        _, _, rgba, _, _ = self.client.getCameraImage(size, size, self._view, self._proj, shadow=0,
                                                      renderer=pybullet.ER_TINY_RENDERER,
                                                      flags=pybullet.ER_NO_SEGMENTATION_MASK)
        return np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[:, :, :3])

    def close(self) -> None:
        try:
            self.client.disconnect()
        except pybullet.error:
            pass


__all__ = [
    "CUBE_HALF",
    "CUE_COLOURS",
    "FINGER_CLOSED",
    "FINGER_OPEN",
    "LAMP_OFF",
    "PAD_RADIUS",
    "PHYSICS_HZ",
    "STATE_JOINT_NAMES",
    "ArmScene",
    "Camera",
    "lean_panda_urdf",
]
