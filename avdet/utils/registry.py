"""Name -> builder registries, so a new backbone or tower is one decorated function, not an if-chain."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any


class Registry:
    """Maps names to callables; `get` on an unknown name lists the valid ones."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[str, Callable[..., Any]] = {}

    def register(
        self, name: str | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            if key in self._items:
                raise KeyError(f"{self.name} registry already has {key!r}")
            self._items[key] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"unknown {self.name} {name!r}{hint}; valid: {sorted(self._items)}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)
