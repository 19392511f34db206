#!/usr/bin/env bash
# A prepared accelerator check, for the few minutes a GPU machine is at hand (goal: < 8 min).
#
#   benchmarks/device_check.sh [--dry-run] [--out DIR] [--backend cuda] [--steps N]
#                              [--warmup N] [--budget-s S] [--precisions "fp32 bf16"]
#                              [--first "yolov3 bevdepth"]
#
# 1. the `-m hardware` tests (real device, no emulation);
# 2. a short timed run of every registered workload's `full` preset, fp32 and bf16 (--steps,
#    default 30, of which --warmup, default 10, untimed), no evaluation, no checkpoint; the
#    workload list comes from `harness list --json` at run time, so new workloads are included;
# 3. benchmarks/device_summary.py: one table (FPS, step time, peak memory, FLOPs, MFU).
# Everything lands in one folder (default device-check/<time>): records/<workload>-<precision>/
# record.json, a log per command, hardware-tests.xml, summary.md/.json, nvidia-smi.txt.
# Runs are skipped (and listed in skipped.txt) once --budget-s is spent.
#
# Installs nothing: it uses the Python it finds (PYTHON, else python) with the project already
# installed, and sets PIP_NO_INDEX so nothing it calls can fetch from the network.
# --dry-run checks that every command resolves (workload names and presets from `harness list
# --json`, every `harness run` command line parsed by the harness's own parser, the backend
# registered, the hardware tests collected, the summary script runnable) without running any.
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BACKEND=cuda
STEPS=30
WARMUP=10
BUDGET_S=420
PRECISIONS="fp32 bf16"
FIRST="yolov3 bevdepth"  # run these first (if registered): the budget may not reach the last
RUN_TIMEOUT_S=150
DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --backend) BACKEND=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --budget-s) BUDGET_S=$2; shift ;;
    --precisions) PRECISIONS=$2; shift ;;
    --first) FIRST=$2; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "device_check: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-device-check/$(date +%Y%m%d-%H%M%S)}
CACHE=${HARNESS_CACHE:-${TMPDIR:-/tmp}/harness-device-check-cache}
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
START=$(date +%s)
fail=0

if ! "$PY" -c "import harness, torch" 2>/dev/null; then
  echo "device_check: $PY cannot import harness and torch: install the project first" >&2
  exit 3
fi
mkdir -p "$OUT/records"

# Workloads with a full preset, and whether the backend is registered and available here.
if ! "$PY" -m harness.cli list --json > "$OUT/list.json" 2> "$OUT/list.log"; then
  echo "device_check: harness list --json failed:" >&2; cat "$OUT/list.log" >&2; exit 1
fi
read_list() {  # $1: workloads | no_full | backend_state
  "$PY" - "$OUT/list.json" "$BACKEND" "$1" <<'EOF'
import json, sys
listing, backend, what = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
if what == "workloads":
    print(" ".join(w["name"] for w in listing["workloads"] if "full" in w["presets"]))
elif what == "no_full":
    print(" ".join(w["name"] for w in listing["workloads"] if "full" not in w["presets"]))
else:
    found = [b for b in listing["backends"] if b["name"] == backend]
    if not found:
        print("unknown: registered backends are " + ", ".join(b["name"] for b in listing["backends"]))
    elif found[0]["available"]:
        print(f"available: {found[0].get('device_name')} x{found[0].get('device_count')}")
    else:
        print(f"unavailable: {found[0]['reason']}")
EOF
}
WORKLOADS=$(read_list workloads)
ordered=""
for w in $FIRST; do case " $WORKLOADS " in *" $w "*) ordered="$ordered $w" ;; esac; done
for w in $WORKLOADS; do case " $ordered " in *" $w "*) ;; *) ordered="$ordered $w" ;; esac; done
WORKLOADS=${ordered# }
NO_FULL=$(read_list no_full)
STATE=$(read_list backend_state)
echo "device_check: backend $BACKEND ($STATE); workloads with a full preset: ${WORKLOADS:-none}"
[ -n "$NO_FULL" ] && echo "device_check: no full preset, not run: $NO_FULL"
case "$STATE" in unknown*) echo "device_check: backend $BACKEND $STATE" >&2; exit 2 ;; esac
if [ -z "$WORKLOADS" ]; then echo "device_check: no workload has a full preset" >&2; exit 2; fi
if [ "$DRY" = 0 ]; then
  case "$STATE" in unavailable*) echo "device_check: backend $BACKEND $STATE" >&2; exit 3 ;; esac
fi

run_args() {  # $1 workload, $2 precision: the `harness run` arguments of one timed run
  echo "run $1 --backend $BACKEND --scale full --precision $2 --steps $STEPS" \
       "--warmup-steps $WARMUP --no-eval --no-checkpoint --cache-dir $CACHE" \
       "--out $OUT/records/$1-$2"
}
HW_TESTS=("$PY" -m pytest tests workloads -m hardware -q -p no:cacheprovider)

if [ "$DRY" = 1 ]; then
  for w in $WORKLOADS; do for p in $PRECISIONS; do run_args "$w" "$p"; done; done \
    > "$OUT/run-commands.txt"
  # One process parses every command line with the harness's own `harness run` parser.
  "$PY" - "$OUT/run-commands.txt" <<'EOF' || fail=1
import contextlib, inspect, io, shlex, sys
from harness import cli
from harness.errors import HarnessError
failed = 0
for line in open(sys.argv[1]):
    argv = shlex.split(line)
    build = cli.build_parser
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            parser = build(argv) if inspect.signature(build).parameters else build()
            args = parser.parse_args(argv)
        assert args.workload == argv[1] and args.scale == "full", argv
        print("ok   harness " + line.strip())
    except (HarnessError, SystemExit, AssertionError) as exc:
        failed = 1
        print(f"FAIL harness {line.strip()}: {exc}")
sys.exit(failed)
EOF
  if "${HW_TESTS[@]}" --collect-only > "$OUT/hardware-collect.log" 2>&1; then
    echo "ok   ${HW_TESTS[*]} ($(grep -c '::' "$OUT/hardware-collect.log") tests collected)"
  else
    echo "FAIL ${HW_TESTS[*]} --collect-only (see $OUT/hardware-collect.log)"; fail=1
  fi
  if "$PY" benchmarks/device_summary.py "$OUT/records" --out "$OUT/summary.md" > /dev/null; then
    echo "ok   $PY benchmarks/device_summary.py $OUT/records"
  else
    echo "FAIL benchmarks/device_summary.py"; fail=1
  fi
  echo "device_check: dry run $([ $fail = 0 ] && echo ok || echo FAILED), nothing was run"
  exit $fail
fi

command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__)" > "$OUT/torch.txt" 2>&1
git rev-parse HEAD > "$OUT/commit.txt" 2>/dev/null

echo "device_check: hardware tests"
timeout 150 "${HW_TESTS[@]}" --junitxml="$OUT/hardware-tests.xml" > "$OUT/hardware-tests.log" 2>&1
rc=$?
tail -1 "$OUT/hardware-tests.log"
[ $rc = 0 ] || { echo "device_check: hardware tests exit $rc (see hardware-tests.log)"; fail=1; }

: > "$OUT/skipped.txt"
for w in $WORKLOADS; do
  for p in $PRECISIONS; do
    elapsed=$(( $(date +%s) - START ))
    if [ "$elapsed" -ge "$BUDGET_S" ]; then
      echo "$w $p: budget of ${BUDGET_S}s spent after ${elapsed}s" | tee -a "$OUT/skipped.txt"
      continue
    fi
    left=$(( BUDGET_S - elapsed + 30 ))
    limit=$(( left < RUN_TIMEOUT_S ? left : RUN_TIMEOUT_S ))
    echo "device_check: $w $p (limit ${limit}s)"
    # shellcheck disable=SC2046
    timeout "$limit" "$PY" -m harness.cli $(run_args "$w" "$p") > "$OUT/records/$w-$p.log" 2>&1
    rc=$?
    tail -1 "$OUT/records/$w-$p.log"
    [ $rc = 0 ] || { echo "device_check: $w $p exit $rc"; fail=1; }
  done
done

"$PY" benchmarks/device_summary.py "$OUT/records" --out "$OUT/summary.md"
echo "device_check: done in $(( $(date +%s) - START ))s, folder $OUT"
exit $fail
