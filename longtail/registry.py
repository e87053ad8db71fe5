"""Name -> factory registries, so that a config names a component by string.

Every pluggable family (datasets, samplers, backbones, heads, losses) keeps one
:class:`Registry`. Components register themselves with a decorator::

    LOSSES = Registry("loss")

    @LOSSES.register("ce")
    class CrossEntropy(LongTailLoss): ...

and are built from configs with ``LOSSES.build("ce", class_counts, **params)``.
An unknown name raises :class:`~longtail.errors.ConfigError` listing the valid ones.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional

from .errors import ConfigError


class Registry:
    """A case-sensitive mapping from names to classes or factory functions.

    Args:
        kind: What the registry holds ("loss", "sampler", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: Optional[str] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``obj`` under ``name`` (default: ``obj.__name__``)."""

        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or obj.__name__
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        """Return the entry called ``name`` or raise a ConfigError listing valid names."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; valid {self.kind} names: {', '.join(sorted(self._entries))}"
            ) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Instantiate the entry called ``name``; bad keyword names raise ConfigError."""
        factory = self.get(name)
        try:
            return factory(*args, **kwargs)
        except TypeError as err:
            if "argument" in str(err):
                raise ConfigError(f"{self.kind} '{name}': {err}") from err
            raise

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
