"""Build the run's config from a file plus overrides, and write it next to the outputs."""

from __future__ import annotations

import os
from pathlib import Path

from avdet.config.config import CfgNode
from avdet.config.defaults import get_cfg
from avdet.utils.io import atomic_write_text


def load_config(
    config_file: str | os.PathLike | None = None, opts: list[str] | None = None
) -> CfgNode:
    """Defaults, then `config_file` (with its `_BASE_` chain), then `KEY VALUE` overrides; frozen."""
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg.freeze()


def save_config(cfg: CfgNode, output_dir: str | os.PathLike | None = None) -> Path:
    """Write the resolved config to OUTPUT_DIR/config.yaml; loading it back reproduces the run."""
    path = Path(output_dir or cfg.OUTPUT_DIR) / "config.yaml"
    atomic_write_text(path, cfg.dump())
    return path
