"""longtail: long-tailed visual recognition in PyTorch.

Library layer: ``longtail.losses`` (drop-in losses), ``longtail.data`` (datasets and samplers),
``longtail.models`` (backbones and heads); ``longtail.engine`` trains and evaluates them.
"""
__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DataError, DivergenceError, LongTailError  # noqa: F401
