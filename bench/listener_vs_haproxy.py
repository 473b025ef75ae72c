"""mailwarden's listener against HAProxy: the same backend, the same policy, the same load
generator, interleaved runs (A B A B ...), medians and ratios mailwarden/HAProxy.

    python -m bench.listener_vs_haproxy            # full run, about four minutes
    python -m bench.listener_vs_haproxy --smoke    # every benchmark, a few seconds each
    python -m bench.listener_vs_haproxy --only sessions,flood --rounds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from bench import frontends, procs
from bench.loadgen import percentile

Result = dict[str, float]


@dataclasses.dataclass(frozen=True)
class Params:
    rounds: int = 5
    # session rate
    concurrency: int = 50
    session_seconds: float = 3.0
    warmup: float = 0.5
    # held connections
    held: int = 9000
    held_parallel: int = 200
    # throughput
    stream_bytes: int = 2 << 30
    streams: int = 4
    streams_bytes: int = 512 << 20
    # flood
    cap: int = 100
    interval: float = 0.05
    baseline_seconds: float = 2.0
    attempts: int = 20000
    flood_concurrency: int = 200


FULL = Params()
SMOKE = Params(
    rounds=1,
    concurrency=8,
    session_seconds=0.5,
    warmup=0.2,
    held=200,
    held_parallel=50,
    stream_bytes=16 << 20,
    streams=2,
    streams_bytes=8 << 20,
    cap=20,
    baseline_seconds=0.3,
    attempts=500,
    flood_concurrency=20,
)
# The cap while measuring everything but the flood: above anything the benchmark opens, so
# the cap is checked on every connection but never reached.
NO_CAP_REACHED = 10000


# -- the benchmarks ---------------------------------------------------------------------------


def bench_sessions(fe: frontends.Running, p: Params) -> Result:
    with procs.LoadGen(
        "sessions",
        fe.smtp_port,
        "--concurrency",
        p.concurrency,
        "--seconds",
        p.session_seconds,
        "--warmup",
        p.warmup,
    ) as lg:
        lg.expect("start", p.warmup + 30)
        cpu0 = procs.cpu_seconds(fe.pid)
        end = lg.expect("end", p.session_seconds + 60)
        cpu1 = procs.cpu_seconds(fe.pid)
    n = max(1, end["sessions"])
    return {
        "sessions_per_s": end["rate"],
        "p50_ms": end["p50_ms"],
        "p99_ms": end["p99_ms"],
        "cpu_us_per_session": (cpu1 - cpu0) / n * 1e6,
        "session_failures": end["failures"],
    }


def bench_held(fe: frontends.Running, p: Params) -> Result:
    timeout = 60 + p.held / 100
    with procs.LoadGen(
        "held", fe.smtp_port, "--count", p.held, "--parallel", p.held_parallel
    ) as lg:
        lg.expect("baseline", 30)
        rss0 = procs.rss_kib(fe.pid)
        lg.go()
        held = lg.expect("held", timeout)
        rss1 = procs.rss_kib(fe.pid)
        lg.go()
        end = lg.expect("end", timeout)
    return {
        "held": held["held"],
        "held_alive": end["alive"],
        "kib_per_held": (rss1 - rss0) / max(1, held["held"]),
        "rss_mib_held": rss1 / 1024,
    }


def _stream(fe: frontends.Running, streams: int, nbytes: int) -> float:
    with procs.LoadGen("stream", fe.stream_port, "--streams", streams, "--bytes", nbytes) as lg:
        end = lg.expect("end", 120)
    if not end["complete"]:
        raise procs.BenchError(f"{fe.name}: stream incomplete: {end}")
    rate: float = end["mb_per_s"]
    return rate


def bench_stream(fe: frontends.Running, p: Params) -> Result:
    return {
        "mb_per_s_1": _stream(fe, 1, p.stream_bytes),
        f"mb_per_s_{p.streams}": _stream(fe, p.streams, p.streams_bytes),
    }


def bench_flood(fe: frontends.Running, p: Params) -> Result:
    with procs.LoadGen(
        "held-traffic", fe.smtp_port, "--count", p.cap, "--interval", p.interval
    ) as held:
        ready = held.expect("ready", 30)
        if ready["held"] != p.cap:
            raise procs.BenchError(f"{fe.name}: only {ready['held']} of {p.cap} sessions held")
        b0, cpu_b0 = time.monotonic(), procs.cpu_seconds(fe.pid)
        time.sleep(p.baseline_seconds)  # a measurement window, not a wait for something
        b1, cpu_b1 = time.monotonic(), procs.cpu_seconds(fe.pid)
        with procs.LoadGen(
            "flood",
            fe.smtp_port,
            "--attempts",
            p.attempts,
            "--concurrency",
            p.flood_concurrency,
        ) as flood:
            start = flood.expect("start", 30)
            cpu_f0 = procs.cpu_seconds(fe.pid)
            end = flood.expect("end", 120)
            cpu_f1 = procs.cpu_seconds(fe.pid)
        held.go()
        result = held.expect("end", 60)
    samples = result["samples"]
    quiet = [lat for t, lat in samples if b0 <= t <= b1]
    during = [lat for t, lat in samples if start["t"] <= t <= end["t"]]
    flood_s = end["t"] - start["t"]
    # The held sessions' own traffic goes on during the flood; its CPU (measured in the
    # quiet window) is not the flood's.
    held_cpu = (cpu_b1 - cpu_b0) / (b1 - b0) * flood_s
    return {
        "rejections_per_s": end["rate"],
        "cpu_us_per_rejection": max(0.0, cpu_f1 - cpu_f0 - held_cpu) / max(1, end["refused"]) * 1e6,
        "refused": end["refused"],
        "unanswered": end["attempts"] - end["refused"] - end["admitted"],
        "over_cap": end["admitted"],
        "held_lost": result["held"] - result["alive"],
        "held_requests_failed": result["failures"],
        "held_p99_quiet_ms": percentile(quiet, 0.99) * 1e3,
        "held_p99_flood_ms": percentile(during, 0.99) * 1e3,
        "refusal_line_ok": float(end["refusal_line"] == frontends.OVER_CAP_LINE),
    }


Bench = Callable[[frontends.Running, Params], Result]
BENCHMARKS: dict[str, tuple[Callable[[Params], int], Bench]] = {
    "sessions": (lambda p: NO_CAP_REACHED, bench_sessions),
    "held": (lambda p: NO_CAP_REACHED, bench_held),
    "stream": (lambda p: NO_CAP_REACHED, bench_stream),
    "flood": (lambda p: p.cap, bench_flood),
}


# -- the table --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    bench: str
    key: str
    label: str
    # ("ratio", ">=", 0.6): mailwarden/HAProxy; ("abs", "<=", 3): mailwarden's own value.
    target: tuple[str, str, float] | None = None
    fmt: str = "{:.1f}"


def rows(p: Params) -> list[Row]:
    return [
        Row(
            "sessions",
            "sessions_per_s",
            "session rate (sessions/s)",
            ("ratio", ">=", 0.6),
            "{:.0f}",
        ),
        Row("sessions", "cpu_us_per_session", "CPU per session (µs)", ("ratio", "<=", 2.0)),
        Row("sessions", "p50_ms", "session latency p50 (ms)", None, "{:.2f}"),
        Row("sessions", "p99_ms", "session latency p99 (ms)", ("ratio", "<=", 1.5), "{:.2f}"),
        Row("sessions", "session_failures", "failed sessions", ("abs", "==", 0), "{:.0f}"),
        Row("held", "held", f"held connections (of {p.held})", ("abs", ">=", p.held), "{:.0f}"),
        Row("held", "held_alive", "held and still relaying", ("abs", ">=", p.held), "{:.0f}"),
        Row("held", "kib_per_held", "RSS per held connection (KiB)", ("abs", "<=", 3.0), "{:.2f}"),
        Row("held", "rss_mib_held", "RSS with all held (MiB)", None),
        Row("stream", "mb_per_s_1", "throughput, 1 stream (MB/s)", ("ratio", ">=", 1.0), "{:.0f}"),
        Row(
            "stream",
            f"mb_per_s_{p.streams}",
            f"throughput, {p.streams} streams (MB/s)",
            None,
            "{:.0f}",
        ),
        Row("flood", "rejections_per_s", "flood rejections/s", ("ratio", ">=", 1.0), "{:.0f}"),
        Row("flood", "cpu_us_per_rejection", "CPU per rejection (µs)", None),
        Row("flood", "unanswered", "refused without the 421 line", ("abs", "==", 0), "{:.0f}"),
        Row("flood", "over_cap", "admitted over the cap", ("abs", "==", 0), "{:.0f}"),
        Row("flood", "held_lost", "held sessions lost", ("abs", "==", 0), "{:.0f}"),
        Row(
            "flood", "held_requests_failed", "held requests unanswered", ("abs", "==", 0), "{:.0f}"
        ),
        Row(
            "flood",
            "refusal_line_ok",
            "421 line as configured (1 = yes)",
            ("abs", "==", 1),
            "{:.0f}",
        ),
        Row("flood", "held_p99_quiet_ms", "held p99 without flood (ms)", None, "{:.2f}"),
        Row(
            "flood",
            "held_p99_flood_ms",
            "held p99 during flood (ms)",
            ("ratio", "<=", 1.5),
            "{:.2f}",
        ),
    ]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _met(value: float, op: str, bound: float) -> bool:
    return {">=": value >= bound, "<=": value <= bound, "==": value == bound}[op]


def paired_ratio(runs: dict[str, list[Result]], key: str) -> float:
    """The median of the per-round ratios mailwarden/HAProxy: each round runs the two back to
    back, so a ratio within a round is not moved by what else the machine did meanwhile."""
    ratios = [
        mw[key] / ha[key]
        for mw, ha in zip(runs.get("mailwarden", []), runs.get("haproxy", []), strict=False)
        if key in mw and key in ha and ha[key]
    ]
    return median(ratios)


def table(
    results: dict[str, dict[str, list[Result]]], p: Params, order: list[str]
) -> tuple[str, list[bool]]:
    """Medians per front end, then mailwarden/HAProxy and the target. Extra front ends
    (`mailwarden@DIR`) get a column each, after HAProxy."""
    extra = [f for f in order if f not in ("mailwarden", "haproxy")]
    head = f"{'metric':<36}{'mailwarden':>12}{'HAProxy':>12}{'ratio':>8}  {'target':<14}met"
    head += "".join(f"  {f[:30]:>12}" for f in extra)
    lines = [head, "-" * len(head)]
    verdicts: list[bool] = []
    for row in rows(p):
        if row.bench not in results:
            continue
        med = {
            fe: median([r[row.key] for r in runs if row.key in r])
            for fe, runs in results[row.bench].items()
        }
        mw, ha = med.get("mailwarden", float("nan")), med.get("haproxy", float("nan"))
        ratio = paired_ratio(results[row.bench], row.key)
        target, met = "", ""
        if row.target is not None:
            kind, op, bound = row.target
            if kind == "ratio":
                target = f"{op} {bound:g}x"
                ok = _met(ratio, op, bound)
            else:
                target = f"{op} {bound:g}"
                ok = _met(mw, op, bound)
            verdicts.append(ok)
            met = "yes" if ok else "NO"
        line = (
            f"{row.label:<36}{row.fmt.format(mw):>12}{row.fmt.format(ha):>12}"
            f"{'-' if math.isnan(ratio) else f'{ratio:.2f}':>8}  {target:<14}{met:<3}"
        )
        line += "".join(f"  {row.fmt.format(med.get(f, float('nan'))):>12}" for f in extra)
        lines.append(line.rstrip())
    return "\n".join(lines), verdicts


def machine() -> str:
    model = "unknown CPU"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        version = subprocess.run(
            [frontends.HAPROXY, "-v"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0]
    except (OSError, IndexError):
        version = "HAProxy not found"
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, {version}"
    )


# -- running ----------------------------------------------------------------------------------


def run(
    names: list[str],
    p: Params,
    order: list[str],
    log: Callable[[str], None],
    policy: str = "none",
) -> dict[str, dict[str, list[Result]]]:
    results: dict[str, dict[str, list[Result]]] = {}
    with frontends.backend() as be:
        for name in names:
            cap_of, bench = BENCHMARKS[name]
            per_fe: dict[str, list[Result]] = {fe: [] for fe in order}
            for rnd in range(p.rounds):
                for fe_name in order:
                    with frontends.frontend(fe_name, be, cap_of(p), policy) as fe:
                        r = bench(fe, p)
                    per_fe[fe_name].append(r)
                    shown = ", ".join(f"{k}={v:.4g}" for k, v in r.items())
                    log(f"{name} round {rnd + 1}/{p.rounds} {fe_name}: {shown}")
            results[name] = per_fe
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.listener_vs_haproxy",
        description="mailwarden listener vs HAProxy, interleaved, medians and ratios.",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny run of every benchmark")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma list of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; smoke 1)")
    parser.add_argument(
        "--frontends", default="mailwarden,haproxy", help="which front ends, in run order"
    )
    parser.add_argument(
        "--policy",
        choices=frontends.POLICIES,
        default="none",
        help="abuse: both front ends also keep a per-address rate limit and auto-ban "
        "(never tripped by the benchmark's one client: the cost of the check is measured)",
    )
    parser.add_argument("--json", type=pathlib.Path, help="also write every round here")
    parser.add_argument("--quiet", action="store_true", help="no per-round lines")
    parser.add_argument(
        "--nice",
        type=int,
        help="scheduling priority of every process of the run (negative needs root): "
        "keeps other work on a shared machine from skewing the figures",
    )
    args = parser.parse_args(argv)
    p = SMOKE if args.smoke else FULL
    if args.rounds:
        p = dataclasses.replace(p, rounds=args.rounds)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    order = [n.strip() for n in args.frontends.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS] + [
        f for f in order if not frontends.known(f)
    ]
    if unknown:
        parser.error(f"unknown benchmark or front end: {', '.join(unknown)}")
    if "haproxy" in order and not frontends.have_haproxy():
        parser.error(f"{frontends.HAPROXY} not found (set HAPROXY=/path/to/haproxy)")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    procs.NICE = args.nice
    started = time.monotonic()
    load = os.getloadavg()
    results = run(names, p, order, log, args.policy)
    text, verdicts = table(results, p, order)
    print(f"machine: {machine()}")
    print(
        f"medians of {p.rounds} interleaved round(s), {time.monotonic() - started:.0f} s; "
        f"load average before: {load[0]:.2f} (after: {os.getloadavg()[0]:.2f})"
        + (f", nice {args.nice}" if args.nice is not None else "")
        + (f", policy {args.policy}" if args.policy != "none" else "")
        + "\n"
    )
    print(text)
    print("\nratio: the median of the per-round ratios mailwarden/HAProxy (one round runs both)")
    print(f"\ntargets met: {sum(verdicts)} of {len(verdicts)}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "params": dataclasses.asdict(p),
                                         "results": results}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
