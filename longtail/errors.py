"""Exceptions raised by longtail. Each message names the culprit (file, line, key or parameter).

The command line prints a LongTailError as one line, ``longtail: error: <message>``, with no
traceback. An error raised inside a DataLoader worker reaches the main process re-created from
the worker's formatted traceback; the classes here keep only the original message.
"""


def _unwrap_worker_message(text: str, cls: type) -> str:
    """``Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...\\nlongtail.errors.
    DataError: msg`` -> ``msg (in DataLoader worker process 0)``."""
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    cut = text.rfind(marker)
    if cut < 0:
        return text
    where = text.split("\n", 1)[0]
    place = where[where.find(" in ") + 4:].rstrip(".") if " in " in where else "a worker"
    return f"{text[cut + len(marker):].strip()} (in {place})"


class LongTailError(Exception):
    """Base class of every error longtail raises on bad input."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and "\nOriginal Traceback" in args[0]:
            args = (_unwrap_worker_message(args[0], type(self)),)
        super().__init__(*args)


class ConfigError(LongTailError, ValueError):
    """An unknown name, key or a badly typed or out-of-range value in a configuration."""


class DataError(LongTailError, ValueError):
    """A missing or corrupt file, an unparsable list line, a label out of range, an empty class."""


class CheckpointError(LongTailError, ValueError):
    """A checkpoint or run folder that does not fit what it is loaded into, that another process
    holds, or that cannot be written (read-only, full disk)."""


class DivergenceError(LongTailError, FloatingPointError):
    """The training loss or the model state became NaN or infinite."""
