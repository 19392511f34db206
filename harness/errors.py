"""The harness's one small error hierarchy and the exit codes the CLI maps them to."""
from __future__ import annotations

import re
from typing import TypeVar

EXIT_OK = 0
EXIT_FAILED = 1  # a run or a check failed
EXIT_USAGE = 2  # bad arguments, unknown names, malformed input
EXIT_UNAVAILABLE = 3  # the chosen backend cannot run here
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM ended it (128 + SIGINT, as a shell reports Ctrl-C)


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""

    exit_code = EXIT_FAILED


class UsageError(HarnessError):
    """The user asked for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class DatasetError(UsageError):
    """A dataset on disk is missing or malformed; the message names the file and field."""


class ConfigError(UsageError):
    """A workload config value out of its range (from a preset, --set or a direct option):
    one line naming the field, its value, the rule and how to change it (see `bad_value`)."""

    field = ""

    @classmethod
    def bad_value(cls, field: str, value: object, rule: str, fix: str = "") -> ConfigError:
        """`config FIELD=VALUE: RULE (FIX)`; the default fix names the --set to change it."""
        error = cls(f"config {field}={value!r}: {rule} "
                    f"({fix or f'change it with --set {field}=VALUE'})")
        error.field = field
        return error


class MissingExtra(UsageError):
    """A workload needs an optional dependency that is not installed."""


class SourceUnavailable(MissingExtra):
    """A workload source (mmdet:, mmdet3d:) whose software stack is not installed here: like
    a backend that cannot run here, exit 3, with the line that installs it."""

    exit_code = EXIT_UNAVAILABLE


class BackendUnavailable(HarnessError):
    """The backend's vendor software or device is missing; the message says which."""

    exit_code = EXIT_UNAVAILABLE


class Diverged(HarnessError):
    """Loss or gradient norm became NaN/Inf during training."""


class RunInterrupted(HarnessError):
    """SIGINT or SIGTERM arrived during a run."""

    exit_code = EXIT_INTERRUPTED


_WORKER_ERROR = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
_OS_ERROR_LINE = re.compile(r"\[Errno (\d+)\] (.*?)(?:: '(.*)')?")


_E = TypeVar("_E", bound=BaseException)


def worker_error_origin(exc: _E) -> _E:
    """The error a DataLoader worker raised, as it would read in the main process.

    torch re-raises a worker's exception as the same type with the worker's whole traceback
    as its message; a dataset's one-line error (a HarnessError) or a file error (OSError)
    gets its own message back (errno and path too), with the worker's version as its cause
    (--debug prints both). Anything else is returned unchanged."""
    text = str(exc)
    if not isinstance(exc, (HarnessError, OSError)) or not _WORKER_ERROR.match(text):
        return exc
    cls = type(exc)
    names = (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__)
    starts = [text.rfind(f"\n{name}: ") for name in names]
    start = max(starts)
    if start < 0:
        return exc
    message = text[start + 1:].split(": ", 1)[1].rstrip("\n")
    try:
        if isinstance(exc, OSError):
            found = _OS_ERROR_LINE.fullmatch(message)
            origin = (cls(int(found[1]), found[2], *filter(None, [found[3]]))
                                     if found else cls(message))
        else:
            origin = cls(message)
    except Exception:  # noqa: BLE001 - a type that cannot be rebuilt keeps torch's version
        return exc
    origin.__dict__.update(exc.__dict__)
    origin.__cause__ = exc
    return origin


def exit_code_of(status: str) -> int:
    """A finished run's or evaluation's exit code from its record's status."""
    return {"ok": EXIT_OK, "interrupted": EXIT_INTERRUPTED}.get(status, EXIT_FAILED)
