"""The VLA tier: model (vision encoder + causal-LM backbone + action tokens), checkpoint I/O and
the streaming ``VLASession``. Imports torch + transformers (and ``kv_vla_ros.cache``), never rclpy.
"""

from __future__ import annotations

from pathlib import Path

from kv_vla_ros.vla.kv_vla.config import ActionSpaceConfig, ProcessorConfig, VLAConfig, default_backbone
from kv_vla_ros.vla.loading import load_policy
from kv_vla_ros.vla.kv_vla.model import VLAModel
from kv_vla_ros.vla.kv_vla.processor import ImageProcessor, check_image
from kv_vla_ros.vla.policy import Episode, KVVLAPolicy, StreamingPolicy
from kv_vla_ros.vla.session import VLASession
from kv_vla_ros.vla.kv_vla.tokenization import ActionTokenizer, TextTokenizer, build_text_tokenizer


def shipped_model_path(name: str) -> Path:
    """A checkpoint that ships with the package: ``<repo>/models/<name>`` (source checkout), else the
    installed share directory (``share/kv_vla_ros/models/<name>``)."""
    repo = Path(__file__).resolve().parents[2] / "models" / name
    if repo.is_dir():
        return repo
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("kv_vla_ros")) / "models" / name
    except Exception:  # not on a ROS install: keep the source-tree path (error names it on load)
        return repo


DEFAULT_MODEL_PATH: Path = shipped_model_path("kv-vla-minigrid")  # the node's, the demo's and the CLI's default
ARM_MODEL_PATH: Path = shipped_model_path("kv-vla-arm-pi0")  # the arm π0 trained from rosbags (make model-arm)


def model_path_or_default(model_path: str | Path | None) -> str:
    """The checkpoint directory every tool and the node load: ``model_path``, or the shipped model
    when it is empty or None."""
    return str(model_path) if model_path else str(DEFAULT_MODEL_PATH)

__all__ = [
    "VLAConfig", "ActionSpaceConfig", "ProcessorConfig", "default_backbone", "VLAModel", "VLASession",
    "StreamingPolicy", "KVVLAPolicy", "Episode", "load_policy", "ImageProcessor", "check_image", "ActionTokenizer",
    "TextTokenizer",
    "build_text_tokenizer", "DEFAULT_MODEL_PATH", "ARM_MODEL_PATH", "shipped_model_path", "model_path_or_default",
]
