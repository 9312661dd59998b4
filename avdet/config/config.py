"""A small detectron2-style config node: nested attribute dict, YAML with `_BASE_`, typed overrides.

Why not yacs/fvcore: we want unknown keys to name the closest valid key, and a tiny dependency-free
implementation that tests can reach line by line.
"""

from __future__ import annotations

import ast
import copy
import difflib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"
# Keys that config files of older versions hold (config.yaml of an old output folder): full key
# -> (its replacement in the same section, old value -> new value). Loading such a file sets
# the replacement and warns, so old output folders still load.
RENAMED_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {}


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the reason."""


class CfgNode(dict):
    """A dict whose keys are also attributes; nested dicts become CfgNodes."""

    IMMUTABLE = "__immutable__"

    def __init__(self, init: dict | None = None) -> None:
        super().__init__()
        object.__setattr__(self, CfgNode.IMMUTABLE, False)
        for key, value in (init or {}).items():
            self[key] = CfgNode(value) if isinstance(value, dict) else value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        if self.is_frozen():
            raise AttributeError(f"config is frozen; cannot set {name!r} = {value!r}")
        self[name] = (
            CfgNode(value) if isinstance(value, dict) and not isinstance(value, CfgNode) else value
        )

    # -- freezing ---------------------------------------------------------------------------
    def freeze(self) -> CfgNode:
        self._set_immutable(True)
        return self

    def defrost(self) -> CfgNode:
        self._set_immutable(False)
        return self

    def is_frozen(self) -> bool:
        return object.__getattribute__(self, CfgNode.IMMUTABLE)

    def _set_immutable(self, flag: bool) -> None:
        object.__setattr__(self, CfgNode.IMMUTABLE, flag)
        for value in self.values():
            if isinstance(value, CfgNode):
                value._set_immutable(flag)

    def clone(self) -> CfgNode:
        return copy.deepcopy(self)

    # -- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            k: v.to_dict() if isinstance(v, CfgNode) else copy.deepcopy(v) for k, v in self.items()
        }

    def dump(self) -> str:
        """YAML text that `merge_from_file` reads back to the same config (tuples become lists)."""
        return yaml.safe_dump(
            _tuples_to_lists(self.to_dict()), sort_keys=True, default_flow_style=None
        )

    # -- merging ----------------------------------------------------------------------------
    def merge_from_file(self, path: str | os.PathLike) -> CfgNode:
        """Merge a YAML file (and, first, its `_BASE_` chain, relative to the file)."""
        self.merge_from_other(CfgNode(load_yaml_with_base(path)), source=str(path))
        return self

    def merge_from_other(self, other: dict, source: str = "<dict>") -> CfgNode:
        _merge_into(self, other, prefix="", source=source)
        return self

    def merge_from_list(self, opts: list[str]) -> CfgNode:
        """Merge `["KEY.SUB", "value", ...]`; values are parsed as Python literals when possible."""
        if len(opts) % 2:
            raise ConfigError(f"overrides must be KEY VALUE pairs; got an odd number: {opts}")
        for full_key, raw in zip(opts[0::2], opts[1::2], strict=True):
            node = self
            parts = full_key.split(".")
            for i, part in enumerate(parts[:-1]):
                _check_key(node, part, ".".join(parts[:i]), "<command line>")
                node = node[part]
                if not isinstance(node, CfgNode):
                    raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section")
            leaf = parts[-1]
            _check_key(node, leaf, ".".join(parts[:-1]), "<command line>")
            node[leaf] = _coerce(node[leaf], _parse_literal(raw), full_key, "<command line>")
        return self


def load_yaml_with_base(path: str | os.PathLike) -> dict:
    """Read a YAML config, resolving `_BASE_` (a path relative to the file, or a list of them)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = Path(os.path.expanduser(base))
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        _deep_update(merged, load_yaml_with_base(base_path))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


def _merge_into(dst: CfgNode, src: dict, prefix: str, source: str) -> None:
    for key, value in src.items():
        full_key = f"{prefix}{key}"
        if key not in dst and full_key in RENAMED_KEYS:
            new_key, convert = RENAMED_KEYS[full_key]
            logger.warning("%s: %s is now %s%s", source, full_key, prefix, new_key)
            key, full_key, value = new_key, f"{prefix}{new_key}", convert(value)
        _check_key(dst, key, prefix.rstrip("."), source)
        if isinstance(dst[key], CfgNode):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {full_key} is a section; got a value {value!r}")
            _merge_into(dst[key], value, f"{full_key}.", source)
        else:
            dst[key] = _coerce(dst[key], value, full_key, source)


def _check_key(node: CfgNode, key: str, prefix: str, source: str) -> None:
    if key in node:
        return
    full_key = f"{prefix}.{key}" if prefix else key
    candidates = [f"{prefix}.{k}" if prefix else k for k in node]
    close = difflib.get_close_matches(full_key, candidates, n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(f"{source}: unknown config key {full_key}{hint}")


def _parse_literal(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        lowered = raw.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return raw


def _coerce(default: Any, value: Any, key: str, source: str) -> Any:
    """Give `value` the type of `default` where that is lossless; otherwise a clear error."""
    if isinstance(value, dict):
        value = CfgNode(value)
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, int):
        return float(value)
    elif isinstance(default, tuple) and isinstance(value, (tuple, list)):
        return _lists_to_tuples(value)
    elif isinstance(default, list) and isinstance(value, (tuple, list)):
        return list(value)
    elif type(default) is type(value):
        return value
    raise ConfigError(
        f"{source}: {key} expects {type(default).__name__} (default {default!r}); "
        f"got {type(value).__name__} {value!r}"
    )


def _lists_to_tuples(obj: Any) -> Any:
    if isinstance(obj, (tuple, list)):
        return tuple(_lists_to_tuples(v) for v in obj)
    return obj


def _tuples_to_lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _tuples_to_lists(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_tuples_to_lists(v) for v in obj]
    return obj
