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

import inspect
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
        """Instantiate the entry called ``name`` with ``args`` and ``kwargs``.

        The arguments are bound to the entry's signature before the call, so only arguments
        that do not fit it (an unknown keyword, a missing required one) become a ConfigError;
        a ``TypeError`` raised inside the constructor is a bug and propagates unchanged.

        Raises:
            ConfigError: Unknown ``name``, or arguments that do not fit the entry's signature
                (the message names the valid parameters).
        """
        factory = self.get(name)
        check_arguments(factory, f"{self.kind} '{name}'", *args, **kwargs)
        return factory(*args, **kwargs)

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


def check_arguments(factory: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> None:
    """Raise ConfigError when ``factory(*args, **kwargs)`` would not bind to its signature.

    Args:
        factory: A class or function.
        what: How the error message names the component (e.g. ``"loss 'ce'"``).
        *args: Positional arguments of the intended call.
        **kwargs: Keyword arguments of the intended call.

    Raises:
        ConfigError: The arguments do not fit; the message lists the keyword parameters.
    """
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # no introspectable signature (some builtins): let the call decide
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as err:
        valid = [p.name for p in sig.parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][len(args):]
        raise ConfigError(f"{what}: {err}; valid parameters: {', '.join(valid) or '(none)'}") from None
