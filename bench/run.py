#!/usr/bin/env python3
"""Runs every echo server (and both chat servers, and both game servers)
through the same scenarios, server pinned to CPU 0 and `overlapped bench`
pinned to CPU 1, alternating servers so drift hits all alike, and writes
docs/benchmarks.md (+ .json, .svg).

    python3 bench/run.py [--duration 5] [--rounds 2] [--quick] [--only game]

`--only game` runs just the game scenarios and rewrites the document with the
other sections taken from the last full run's docs/benchmarks.json.
"""

import argparse
import urllib.request
import json
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
DOCS = ROOT / "docs"
TICKS = os.sysconf("SC_CLK_TCK")

ECHO_SERVERS = {
    # Every client comes from 127.0.0.1 and the idle ones never speak: the
    # per-address limit and the handshake timeout are off for the benchmark.
    "overlapped": ["overlapped", "server", "--addr", "{addr}", "--model", "port", "--mode", "echo", "--threads", "1",
                   "--max-sessions-per-ip", "0", "--handshake-timeout-ms", "0"],
    "tokio": ["tokio-echo", "{addr}"],
    "monoio": ["monoio-echo", "{addr}"],
    "compio": ["compio-echo", "{addr}"],
}
# The floor: a bare io_uring loop with no runtime (bench/peers/src/bin/uring-floor.rs),
# run where CPU per message is compared, to show how much of it is the kernel's.
FLOOR = {"uring-floor": ["uring-floor", "{addr}"]}
CHAT_SERVERS = {
    "overlapped": ["overlapped", "server", "--addr", "{addr}", "--model", "port", "--mode", "chat", "--threads", "1", "--max-chat-rate", "0",
                   "--max-sessions-per-ip", "0", "--handshake-timeout-ms", "0"],
    "tokio": ["tokio-chat", "{addr}"],
}

# The game: rooms of players moving at the tick rate, a snapshot of the room
# to every player every tick (bench/peers/src/bin/tokio-game.rs).
GAME_TICK_HZ = 20
GAME_ROOM_PLAYERS = 20
GAME_SERVERS = {
    "overlapped": ["overlapped", "server", "--addr", "{addr}", "--model", "port", "--mode", "game",
                   "--tick-hz", str(GAME_TICK_HZ), "--max-room-players", "64", "--threads", "1",
                   "--max-sessions-per-ip", "0", "--handshake-timeout-ms", "0", "--db", "none"],
    # The best tokio game server for one core (issue #27): current-thread
    # runtime, ticks spread over 16 phases, moves as a store, `try_write`
    # from the tick. The baseline of every game figure.
    "tokio": ["tokio-game-fair", "--addr", "{addr}", "--tick-hz", str(GAME_TICK_HZ),
              "--max-room-players", "64"],
    # The first peer: multi-thread runtime of one worker, a room task fed by
    # an mpsc per move, every room's interval started in the first wave.
    "tokio-mpsc": ["tokio-game", "--addr", "{addr}", "--threads", "1", "--tick-hz", str(GAME_TICK_HZ),
                   "--max-room-players", "64"],
}
# The game's floor: a bare io_uring loop at the game's rate (issue #27,
# bench/peers/src/bin/uring-game-floor.rs), run beside the game servers to
# show how much of a snapshot's CPU is the kernel's.
GAME_FLOOR = {"uring-game-floor": ["uring-game-floor", "--addr", "{addr}", "--tick-hz", str(GAME_TICK_HZ),
                                   "--max-room-players", "64"]}
# A server that needs more than this share of its core fails the capacity
# test however on time its snapshots are (issue #27).
CAPACITY_MAX_CPU_SHARE = 0.95
# What "carries" means in the capacity search.
CAPACITY_LATENESS_P99_US = 5000
# The capacity search: player counts are whole rooms, doubled from the first
# until a count fails, then bisected to a room; each server has this long.
CAPACITY_START_PLAYERS = 200
CAPACITY_MAX_PLAYERS = 16000
CAPACITY_BUDGET_S = 150

next_port = 21000


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_times(pid):
    """(user, system) CPU seconds of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    """A server pinned to CPU 0, started and stopped around one run."""

    def __init__(self, command):
        global next_port
        next_port += 1
        self.addr = f"127.0.0.1:{next_port}"
        argv = [str(RELEASE / command[0])] + [a.replace("{addr}", self.addr) for a in command[1:]]
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0"] + argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=raise_fd_limit,
            env={**os.environ, "OVERLAPPED_LOG": "warn"},
        )
        self.wait_until_listening()

    def wait_until_listening(self):
        deadline = time.time() + 30
        buffered = b""
        while time.time() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                buffered += chunk
                if b"listening on" in buffered:
                    # Keep draining stderr so a chatty server never blocks.
                    subprocess.Popen(["cat"], stdin=self.proc.stderr, stdout=subprocess.DEVNULL)
                    return
            elif self.proc.poll() is not None:
                break
            # overlapped logs at warn here: probe the port instead.
            if probe(self.addr):
                return
        raise RuntimeError(f"server did not start: {buffered.decode(errors='replace')}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port():
    """A loopback port free now (ports above 32768 may be any client's)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(addr):
    import socket

    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def bench(addr, args):
    argv = ["taskset", "-c", "1", str(RELEASE / "overlapped"), "bench", "--addr", addr, "--json"] + args
    out = subprocess.run(argv, capture_output=True, text=True, preexec_fn=raise_fd_limit, timeout=600)
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    report = json.loads(line)
    if out.returncode != 0:
        report["failure"] = out.stderr.strip().splitlines()[-1:] or ["exit %d" % out.returncode]
    return report


def wakeups(pid):
    """Times the server's threads went to sleep and were woken (their
    voluntary context switches), summed."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def run_load(command, args, sample_rss=False, duration=5.0):
    server = Server(command)
    try:
        rss_before = rss_kib(server.proc.pid)
        user_before, sys_before = cpu_times(server.proc.pid)
        wakeups_before, wall_before = wakeups(server.proc.pid), time.time()
        if sample_rss:
            # Sample the server's memory while the idle connections are up.
            proc = subprocess.Popen(
                ["taskset", "-c", "1", str(RELEASE / "overlapped"), "bench", "--addr", server.addr, "--json"] + args,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=raise_fd_limit,
            )
            time.sleep(duration * 0.8 + 2)
            rss_during = rss_kib(server.proc.pid)
            out, err = proc.communicate(timeout=600)
            report = json.loads(out.strip().splitlines()[-1])
            report["rss_before_kib"] = rss_before
            report["rss_during_kib"] = rss_during
        else:
            report = bench(server.addr, args)
        user_after, sys_after = cpu_times(server.proc.pid)
        report["server_user_s"] = user_after - user_before
        report["server_sys_s"] = sys_after - sys_before
        report["server_cpu_s"] = report["server_user_s"] + report["server_sys_s"]
        note_wakeups_and_share(report, server.proc.pid, wakeups_before, wall_before)
        return report
    finally:
        server.stop()


def note_wakeups_and_share(report, pid, wakeups_before, wall_before):
    """The server's wake-ups a second and the share of its core it used,
    over the whole run (the joins included)."""
    wall = max(1e-9, time.time() - wall_before)
    report["server_wakeups_per_sec"] = round((wakeups(pid) - wakeups_before) / wall)
    report["server_cpu_share"] = round(report["server_cpu_s"] / wall, 3)


def scrape_tick_lateness(metrics_addr):
    """The tick-lateness histogram of an overlapped server's /metrics:
    [(upper bound in µs or None for +Inf, cumulative count)]."""
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as response:
        text = response.read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith("overlapped_tick_lateness_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            count = int(line.rsplit(" ", 1)[1])
            buckets.append((None if bound == "+Inf" else round(float(bound) * 1e6), count))
    return buckets


def quantile_bound(buckets, q):
    """The upper bound of the bucket holding quantile q of a histogram's
    counts (per bucket, not cumulative); None in the open last bucket."""
    total = sum(n for _, n in buckets)
    seen = 0
    for bound, n in buckets:
        seen += n
        if total and seen >= q * total:
            return bound
    return None


def run_game_load_with_ticks(command, args, duration, settle=3):
    """`run_load` for our game server, which also reads the server's own
    tick lateness from its metrics endpoint over the middle of the measured
    period (the joins before it left out: they take `settle` seconds)."""
    metrics_addr = f"127.0.0.1:{free_port()}"
    server = Server(command + ["--metrics-addr", metrics_addr])
    try:
        user_before, sys_before = cpu_times(server.proc.pid)
        wakeups_before, wall_before = wakeups(server.proc.pid), time.time()
        proc = subprocess.Popen(
            ["taskset", "-c", "1", str(RELEASE / "overlapped"), "bench", "--addr", server.addr, "--json"] + args,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=raise_fd_limit)
        # The bots join first (a second or two), then measure for
        # `duration`: read the histogram over a window inside that.
        time.sleep(settle)
        before = scrape_tick_lateness(metrics_addr)
        time.sleep(duration * 0.4)
        after = scrape_tick_lateness(metrics_addr)
        out, _ = proc.communicate(timeout=600)
        report = json.loads(out.strip().splitlines()[-1])
        user_after, sys_after = cpu_times(server.proc.pid)
        report["server_user_s"] = user_after - user_before
        report["server_sys_s"] = sys_after - sys_before
        report["server_cpu_s"] = report["server_user_s"] + report["server_sys_s"]
        note_wakeups_and_share(report, server.proc.pid, wakeups_before, wall_before)
        cumulative = [(b, a - c) for (b, a), (_, c) in zip(after, before)]
        per_bucket = [(b, n - (cumulative[i - 1][1] if i else 0)) for i, (b, n) in enumerate(cumulative)]
        report["server_ticks"] = cumulative[-1][1] if cumulative else 0
        report["server_tick_lateness_p50_us"] = quantile_bound(per_bucket, 0.50)
        report["server_tick_lateness_p99_us"] = quantile_bound(per_bucket, 0.99)
        report["server_ticks_within_2ms"] = (
            sum(n for b, n in per_bucket if b is not None and b <= 2000) / max(1, report["server_ticks"]))
        return report
    finally:
        server.stop()


def game_args(rooms, duration):
    return ["--mode", "game", "--rooms", str(rooms), "--players", str(GAME_ROOM_PLAYERS),
            "--tick-hz", str(GAME_TICK_HZ), "--duration", str(duration)]


def usable_game_servers():
    """The game servers that start; ours is skipped, saying so, while its
    `--mode game` is refused."""
    usable = {}
    for name, command in GAME_SERVERS.items():
        try:
            Server(command).stop()
            usable[name] = command
        except RuntimeError as e:
            print(f"   skipping {name}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}", flush=True)
    return usable


def game_scenario(servers, rooms, duration, rounds):
    """The fixed game load on every server; the median round (by server CPU
    per delivered snapshot) is kept."""
    name = f"game, {rooms} rooms × {GAME_ROOM_PLAYERS} players, {GAME_TICK_HZ} Hz"
    print(f"== {name}", flush=True)
    results = {s: [] for s in servers}
    order = list(servers)
    for _ in range(rounds):
        for server in order:
            if server == "overlapped":
                report = run_game_load_with_ticks(servers[server], game_args(rooms, duration), duration)
            else:
                report = run_load(servers[server], game_args(rooms, duration))
            report["cpu_us_per_snapshot"] = fmt_us_per_msg(report)
            results[server].append(report)
            print(f"   {server:<11} {report.get('messages_per_sec', 0):>9.0f} snapshots/s"
                  f"  cpu {report.get('server_cpu_s', 0):.2f} s ({report['cpu_us_per_snapshot']:.2f} µs/snapshot)"
                  f"  lateness p99 {report.get('lateness_p99_us', '?')} µs  lost {report.get('lost', '?')}"
                  f"  errors {report.get('errors', '?')}  wake-ups {report.get('server_wakeups_per_sec', '?')}/s"
                  f"  {report.get('failure', '')}"
                  + (f"  server ticks ≤ 2 ms: {report['server_ticks_within_2ms'] * 100:.1f}%"
                     f" (p99 bucket ≤ {report['server_tick_lateness_p99_us']} µs)"
                     if "server_ticks_within_2ms" in report else ""), flush=True)
        order = order[1:] + order[:1]
    return {s: median_report(r, key="cpu_us_per_snapshot") for s, r in results.items() if r}


def carries(report):
    """Whether a capacity probe passed: every snapshot delivered on time."""
    # Every bot gets every tick's snapshot, give or take the ticks cut by
    # the ends of the measured period (whole ticks of every bot at once).
    bots = report.get("bots", 0)
    due = bots * (GAME_TICK_HZ * report.get("seconds", 0) - 2)
    return ("failure" not in report and report.get("errors", 1) == 0 and report.get("lost", 1) == 0
            and report.get("joined", 0) == bots > 0
            and report.get("messages", 0) >= due
            and report.get("lateness_p99_us", 1 << 62) <= CAPACITY_LATENESS_P99_US
            and report.get("server_cpu_share", 1.0) < CAPACITY_MAX_CPU_SHARE)


def capacity_search(command, duration):
    """The most players (whole rooms) the server carries at the tick rate on
    one core: doubling from CAPACITY_START_PLAYERS until a count fails, then
    bisecting between the last pass and the first failure, within
    CAPACITY_BUDGET_S seconds."""
    started = time.time()
    probes = []

    def probe_rooms(rooms):
        # Anything else running on the machine only adds lateness: a count
        # that fails is tried once more, and passes if either run passes.
        for attempt in range(2):
            try:
                report = run_load(command, game_args(rooms, duration))
            except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired) as e:
                report = {"failure": [str(e)]}
            ok = carries(report)
            if ok or attempt == 1 or not in_budget():
                break
            print(f"   {rooms * GAME_ROOM_PLAYERS:>6} players: not carried"
                  f" (lateness p99 {report.get('lateness_p99_us', '?')} µs), trying again", flush=True)
        probes.append({"players": rooms * GAME_ROOM_PLAYERS, "ok": ok,
                       "lateness_p99_us": report.get("lateness_p99_us"), "lost": report.get("lost"),
                       "errors": report.get("errors"), "server_cpu_s": report.get("server_cpu_s"),
                       "server_cpu_share": report.get("server_cpu_share"),
                       "snapshots_per_sec": report.get("messages_per_sec"), "failure": report.get("failure")})
        print(f"   {rooms * GAME_ROOM_PLAYERS:>6} players: {'carried' if ok else 'not carried'}"
              f"  lateness p99 {report.get('lateness_p99_us', '?')} µs  lost {report.get('lost', '?')}"
              f"  errors {report.get('errors', '?')}  cpu {report.get('server_cpu_s', 0):.2f} s"
              f" ({report.get('server_cpu_share', 0):.0%} of its core)"
              f"  {report.get('failure', '')}", flush=True)
        return ok

    def in_budget():
        return time.time() - started < CAPACITY_BUDGET_S

    good, bad = 0, None
    rooms = CAPACITY_START_PLAYERS // GAME_ROOM_PLAYERS
    max_rooms = CAPACITY_MAX_PLAYERS // GAME_ROOM_PLAYERS
    while in_budget():
        if probe_rooms(rooms):
            good = rooms
            if rooms >= max_rooms:
                break
            rooms = min(rooms * 2, max_rooms)
        else:
            bad = rooms
            break
    while bad is not None and bad - good > 1 and in_budget():
        middle = (good + bad) // 2
        if probe_rooms(middle):
            good = middle
        else:
            bad = middle
    return {"players": good * GAME_ROOM_PLAYERS,
            "first_failure": bad * GAME_ROOM_PLAYERS if bad is not None else None,
            "resolved": bad is None or bad - good <= 1,
            "seconds": round(time.time() - started, 1), "probes": probes}


# A store whose every call takes this long (issue 24): the game's loads and
# saves go to it off the workers, so its ticks must not notice.
SLOW_DB_DELAY_MS = 200


def slow_db_scenario():
    """Our game at 100 rooms with a database that takes 200 ms a call: the
    server's own tick lateness, over a window after the joins."""
    print(f"== game, 100 rooms × {GAME_ROOM_PLAYERS} players, a database of {SLOW_DB_DELAY_MS} ms a call",
          flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        command = [c for c in GAME_SERVERS["overlapped"] if c not in ("--db", "none")]
        command += ["--db", f"{scratch}/game.sqlite3", "--db-delay-ms", str(SLOW_DB_DELAY_MS)]
        duration = 20.0
        report = run_game_load_with_ticks(command, game_args(100, duration), duration, settle=12)
    report["db_delay_ms"] = SLOW_DB_DELAY_MS
    report["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"   tick lateness p99 ≤ {report['server_tick_lateness_p99_us']} µs,"
          f" {report['server_ticks_within_2ms']:.1%} within 2 ms; lost {report.get('lost')},"
          f" errors {report.get('errors')}", flush=True)
    return report


def run_game(opts, results):
    servers = usable_game_servers()
    duration = opts.duration
    # The floor runs in the fixed load only: it has no capacity to compare,
    # it is the CPU below which no game server on this kernel can go.
    results["game"] = game_scenario({**servers, **GAME_FLOOR}, 100, duration, opts.rounds) if servers else {}
    if "overlapped" in servers:
        results["game_slow_db"] = slow_db_scenario()
    results["game_capacity"] = {}
    for server, command in servers.items():
        print(f"== game capacity, {server}: rooms of {GAME_ROOM_PLAYERS}, {GAME_TICK_HZ} Hz,"
              f" lateness p99 ≤ {CAPACITY_LATENESS_P99_US / 1000:g} ms, nothing lost", flush=True)
        results["game_capacity"][server] = capacity_search(command, min(duration, 3.0))
    results["game_meta"] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python3 bench/run.py --duration {opts.duration} --rounds {opts.rounds}"
                   + (" --only game" if opts.only == "game" else ""),
    }


def median_report(reports, key="messages_per_sec"):
    ordered = sorted(reports, key=lambda r: r.get(key, 0))
    return ordered[len(ordered) // 2]


def scenario(name, servers, args, rounds, **kw):
    print(f"== {name}", flush=True)
    results = {s: [] for s in servers}
    order = list(servers)
    for round_index in range(rounds):
        for server in order:
            report = run_load(servers[server], args, **kw)
            results[server].append(report)
            print(f"   {server:<11} {report.get('messages_per_sec', 0):>12.0f} msg/s"
                  f"  cpu {report.get('server_cpu_s', 0):.2f} s  {report.get('failure', '')}", flush=True)
        order = order[1:] + order[:1]
    return {s: median_report(r) for s, r in results.items()}


def fmt_us_per_msg(report, key="server_cpu_s"):
    msgs = report.get("messages", 0)
    return report.get(key, 0) / msgs * 1e6 if msgs else float("nan")


def table(results, baseline="tokio"):
    base = results.get(baseline, {})
    lines = [
        "| server | msg/s | × tokio | MB/s | p50 µs | p99 µs | p99.9 µs | user µs/msg | sys µs/msg | CPU µs/msg | CPU × tokio | errors | mismatches |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_cpu = fmt_us_per_msg(base) if base else float("nan")
    for server, r in results.items():
        ratio = r.get("messages_per_sec", 0) / base["messages_per_sec"] if base.get("messages_per_sec") else float("nan")
        lines.append(
            f"| {server} | {r.get('messages_per_sec', 0):,.0f} | {ratio:.2f} | {r.get('mb_per_sec', 0):.2f} "
            f"| {r.get('p50_us', 0)} | {r.get('p99_us', 0)} | {r.get('p999_us', 0)} "
            f"| {fmt_us_per_msg(r, 'server_user_s'):.2f} | {fmt_us_per_msg(r, 'server_sys_s'):.2f} "
            f"| {fmt_us_per_msg(r):.2f} | {fmt_us_per_msg(r) / base_cpu:.2f} | {r.get('errors', '?')} | {r.get('mismatches', '?')} |"
        )
    return "\n".join(lines)


def svg_chart(pingpong):
    """Grouped bars: ping-pong throughput per scenario and server."""
    servers = list(ECHO_SERVERS) + list(FLOOR)
    colors = {"overlapped": "#d9480f", "tokio": "#1c7ed6", "monoio": "#37b24d", "compio": "#7048e8",
              "uring-floor": "#868e96"}
    names = list(pingpong)
    peak = max(r.get("messages_per_sec", 0) for res in pingpong.values() for r in res.values()) or 1
    width, height, left, bottom = 120 * len(names) + 80, 360, 70, 60
    bar = 22
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">Ping-pong throughput (msg/s), server pinned to one core</text>']
    plot_h = height - bottom - 30
    for i in range(5):
        y = height - bottom - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{peak * i / 4 / 1000:.0f}k</text>')
    for gi, name in enumerate(names):
        x0 = left + 10 + gi * 120
        for si, server in enumerate(servers):
            value = pingpong[name].get(server, {}).get("messages_per_sec", 0)
            h = plot_h * value / peak
            parts.append(f'<rect x="{x0 + si * bar}" y="{height - bottom - h}" width="{bar - 3}" height="{h}" fill="{colors[server]}"/>')
        parts.append(f'<text x="{x0 + 2 * bar}" y="{height - bottom + 14}" text-anchor="middle">{name}</text>')
    for si, server in enumerate(servers):
        x = left + si * 110
        parts.append(f'<rect x="{x}" y="{height - 22}" width="12" height="12" fill="{colors[server]}"/>')
        parts.append(f'<text x="{x + 16}" y="{height - 12}">{server}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def targets(results):
    """The issue's targets against this run's figures, as a table."""
    pp = results["pingpong"].get("1000 conns, 64 B")
    if not pp or "tokio" not in pp:
        return []
    ours, tokio = pp["overlapped"], pp["tokio"]

    def cpu_ratio(r):
        return fmt_us_per_msg(r) / fmt_us_per_msg(tokio)

    def yes(ok):
        return "met" if ok else "**not met**"

    throughput = ours["messages_per_sec"] / tokio["messages_per_sec"]
    rivals = [s for s in ("monoio", "compio") if s in pp]
    ahead = all(ours["messages_per_sec"] > pp[s]["messages_per_sec"] for s in rivals)
    rows = [
        ("ping-pong 64 B × 1000: throughput ≥ 1.3× tokio", f"{throughput:.2f}×", yes(throughput >= 1.3)),
        ("ping-pong 64 B × 1000: server CPU per message ≤ 0.75× tokio",
         f"{cpu_ratio(ours):.2f}× ({fmt_us_per_msg(ours):.2f} vs {fmt_us_per_msg(tokio):.2f} µs)",
         yes(cpu_ratio(ours) <= 0.75)),
        ("ping-pong 64 B × 1000: p99 latency no worse than tokio's",
         f"{ours['p99_us']} vs {tokio['p99_us']} µs", yes(ours["p99_us"] <= tokio["p99_us"])),
        ("ping-pong 64 B × 1000: ahead of monoio and compio",
         ", ".join(f"{ours['messages_per_sec'] / pp[s]['messages_per_sec']:.2f}× {s}" for s in rivals), yes(ahead)),
    ]
    if "uring-floor" in pp:
        floor = pp["uring-floor"]
        rows.append(("(reference) the bare io_uring loop on the same scenario",
                     f"{floor['messages_per_sec'] / tokio['messages_per_sec']:.2f}× tokio's throughput, "
                     f"CPU {cpu_ratio(floor):.2f}× tokio's", "—"))
    idle = results.get("idle", {})
    if "tokio" in idle and "overlapped" in idle:
        per = {s: (r["rss_during_kib"] - r["rss_before_kib"]) / max(r.get("connected", 1), 1) for s, r in idle.items()}
        rows.append(("10,000 idle connections: memory per connection ≤ 0.5× tokio",
                     f"{per['overlapped'] / per['tokio']:.2f}× ({per['overlapped']:.2f} vs {per['tokio']:.2f} KiB)",
                     yes(per["overlapped"] / per["tokio"] <= 0.5)))
    fan = results.get("fanout", {})
    if "tokio" in fan and "overlapped" in fan:
        ratio = fan["overlapped"]["messages_per_sec"] / fan["tokio"]["messages_per_sec"]
        rows.append(("chat fan-out to 1000 sessions: deliveries/s ≥ 2× tokio", f"{ratio:.2f}×", yes(ratio >= 2)))
    out = ["## Targets", "", "| target | this run | |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return out + [""]


def machine():
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return f"{model}, {os.cpu_count()} CPUs, {int(mem) // 1024 // 1024} GiB, Linux {platform.release()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per server per scenario (median kept)")
    parser.add_argument("--quick", action="store_true", help="fewer scenarios, for trying the script")
    parser.add_argument("--only", choices=["game", "game-db"],
                        help="run only these scenarios; the document's other sections come from docs/benchmarks.json")
    opts = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two CPUs: the server on one, the load on the other")

    subprocess.run(["cargo", "build", "--release", "-p", "overlapped-cli", "-p", "overlapped-bench-peers"],
                   cwd=ROOT, check=True)
    d = str(opts.duration)
    started = datetime.now(timezone.utc)
    if opts.only == "game-db":
        previous = DOCS / "benchmarks.json"
        results = json.loads(previous.read_text()) if previous.exists() else {"date": "?"}
        results["game_slow_db"] = slow_db_scenario()
        previous.write_text(json.dumps(results, indent=1))
        if "pingpong" in results:
            write_markdown(results, argparse.Namespace(**results.get("run_opts") or previous_run_opts(opts)))
        return
    if opts.only == "game":
        previous = DOCS / "benchmarks.json"
        if not previous.exists():
            sys.exit("--only game needs the docs/benchmarks.json of a full run")
        results = json.loads(previous.read_text())
        run_game(opts, results)
        previous.write_text(json.dumps(results, indent=1))
        write_markdown(results, argparse.Namespace(**results.get("run_opts") or previous_run_opts(opts)))
        print(f"wrote {DOCS / 'benchmarks.md'}")
        return
    results = {"pingpong": {}, "machine": machine(), "date": started.strftime("%Y-%m-%d %H:%M UTC")}

    conns_list = [1, 100, 1000, 10000] if not opts.quick else [1000]
    sizes = [64, 1024] if not opts.quick else [64]
    for size in sizes:
        for conns in conns_list:
            name = f"{conns} conns, {size} B"
            results["pingpong"][name] = scenario(
                f"ping-pong {name}", {**ECHO_SERVERS, **FLOOR},
                ["--mode", "pingpong", "--conns", str(conns), "--size", str(size), "--duration", d], opts.rounds)
    rate = 40000
    results["fixed_rate"] = scenario(
        f"fixed rate {rate} msg/s, 1000 conns, 64 B", {**ECHO_SERVERS, **FLOOR},
        ["--mode", "pingpong", "--conns", "1000", "--size", "64", "--rate", str(rate), "--duration", d], opts.rounds)
    results["idle"] = scenario(
        "10,000 idle connections", ECHO_SERVERS,
        ["--mode", "idle", "--conns", "10000", "--duration", d], 1 if opts.quick else opts.rounds,
        sample_rss=True, duration=opts.duration)
    results["run_opts"] = {"duration": opts.duration, "rounds": opts.rounds, "quick": opts.quick}
    results["fanout"] = scenario(
        "chat fan-out, 1000 sessions, one sender", CHAT_SERVERS,
        ["--mode", "fanout", "--conns", "1000", "--size", "32", "--window", "8", "--duration", d], opts.rounds)

    run_game(opts, results)

    DOCS.mkdir(exist_ok=True)
    (DOCS / "benchmarks.json").write_text(json.dumps(results, indent=1))
    (DOCS / "benchmarks.svg").write_text(svg_chart(results["pingpong"]))
    write_markdown(results, opts)
    print(f"wrote {DOCS / 'benchmarks.md'}")


def previous_run_opts(opts):
    """The options of the full run whose figures docs/benchmarks.json holds,
    from its document's first lines (for a JSON written before it kept them)."""
    import re

    found = {"duration": opts.duration, "rounds": opts.rounds, "quick": False}
    try:
        head = (DOCS / "benchmarks.md").read_text()[:2000]
    except OSError:
        return found
    match = re.search(r"`python3 bench/run\.py --duration (\S+) --rounds (\d+)( --quick)?`", head)
    if match:
        found = {"duration": float(match.group(1)), "rounds": int(match.group(2)), "quick": bool(match.group(3))}
    return found


def game_markdown(results):
    game, capacity = results.get("game"), results.get("game_capacity")
    if game is None and capacity is None:
        return []
    meta = results.get("game_meta", {})
    out = ["## Game", "",
           f"Measured {meta.get('date', results['date'])} by `{meta.get('command', 'python3 bench/run.py')}`.",
           "",
           f"`overlapped bench --mode game`: rooms of {GAME_ROOM_PLAYERS} bots, each bot sending `C_MOVE` at"
           f" {GAME_TICK_HZ} Hz and checking every frame (snapshots name only its room's players, tick numbers only",
           "go up, its own entry is a position it sent and never an older one). The server sends every player a",
           f"snapshot of its room every tick: 100 rooms × {GAME_ROOM_PLAYERS} players is"
           f" {100 * GAME_ROOM_PLAYERS * GAME_TICK_HZ:,} snapshots/s. Update age runs",
           "from a move's send to the first snapshot holding it (half a tick on average, by construction). Lateness",
           "is measured per connection without the server's clock: a snapshot of tick t arriving at a has the offset",
           "a − t/tick_hz, the connection's earliest offset counts as on time, and each snapshot is late by its",
           "offset minus that one. Lost = gaps in the tick numbers. The bots join room i % rooms in waves of 100, so",
           "every room is created within the first wave: rooms that tick on their own timers tick nearly in phase.",
           "Baseline (`tokio`): `bench/peers`' tokio-game-fair, the tokio server an expert would write for one core —",
           "a current-thread runtime with a `LocalSet` (no lock, no atomic), rooms ticking on 16 phases of the period,",
           "a move stored in a `Cell` the tick reads, each snapshot written with `try_write` from the tick. `tokio-mpsc`",
           "is the first peer (a multi-thread runtime of one worker, an mpsc message per move, every room's interval",
           "started in the first wave). CPU µs/snapshot = server CPU over the run / snapshots delivered; wake-ups/s =",
           "the server's threads' voluntary context switches a second over the run. `uring-game-floor` is the floor:",
           "a bare io_uring loop at the same rate (one thread, one ring, a multishot receive per connection, each",
           "room's snapshot encoded once and sent to its players from that buffer, 16 phases, the same minimum wait);",
           "no server on this kernel can spend much less per snapshot.", ""]
    if game:
        base = game.get("tokio", {}).get("cpu_us_per_snapshot")
        out += [f"### 100 rooms × {GAME_ROOM_PLAYERS} players, {GAME_TICK_HZ} Hz", "",
                "| server | snapshots/s | entries/s | update age p50 ms | p99 ms | lateness p50 ms | p99 ms | max ms "
                "| lost | errors | CPU s | CPU µs/snapshot | CPU × tokio | wake-ups/s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for server, r in game.items():
            cpu = r.get("cpu_us_per_snapshot", float("nan"))
            ratio = cpu / base if base else float("nan")
            ms = lambda key: f"{r[key] / 1000:.2f}" if key in r else "?"
            out.append(f"| {server} | {r.get('messages_per_sec', 0):,.0f} | {r.get('entries_per_sec', 0):,.0f} "
                       f"| {ms('update_age_p50_us')} | {ms('update_age_p99_us')} | {ms('lateness_p50_us')} "
                       f"| {ms('lateness_p99_us')} | {ms('lateness_max_us')} | {r.get('lost', '?')} "
                       f"| {r.get('errors', '?')} | {r.get('server_cpu_s', 0):.2f} | {cpu:.2f} | {ratio:.2f} "
                       f"| {r.get('server_wakeups_per_sec', '?')} |")
        ours = game.get("overlapped", {})
        if "server_ticks_within_2ms" in ours:
            out += ["", f"The server's own tick lateness (overlapped's `/metrics` histogram, read over"
                    f" 40% of the measured period, after the joins): {ours['server_ticks_within_2ms'] * 100:.1f}% of"
                    f" {ours['server_ticks']:,} ticks within 2 ms of their slot; p50 in the bucket up to"
                    f" {ours['server_tick_lateness_p50_us']} µs, p99 in the bucket up to"
                    f" {ours['server_tick_lateness_p99_us']} µs (None: past 100 ms)."]
        for server, r in game.items():
            for what in r.get("first_errors", [])[:3]:
                out.append(f"\n{server}: {what}")
            if r.get("failure"):
                out.append(f"\n{server} failed: {' '.join(r['failure'])}")
        out.append("")
    if capacity:
        out += ["### Capacity on one core", "",
                f"The most players (rooms of {GAME_ROOM_PLAYERS}) a server carries at {GAME_TICK_HZ} Hz, pinned to one"
                f" core: lateness p99 ≤ {CAPACITY_LATENESS_P99_US / 1000:g} ms, no snapshot lost, no error, every bot",
                "joined, every bot's snapshots delivered (to two ticks, the ends of the period), and the server below"
                f" {CAPACITY_MAX_CPU_SHARE:.0%} of its core; a count that fails is run once more and passes if either",
                f"run does (anything else on the machine only adds lateness). Player counts double from {CAPACITY_START_PLAYERS} until one fails, then are bisected to a"
                f" room; probes run {min(results.get('run_opts', {}).get('duration', 3.0), 3.0):g} s each (at most"
                f" {CAPACITY_MAX_PLAYERS:,} players, {CAPACITY_BUDGET_S} s per server).", "",
                "| server | players carried | × tokio | first failing count | lateness p99 at the count carried, ms | probes |",
                "|---|---:|---:|---:|---:|---|"]
        base = capacity.get("tokio", {}).get("players")
        for server, c in capacity.items():
            carried = [p for p in c["probes"] if p["ok"] and p["players"] == c["players"]]
            late = f"{carried[-1]['lateness_p99_us'] / 1000:.2f}" if carried else "—"
            ratio = f"{c['players'] / base:.2f}" if base else "—"
            failing = f"{c['first_failure']:,}" if c.get("first_failure") else "none"
            if not c.get("resolved", True):
                failing += " (search stopped at its time limit)"
            probes = ", ".join(f"{p['players']} {'✓' if p['ok'] else '✗'}" for p in c["probes"])
            out.append(f"| {server} | {c['players']:,} | {ratio} | {failing} | {late} | {probes} |")
        out.append("")
    slow = results.get("game_slow_db")
    if slow:
        out += ["", f"### 100 rooms × {GAME_ROOM_PLAYERS} players with a database of {slow['db_delay_ms']} ms a call", "",
                f"Measured {slow.get('date', '?')} by `python3 bench/run.py --only game-db` (20 s; the server's own",
                "histogram over 8 s after the joins). Every load and save of the game's store takes that long more",
                "(`--db-delay-ms`); they run on the",
                "service's blocking threads, batched, so the workers never wait for them.", "",
                "| server tick lateness p50 | p99 | ticks within 2 ms | snapshots/s | lost | errors |",
                "|---:|---:|---:|---:|---:|---:|",
                f"| ≤ {slow.get('server_tick_lateness_p50_us')} µs | ≤ {slow.get('server_tick_lateness_p99_us')} µs "
                f"| {slow.get('server_ticks_within_2ms', 0):.1%} | {slow.get('messages_per_sec', 0):,.0f} "
                f"| {slow.get('lost')} | {slow.get('errors')} |"]
    return out


def write_markdown(results, opts):
    out = [
        "# Benchmarks",
        "",
        f"Measured {results['date']} on {results['machine']}, by `python3 bench/run.py"
        f" --duration {opts.duration} --rounds {opts.rounds}{' --quick' if opts.quick else ''}`.",
        "",
        "Every server is pinned to CPU 0 (`taskset -c 0`) and the load generator, `overlapped bench`, to CPU 1.",
        "Servers take turns within each scenario (the order rotates every round) and the median round is kept.",
        "Server CPU is utime + stime from `/proc/PID/stat` over the run; CPU µs/msg divides it by the messages.",
        "The peers are the servers a user would write (`bench/peers/`): tokio multi-thread runtime with a task per",
        "connection and a 4 KiB buffer, and the same with monoio and compio. `overlapped` runs",
        "`server --model port --mode echo --threads 1` (chat: `--mode chat`). `uring-floor` is a reference, not a",
        "contender: a bare io_uring loop with no runtime, no allocation and no copy",
        "(`bench/peers/src/bin/uring-floor.rs`), about the least CPU an io_uring echo server spends per message here;",
        "what it spends is nearly all the kernel's TCP work. Every program builds with the workspace's release profile",
        "(fat LTO, one codegen unit).",
        "",
        "What each optimisation bought, measured while making it: [performance-log.md](performance-log.md).",
        "",
        "![ping-pong throughput](benchmarks.svg)",
        "",
        *targets(results),
        "## Ping-pong",
        "",
        "Each connection sends a message, waits for its echo, checks every byte, and sends the next.",
        "",
    ]
    for name, res in results["pingpong"].items():
        out += [f"### {name}", "", table(res), ""]
    out += ["## Fixed offered load", "",
            "1000 connections, 64 B, 40,000 msg/s in total for every server: CPU per message at equal work.",
            "Latency is measured from each message's scheduled send time.", "",
            table(results["fixed_rate"]), ""]
    out += ["## 10,000 idle connections", "", "| server | connected | RSS before KiB | RSS with 10k conns KiB | KiB per connection | × tokio |", "|---|---:|---:|---:|---:|---:|"]
    idle = results["idle"]
    per = {s: (r.get("rss_during_kib", 0) - r.get("rss_before_kib", 0)) / max(r.get("connected", 1), 1) for s, r in idle.items()}
    for s, r in idle.items():
        ratio = per[s] / per["tokio"] if per.get("tokio") else float("nan")
        out.append(f"| {s} | {r.get('connected')} | {r.get('rss_before_kib')} | {r.get('rss_during_kib')} | {per[s]:.2f} | {ratio:.2f} |")
    out += ["", "## Chat fan-out", "",
            "1000 sessions in one room; one session sends 32-byte `C_CHAT` messages (8 in flight), and every `S_CHAT`",
            "that reaches any session counts as a delivery (msg/s = deliveries per second). Baseline: `bench/peers`'",
            "tokio broadcast-channel server.", "", table(results["fanout"]), ""]
    out += game_markdown(results)
    (DOCS / "benchmarks.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
