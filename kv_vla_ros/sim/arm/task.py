"""The arm memory task family ("cue carry"): its variants, each episode's layout drawn from its seed,
and the rules (success, the decision), with numpy only.

An episode: the Panda holds a cube at the near end of a lane drawn on the table. A lamp beside the
lane lights red or blue for the first ``cue_steps`` frames, then goes dark. The arm lifts the cube,
carries it along the lane to its far end (the long phase), turns left or right to one of two pads
that look alike, lowers the cube and opens the hand. The rule, the same in every episode: red
means the left pad (+y), blue the right pad (-y). The instruction never names the colour, so at
the lane's end only memory tells which pad is right: chance is 1/2.

Variants differ only in the lane's length (the carry at the expert's 3.5 mm per step):
``Arm-CueCarryShort-v0`` (~66 steps between the cue's last frame and the decision) and
``Arm-CueCarryLong-v0`` (>= 150, as the issue asks), and in what happens during the carry:
``Arm-CueCarryDistract-v0`` is the long lane with salient events that never decide the pad (issue 30):
a second lamp, as big as the cue lamp and lit in the cue's own colours, flashes red or blue at
times drawn from the seed, and a red or blue block slides across the far side of the table. Their
draws come from a random stream of their own, independent of the cue: the pad still follows the
cue lamp alone (chance 1/2), and an attention-ranked eviction that keeps what is salient keeps them.
``Arm-CueCarryLateCue-v0`` is the distractor variant with the cue lit at frames 10-14 instead of 0-4:
the cue is then not the episode's first step, which accumulated-attention ranking (h2o) keeps anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ARM_TASK_PREFIX = "Arm-"
INSTRUCTION = "carry the cube along the lane and place it on the pad the light showed"
CUE_NAMES = ("red", "blue")  # index = cue class; red -> left pad (+y), blue -> right pad (-y)
MAX_DELTA = 0.01  # metres of end-effector motion per control step at |action| = 1
ACTION_DIM = 4  # (dx, dy, dz, gripper): deltas in [-1, 1] x MAX_DELTA; gripper > 0 opens the hand
ACTION_NAMES = ("dx", "dy", "dz", "gripper")
STATE_DIM = 9  # 7 arm joint positions + 2 finger joint positions (radians, metres)
CARRY_Z = 0.12  # grasp-point height while carrying
PLACE_Z = 0.05  # grasp-point height at release over a pad (cube bottom 3 cm above it)
START_Z = 0.02  # the cube rests on the table at the start
PAD_Y = 0.20
DECISION_Y = 0.08  # leaving the lane's band |y| < DECISION_Y near its end is the decision
DECISION_BAND_X = 0.05  # ... counted once x is within this of the lane's end
WORKSPACE_LOW = np.array([0.15, -0.32, 0.015])
WORKSPACE_HIGH = np.array([0.85, 0.32, 0.30])


@dataclass(frozen=True)
class ArmVariant:
    """One task id. ``lane_start`` / ``lane_end``: x of the lane's ends (metres); ``cue_steps``:
    frames that show the lit lamp, from frame ``cue_start``; ``max_steps``: the step cap (a failure)."""

    task: str
    lane_start: float
    lane_end: float
    cue_steps: int = 5
    max_steps: int = 150
    control_hz: float = 10.0
    distractors: bool = False  # flashes of a second lamp and a sliding block during the carry
    cue_start: int = 0  # the first frame that shows the lit lamp

    def cue_lit(self, step: int) -> bool:
        """Whether frame ``step`` shows the lit cue lamp."""
        return self.cue_start <= step < self.cue_start + self.cue_steps


FLASHES = (3, 6)  # distractor lamp flashes per episode (inclusive range)
FLASH_STEPS = 5  # frames per flash: as long as the cue
FLASH_WINDOW = (15, 170)  # steps in which a flash may start: after the cue (even a late one), before the lane's end
SLIDE_STEPS = 30  # frames the block takes to cross the table
SLIDE_WINDOW = (20, 140)  # steps in which the slide may start


VARIANTS: dict[str, ArmVariant] = {
    v.task: v for v in (
        ArmVariant("Arm-CueCarryShort-v0", lane_start=0.60, lane_end=0.78, max_steps=150),
        ArmVariant("Arm-CueCarryLong-v0", lane_start=0.22, lane_end=0.78, max_steps=320),
        ArmVariant("Arm-CueCarryDistract-v0", lane_start=0.22, lane_end=0.78, max_steps=320, distractors=True),
        ArmVariant("Arm-CueCarryLateCue-v0", lane_start=0.22, lane_end=0.78, max_steps=320, distractors=True,
                   cue_start=10),
    )
}
ARM_TASKS: tuple[str, ...] = tuple(VARIANTS)


def is_arm_task(task: str) -> bool:
    """True for the arm family's ids (with or without ``-v0``)."""
    return isinstance(task, str) and task.strip().startswith(ARM_TASK_PREFIX)


@dataclass(frozen=True)
class ArmLayout:
    """What a seed decides: the cue's colour (index into ``CUE_NAMES``) and the start of the grasp
    point (x, y jittered a few centimetres, independently of the cue)."""

    seed: int
    cue: int
    start: tuple[float, float, float]
    flashes: tuple[tuple[int, int], ...] = ()  # (first step, colour index) of each distractor flash
    slide: tuple[int, int] | None = None  # (first step, colour index) of the sliding block, or None

    def flash_colour(self, step: int) -> int | None:
        """Colour index the distractor lamp shows at frame ``step``, or None (dark)."""
        for start, colour in self.flashes:
            if start <= step < start + FLASH_STEPS:
                return colour
        return None

    def slide_progress(self, step: int) -> float | None:
        """Where the sliding block is at frame ``step``: 0 (entering) .. 1 (leaving), None off the table."""
        if self.slide is None or not self.slide[0] <= step < self.slide[0] + SLIDE_STEPS:
            return None
        return (step - self.slide[0]) / (SLIDE_STEPS - 1)

    @property
    def cue_name(self) -> str:
        return CUE_NAMES[self.cue]

    @property
    def target_side(self) -> int:
        """+1: the left pad (+y), -1: the right pad (-y)."""
        return 1 if self.cue == 0 else -1


def draw_layout(variant: ArmVariant, seed: int) -> ArmLayout:
    """The episode of ``seed``: a pure function of (variant, seed). The distractors come from a stream
    of their own (``[seed, 21]``): the cue and the start are those of the same seed without them."""
    rng = np.random.default_rng([int(seed), 20])
    cue = int(rng.integers(len(CUE_NAMES)))
    x = variant.lane_start + float(rng.uniform(-0.02, 0.02))
    y = float(rng.uniform(-0.03, 0.03))
    if not variant.distractors:
        return ArmLayout(int(seed), cue, (x, y, START_Z))
    return ArmLayout(int(seed), cue, (x, y, START_Z), *draw_distractors(np.random.default_rng([int(seed), 21])))


def draw_distractors(rng: np.random.Generator) -> tuple[tuple[tuple[int, int], ...], tuple[int, int]]:
    """``(flashes, slide)`` of one episode: flashes that never overlap, each its own colour draw."""
    count = int(rng.integers(FLASHES[0], FLASHES[1] + 1))
    slots = np.arange(FLASH_WINDOW[0], FLASH_WINDOW[1], FLASH_STEPS * 2)  # a gap of one flash between two
    starts = np.sort(rng.choice(slots, size=count, replace=False)) + rng.integers(0, FLASH_STEPS, size=count)
    flashes = tuple((int(t), int(rng.integers(len(CUE_NAMES)))) for t in starts)
    slide = (int(rng.integers(*SLIDE_WINDOW)), int(rng.integers(len(CUE_NAMES))))
    return flashes, slide


def pad_positions(variant: ArmVariant) -> tuple[np.ndarray, np.ndarray]:
    """(left pad, right pad) centres (x, y)."""
    return np.array([variant.lane_end, PAD_Y]), np.array([variant.lane_end, -PAD_Y])


def decision_side(variant: ArmVariant, grasp: np.ndarray) -> int:
    """0 while the grasp point is in the lane's band (or not yet near its end); else +1 / -1."""
    if grasp[0] < variant.lane_end - DECISION_BAND_X or abs(grasp[1]) < DECISION_Y:
        return 0
    return 1 if grasp[1] > 0 else -1


def placed_on(variant: ArmVariant, cube: np.ndarray, radius: float) -> int:
    """Which pad the resting cube lies on: +1 left, -1 right, 0 neither."""
    if cube[2] > 0.06:
        return 0
    for side, xy in zip((1, -1), pad_positions(variant)):
        if np.hypot(cube[0] - xy[0], cube[1] - xy[1]) <= radius:
            return side
    return 0


def check_action(action) -> np.ndarray:
    """A robot action -> float64 (4,); ValueError naming the problem (dimension, non-finite, bounds)."""
    try:
        arr = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"action: expected {ACTION_DIM} numbers (dx, dy, dz, gripper), got {action!r}") from None
    if arr.ndim != 1 or arr.shape[0] != ACTION_DIM:
        raise ValueError(f"action: expected dimension {ACTION_DIM} (dx, dy, dz, gripper), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"action: non-finite value in {arr.tolist()}")
    if (np.abs(arr) > 1.0 + 1e-6).any():
        raise ValueError(f"action: out of bounds [-1, 1]: {arr.tolist()}")
    return arr


__all__ = [
    "ACTION_DIM",
    "ACTION_NAMES",
    "ARM_TASKS",
    "CARRY_Z",
    "CUE_NAMES",
    "INSTRUCTION",
    "MAX_DELTA",
    "PLACE_Z",
    "STATE_DIM",
    "VARIANTS",
    "WORKSPACE_HIGH",
    "WORKSPACE_LOW",
    "ArmLayout",
    "ArmVariant",
    "check_action",
    "decision_side",
    "draw_distractors",
    "draw_layout",
    "is_arm_task",
    "pad_positions",
    "placed_on",
]
