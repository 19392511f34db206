"""Up-front checks of `harness run`'s numeric options, before anything is loaded or written,
and the CLI's one-line answer to failures that are not HarnessErrors."""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import traceback

from harness.errors import EXIT_FAILED, EXIT_USAGE, UsageError

SEED_MAX = 2**32 - 1

# option -> (attribute, lowest allowed value, strictly greater than it?)
_NUMERIC_RUN_OPTIONS: tuple[tuple[str, str, float, bool], ...] = (
    ("--steps", "steps", 1, False),
    ("--epochs", "epochs", 0, True),
    ("--batch-size", "batch_size", 1, False),
    ("--eval-batch-size", "eval_batch_size", 1, False),
    ("--workers", "num_workers", 0, False),
    ("--nproc", "nproc", 1, False),
    ("--nnodes", "nnodes", 1, False),
    ("--grad-accum", "grad_accum", 1, False),
    ("--log-interval", "log_interval", 1, False),
    ("--eval-interval", "eval_interval", 0, False),
    ("--warmup-steps", "warmup_steps", 0, False),
    ("--checkpoint-interval", "checkpoint_interval", 0, False),
    ("--keep-checkpoints", "keep_checkpoints", 1, False),
)


# `harness eval` and `harness export` (an option a verb does not have is skipped).
_NUMERIC_EVAL_OPTIONS: tuple[tuple[str, str, float, bool], ...] = (
    ("--batch-size", "batch_size", 1, False),
    ("--warmup-batches", "warmup_batches", 0, False),
    ("--workers", "num_workers", 0, False),
    ("--profile-steps", "profile_steps", 1, False),
    ("--agreement-batches", "agreement_batches", 0, False),
    ("--opset", "opset", 1, False),
)


# `harness parity --numerics` (its own --steps, --tol and --seed).
_NUMERIC_NUMERICS_OPTIONS: tuple[tuple[str, str, float, bool], ...] = (
    ("--steps", "steps", 1, False),
    ("--tol", "tol", 0, False),
)


def validate_run_numbers(args: argparse.Namespace) -> None:
    """Every numeric `harness run` option in range, or a UsageError naming it (exit 2)."""
    _check_numbers(args, _NUMERIC_RUN_OPTIONS)


def validate_eval_numbers(args: argparse.Namespace) -> None:
    """The same for `harness eval` / `harness export`, before a checkpoint is read."""
    _check_numbers(args, _NUMERIC_EVAL_OPTIONS)


def validate_numerics_numbers(args: argparse.Namespace) -> None:
    """The same for `harness parity --numerics`, before a workload is built."""
    _check_numbers(args, _NUMERIC_NUMERICS_OPTIONS)


def _check_numbers(args: argparse.Namespace,
                   table: tuple[tuple[str, str, float, bool], ...]) -> None:
    for flag, dest, low, strict in table:
        value = getattr(args, dest, None)
        if value is None:
            continue
        # NaN compares false with every bound; inf would pass one (--tol inf passes anything)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{flag} {value}: must be a finite number")
        if value <= low if strict else value < low:
            bound = f"> {low:g}" if strict else f">= {low:g}"
            raise UsageError(f"{flag} {value}: must be {bound}")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise UsageError(f"--seed {seed}: must be in 0..{SEED_MAX}")


def debug_wanted(argv: list[str]) -> tuple[bool, list[str]]:
    """`--debug` anywhere before `--` (a global flag), or HARNESS_DEBUG=1; argv without it."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    rest = [a for i, a in enumerate(argv) if not (i < end and a == "--debug")]
    return debug or os.environ.get("HARNESS_DEBUG", "") not in ("", "0"), rest


def _record_note(exc: BaseException) -> str:
    path = getattr(exc, "harness_record", None)
    return f" (record: {path})" if path else ""


def answer_os_error(exc: OSError) -> int:
    """A filesystem failure on a path the user chose: one line. Exit 1 when a run had
    started (its record says failed), else 2."""
    from harness.outdir import os_error_line

    note = _record_note(exc)
    print(f"harness: error: {os_error_line(exc)}{note}", file=sys.stderr)
    return EXIT_FAILED if note else EXIT_USAGE


def answer_internal_error(exc: BaseException) -> int:
    """Not the user's fault: one line saying so and where the full traceback was written."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    where = "(could not be written)"
    try:
        fd, name = tempfile.mkstemp(prefix="harness-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        where = name
    except OSError:
        pass
    first = (str(exc).splitlines() or [""])[0][:300]
    print(f"harness: internal error: {type(exc).__name__}: {first}{_record_note(exc)} - this is "
          f"a bug; full traceback in {where} (--debug prints it)", file=sys.stderr)
    return EXIT_FAILED
