"""`harness run --nproc N [--nnodes M ...]`: relaunch through torch.distributed.run (torchrun)
and stay in charge of the process tree it starts.

Single node without an endpoint: `torchrun --standalone`. Several nodes: one `harness run` per
node with the same `--nnodes`, `--rdzv-endpoint HOST:PORT` and `--out`; with `--node-rank R`
the rendezvous is torchrun's static one (node 0 hosts it at the endpoint, as with
`--master-addr/--master-port`), without it the c10d rendezvous assigns node ranks
(`--rdzv-id` names the job on a shared endpoint).

The parent process (this one) starts the launcher in its own session, so a terminal's Ctrl-C
reaches the workers once, through the launcher, and not a second time while they write their
records. SIGINT and SIGTERM are forwarded to the launcher, which passes the signal on to every
worker and waits for them; whatever of its tree is still alive after a grace period is killed.
No module-level torch import: `harness --help` stays fast.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from harness.errors import EXIT_FAILED, UsageError

# Options the parent consumes; the workers get the rest of the command line unchanged.
LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id")
# After a forwarded signal: torchrun waits 30 s for its workers before killing them itself.
GRACE_S = float(os.environ.get("HARNESS_LAUNCH_GRACE_S", "60"))


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("distributed (torchrun's options, same names)")
    g.add_argument("--nproc", type=int, default=1,
                   help="processes per node (torchrun --nproc-per-node)")
    g.add_argument("--nnodes", type=int, default=1, help="number of nodes (one harness run each)")
    g.add_argument("--node-rank", type=int, help="this node's rank: static rendezvous at "
                   "--rdzv-endpoint, hosted by node 0 (without it c10d assigns ranks)")
    g.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                   help="rendezvous address (node 0 / the rendezvous host), same on every node")
    g.add_argument("--rdzv-id", default="harness",
                   help="job id for the c10d rendezvous (e.g. $SLURM_JOB_ID)")


def wants_launcher(args: argparse.Namespace) -> bool:
    """True in the user's process of a distributed run; False inside torchrun's workers."""
    distributed = args.nproc > 1 or args.nnodes > 1 or bool(args.rdzv_endpoint)
    return distributed and "LOCAL_RANK" not in os.environ


def torchrun_command(args: argparse.Namespace, worker_argv: Sequence[str]) -> list[str]:
    if args.nproc < 1 or args.nnodes < 1:
        raise UsageError("--nproc and --nnodes must be >= 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}"]
    if args.nnodes == 1 and not args.rdzv_endpoint:
        if args.node_rank not in (None, 0):
            raise UsageError(f"--node-rank {args.node_rank} needs --nnodes > 1")
        cmd.append("--standalone")
    else:
        endpoint = args.rdzv_endpoint or ""
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT "
                             f"(got {endpoint or 'none'}): the address every node can reach")
        if args.out is None and getattr(args, "resume", None) is None:  # --resume DIR is one
            raise UsageError("a multi-node run needs --out (the same folder on every node, on "
                             "a shared filesystem): only global rank 0 writes record.json")
        cmd += [f"--nnodes={args.nnodes}", f"--rdzv-endpoint={endpoint}"]
        if args.node_rank is not None:
            if not 0 <= args.node_rank < args.nnodes:
                raise UsageError(f"--node-rank must be in 0..{args.nnodes - 1}")
            cmd += ["--rdzv-backend=static", f"--node-rank={args.node_rank}"]
        else:
            cmd += ["--rdzv-backend=c10d", f"--rdzv-id={args.rdzv_id}"]
    return [*cmd, "-m", "harness.cli", *worker_argv]


def strip_launch_options(argv: Sequence[str]) -> list[str]:
    rest: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in LAUNCH_OPTIONS:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in LAUNCH_OPTIONS)):
            rest.append(a)
    return rest


def relaunch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    worker_argv = strip_launch_options(argv)
    resuming = getattr(args, "resume", None) is not None  # the workers continue that folder
    if args.out is None and args.nnodes == 1 and not args.rdzv_endpoint and not resuming:
        # One folder for all ranks: each worker stamping its own could straddle a second.
        from harness.config import RunConfig
        from harness.runner import default_out_dir

        stamp_cfg = RunConfig(workload=args.workload, backend=args.backend,
                              precision=args.precision)
        worker_argv += ["--out", str(default_out_dir(stamp_cfg))]
    return run_process_tree(torchrun_command(args, worker_argv))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the comm field may contain spaces: the ppid is the 2nd field after its ')'
            ppid = int(entry.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; empty elsewhere)."""
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def run_process_tree(cmd: list[str]) -> int:
    """Run the launcher; forward SIGINT/SIGTERM to it; never leave its workers behind."""
    tree: set[int] = set()
    signalled: list[float] = []
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: Any) -> None:
        signalled.append(time.monotonic())
        if started:
            tree.update(descendants(started[0].pid))  # the workers, while the launcher knows them
            _signal([started[0].pid], signum)  # torchrun signals each worker and waits for them

    # Handlers first: a caught signal is reset to its default in the child at exec, so the
    # launcher (and its workers) react to SIGINT even where this process started with it
    # ignored (a background job of a non-interactive shell).
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        proc = subprocess.Popen(cmd, start_new_session=True)
        started.append(proc)
        if signalled:  # arrived while starting: pass it on now
            _signal([proc.pid], signal.SIGTERM)
        while proc.poll() is None:
            if signalled and time.monotonic() - signalled[0] > GRACE_S:
                tree.update(descendants(proc.pid))
                _signal([proc.pid, *tree], signal.SIGKILL)
            time.sleep(0.1)
        leftovers = [p for p in tree if _alive(p)]
        if leftovers:  # the launcher died without its workers: end them the same way
            _signal(leftovers, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
            while any(_alive(p) for p in leftovers) and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal([p for p in leftovers if _alive(p)], signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    rc = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode  # killed: 128+sig
    if signalled:
        print("harness: interrupted", file=sys.stderr)
        return rc or EXIT_FAILED
    return rc
