"""docs/architecture.md's Layout section names every module of harness/, backends/ and
workloads/, and only modules that exist. (The module index lived in README.md's Layout section
until the README became a front page; the file name stays for the history.)"""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "backends", "workloads")
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def layout_paths(page: str) -> set[str]:
    """Paths named in the Layout code block: an entry's folder is the nearest line above it,
    less indented, whose entry ends with '/'."""
    block = page.split("## Layout", 1)[1].split("```", 2)[1]
    stack: list[tuple[int, str]] = []
    paths = set()
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        entry = line.split()[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(folder for _, folder in stack) + entry
        if entry.endswith("/"):
            stack.append((indent, entry))
        elif entry.endswith(".py"):
            paths.add(path)
    return paths


def modules() -> set[str]:
    """The repository's modules (tracked files in a git checkout; tests excluded)."""
    try:
        out = subprocess.run(["git", "ls-files", *PACKAGES], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {p for p in out if p.endswith(".py") and not Path(p).name.startswith(("test_", "conftest"))}


def test_layout_names_every_module_and_only_existing_ones() -> None:
    named = layout_paths(ARCHITECTURE.read_text(encoding="utf-8"))
    missing = sorted(modules() - named)
    assert not missing, f"docs/architecture.md's Layout lacks (one line each): {missing}"
    stale = sorted(p for p in named if not (ROOT / p).is_file())
    assert not stale, f"docs/architecture.md's Layout names modules that do not exist: {stale}"


def test_layout_parsing_follows_the_indentation() -> None:
    """The folder rule itself: a wrong parse would let the check above pass vacuously."""
    block = "## Layout\n\n```\npkg/   the package\n  a.py   x\n  sub/   y\n    b.py  z\n  c.py  w\ntop.py\n```\n"
    assert layout_paths(block) == {"pkg/a.py", "pkg/sub/b.py", "pkg/c.py", "top.py"}
