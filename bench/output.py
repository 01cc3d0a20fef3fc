"""Report output: a rich table, bench/results/latest.json and the ratio chart."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from bench.common import Report, Row

STATUS_STYLE = {"met": "green", "missed": "red", "n/a": "yellow", "": ""}


def fmt(stat: dict[str, Any] | None, unit: str) -> str:
    if not stat or stat.get("median") is None:
        return "-"
    med, lo, hi = stat["median"], stat.get("min"), stat.get("max")
    if unit == "s":
        if lo is None or hi is None:
            return f"{med * 1000:.1f} ms" if med < 1 else f"{med:.2f} s"
        if med < 1:
            return f"{med * 1000:.1f} ms [{lo * 1000:.1f}-{hi * 1000:.1f}]"
        return f"{med:.2f} s [{lo:.2f}-{hi:.2f}]"
    if stat.get("n", 0) <= 1 or lo is None or hi is None:
        return f"{med:.3g} {unit}"
    return f"{med:.3g} {unit} [{lo:.3g}-{hi:.3g}]"


def print_table(report: Report, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    table = Table(title=title, show_lines=False, header_style="bold")
    for col, kw in (
        ("section", {}),
        ("measurement", {"overflow": "fold", "max_width": 52}),
        ("PPCP median [min-max]", {"justify": "right"}),
        ("peer", {}),
        ("peer median [min-max]", {"justify": "right"}),
        ("ratio", {"justify": "right"}),
        ("target", {}),
        ("status", {}),
        ("note", {"overflow": "fold", "max_width": 40}),
    ):
        table.add_column(col, **kw)
    for row in report.rows:
        ratio = row.ratio
        status = row.status
        style = STATUS_STYLE.get(status, "")
        table.add_row(
            row.section,
            row.what,
            fmt(row.ppcp, row.unit),
            row.peer_name,
            fmt(row.peer, row.unit),
            f"{ratio:.2f}x" if ratio is not None else "-",
            row.target_text,
            f"[{style}]{status}[/]" if style else status,
            row.note,
        )
    console.print(table)
    for section, items in report.skipped.items():
        for item in items:
            console.print(f"[yellow]skipped[/] {section}: {item}")
    for section, items in report.notes.items():
        for item in items:
            console.print(f"[cyan]note[/] {section}: {item}")
    for section, error in report.errors.items():
        console.print(f"[red]ERROR[/] {section}: {error}")


def write_json(report: Report, path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": {
            **meta,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "machine": platform.machine(),
        },
        "rows": [r.to_json() for r in report.rows],
        "targets": [
            {"key": r.key, "what": r.what, "target": r.target_text, "status": r.status}
            for r in report.rows
            if r.target_text
        ],
        "skipped": report.skipped,
        "notes": report.notes,
        "errors": report.errors,
        "raw": report.raw,
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def write_chart(report: Report, path: Path, title: str) -> bool:
    """Horizontal bars of PPCP/peer (log scale); a tick marks each row's target."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows: list[Row] = [r for r in report.rows if r.ratio is not None]
    if not rows:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [f"{r.what} / {r.peer_name}" for r in rows]
    ratios = [float(r.ratio) for r in rows]  # type: ignore[arg-type]
    colors = [{"met": "#2e7d32", "missed": "#c62828"}.get(r.status, "#607d8b") for r in rows]
    height = max(3.0, 0.38 * len(rows) + 1.5)
    fig, ax = plt.subplots(figsize=(12, height))
    y = list(range(len(rows)))
    ax.barh(y, ratios, color=colors)
    for i, r in enumerate(rows):
        if r.max_ratio is not None:
            ax.plot([r.max_ratio, r.max_ratio], [i - 0.42, i + 0.42], color="black", lw=2)
        ax.text(ratios[i], i, f" {ratios[i]:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("PPCP / peer (median; lower is better; black tick = target; log scale)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
