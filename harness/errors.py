"""The harness's one small error hierarchy and the exit codes the CLI maps them to."""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a run or a check failed
EXIT_USAGE = 2  # bad arguments, unknown names, malformed input
EXIT_UNAVAILABLE = 3  # the chosen backend cannot run here


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


class BackendUnavailable(HarnessError):
    """The backend's vendor software or device is missing; the message says which."""

    exit_code = EXIT_UNAVAILABLE


class Diverged(HarnessError):
    """Loss or gradient norm became NaN/Inf during training."""


class RunInterrupted(HarnessError):
    """SIGINT or SIGTERM arrived during a run."""
