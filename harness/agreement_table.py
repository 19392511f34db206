"""The raw-output agreement an inference-only eval record carries (ONNX Runtime against the
PyTorch model on the same batches), as table rows for `harness parity`."""
from __future__ import annotations

from typing import Any, Sequence

from harness.records import Record

HEADER = ["run", "output", "max abs diff", "max rel diff", "outside tol", "within tol",
          "decoded differ"]


def _g(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"


def agreement_rows(records: Sequence[Record], labels: Sequence[str]) -> list[list[str]]:
    """One row per output tensor of each record that has `raw_output_agreement`."""
    rows: list[list[str]] = []
    for label, rec in zip(labels, records, strict=True):
        agree = rec.raw_output_agreement
        if not isinstance(agree, dict):
            continue
        decoded = agree.get("decoded") or {}
        differ = (f"{decoded.get('differ')}/{decoded.get('samples')} "
                  f"({decoded.get('fraction_differ', 0.0):.1%})" if decoded else "-")
        for out in agree.get("outputs") or []:
            rows.append([label, str(out.get("output")), _g(out.get("max_abs_diff")),
                         _g(out.get("max_rel_diff")),
                         f"{out.get('fraction_outside_tol', 0.0):.2%}",
                         "yes" if out.get("within_tol") else "NO", differ])
    return rows


def agreement_title(records: Sequence[Record]) -> str:
    agree: dict[str, Any] = next((r["raw_output_agreement"] for r in records
                  if isinstance(r.get("raw_output_agreement"), dict)), {})
    return (f"Raw-output agreement: {agree.get('test', '?')} vs {agree.get('reference', '?')} on "
            f"the same batches (tol: rtol {agree.get('rtol')}, atol {agree.get('atol')})")
