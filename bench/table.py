"""Fixed-width tables and human units for the CLI's output (no torch)."""

from typing import List


def table(lines: List[list], left_last: bool = False) -> str:
    """Rows of cells (the first one the header) in right-aligned columns, a rule under the
    header; ``left_last``: the last column (free text) left as it is."""
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    last = len(widths) - 1 if left_last else len(widths)
    out = ["  ".join(str(c) if i == last else str(c).rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def seconds(s: float) -> str:
    if s >= 1.0:
        return f"{s:.3f} s"
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"
