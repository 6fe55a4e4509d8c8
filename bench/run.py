#!/usr/bin/env python3
"""Runs every echo server (and both chat servers) through the same scenarios,
server pinned to CPU 0 and `overlapped bench` pinned to CPU 1, alternating
servers so drift hits all alike, and writes docs/benchmarks.md (+ .json, .svg).

    python3 bench/run.py [--duration 5] [--rounds 2] [--quick]
"""

import argparse
import json
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
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


def run_load(command, args, sample_rss=False, duration=5.0):
    server = Server(command)
    try:
        rss_before = rss_kib(server.proc.pid)
        user_before, sys_before = cpu_times(server.proc.pid)
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
        return report
    finally:
        server.stop()


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
    opts = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two CPUs: the server on one, the load on the other")

    subprocess.run(["cargo", "build", "--release", "-p", "overlapped-cli", "-p", "overlapped-bench-peers"],
                   cwd=ROOT, check=True)
    d = str(opts.duration)
    started = datetime.now(timezone.utc)
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
    results["fanout"] = scenario(
        "chat fan-out, 1000 sessions, one sender", CHAT_SERVERS,
        ["--mode", "fanout", "--conns", "1000", "--size", "32", "--window", "8", "--duration", d], opts.rounds)

    DOCS.mkdir(exist_ok=True)
    (DOCS / "benchmarks.json").write_text(json.dumps(results, indent=1))
    (DOCS / "benchmarks.svg").write_text(svg_chart(results["pingpong"]))
    write_markdown(results, opts)
    print(f"wrote {DOCS / 'benchmarks.md'}")


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
    (DOCS / "benchmarks.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
