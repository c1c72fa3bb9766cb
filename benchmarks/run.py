"""Measure every mechanism on every workload, interleaved, in one process.

Run from the repository root: ``python -m benchmarks [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from . import processes, report, stats_cost
from .mechanisms import MECHANISMS, Mechanism
from .workloads import PROBE, WORKLOADS, Workload, rss_available

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"

FULL = {"calls": 20_000, "memory_calls": 100_000, "repeats": 5}
QUICK = {"calls": 1_000, "memory_calls": 5_000, "repeats": 3}

#: Untimed calls before each sample, enough to start every worker thread.
WARMUP = range(256)


def process_cpu(pid: int, *, children: bool = True) -> float | None:
    """CPU seconds of a process: all its threads, and its finished children unless told."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    except (OSError, IndexError):
        return None
    # utime, stime, cutime, cstime: fields 14 to 17 of proc(5), 12 to 15 after the name.
    ticks = sum(int(v) for v in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and of all its descendants, finished or still running.

    The drivers benchmark's servers (and PostgreSQL's backends, their children) run while
    they are measured, so os.times() alone would count them as other processes' load. A
    finished child that was waited for is in its parent's figure, and no longer on its own.
    """
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    parents[int(entry.name)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # it ended meanwhile
    family, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        family.append(pid)
        todo += [child for child, parent in parents.items() if parent == pid]
    return sum(process_cpu(pid) or 0.0 for pid in family)


class CpuMeter:
    """The share of the machine's CPU time that other processes used meanwhile."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
            mine = own_cpu()
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        return busy / os.sysconf("SC_CLK_TCK"), mine

    def foreign_share(self, wall: float) -> float | None:
        end = self._sample()
        if self.start is None or end is None or wall <= 0:
            return None
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, others) / (wall * (os.cpu_count() or 1))


class WrongResultError(AssertionError):
    pass


def _check(total: int, xs: range) -> None:
    expected = sum(xs)
    if total != expected:
        raise WrongResultError(f"results summed to {total}, expected {expected}")


async def _timed_async(mech: Mechanism, work: Workload, pool: Any, xs: range) -> float:
    call = mech.bind(work.body, pool, work.workers)
    shapes = mech.driver.shapes
    _check(await shapes["batched"](call, WARMUP), WARMUP)
    if work.memory:
        PROBE.arm()
    start = time.perf_counter()
    total = await shapes[work.shape](call, xs)
    seconds = time.perf_counter() - start
    _check(total, xs)
    return seconds


def _timed_thread(mech: Mechanism, work: Workload, pool: Any, xs: range) -> float:
    call = mech.bind(work.body, pool, work.workers)
    shapes = mech.driver.shapes
    _check(shapes["batched"](call, WARMUP), WARMUP)
    if work.memory:
        PROBE.arm()
    start = time.perf_counter()
    total = shapes[work.shape](call, xs)
    seconds = time.perf_counter() - start
    _check(total, xs)
    return seconds


def measure(mech: Mechanism, work: Workload, calls: int) -> float:
    """One sample: a fresh pool and a fresh event loop, warm-up, timed run."""
    gc.collect()
    pool = mech.pool(work.workers) if mech.pool else None
    xs = range(calls)
    try:
        run = mech.driver.run
        if run is None:
            seconds = _timed_thread(mech, work, pool, xs)
        else:
            seconds = run(lambda: _timed_async(mech, work, pool, xs))
    finally:
        PROBE.gate.set()  # never leave a worker blocked, even after a failure
        if pool is not None:
            pool.shutdown(wait=True)
    return work.score(seconds, calls)


def measure_in_child(mech: Mechanism, work: Workload, calls: int) -> float:
    """One sample, as :func:`measure`, in a fresh interpreter.

    Memory samples need it: in a long-lived process, heap that earlier samples
    freed but the allocator kept is reused, and RSS deltas shrink sample after
    sample (by some 30 B per call per 100,000-call sample).
    """
    command = [sys.executable, "-m", "benchmarks", "--sample", f"{mech.key}:{work.key}:{calls}"]
    child = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines() or [f"exit status {child.returncode}"]
        raise RuntimeError(f"sample process failed: {lines[-1]}")
    return float(child.stdout)


def _sample_here(spec: str) -> int:
    """The child side of :func:`measure_in_child`: print one sample's score."""
    mech_key, work_key, calls = spec.split(":")
    mech = next(m for m in MECHANISMS if m.key == mech_key)
    work = next(w for w in WORKLOADS if w.key == work_key)
    print(repr(measure(mech, work, int(calls))))
    return 0


def _pick(keys: str | None, table: Sequence[Any], what: str) -> list[Any]:
    if not keys:
        return list(table)
    wanted = keys.split(",")
    known = {item.key for item in table}
    unknown = [key for key in wanted if key not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(known)}")
    return [item for item in table if item.key in wanted]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of well under a minute")
    parser.add_argument("--calls", type=int, help="calls per sample (full: 20,000; quick: 1,000)")
    parser.add_argument(
        "--memory-calls", type=int, help="pending calls (full: 100,000; quick: 5,000)"
    )
    parser.add_argument("--repeats", type=int, help="interleaved repeats (full: 5; quick: 3)")
    parser.add_argument("--json", type=Path, help="where to write the JSON results")
    parser.add_argument("--chart", type=Path, help="where to draw the PNG chart")
    parser.add_argument("--no-chart", action="store_true", help="skip the chart")
    parser.add_argument(
        "--only", help="comma-separated mechanism keys (the reference is always run)"
    )
    parser.add_argument("--workloads", help="comma-separated workload keys")
    parser.add_argument(
        "--no-processes", action="store_true", help="skip the process and cluster rows"
    )
    parser.add_argument(
        "--stats-cost",
        action="store_true",
        help="measure only what statistics cost, in many short paired samples",
    )
    parser.add_argument(
        "--pairs", type=int, help="paired samples per workload for --stats-cost (full: 100)"
    )
    parser.add_argument(
        "--redraw",
        type=Path,
        metavar="JSON",
        help="draw the chart of a saved run (its --json file) again, without measuring",
    )
    parser.add_argument(
        "--drivers",
        action="store_true",
        help="benchmark the example drivers against the native async clients instead, "
        "with options of its own (python -m benchmarks --drivers --help)",
    )
    parser.add_argument("--sample", help=argparse.SUPPRESS)  # MECH:WORKLOAD:CALLS, in a child
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--drivers" in argv:
        argv.remove("--drivers")
        from . import drivers  # it needs the drivers extra and the servers; the rest does not

        return drivers.main(argv)
    args = parse_args(argv)
    if args.sample:
        return _sample_here(args.sample)
    if args.redraw:
        return _redraw(args.redraw, args.chart or args.redraw.with_suffix(".png"))
    settings = dict(QUICK if args.quick else FULL)
    for name in settings:
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.stats_cost:
        return _stats_cost(args, settings)
    mechanisms = _pick(args.only, MECHANISMS, "mechanism")
    if not any(m.reference for m in mechanisms):
        mechanisms.insert(0, next(m for m in MECHANISMS if m.reference))
    workloads = _pick(args.workloads, WORKLOADS, "workload")

    notes: dict[str, str] = {}
    for mech in list(mechanisms):
        reason = mech.missing()
        if reason:
            notes[mech.label] = f"skipped: {reason}"
            mechanisms.remove(mech)
    if any(w.memory for w in workloads) and not rss_available():
        notes["memory"] = "skipped: needs /proc/self/statm (Linux)"
        workloads = [w for w in workloads if not w.memory]

    samples: dict[str, dict[str, list[float]]] = {
        m.key: {w.key: [] for w in workloads} for m in mechanisms
    }
    failed: dict[tuple[str, str], str] = {}
    meter = CpuMeter()
    began = time.perf_counter()
    for repeat in range(settings["repeats"]):
        for work in workloads:
            calls = settings["memory_calls"] if work.memory else settings["calls"]
            sample = measure_in_child if work.memory else measure
            for mech in mechanisms:
                if (mech.key, work.key) in failed:
                    continue
                try:
                    samples[mech.key][work.key].append(sample(mech, work, calls))
                except Exception as exc:  # report a broken mechanism; keep measuring the rest
                    failed[mech.key, work.key] = f"{type(exc).__name__}: {exc}"
                    samples[mech.key][work.key] = []
                    notes[f"{mech.label} / {work.key}"] = f"FAILED: {failed[mech.key, work.key]}"
            print(
                f"  repeat {repeat + 1}/{settings['repeats']} {work.key:<10} "
                f"done at {time.perf_counter() - began:6.1f} s",
                file=sys.stderr,
                flush=True,
            )
    wall = time.perf_counter() - began

    results = report.summarize(mechanisms, workloads, samples)
    meta = report.metadata(settings, args.quick, wall, meter.foreign_share(wall))
    print()
    print(report.table(mechanisms, workloads, results, meta, notes))

    process_table: list[processes.Row] = []
    if not args.no_processes:
        # offload against the direct route on the same process pool or cluster:
        # a per-call overhead ratio, so fewer calls suffice.
        calls = 200 if args.quick else 2_000
        print("\nprocesses and clusters: µs per call; ratio = offload / direct (below 1 is faster)")
        process_table = processes.measure_all(calls, settings["repeats"])
        print(processes.table(process_table))

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or RESULTS_DIR / f"{stamp}.json"
    report.write_json(json_path, meta, mechanisms, workloads, results, notes)
    if process_table:
        document = json.loads(json_path.read_text())
        document["processes"] = [
            {"row": label, "offload_us": mine, "direct_us": base, "ratio": ratio}
            for label, mine, base, ratio in process_table
        ]
        json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"\nJSON:  {json_path}")
    if not args.no_chart:
        chart_path = args.chart or json_path.with_suffix(".png")
        problem = report.draw_chart(chart_path, mechanisms, workloads, results, meta)
        print(f"chart: {problem or chart_path}")
    return 1 if failed else 0


def _redraw(json_path: Path, chart_path: Path) -> int:
    """The chart of a saved run, from its JSON: the mechanisms and workloads it names."""
    document = json.loads(json_path.read_text())
    by_key = {m.key: m for m in MECHANISMS}
    mechanisms = [by_key[key] for key in document["mechanisms"]]
    workloads = [w for w in WORKLOADS if w.key in document["workloads"]]
    problem = report.draw_chart(
        chart_path, mechanisms, workloads, document["results"], document["meta"]
    )
    print(f"chart: {problem or chart_path}")
    return 1 if problem else 0


def _stats_cost(args: argparse.Namespace, settings: dict[str, int]) -> int:
    pairs = args.pairs or (10 if args.quick else 100)
    if pairs < 2:
        raise SystemExit("--pairs must be at least 2")
    meter = CpuMeter()
    began = time.perf_counter()
    found = stats_cost.measure_pairs(
        pairs, settings["calls"], measure, lambda line: print(line, file=sys.stderr, flush=True)
    )
    wall = time.perf_counter() - began
    meta = report.metadata(
        {**settings, "pairs": pairs}, args.quick, wall, meter.foreign_share(wall)
    )
    print()
    print(stats_cost.table(found))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or RESULTS_DIR / f"stats-cost-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"meta": meta, "stats_cost": found}, indent=2) + "\n")
    print(f"\nJSON:  {json_path}")
    return 0
