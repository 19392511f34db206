"""`harness run --help` for users: every installed workload and backend with its state, and
examples that are valid command lines."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from harness import plugins
from harness.cli import build_parser
from harness.cli_help import DESCRIPTION, EXAMPLES, format_inventory, inventory, run_epilog


def test_run_help_names_every_workload_and_backend() -> None:
    epilog = run_epilog().splitlines()
    for name in [*plugins.workloads(), *plugins.backends()]:
        assert any(line == f"  {name}" or line.startswith(f"  {name} ") for line in epilog), name
    assert any("harness list --details" in line for line in epilog)


def test_list_details_say_each_backend_state() -> None:
    inv = inventory()
    text = format_inventory(inv).splitlines()
    assert {w["name"] for w in inv["workloads"]} == set(plugins.workloads())
    for b in inv["backends"]:
        line = next(x for x in text if x.startswith(f"  {b['name']} "))
        assert ("unavailable: " in line) != b["available"]
        # a backend `harness run` refuses must not read as one to train on
        assert ("inference only" in line) == b["inference_only"]
    assert any(b["inference_only"] for b in inv["backends"])  # onnxruntime is built in
    assert not any("harness list --details" in line for line in text)  # nothing left out


def test_run_help_examples_parse_as_written() -> None:
    examples = [line.split("#")[0].strip() for line in EXAMPLES.splitlines()[1:]]
    assert len(examples) >= 3
    for example in examples:
        argv = shlex.split(example)
        assert argv[0] == "harness"
        args = build_parser(argv[1:]).parse_args(argv[1:])
        assert args.verb == "run" and args.workload in plugins.workloads()


def test_main_help_describes_the_verbs_a_user_needs() -> None:
    for verb in ("harness run", "harness check", "harness parity", "harness gate", "harness list"):
        assert verb in " ".join(DESCRIPTION.split())




def test_readme_names_every_flag_of_the_other_verbs() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for verb in ("list", "check", "parity", "gate", "history", "show", "eval", "export"):
        # each verb's parser as built when that verb is parsed (eval/export: full only then)
        sub = build_parser([verb])._subparsers._group_actions[0]  # type: ignore[union-attr]
        flags = {o for a in sub.choices[verb]._actions for o in a.option_strings
                 if o.startswith("--") and o != "--help"}
        missing = sorted(f for f in flags
                         if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", readme))
        assert not missing, f"README never names `harness {verb}` {missing}"
