"""`harness` command line: argparse verbs, parse and dispatch only.

Plugins (and with them torch and every workload) are loaded only by the verbs that need
them: `list`, `run` (its plugin-added options and its --help listing), `eval` and `export`
when they execute. `harness --help`, `check`, `parity` tables and `gate` never load them.
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
    EXIT_FAILED,
    EXIT_OK,
    HarnessError,
    UsageError,
    worker_error_origin,
)
from harness.launch import add_launch_arguments, wants_launcher
from harness.run_checks import (
    answer_internal_error,
    answer_os_error,
    debug_wanted,
    validate_run_numbers,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 too; keep our one-line style
        raise UsageError(f"{self.prog}: {message}")


def _add_run(sub: Any, with_plugins: bool = False) -> None:
    p = sub.add_parser("run", help="train, evaluate and record one workload on one backend",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train WORKLOAD on BACKEND, evaluate it and write "
                                   "record.json (accuracy, throughput, memory) to the run "
                                   "folder; `harness check` then judges it.")
    p.add_argument("workload", nargs="?", help="workload name (listed below; not with --resume)")
    p.add_argument("--backend", default="cpu", help="backend name (listed below; default cpu)")
    modes = p.add_mutually_exclusive_group()
    for mode in ("lazy", "eager", "compile"):
        modes.add_argument(f"--{mode}", dest="mode", action="store_const", const=mode,
                           help=f"{mode} execution mode (validated against the backend)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--scale", default="smoke", help="preset: smoke (default) or full")
    p.add_argument("--data", type=Path, help="dataset root in the workload's real format "
                   "(default: synthetic data in that format, written to the cache)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
    length.add_argument("--epochs", type=float, help="passes over the train split instead of --steps")
    p.add_argument("--batch-size", type=int, help="per-process batch (default: the preset's)")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--log-interval", type=int, default=10, help="console/log.jsonl every N steps")
    p.add_argument("--eval-interval", type=int, default=0, help="also evaluate every N steps")
    p.add_argument("--warmup-steps", type=int, help="untimed steps before the timed window")
    p.add_argument("--workers", type=int, dest="num_workers", help="DataLoader workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (slower; for bit-exact comparisons)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a workload config field, typed by the field (repeatable)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<workload>-<backend>-...)")
    p.add_argument("--cache-dir", type=Path, help="where synthetic data, and the derived files (infos) of a read-only --data root, are written")
    p.add_argument("--emulate", action="store_true",
                   help="run on a CPU-emulated device (portability dry run; speed not meaningful)")
    p.add_argument("--deepspeed", nargs="?", const="", metavar="CONFIG.json",
                   help="train through DeepSpeed (config built from the options if none given)")
    add_launch_arguments(p)  # --nproc, --nnodes, --node-rank, --rdzv-endpoint, --rdzv-id
    p.add_argument("--no-eval", dest="eval", action="store_false",
                   help="skip the final evaluation (no accuracy metrics in the record)")
    p.add_argument("--no-checkpoint", dest="checkpoint", action="store_false",
                   help="do not write checkpoint.pt")
    p.add_argument("--checkpoint-interval", type=int, metavar="N",
                   help="also write checkpoints/step_<N>.pt every N steps, to resume from "
                        "(default: off for smoke, every 1000 steps otherwise; 0: off)")
    p.add_argument("--keep-checkpoints", type=int, default=2, metavar="K",
                   help="periodic checkpoints kept (newest K; default 2)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out DIR holds a previous run: delete its files first (default: "
                        "refused)")
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="continue the run in DIR from its newest complete checkpoint, with "
                        "its recorded config")
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
    p = sub.add_parser("list", help="workloads with presets; backends, available or why not")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)


def _verb_of(argv: Sequence[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "")


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser for `argv`; plugins are loaded only when its verb is `run`."""
    from harness.cli_help import DESCRIPTION, EXIT_CODES

    parser = _Parser(prog="harness", description=DESCRIPTION, epilog=EXIT_CODES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="print tracebacks (any position; or HARNESS_DEBUG=1)")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    _add_list(sub)
    _add_run(sub, with_plugins=_verb_of(argv) == "run")
    for add in _extra_verbs():
        add(sub)
    return parser


def _extra_verbs() -> list[Callable[[Any], None]]:
    """Verbs that live in their own modules (reference checks, parity, gating; eval, export)."""
    adders: list[Callable[[Any], None]] = []
    import importlib

    for name in ("harness.report_cli", "harness.eval_cli", "harness.show"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
        else:
            adders.extend(module.VERBS)
    return adders


def cmd_list(args: argparse.Namespace) -> int:
    from harness.cli_help import format_inventory, inventory

    inv = inventory()
    print(json.dumps(inv, indent=2) if args.json else format_inventory(inv))
    return EXIT_OK


def _relaunch_distributed(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """torchrun with this command line; signals forwarded, no worker left behind."""
    from harness.launch import relaunch

    return relaunch(args, argv)


def cmd_run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from harness.config import RunConfig
    from harness.runner import execute

    validate_run_numbers(args)
    if args.overwrite and args.resume is not None:
        raise UsageError("--overwrite with --resume: a resumed run continues its folder; "
                         "give one of them")
    if args.resume is not None:
        return _resume(args, argv)
    if args.workload is None:
        raise UsageError("harness run: a WORKLOAD is needed (or --resume DIR)")
    if wants_launcher(args):
        return _relaunch_distributed(args, argv)
    config = RunConfig(
        workload=args.workload, backend=args.backend, mode=args.mode or "",
        precision=args.precision, scale=args.scale, data=args.data, steps=args.steps,
        epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        grad_accum=args.grad_accum, log_interval=max(1, args.log_interval),
        eval_interval=args.eval_interval, warmup_steps=args.warmup_steps, seed=args.seed,
        deterministic=args.deterministic, overrides=tuple(args.overrides), out=args.out,
        cache_dir=args.cache_dir, num_workers=args.num_workers, emulate=args.emulate,
        deepspeed=args.deepspeed, eval=args.eval, checkpoint=args.checkpoint,
        checkpoint_interval=args.checkpoint_interval, keep_checkpoints=args.keep_checkpoints,
        plugin_options=tuple((d, getattr(args, d)) for d in args._plugin_dests))
    record = execute(config, overwrite=args.overwrite)
    return EXIT_OK if record["status"] == "ok" else EXIT_FAILED


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
    return EXIT_OK if record["status"] == "ok" else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """One error policy: a user-fixable failure is one line and exit 2 (usage, data, paths)
    or 1 (the run or check failed); anything else says it is a bug and where its traceback
    went. `--debug` (anywhere) or HARNESS_DEBUG=1 prints the traceback too."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
        return EXIT_FAILED
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
