"""Medians and ratios: the printed table, the JSON file and the PNG chart."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from .mechanisms import Mechanism
from .workloads import WINDOW, Workload

Results = dict[str, dict[str, dict[str, Any]]]


def summarize(
    mechanisms: Sequence[Mechanism],
    workloads: Sequence[Workload],
    samples: dict[str, dict[str, list[float]]],
) -> Results:
    """Median per mechanism and workload, and its ratio to the reference's median."""
    reference = next(m.key for m in mechanisms if m.reference)
    results: Results = {}
    for mech in mechanisms:
        results[mech.key] = {}
        for work in workloads:
            values = samples[mech.key][work.key]
            median = statistics.median(values) if values else None
            results[mech.key][work.key] = {"samples": values, "median": median}
    for work in workloads:
        ref = results[reference][work.key]["median"]
        for mech in mechanisms:
            cell = results[mech.key][work.key]
            cell["ratio"] = cell["median"] / ref if cell["median"] is not None and ref else None
    return results


def version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def metadata(
    settings: dict[str, int], quick: bool, wall: float, foreign_cpu_share: float | None
) -> dict[str, Any]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "mode": "quick" if quick else "full",
        **settings,
        "window": WINDOW,
        "wall_seconds": round(wall, 1),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpus": cpus,
        "cpu_model": _cpu_model(),
        "foreign_cpu_share": foreign_cpu_share,
        "versions": {
            dist: version(dist) for dist in ("tornado-offload", "tornado", "anyio", "asgiref")
        },
    }


def _fmt(work: Workload, value: float | None) -> str:
    if value is None:
        return "—"
    if work.unit == "calls/s":
        return f"{value / 1000:.1f}k"
    if work.unit == "B/call":
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _cell(work: Workload, cell: dict[str, Any]) -> str:
    ratio = cell["ratio"]
    return (
        f"{_fmt(work, cell['median'])} ({ratio:.2f}×)"
        if ratio is not None
        else _fmt(work, cell["median"])
    )


def _heading(work: Workload) -> str:
    return f"{work.key} {work.unit} {'↑' if work.higher_is_better else '↓'}"


def table(
    mechanisms: Sequence[Mechanism],
    workloads: Sequence[Workload],
    results: Results,
    meta: dict[str, Any],
    notes: dict[str, str],
) -> str:
    rows = [["mechanism", *(_heading(w) for w in workloads)]]
    rows += [[m.label, *(_cell(w, results[m.key][w.key]) for w in workloads)] for m in mechanisms]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "  ".join(
            [
                row[0].ljust(widths[0]),
                *(text.rjust(width) for text, width in zip(row[1:], widths[1:], strict=True)),
            ]
        )

    versions = ", ".join(f"{dist} {ver}" for dist, ver in meta["versions"].items() if ver)
    out = [
        (
            f"{meta['mode']} run: {meta['calls']:,} calls per sample, "
            f"{meta['window']:,} in flight, {meta['memory_calls']:,} pending for memory; "
            f"median of {meta['repeats']} interleaved repeats; {meta['wall_seconds']} s"
        ),
        f"{meta['python']} on {meta['cpus']} CPUs ({meta['cpu_model']}); {versions}",
        "cell: median (median / reference median, same run); ↑ higher is better, ↓ lower is better",
        "",
        line(rows[0]),
        line(["-" * w for w in widths]),
        *(line(row) for row in rows[1:]),
    ]
    foreign = meta["foreign_cpu_share"]
    if foreign is not None and foreign > 0.05:
        out.append(
            f"note: other processes used {foreign:.0%} of the machine's CPU time during the run; "
            "figures are noisier than on an idle machine"
        )
    if meta["memory_calls"] < 50_000 and any(w.memory for w in workloads):
        out.append(
            "note: memory: with under 50,000 pending calls, free heap left from start-up absorbs "
            "part of the growth and B/call reads low (about 5% at 5,000); trust full runs"
        )
    out += [f"note: {what}: {why}" for what, why in notes.items()]
    return "\n".join(out)


def write_json(
    path: Path,
    meta: dict[str, Any],
    mechanisms: Sequence[Mechanism],
    workloads: Sequence[Workload],
    results: Results,
    notes: dict[str, str],
) -> None:
    document = {
        "meta": meta,
        "reference": next(m.key for m in mechanisms if m.reference),
        "workloads": {
            w.key: {
                "title": w.title,
                "unit": w.unit,
                "higher_is_better": w.higher_is_better,
                "workers": w.workers,
            }
            for w in workloads
        },
        "mechanisms": {m.key: {"label": m.label, "driver": m.driver.name} for m in mechanisms},
        "results": results,
        "notes": notes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def draw_chart(
    path: Path,
    mechanisms: Sequence[Mechanism],
    workloads: Sequence[Workload],
    results: Results,
    meta: dict[str, Any],
) -> str | None:
    """One horizontal bar panel per workload; returns why it was not drawn, or None."""
    try:
        import matplotlib as mpl
    except ImportError:
        return "not drawn: matplotlib is not installed (pip install 'tornado-offload[bench]')"
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, MaxNLocator

    # Two panels a row: the chart is shown at a page's width (about 800 px on the docs site and
    # a package index), where three panels a row made the labels too small to read.
    columns = min(2, len(workloads))
    rows = -(-len(workloads) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(6 * columns, 0.4 * len(mechanisms) * rows + 1.2), squeeze=False
    )
    labels = [m.label for m in mechanisms]
    colors = [
        "tab:orange" if m.reference else "tab:blue" if m.key.startswith("offload") else "tab:gray"
        for m in mechanisms
    ]
    for ax, work in zip(axes.flat, workloads, strict=False):  # spare panels stay empty
        medians = [results[m.key][work.key]["median"] or 0.0 for m in mechanisms]
        bars = ax.barh(labels, medians, color=colors)
        ax.invert_yaxis()
        better = "higher" if work.higher_is_better else "lower"
        ax.set_title(f"{work.title}\n({work.unit}, {better} is better)", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_major_locator(MaxNLocator(5))
        for bar, m in zip(bars, mechanisms, strict=True):
            ratio = results[m.key][work.key]["ratio"]
            if ratio is not None:
                ax.annotate(
                    f" {ratio:.2f}×",
                    (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    va="center",
                    fontsize=10,
                )
        ax.margins(x=0.3)  # room for the ratio labels
    for ax in list(axes.flat)[len(workloads) :]:
        ax.axis("off")
        ax.text(
            0.0,
            0.5,
            "Bars: medians. Labels: median / median\n"
            "of tornado run_on_executor, same run.\n"
            f"{meta['calls']:,} calls per sample, {meta['window']:,} in flight;\n"
            f"{meta['memory_calls']:,} pending calls for memory.\n{meta['cpu_model']}.",
            fontsize=10,
            va="center",
        )
    fig.suptitle(
        f"offload benchmarks ({meta['mode']}): medians of {meta['repeats']} interleaved repeats;\n"
        f"ratios to tornado run_on_executor; {meta['python']}, {meta['cpus']} CPUs",
        fontsize=12,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
