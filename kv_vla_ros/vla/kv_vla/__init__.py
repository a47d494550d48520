"""The package's own VLA: a patch vision encoder + any transformers decoder-only causal LM +
action tokens (``model.VLAModel``), its config (``config``), frame processor (``processor``) and
tokenizers (``tokenization``). Beside it, ``vla/pi0/`` streams π0; both sit behind the policy
contract of ``kv_vla_ros.vla.policy``."""
