"""π0 (transformers' ``PI0ForConditionalGeneration``) as a long-horizon streaming policy."""

from kv_vla_ros.vla.pi0.config import POLICY_FILE, PI0PolicyConfig
from kv_vla_ros.vla.pi0.policy import PI0Policy, check_pi0_config
from kv_vla_ros.vla.pi0.tiny import pi0_config, write_pi0_checkpoint

__all__ = ["PI0Policy", "PI0PolicyConfig", "POLICY_FILE", "check_pi0_config", "pi0_config", "write_pi0_checkpoint"]
