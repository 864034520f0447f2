"""Two site-state reports side by side (e.g. the column heights vs the site-state head).

    python benchmarks/compare_site_states.py docs/reports/site_states_heights.md \
        docs/reports/site_states.md --names heights head --out docs/reports/site_head.md

Both reports are written by ``benchmarks/site_states.py`` (same sets and seeds). Every
row of the metal, chalcogen and cell tables is shown with the figures that differ as
``A → B``; rows where nothing differs are listed by name only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: (table heading, the columns shown) of the site-state report.
TABLES = {
    "Metal sites": ["vac vs sub (all)", "vac vs sub (decided)", "undecided", "V_M recall", "V_M precision",
                    "substituent recall", "substituent precision", "Z_eff within ±15 %", "unresolved"],
    "Chalcogen sites": ["atoms right (read sites)", "V_X1 precision", "V_X1 recall", "V_X2 precision",
                        "V_X2 recall", "unresolved"],
}


def read_tables(path: Path) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """``{heading: (column names, {set: cells})}`` of every table in a report."""
    out: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    heading = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif heading and line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if heading not in out:
                out[heading] = (cells[1:], {})
            else:
                out[heading][1][cells[0]] = cells[1:]
    return out


def compare(a: Path, b: Path, names: tuple[str, str]) -> str:
    ta, tb = read_tables(a), read_tables(b)
    lines = [f"# Site states: {names[0]} vs {names[1]}", "",
             f"`{a.as_posix()}` ({names[0]}) and `{b.as_posix()}` ({names[1]}), written by "
             "`benchmarks/site_states.py` on the same held-out frames; a figure that differs is shown as "
             f"{names[0]} → {names[1]}.", ""]
    headings = list(TABLES) + [h for h in ta if h.startswith("Cells")]
    for heading in headings:
        if heading not in ta or heading not in tb:
            continue
        cols_a, rows_a = ta[heading]
        cols_b, rows_b = tb[heading]
        show = [c for c in TABLES.get(heading, cols_a) if c in cols_a and c in cols_b]
        same = []
        body = []
        for name, ca in rows_a.items():
            cb = rows_b.get(name)
            if cb is None:
                continue
            cells = []
            differs = False
            for c in show:
                x, y = ca[cols_a.index(c)], cb[cols_b.index(c)]
                differs |= x != y
                cells.append(x if x == y else f"**{x} → {y}**")
            if differs:
                body.append(f"| {name} | " + " | ".join(cells) + " |")
            else:
                same.append(name)
        lines += [f"## {heading}", "", "| set | " + " | ".join(show) + " |",
                  "|---|" + "---:|" * len(show), *body, ""]
        if same:
            lines += ["Unchanged: " + "; ".join(same) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--names", nargs=2, default=["A", "B"])
    ap.add_argument("--out", type=Path, default=None, help="write the comparison here (default: print it)")
    args = ap.parse_args()
    text = compare(args.a, args.b, tuple(args.names))
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
