"""Config tree, YAML loading with `_BASE_`, and command-line overrides (detectron2 conventions)."""

from avdet.config.config import CfgNode, ConfigError, load_yaml_with_base
from avdet.config.defaults import get_cfg
from avdet.config.setup import load_config, save_config

__all__ = ["CfgNode", "ConfigError", "get_cfg", "load_config", "load_yaml_with_base", "save_config"]
