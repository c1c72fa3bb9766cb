"""The drivers benchmark's medians and ratios: the printed table, the JSON file, the chart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .drivers import Cells

Results = dict[tuple[str, str], dict[str, Any]]

#: The figures a cell takes the median of; all but req/s are better lower.
FIGURES = ("rps", "p50_ms", "p99_ms", "lag_p99_ms", "lag_max_ms", "cpu_us_per_request")


def summarize(
    cells: Cells,
    samples: dict[tuple[str, str], list[dict[str, Any]]],
    failed: dict[tuple[str, str], str],
    handovers: dict[str, dict[str, float]],
) -> Results:
    """Per (config, workload): the samples, their medians, and the ratios to the reference."""
    results: Results = {}
    for work, row in cells:
        for config in row:
            found = samples[config.key, work.key]
            cell: dict[str, Any] = {"samples": found}
            for name in FIGURES:
                values = [s[name] for s in found if s.get(name) is not None]
                cell[name] = statistics.median(values) if values else None
            rps = [s["rps"] for s in found]
            cell["spread"] = (max(rps) - min(rps)) / statistics.median(rps) if rps else None
            others = [s["foreign_cpu_share"] for s in found if s["foreign_cpu_share"] is not None]
            cell["foreign_cpu_share"] = statistics.median(others) if others else None
            cell["handovers"] = handovers.get(config.key, {}).get(work.path)
            cell["failed"] = failed.get((config.key, work.key))
            results[config.key, work.key] = cell
        for config in row:
            cell = results[config.key, work.key]
            base = results[config.reference.key, work.key]
            cell["ratios"] = {
                name: cell[name] / base[name]
                if not cell["failed"] and not base["failed"] and cell[name] and base[name]
                else None
                for name in FIGURES
            }
    return results


def _with_ratio(cell: dict[str, Any], name: str, spec: str) -> str:
    value = cell[name]
    if value is None:
        return "—"
    ratio = cell["ratios"][name]
    return format(value, spec) + (f" ({ratio:.2f}×)" if ratio is not None else "")


def _row(config: Any, cell: dict[str, Any]) -> list[str]:
    handovers = cell["handovers"]
    first = [config.label, "—" if handovers is None else f"{handovers:.0f}"]
    if cell["failed"]:
        return [*first, "FAILED", "", "", "", "", "", ""]
    lag = "—" if cell["lag_max_ms"] is None else f" / {cell['lag_max_ms']:.0f}"
    return [
        *first,
        _with_ratio(cell, "rps", ",.0f"),
        _with_ratio(cell, "p50_ms", ".1f"),
        _with_ratio(cell, "p99_ms", ".1f"),
        _with_ratio(cell, "lag_p99_ms", ".1f") + lag,
        _with_ratio(cell, "cpu_us_per_request", ",.0f"),
        "—" if cell["spread"] is None or len(cell["samples"]) < 2 else f"{cell['spread']:.0%}",
        "—" if cell["foreign_cpu_share"] is None else f"{cell['foreign_cpu_share']:.0%}",
    ]


HEAD = [
    "variant",
    "hops",
    "req/s ↑",
    "p50 ms ↓",
    "p99 ms ↓",
    "loop lag p99 / max ms ↓",
    "CPU µs/req ↓",
    "spread",
    "others",
]


def table(cells: Cells, results: Results, meta: dict[str, Any], notes: dict[str, str]) -> str:
    versions = ", ".join(f"{dist} {ver}" for dist, ver in meta["versions"].items() if ver)
    out = [
        (
            f"{meta['mode']} run: wrk -t1 -c{meta['connections']} on 127.0.0.1, "
            f"{meta['seconds']} s per sample ({meta['scan_seconds']} s for scans), "
            f"{meta['warmup']} s of warm-up per cell in the first round; median of "
            f"{meta['rounds']} interleaved rounds; {meta['wall_seconds']} s"
        ),
        f"{meta['python']} on {meta['cpus']} CPUs ({meta['cpu_model']}); {versions}; {meta['wrk']}",
        (
            "native: redis.asyncio and psycopg's AsyncConnection. cell: median (median / "
            "native's median, same run and settings)."
        ),
        (
            "hops: thread-to-loop wake-ups in one request run alone. spread: (max - min) / "
            "median of req/s across rounds. others: the median share of the machine's CPU "
            "that other processes took during the row's samples."
        ),
    ]
    for work, row in cells:
        rows = [HEAD, *(_row(c, results[c.key, work.key]) for c in row)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD))]
        lines = [
            "  ".join(
                [
                    r[0].ljust(widths[0]),
                    *(t.rjust(w) for t, w in zip(r[1:], widths[1:], strict=True)),
                ]
            )
            for r in rows
        ]
        out += ["", work.title, lines[0], "  ".join("-" * w for w in widths), *lines[1:]]
    out.append("")
    foreign = meta["foreign_cpu_share"]
    if foreign is not None:
        out.append(
            f"note: other processes used {foreign:.0%} of the machine's CPU time during the run"
            + ("; figures are noisier than on an idle machine" if foreign > 0.05 else "")
        )
    out += [f"note: {what}: {why}" for what, why in notes.items()]
    return "\n".join(out)


def read_json(path: Path, configs: Any, workloads: Any) -> tuple[Cells, Results, dict[str, Any]]:
    """A saved run's cells, results (summarized again from its samples) and document."""
    document = json.loads(path.read_text())
    by_key = {w.key: w for w in workloads}
    cells: Cells = []
    samples, failed = {}, {}
    handovers: dict[str, dict[str, float]] = {}
    for work_key, row in document["results"].items():
        work = by_key[work_key]
        cells.append((work, [configs(key) for key in row]))
        for config_key, cell in row.items():
            samples[config_key, work_key] = cell["samples"]
            if cell.get("failed"):
                failed[config_key, work_key] = cell["failed"]
            handovers.setdefault(config_key, {})[work.path] = cell.get("handovers")
    return cells, summarize(cells, samples, failed, handovers), document


def write_json(
    path: Path, cells: Cells, results: Results, meta: dict[str, Any], notes: dict[str, str]
) -> None:
    document = {
        "meta": meta,
        "workloads": {w.key: {"title": w.title, "path": w.path} for w, _ in cells},
        "configs": {
            c.key: {"label": c.label, "variant": c.variant, "reference": c.reference.key}
            for _, row in cells
            for c in row
        },
        "results": {w.key: {c.key: results[c.key, w.key] for c in row} for w, row in cells},
        "notes": notes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _panel(ax: Any, title: str, row: list[Any], found: list[dict[str, Any]]) -> None:
    from matplotlib.ticker import EngFormatter, MaxNLocator

    values = [0.0 if cell["failed"] else cell["rps"] or 0.0 for cell in found]
    colors = ["tab:orange" if c.variant == "native" else "tab:blue" for c in row]
    bars = ax.barh([c.label for c in row], values, color=colors)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_major_locator(MaxNLocator(4))
    for bar, cell in zip(bars, found, strict=True):
        ratios = cell["ratios"]
        if cell["failed"]:
            text = " FAILED"
        elif ratios["rps"] is not None and ratios["p99_ms"] is not None:
            text = f" {ratios['rps']:.2f}×, p99 {ratios['p99_ms']:.2f}×"
        else:
            text = ""
        ax.annotate(
            text, (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center", fontsize=8
        )
    ax.margins(x=0.5)  # room for the labels


def _with_references(row: list[Any]) -> list[Any]:
    """The rows, each preceded by its native reference unless that is there already."""
    out: list[Any] = []
    for config in row:
        if config.reference not in out and config.reference != config:
            out.append(config.reference)
        out.append(config)
    return out


def draw_chart(path: Path, cells: Cells, results: Results, meta: dict[str, Any]) -> str | None:
    """A panel of req/s bars per workload, labelled with the req/s and p99 ratios to native.

    Rows with settings (the tuning rows) get a panel of their own, full width, at the end.
    """
    try:
        import matplotlib as mpl
    except ImportError:
        return "not drawn: matplotlib is not installed (pip install 'tornado-offload[bench]')"
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    plain = [(w, [c for c in row if c.key == c.variant]) for w, row in cells]
    tuned = [(w, _with_references([c for c in row if c.key != c.variant])) for w, row in cells]
    tuned = [(w, row) for w, row in tuned if row]
    columns = min(2, len(plain))
    grid_rows = -(-len(plain) // columns)
    tallest = max(len(row) for _, row in plain)
    heights = [0.36 * tallest + 1.0] * grid_rows + [0.3 * len(row) + 1.0 for _, row in tuned]
    fig = plt.figure(figsize=(7 * columns, sum(heights) + 1.2), layout="constrained")
    grid = fig.add_gridspec(len(heights), columns, height_ratios=heights)
    for number, (work, row) in enumerate(plain):
        ax = fig.add_subplot(grid[number // columns, number % columns])
        found = [results[c.key, work.key] for c in row]
        _panel(ax, f"{work.title}\n(requests/s, higher is better)", row, found)
    for number, (work, row) in enumerate(tuned):
        ax = fig.add_subplot(grid[grid_rows + number, :])
        found = [results[c.key, work.key] for c in row]
        _panel(ax, f"{work.title}: settings, each against native with the same", row, found)
    foreign = meta["foreign_cpu_share"]
    fig.suptitle(
        f"offload's drivers against redis.asyncio and psycopg's AsyncConnection "
        f"({meta['mode']} run)\nwrk -c{meta['connections']}, median of "
        f"{meta['rounds']} interleaved rounds; labels: req/s and p99, ratio to native; "
        f"{meta['python']}, {meta['cpus']} CPUs"
        + (f", other processes took {foreign:.0%} of the CPU" if foreign is not None else ""),
        fontsize=11,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
