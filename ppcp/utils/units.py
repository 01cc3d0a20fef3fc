"""Quantities written for people (one place: the CLI's summaries and the server's reasons)."""

from __future__ import annotations


def human_size(n: float) -> str:
    """``n`` bytes as ``"512 B"``, ``"1.5 MiB"``... (binary units, one decimal above bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
