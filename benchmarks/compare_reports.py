"""Two configurations side by side on the held-out sets: the networks' rows of the
``evaluate`` reports in two folders (e.g. docs/reports/pipeline and
docs/reports/pipeline_fast, written by evaluate_all.sh and evaluate_fast.sh).

    python benchmarks/compare_reports.py docs/reports/pipeline docs/reports/pipeline_fast \
        --names default fast --out docs/reports/pipeline_fast.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: (table header start, columns to take) from an evaluate report
TABLES = {
    "| method | images |": ("recall", "precision", "class accuracy", "ECE"),
    "| method | V_M |": ("V_M", "V_X1", "V_X2", "chalcogen unresolved"),
}


def networks_row(path: Path) -> dict[str, str]:
    """The networks' values of the headline and interior-vacancy tables of a report."""
    out: dict[str, str] = {}
    lines = path.read_text().splitlines()
    for start, cols in TABLES.items():
        for i, ln in enumerate(lines):
            if ln.startswith(start):
                head = [c.strip() for c in ln.strip("|").split("|")]
                for row in lines[i + 2:]:
                    if not row.startswith("|"):
                        break
                    cells = [c.strip() for c in row.strip("|").split("|")]
                    if cells[0].startswith("2DIP-Net"):
                        out.update({c: cells[head.index(c)] for c in cols if c in head})
                        break
                break
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--names", nargs=2, default=["a", "b"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    cols = [c for cs in TABLES.values() for c in cs]
    lines = [f"# Held-out sets: {args.names[0]} vs {args.names[1]}", "",
             f"Command: `python benchmarks/compare_reports.py {args.a} {args.b} --names {' '.join(args.names)}"
             + (f" --out {args.out}`" if args.out else "`"), "",
             f"Each cell: {args.names[0]} → {args.names[1]} (the networks' rows of the `evaluate` reports in "
             f"`{args.a}` and `{args.b}`; interior vacancy sites as recall / precision; times are "
             "when each report was written).", "",
             "| set | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for pa in sorted(args.a.glob("*.md")):
        pb = args.b / pa.name
        if not pb.exists():
            continue
        ra, rb = networks_row(pa), networks_row(pb)
        vals = [ra.get(c, "–") if ra.get(c) == rb.get(c) else f"{ra.get(c, '–')} → {rb.get(c, '–')}" for c in cols]
        lines.append(f"| {pa.stem} | " + " | ".join(vals) + " |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
