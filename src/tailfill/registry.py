"""One registry idiom for every named choice of a config: dataset kinds, stages, classifier methods, feature
generators, OOD scorers, feature extractors, samplers.

    SCORERS = Registry("select.method")

    @SCORERS.register("knn")
    class KNNScorer: ...

    SCHEDULERS.register("ddim", "diffusers:DDIMScheduler")   # imported when first asked for

``names()`` lists a registry without importing what it holds, so a config is checked (``config.validate``)
and the CLI lists its choices without torch; ``get(name)`` gives the entry, importing a ``"module:attr"`` one on
first use, or an error that names the key and the choices.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


class Registry:
    def __init__(self, key: str):
        self.key = key              # the config key (or what) that names an entry: says where an error comes from
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: Any = None) -> Callable:
        """Add ``entry`` (an object, or a lazy ``"module:attr"``) under ``name``; without ``entry``, a decorator."""
        if entry is None:
            def decorator(obj):
                self.register(name, obj)
                return obj
            return decorator
        if name in self._entries:
            raise ValueError(f"{self.key}: {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, default: Any = ...) -> Any:
        """The entry ``name``; an unknown name is an error naming the choices (or ``default``, when given)."""
        if name not in self._entries:
            if default is not ...:
                return default
            raise ValueError(f"unknown {self.key} {name!r}; choose from {', '.join(self._entries)}")
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:
            module, attr = entry.split(":", 1)
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __setitem__(self, name: str, entry: Any) -> None:  # replace an entry in place (tests swap one)
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def items(self):
        return [(name, self.get(name)) for name in self._entries]
