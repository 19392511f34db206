"""README.md is a front page (at most 250 lines) and the documentation holds together: every
page the README and docs/index.md promise exists, and every relative link in README.md and
docs/**/*.md points at an existing file, and at an existing heading where it names one
(GitHub's anchor rule)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
PAGES = (
    "index.md", "install.md", "cli.md", "record.md", "checking.md", "resume.md",
    "inference.md", "distributed.md", "backends.md", "plugins.md", "architecture.md",
    "benchmarking.md", "ci.md", "real-data.md", "tracking.md",
    "workloads/yolov3.md", "workloads/bevdepth.md", "workloads/streampetr.md",
    "workloads/openlanev2.md", "workloads/lanes.md",
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def prose(text: str, inline_code: bool = False) -> str:
    """The text outside fenced code blocks, and outside inline code unless `inline_code`:
    where links are links and headings are headings."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line if inline_code else re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than '-'
    and '_' removed, each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text(encoding="utf-8"), inline_code=True).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return links_in(path.read_text(encoding="utf-8"))


def links_in(text: str) -> list[str]:
    return LINK.findall(prose(text))


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; the front page stays within {README_MAX_LINES}: "
        "move the detail into a page under docs/")


def test_every_listed_page_exists_and_the_index_links_it() -> None:
    missing = [p for p in PAGES if not (ROOT / "docs" / p).is_file()]
    assert not missing, f"docs/ lacks {missing}"
    listed = {(ROOT / "docs" / t.split("#")[0]).resolve() for t in links(ROOT / "docs" / "index.md")}
    unlisted = [p for p in PAGES if p != "index.md" and (ROOT / "docs" / p).resolve() not in listed]
    assert not unlisted, f"docs/index.md does not link {unlisted}"
    assert "docs/index.md" in links(ROOT / "README.md"), "README.md does not link docs/index.md"


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings_that_exist(doc: Path) -> None:
    broken = []
    for target in links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor} in {dest.name})")
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


def test_anchor_rule_matches_github() -> None:
    """Headings as these pages write them, with the anchors GitHub gives them."""
    assert slug("ONNX Runtime (`--backend onnxruntime`)") == "onnx-runtime---backend-onnxruntime"
    assert slug("The emulated device (`--emulate`)") == "the-emulated-device---emulate"
    assert slug("OpenLane-V2 subset_A (`openlanev2`)") == "openlane-v2-subset_a-openlanev2"
    assert slug("Splitting `predict()`") == "splitting-predict"
    assert slug("GPU vs accelerator in five commands") == "gpu-vs-accelerator-in-five-commands"


def test_links_and_images_are_read_outside_code_only() -> None:
    text = ("See [a](a.md#x \"title\") and `[b](b.md)`, ![img](c.png).\n"
            "```\n[d](d.md)\n```\n[e](https://example.org) [f](#here)\n")
    assert links_in(text) == ["a.md#x", "c.png", "https://example.org", "#here"]
