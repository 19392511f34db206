"""`harness` command line: argparse verbs, parse and dispatch only.

Plugins are loaded only by the verbs that need them, and a workload or backend plugin only
when that workload or backend is used (harness/plugins.py): `list` and `run --help` name them
from their declarations (`list --details` imports them all); `run` loads the host's plugins
for their options, `eval` and `export` build their options (from EvalConfig) only when they
are the verb. `harness --help`, `check`, `parity` tables and `gate` load no plugin.
`harness run` options are RunConfig's fields (harness/config.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from harness.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    HarnessError,
    UsageError,
    exit_code_of,
    worker_error_origin,
)
from harness.launch import add_launch_arguments, wants_launcher
from harness.run_checks import (
    answer_internal_error,
    answer_os_error,
    debug_wanted,
    validate_run_numbers,
)

# Third-party console noise, off unless the user's environment sets these: a devkit's tqdm
# bars (they interleave with the harness's lines and fill log.txt files) and the torch
# profiler's "USDT: profiler_start/stop" lines under --profile (kineto logs them at level 5;
# 6 also hides its ERROR lines: KINETO_LOG_LEVEL=4 brings both back). Set at the entry point,
# so DataLoader workers and torchrun's processes inherit them.
QUIET_ENV = {"TQDM_DISABLE": "1", "KINETO_LOG_LEVEL": "6"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 too; keep our one-line style
        raise UsageError(f"{self.prog}: {message}")


def _add_run(sub: Any, with_plugins: bool = False) -> None:
    from harness.config import RunConfig
    from harness.config_flags import add_config_arguments

    p = sub.add_parser("run", help="train, evaluate and record one workload on one backend",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train WORKLOAD on BACKEND, evaluate it and write "
                                   "record.json (accuracy, throughput, memory) to the run "
                                   "folder; `harness check` then judges it.")
    add_config_arguments(p, RunConfig)  # one option per RunConfig field, documented there
    add_launch_arguments(p)  # --nproc, --nnodes, --node-rank, --rdzv-endpoint, --rdzv-id
    p.add_argument("--overwrite", action="store_true",
                   help="--out DIR holds a previous run: delete its files first (default: "
                        "refused)")
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="continue the run in DIR from its newest complete checkpoint, with "
                        "its recorded config (--set may change optimizer/schedule fields, "
                        "e.g. lr)")
    p.set_defaults(func=cmd_run, _plugin_dests=[])
    if not with_plugins:
        return
    # Plugins add their own `harness run` options; their values reach harness_configure
    # through RunConfig.plugin_options. A broken plugin fails here, naming itself (exit 2).
    base = {a.dest for a in p._actions}
    from harness.cli_help import run_epilog
    from harness.plugins import get_plugin_manager

    get_plugin_manager().hook.harness_addoption.call_historic(kwargs={"parser": p})
    p.set_defaults(_plugin_dests=sorted({a.dest for a in p._actions} - base))
    p.epilog = run_epilog()


def _add_list(sub: Any) -> None:
    p = sub.add_parser("list", help="workloads and backends (--details: presets, and which "
                                    "backends are available here or why not)")
    p.add_argument("--details", action="store_true",
                   help="also presets and metrics, and each backend's availability here "
                        "(imports torch and every plugin: seconds, not a blink)")
    p.add_argument("--json", action="store_true", help="the details as JSON (implies --details)")
    p.set_defaults(func=cmd_list)


def _verb_of(argv: Sequence[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "")


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser for `argv`. Only the verb being parsed gets what costs imports: `run` its
    plugins' options and listing, `eval` / `export` their options (from EvalConfig, torch)."""
    from harness import eval_cli
    from harness.cli_help import DESCRIPTION, EXIT_CODES

    verb = _verb_of(argv)
    parser = _Parser(prog="harness", description=DESCRIPTION, epilog=EXIT_CODES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="print tracebacks (any position; or HARNESS_DEBUG=1)")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    _add_list(sub)
    _add_run(sub, with_plugins=verb == "run")
    eval_cli.add_eval(sub)
    eval_cli.add_export(sub)
    for add in _extra_verbs():
        add(sub)
    return parser


def _extra_verbs() -> list[Callable[[Any], None]]:
    """Verbs that live in their own modules (reference checks, parity, gating; history;
    show)."""
    adders: list[Callable[[Any], None]] = []
    import importlib

    for name in ("harness.report_cli", "harness.history", "harness.show"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
        else:
            adders.extend(module.VERBS)
    return adders


def cmd_list(args: argparse.Namespace) -> int:
    from harness.cli_help import format_inventory, inventory, names

    inv = inventory() if args.details or args.json else names()
    print(json.dumps(inv, indent=2) if args.json else format_inventory(inv))
    return EXIT_OK


def _relaunch_distributed(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """torchrun with this command line; signals forwarded, no worker left behind."""
    from harness.launch import relaunch

    return relaunch(args, argv)


def cmd_run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from harness.config import RunConfig
    from harness.config_flags import config_values
    from harness.runner import execute

    validate_run_numbers(args)
    if args.overwrite and args.resume is not None:
        raise UsageError("--overwrite with --resume: a resumed run continues its folder; "
                         "give one of them")
    if args.resume is not None:
        if args.workload is not None:
            raise UsageError(f"harness run --resume {args.resume} takes no WORKLOAD (the run "
                             f"in that folder is continued with its own; got {args.workload})")
        return _resume(args, argv)
    if args.workload is None:
        raise UsageError("harness run: a WORKLOAD is needed (or --resume DIR)")
    if wants_launcher(args):
        return _relaunch_distributed(args, argv)
    config = RunConfig(**config_values(RunConfig, args),
                       plugin_options=tuple((d, getattr(args, d)) for d in args._plugin_dests))
    record = execute(config, overwrite=args.overwrite)
    return exit_code_of(record.status)


def _resume(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """--resume DIR: the recorded config; options given that would change it are refused
    (here, before a distributed run's workers start, so the answer is one line, exit 2)."""
    from harness.resume import check_world_size, resumed_config
    from harness.runner import execute

    parser = build_parser(["run"])
    run_parser = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr,index]
    given: dict[str, Any] = {}
    for action in run_parser._actions:
        dest = action.dest
        if dest in ("help", "resume", "func", "_plugin_dests") or not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if value != action.default and value is not None:
            given[dest] = tuple(value) if isinstance(value, list) else value
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        raise UsageError(f"--resume {args.resume}: --out {args.out} differs (a resumed run "
                         f"writes to its own folder)")
    config, recorded = resumed_config(args.resume, given)
    launcher = wants_launcher(args)
    world = args.nproc * args.nnodes if launcher else int(os.environ.get("WORLD_SIZE", "1"))
    check_world_size(args.resume, recorded, world)
    if launcher:
        return _relaunch_distributed(args, argv)
    record = execute(config, resume=args.resume)
    return exit_code_of(record.status)


def main(argv: Sequence[str] | None = None) -> int:
    """One error policy: a user-fixable failure is one line and exit 2 (usage, data, paths)
    or 1 (the run or check failed); anything else says it is a bug and where its traceback
    went. `--debug` (anywhere) or HARNESS_DEBUG=1 prints the traceback too."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    debug, parse_argv = debug_wanted(argv)
    try:
        args = build_parser(parse_argv).parse_args(parse_argv)
        if args.func is cmd_run:
            return cmd_run(args, argv)
        return int(args.func(args))
    except HarnessError as error:
        exc = worker_error_origin(error)  # a DataLoader worker's error reads as the main's
        if debug:
            traceback.print_exc()
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"harness: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        if debug:
            traceback.print_exc()
        origin = worker_error_origin(exc)
        return answer_os_error(origin if isinstance(origin, OSError) else exc)
    except Exception as exc:  # noqa: BLE001 - the policy's last line: a bug, said as one
        if debug:
            traceback.print_exc()
        return answer_internal_error(exc)


if __name__ == "__main__":
    sys.exit(main())
