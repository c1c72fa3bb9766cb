"""offload's example drivers against the native async clients, under HTTP load.

Run from the repository root: ``python -m benchmarks --drivers [--quick]``.

The harness starts private redis and PostgreSQL servers (``tests/servers.py``), one Tornado
server process per client variant and setting (``benchmarks/driver_app.py``), and loads
each in turn with ``wrk`` on 127.0.0.1: the variants take turns (A B C, then B C A, ...) in
several rounds. It reports requests/s, p50 and p99 latency, errors, the server's CPU time
per request and its event loop's lag, with ratios to the native client in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, ClassVar, NoReturn

from tests import servers

from . import driver_report, report
from .run import RESULTS_DIR, ROOT, CpuMeter, process_cpu

WRK = "wrk"

#: What wrk prints at the end of a run: its own counts and exact percentiles, as JSON.
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""
ERROR_KINDS = ("status", "connect", "read", "write", "timeout")

#: Seconds of load per sample. A scan costs some 5 to 20 ms of CPU a request on a 2-core VM,
#: so 50 connections finish a wave of requests only every second or so: they get longer.
#: The servers live through the run, so a cell is warmed up once, in the first round.
FULL = {"rounds": 3, "seconds": 2, "scan_seconds": 5, "warmup": 1}
QUICK = {"rounds": 1, "seconds": 1, "scan_seconds": 2, "warmup": 0}
#: Seconds the harness waits for a server's answer: for the idle one, until the requests
#: wrk left behind are done (50 of the slowest variant's scans).
IDLE_TIMEOUT = 60
#: Server processes started at once.
STARTING = 4


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    path: str
    #: "redis", "pg" or "none": the server it needs, and which variants run it.
    family: str
    #: A heavy request, timed for ``scan_seconds``.
    scan: bool = False


WORKLOADS = [
    Workload(
        "redis-commands", "redis: 4 commands (incr, get, set, expire)", "/redis/commands", "redis"
    ),
    Workload(
        "redis-pipeline", "redis: a pipeline of the same 4 commands", "/redis/pipeline", "redis"
    ),
    Workload("redis-scan", "redis: scan_iter over 1,000 keys", "/redis/scan", "redis", scan=True),
    Workload(
        "pg-transaction",
        "pg: a transaction (SELECT FOR UPDATE, 2 UPDATEs, INSERT)",
        "/pg/transaction",
        "pg",
    ),
    Workload(
        "pg-scan",
        "pg: a server-side cursor over 1,000 rows, async for",
        "/pg/scan",
        "pg",
        scan=True,
    ),
    Workload("empty", "no I/O: 4 calls that do nothing (the handover alone)", "/empty", "none"),
]

VARIANT_LABELS = {
    "native": "native",
    "driver": "driver, a hop per call",
    "hop": "driver, one hop",
    "lanes": "4 lanes",
    "lanes-hop": "4 lanes, one hop",
}
VARIANTS = list(VARIANT_LABELS)
#: Variants without a PostgreSQL row (see ``driver_app.Lanes``).
NOT_PG = {"lanes"}


@dataclass(frozen=True)
class Config:
    """One server process: a variant and the settings it runs with."""

    variant: str
    switchinterval: float | None = None
    cpu: int | None = None
    lanes: int | None = None
    threads: int | None = None  # of the redis driver's pool (16 as shipped)
    lane: str | None = None  # lanes of an offload.Lanes ("lanes") or a "pool" of one each
    conn: str | None = None  # a lane's redis client: a "single" connection, or "pooled"

    OPTIONS = (("si", "switchinterval", float), ("cpu", "cpu", int))
    OPTIONS += (("lanes", "lanes", int), ("threads", "threads", int))
    OPTIONS += (("lane", "lane", str), ("conn", "conn", str))
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "lane": ("lanes", "pool"),
        "conn": ("single", "pooled"),
    }

    @property
    def key(self) -> str:
        options = [
            f"{short}={getattr(self, name)}"
            for short, name, _ in self.OPTIONS
            if getattr(self, name) is not None
        ]
        return self.variant + ("@" + ",".join(options) if options else "")

    @property
    def label(self) -> str:
        label = VARIANT_LABELS[self.variant]
        if self.lanes is not None:
            label = label.replace("4 lanes", f"{self.lanes} lanes")
        if self.threads is not None:
            label += f", {self.threads}-thread pool"
        if self.lane == "pool":
            label += " on 1-thread pools"
        if self.conn == "pooled":
            label += ", pooled connections"
        if self.switchinterval is not None:
            label += f"; switch interval {self.switchinterval * 1000:g} ms"
        if self.cpu is not None:
            label += f"; on CPU {self.cpu} only"
        return label

    @property
    def reference(self) -> Config:
        """The native process with the same interpreter settings: this row's denominator."""
        return Config("native", self.switchinterval, self.cpu)

    def runs(self, work: Workload) -> bool:
        return not (work.family == "pg" and self.variant in NOT_PG)

    @classmethod
    def parse(cls, text: str) -> Config:
        variant, _, options = text.partition("@")
        if variant not in VARIANT_LABELS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        convert = {short: (name, kind) for short, name, kind in cls.OPTIONS}
        found: dict[str, Any] = {}
        for option in filter(None, options.split(",")):
            short, _, value = option.partition("=")
            if short not in convert:
                known = ", ".join(f"{name}=" for name in convert)
                raise SystemExit(f"unknown option {short!r} in {text!r}; use {known}")
            name, kind = convert[short]
            if short in cls.CHOICES and value not in cls.CHOICES[short]:
                choices = " or ".join(cls.CHOICES[short])
                raise SystemExit(f"{short}= takes {choices}, not {value!r}, in {text!r}")
            try:
                found[name] = kind(value)
            except ValueError:
                raise SystemExit(f"{short}= needs a number in {text!r}") from None
        return cls(variant, **found)


#: What a full run also tries on the 4-command redis workload, beside the main table: the
#: interpreter's switch interval (5 ms by default) and the server on one CPU, each against
#: native with the same; lanes whose clients check a connection out of redis-py's pool for
#: every command instead of keeping one; lanes on offload's own pool of one thread instead
#: of a lane of offload.Lanes; 2 and 8 lanes.
TUNING = [
    *(Config(v, switchinterval=0.001) for v in ("native", "driver", "lanes-hop")),
    *(Config(v, switchinterval=0.02) for v in ("native", "driver", "lanes-hop")),
    *(Config(v, cpu=0) for v in ("native", "driver", "lanes-hop")),
    Config("lanes", conn="pooled"),
    Config("lanes", lane="pool"),
    Config("lanes-hop", lane="pool"),
    Config("lanes-hop", lanes=2),
    Config("lanes-hop", lanes=8),
]
TUNING_WORKLOADS = {"redis-commands"}

Cells = list[tuple[Workload, list[Config]]]


def plan(workloads: Sequence[Workload], main: Sequence[Config], tuning: Sequence[Config]) -> Cells:
    """Each workload with the configs it runs on, every row's reference included."""
    cells = []
    for work in workloads:
        configs = [c for c in main if c.runs(work)]
        if work.key in TUNING_WORKLOADS:
            configs += [c for c in tuning if c.runs(work) and c not in configs]
        for config in list(configs):
            if config.reference not in configs:
                configs.insert(0, config.reference)
        cells.append((work, configs))
    return cells


# ---- the servers ------------------------------------------------------------------------


class MissingServerError(RuntimeError):
    """A server the workloads need is not installed."""


def _missing(reason: str) -> NoReturn:
    raise MissingServerError(reason)


class AppServer(servers.Server):
    """The Tornado app under test (``driver_app``), one variant and setting per process."""

    port_taken = "Address already in use"

    def __init__(self, directory: Path, config: Config, argv: list[str]) -> None:
        self.name = f"app-{config.key}"
        super().__init__(directory)
        self.argv = argv

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "benchmarks.driver_app", "--port", str(port), *self.argv]

    def spawn(self, argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            process_group=0,
        )

    def ready(self) -> bool:
        try:
            self.handovers = self.get("handovers")
        except OSError:
            return False
        return True

    def get(self, what: str) -> dict[str, float]:
        """``/_bench/lag``, ``handovers`` or ``idle`` (see ``driver_app``), as JSON."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IDLE_TIMEOUT)
        try:
            conn.request("GET", f"/_bench/{what}")
            answer = conn.getresponse()
            if answer.status != 200:
                raise OSError(f"/_bench/{what}: HTTP {answer.status}")
            figures: dict[str, float] = json.loads(answer.read())
            return figures
        finally:
            conn.close()

    def cpu(self) -> float:
        """CPU seconds the server has used, all its threads."""
        seconds = None if self.process is None else process_cpu(self.process.pid, children=False)
        if seconds is None:
            raise RuntimeError(f"{self.name} is gone; its log ends:\n{self._log_tail()}")
        return seconds

    def last_words(self) -> str:
        lines = self._log_tail().strip().splitlines()
        return lines[-1] if lines else ""


def seed_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    with client.pipeline(transaction=False) as pipe:
        for number in range(1000):
            pipe.set(f"scan:{number}", number)
        pipe.execute()
    client.close()


def seed_postgres(conninfo: str) -> None:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute("INSERT INTO accounts SELECT g, 1000000 FROM generate_series(1, 1000) g")
        conn.execute(
            "CREATE TABLE ledger (id bigserial PRIMARY KEY, src int, dst int, amount int, "
            "at timestamptz DEFAULT now())"
        )
        conn.execute("CREATE TABLE scan_rows (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO scan_rows SELECT g, g FROM generate_series(0, 999) g")
        conn.execute("VACUUM ANALYZE")


@contextlib.contextmanager
def backing_servers(need: set[str]) -> Iterator[dict[str, str]]:
    """The redis and PostgreSQL servers the workloads need, seeded: their addresses."""
    with contextlib.ExitStack() as stack:
        found = {}
        if "redis" in need or "none" in need:  # every variant makes a redis client
            redis_server = stack.enter_context(servers.running_redis(_missing))
            seed_redis(redis_server.url)
            found["redis"] = redis_server.url
        if "pg" in need:
            pg = stack.enter_context(servers.running_postgres(_missing))
            seed_postgres(pg.conninfo)
            found["pg"] = pg.conninfo
        yield found


#: The app's command-line flag for each setting of a ``Config``.
OPTION_FLAGS = {
    "lanes": "--lanes",
    "threads": "--threads",
    "switchinterval": "--switchinterval",
    "cpu": "--cpu",
    "lane": "--lane-executor",
    "conn": "--lane-connection",
}


def app_argv(
    config: Config, addresses: dict[str, str], failing: set[str], *, pg: bool
) -> list[str]:
    argv = ["--variant", config.variant, "--redis", addresses["redis"]]
    if pg:  # PostgreSQL's connections are few (50): only rows with a pg workload open some
        argv += ["--pg", addresses["pg"]]
    for option, flag in OPTION_FLAGS.items():
        if getattr(config, option) is not None:
            argv += [flag, str(getattr(config, option))]
    if config.variant in failing:
        argv += ["--fail-every", "100"]
    return argv


# ---- one sample -------------------------------------------------------------------------


class SampleError(RuntimeError):
    pass


def run_wrk(url: str, seconds: int, connections: int, script: Path) -> dict[str, Any]:
    """One wrk run on one thread: its figures, as the script prints them."""
    # A 10 s timeout: a slow variant's latency is a figure to report, not an error.
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            found: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return found
    raise SampleError(f"wrk printed no result (exit status {done.returncode}): {done.stderr}")


def measure(
    server: AppServer, work: Workload, seconds: int, warmup: int, connections: int, script: Path
) -> dict[str, Any]:
    """Warm-up (if any), then a timed run: wrk's figures, the loop's lag, the server's CPU."""
    url = f"http://127.0.0.1:{server.port}{work.path}"
    if warmup:
        run_wrk(url, warmup, connections, script)
        server.get("idle")
    server.get("lag")  # a new window
    meter = CpuMeter()
    cpu_before, began = server.cpu(), time.perf_counter()
    found = run_wrk(url, seconds, connections, script)
    wall = time.perf_counter() - began
    cpu = server.cpu() - cpu_before
    lag = server.get("lag")
    foreign = meter.foreign_share(wall)
    server.get("idle")  # the requests wrk left behind, done before the next sample
    requests = found["requests"]
    if not requests:
        raise SampleError(f"no request finished in {seconds} s; give it more time")
    return {
        "rps": requests / (found["duration_us"] / 1e6),
        "p50_ms": found["p50_us"] / 1000,
        "p90_ms": found["p90_us"] / 1000,
        "p99_ms": found["p99_us"] / 1000,
        "max_ms": found["max_us"] / 1000,
        "requests": requests,
        "errors": {kind: found[kind] for kind in ERROR_KINDS},
        "lag_p99_ms": lag.get("p99_ms"),
        "lag_max_ms": lag.get("max_ms"),
        "server_cpu_share": cpu / wall,
        "cpu_us_per_request": cpu / requests * 1e6,
        "foreign_cpu_share": foreign,
    }


def errors_in(sample: dict[str, Any]) -> str | None:
    """What went wrong in a sample, or None: any non-2xx answer or socket error fails it."""
    found = {kind: count for kind, count in sample["errors"].items() if count}
    if not found:
        return None
    kinds = ", ".join(f"{count} {kind}" for kind, count in found.items())
    return f"{sum(found.values())} errors in {sample['requests']} requests ({kinds})"


# ---- the run ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks --drivers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (full: 3; quick: 1)")
    parser.add_argument(
        "--seconds", type=int, help="seconds of load per sample (full: 2; quick: 1)"
    )
    parser.add_argument(
        "--scan-seconds", type=int, help="seconds of load per sample of a scan (full: 5; quick: 2)"
    )
    parser.add_argument(
        "--warmup", type=int, help="seconds of warm-up, first round only (full: 1; quick: 0)"
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk's connections (50)")
    parser.add_argument("--workloads", help="comma-separated workload keys")
    parser.add_argument(
        "--variants",
        help="comma-separated variants, each optionally with settings: VARIANT@si=SECONDS,"
        "cpu=N,lanes=N,threads=N (default: the five variants and, in a full run, the "
        "settings tried on redis-commands); native with the same si= and cpu= always runs",
    )
    parser.add_argument(
        "--no-tuning", action="store_true", help="skip the settings tried on redis-commands"
    )
    parser.add_argument("--json", type=Path, help="where to write the JSON results")
    parser.add_argument("--chart", type=Path, help="where to draw the PNG chart")
    parser.add_argument("--no-chart", action="store_true", help="skip the chart")
    parser.add_argument(
        "--redraw",
        type=Path,
        metavar="JSON",
        help="print the table of a saved run (its --json file) and draw its chart again",
    )
    parser.add_argument(
        "--inject-errors",
        metavar="VARIANT,...",
        default="",
        help="make these variants answer 500 to one request in 100 (checks that errors fail)",
    )
    return parser.parse_args(argv)


def _pick_workloads(keys: str | None) -> list[Workload]:
    if not keys:
        return list(WORKLOADS)
    known = [w.key for w in WORKLOADS]
    if unknown := [key for key in keys.split(",") if key not in known]:
        raise SystemExit(f"unknown workload: {', '.join(unknown)}; choose from {', '.join(known)}")
    return [w for w in WORKLOADS if w.key in keys.split(",")]


def _progress(text: str, began: float) -> None:
    print(f"  {text:<40} at {time.perf_counter() - began:6.1f} s", file=sys.stderr, flush=True)


def redraw(json_path: Path, chart_path: Path | None) -> int:
    cells, results, document = driver_report.read_json(json_path, Config.parse, WORKLOADS)
    print(driver_report.table(cells, results, document["meta"], document["notes"]))
    if chart_path is None:
        return 0
    problem = driver_report.draw_chart(chart_path, cells, results, document["meta"])
    print(f"chart: {problem or chart_path}")
    return 1 if problem else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.redraw:
        chart = None if args.no_chart else args.chart or args.redraw.with_suffix(".png")
        return redraw(args.redraw, chart)
    settings = dict(QUICK if args.quick else FULL)
    for name in settings:
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if shutil.which(WRK) is None:
        raise SystemExit("wrk is not installed: install the Debian package wrk")
    workloads = _pick_workloads(args.workloads)
    if args.variants:
        main_configs = [Config.parse(text) for text in args.variants.split(",")]
    else:
        main_configs = [Config(v) for v in VARIANTS]
    tuning = [] if args.quick or args.no_tuning or args.variants else TUNING
    failing = set(filter(None, args.inject_errors.split(",")))
    if unknown := failing - set(VARIANTS):
        raise SystemExit(f"unknown variant in --inject-errors: {', '.join(sorted(unknown))}")
    cells = plan(workloads, main_configs, tuning)
    configs = list(dict.fromkeys(c for _, row in cells for c in row))

    samples: dict[tuple[str, str], list[dict[str, Any]]] = {
        (c.key, w.key): [] for w, row in cells for c in row
    }
    failed: dict[tuple[str, str], str] = {}
    began = time.perf_counter()
    meter = CpuMeter()
    directory = Path(tempfile.mkdtemp(prefix="offload-drivers-"))
    apps: dict[str, AppServer] = {}
    try:
        with backing_servers({w.family for w in workloads}) as addresses:
            _progress(" and ".join(sorted(addresses)) + " up and seeded", began)
            script = directory / "report.lua"
            script.write_text(WRK_SCRIPT)
            for config in configs:
                pg = any(w.family == "pg" and config in row for w, row in cells)
                argv = app_argv(config, addresses, failing, pg=pg)
                apps[config.key] = AppServer(directory, config, argv)
            with ThreadPoolExecutor(STARTING) as starting:  # each start mostly waits
                for _ in starting.map(AppServer.start, apps.values()):
                    pass
            handovers = {key: app.handovers for key, app in apps.items()}
            _progress(f"{len(apps)} servers up", began)
            for number in range(settings["rounds"]):
                for work, row in cells:
                    seconds = settings["scan_seconds" if work.scan else "seconds"]
                    warmup = settings["warmup"] if number == 0 else 0
                    turn = number % len(row)
                    for config in row[turn:] + row[:turn]:  # A B C, then B C A, ...
                        if (config.key, work.key) in failed:
                            continue
                        app = apps[config.key]
                        try:
                            sample = measure(app, work, seconds, warmup, args.connections, script)
                        except Exception as exc:  # a broken variant: report it, measure the rest
                            failed[config.key, work.key] = f"{type(exc).__name__}: {exc}"
                            continue
                        samples[config.key, work.key].append(sample)
                        if problem := errors_in(sample):
                            last = app.last_words()
                            failed[config.key, work.key] = problem + (
                                f"; the server's log ends: {last}" if last else ""
                            )
                    _progress(f"round {number + 1}/{settings['rounds']} {work.key}", began)
            wall = time.perf_counter() - began
            foreign = meter.foreign_share(wall)
    except (MissingServerError, servers.ServerStartError) as exc:
        print(f"cannot run: {exc}", file=sys.stderr)
        return 1
    finally:
        for app in apps.values():
            app.stop()
        shutil.rmtree(directory, ignore_errors=True)

    results = driver_report.summarize(cells, samples, failed, handovers)
    meta = report.metadata({**settings, "connections": args.connections}, args.quick, wall, foreign)
    meta["versions"].update({dist: report.version(dist) for dist in ("redis", "psycopg")})
    meta["wrk"] = wrk_version()
    notes = {f"{c} / {w}": f"FAILED: {why}" for (c, w), why in failed.items()}
    print()
    print(driver_report.table(cells, results, meta, notes))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or RESULTS_DIR / f"drivers-{stamp}.json"
    driver_report.write_json(json_path, cells, results, meta, notes)
    print(f"\nJSON:  {json_path}")
    if not args.no_chart:
        chart_path = args.chart or json_path.with_suffix(".png")
        problem = driver_report.draw_chart(chart_path, cells, results, meta)
        print(f"chart: {problem or chart_path}")
    return 1 if failed else 0


def wrk_version() -> str:
    done = subprocess.run([WRK, "-v"], capture_output=True, text=True, check=False)
    lines = (done.stdout or done.stderr).splitlines()
    return lines[0].strip() if lines else "unknown"
