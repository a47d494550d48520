"""The MiniGrid world: Memory / BabyAI levels as a camera + language + discrete-action robot
(``env.SimRobot``), its experts, privileged memory facts, and seeded demonstration datasets.
Its public names are re-exported by ``kv_vla_ros.sim``."""
