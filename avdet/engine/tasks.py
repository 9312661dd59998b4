"""What `tools/train_net.py` runs: cfg.TASK -> a function `run(cfg, args) -> dict`.

A stage registers its entry point in its own module with `@register_task("name")`. The built-in
stages are listed in BUILTIN_TASKS with the module that registers them, which is imported only
when that task is asked for: no import cycles, and a stage not written yet breaks nothing else.

cfg.TASK may also be "package.module:function" (any importable function with the same
signature), for plugins and tests without touching this file.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
from collections.abc import Callable
from typing import Any

from avdet.config import CfgNode

TaskFn = Callable[[CfgNode, argparse.Namespace], dict[str, Any] | None]

# Task name -> module that registers it.
BUILTIN_TASKS = {
    "av": "avdet.models.av_task",
    "detector": "avdet.detection.task",
    "distill": "avdet.distill.task",
}
TASKS: dict[str, TaskFn] = {}


class TaskError(ValueError):
    """cfg.TASK names no task; the message lists the valid ones."""


def register_task(name: str) -> Callable[[TaskFn], TaskFn]:
    """Decorator: `@register_task("av")` over `def run(cfg, args) -> dict`."""

    def decorator(fn: TaskFn) -> TaskFn:
        if name in TASKS and TASKS[name] is not fn:
            raise TaskError(f"task {name!r} is registered twice ({TASKS[name]} and {fn})")
        TASKS[name] = fn
        return fn

    return decorator


def task_names() -> list[str]:
    return sorted(set(BUILTIN_TASKS) | set(TASKS))


def get_task(name: str) -> TaskFn:
    """The function for task `name`, importing its module on first use."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        module = _import(module_name, name)
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise TaskError(f"TASK {name!r}: module {module_name} has no function {attr!r}")
        return fn
    if name not in TASKS and name in BUILTIN_TASKS:
        _import(BUILTIN_TASKS[name], name)
        if name not in TASKS:
            raise TaskError(
                f"TASK {name!r}: {BUILTIN_TASKS[name]} was imported but did not "
                f"@register_task({name!r})"
            )
    if name not in TASKS:
        close = difflib.get_close_matches(name, task_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TaskError(
            f"unknown TASK {name!r}{hint}; valid: {task_names()} or 'package.module:function'"
        )
    return TASKS[name]


def _import(module_name: str, task: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise TaskError(f"TASK {task!r}: module {module_name} not found") from exc
        raise
