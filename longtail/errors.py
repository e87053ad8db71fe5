"""Exceptions raised by longtail. Each message names the culprit (file, line, key or parameter)."""


class LongTailError(Exception):
    """Base class of every error longtail raises on bad input."""


class ConfigError(LongTailError, ValueError):
    """An unknown name, key or a badly typed value in a configuration."""


class DataError(LongTailError, ValueError):
    """A missing or corrupt file, an unparsable list line, a label out of range, an empty class."""


class CheckpointError(LongTailError, ValueError):
    """A checkpoint or run folder that does not fit what it is loaded into."""


class DivergenceError(LongTailError, FloatingPointError):
    """The training loss became NaN or infinite."""
