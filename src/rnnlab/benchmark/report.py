"""The benchmark's table: benchmark.csv, benchmark.md and the console."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from .timing import Result

COLUMNS = [f.name for f in fields(Result)]


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def ratio_text(r: Result) -> str:
    """The ratio, with its quartiles in brackets when it has them: "0.78 (0.77-0.79)"."""
    if r.ratio is None:
        return ""
    spread = "" if r.ratio_q1 is None else f" ({r.ratio_q1:.2f}-{r.ratio_q3:.2f})"
    return f"{r.ratio:.2f}{spread}"


def markdown_table(results: Sequence[Result]) -> str:
    header = ["row", "shape", "device", "rnnlab", "reference", "unit", "ratio", "reference name", "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        cells = [r.row, r.shape, r.device, _fmt(r.rnnlab), _fmt(r.reference), r.unit, ratio_text(r),
                 r.reference_name, r.target, r.meets_target]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(results: Sequence[Result]) -> str:
    """One line per row kind saying what was measured (the first note seen for that row)."""
    seen: dict[str, str] = {}
    for r in results:
        seen.setdefault(r.row, r.note)
    return "\n".join(f"- **{row}**: {note}" for row, note in seen.items() if note)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence) -> None:
    """Dataclass rows as a CSV file with the given columns; None as an empty field."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in asdict(r).items()})


def write_results(results: Sequence[Result], out: Path, header: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "benchmark.csv", out / "benchmark.md"
    write_csv(csv_path, COLUMNS, results)
    md_path.write_text(f"# rnnlab benchmark\n\n{header}\n\n{markdown_table(results)}\n\n{notes(results)}\n")
    return csv_path, md_path
