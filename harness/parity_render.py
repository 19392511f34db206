"""Parity as text: markdown (pipe tables), CSV, or a complete HTML page with the figure
embedded (base64 PNG), readable in any browser without network access."""
from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

from harness.agreement_table import HEADER as AGREEMENT
from harness.agreement_table import agreement_rows, agreement_title
from harness.errors import UsageError
from harness.parity import FORMATS, Parity

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.run td { color: #555; background: #f4f4f4; }
td.WORSE { background: #f8c4c4; font-weight: bold; }
td.better { background: #cdeccd; }
td.DIFFERS { background: #fbe7b5; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _legend(p: Parity) -> list[str]:
    return [f"{lab}: {r.get('_path', '?')}" for lab, r in zip(p.labels, p.records, strict=True)]


def to_markdown(p: Parity, verbose: bool = False) -> str:
    """The verdict table, the runs and warnings; the tolerance table only when `verbose`."""
    parts = [f"## {p.title}", "", _md_table(p.header, p.rows), "",
             "Runs: " + "; ".join(f"`{x}`" for x in _legend(p))]
    if p.warnings:
        parts += ["", *(f"> warning: {w}" for w in p.warnings)]
    agreement = agreement_rows(p.records, p.labels)  # ONNX Runtime eval records
    if agreement:
        parts += ["", f"### {agreement_title(p.records)}", "", _md_table(AGREEMENT, agreement)]
    if verbose:
        parts += ["", "### Tolerances", "",
                  _md_table(["metric", "better", "tolerance", "source"], p.tolerances)]
    return "\n".join([*parts, ""])


def to_csv(p: Parity) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(p.header)
    writer.writerows(p.rows)
    return buf.getvalue()


def _html_table(header: list[str], rows: list[list[str]], run_rows: int = 0) -> str:
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
           + "</tr></thead>", "<tbody>"]
    for i, row in enumerate(rows):
        cls = ' class="run"' if i < run_rows else ""
        cells = "".join(
            f'<td class="{html.escape(c)}">{html.escape(c)}</td>'
            if c in ("WORSE", "better", "DIFFERS") else f"<td>{html.escape(c)}</td>" for c in row)
        out.append(f"<tr{cls}>{cells}</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def to_html(p: Parity, figure_png: Path | None = None) -> str:
    """A complete page: doctype, charset, title, the tables, the figure inline."""
    body = [f"<h1>{html.escape(p.title)}</h1>", _html_table(p.header, p.rows, p.run_rows),
            "<p>" + "<br>".join(html.escape(x) for x in _legend(p)) + "</p>"]
    if p.warnings:
        body.append("<ul>" + "".join(f"<li>warning: {html.escape(w)}</li>" for w in p.warnings)
                    + "</ul>")
    agreement = agreement_rows(p.records, p.labels)  # ONNX Runtime eval records
    if agreement:
        body += [f"<h2>{html.escape(agreement_title(p.records))}</h2>",
                 _html_table(AGREEMENT, agreement)]
    if figure_png is not None:
        data = base64.b64encode(Path(figure_png).read_bytes()).decode("ascii")
        body.append(f'<p><img alt="parity figure: loss curves, primary metric, throughput '
                    f'and memory" src="data:image/png;base64,{data}"></p>')
    body += ["<h2>Tolerances</h2>",
             _html_table(["metric", "better", "tolerance", "source"], p.tolerances)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(p.title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def render(p: Parity, fmt: str, figure_png: Path | None = None, verbose: bool = False) -> str:
    """`fmt` as text; `verbose` adds the tolerance table to markdown (a page always has it)."""
    kind = FORMATS.get(fmt)
    if kind is None:
        raise UsageError(f"unknown format {fmt!r} (valid: {', '.join(FORMATS)})")
    if kind == "csv":
        return to_csv(p)
    if kind == "html":
        return to_html(p, figure_png)
    return to_markdown(p, verbose)
