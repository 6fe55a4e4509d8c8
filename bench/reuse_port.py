#!/usr/bin/env python3
"""Many server processes on one port (issue #25): two `overlapped server
--reuse-port --threads 1` processes against one `--threads 2` process, on
this machine's two cores, in alternating rounds; and how the kernel spread
the connections over the processes.

    python3 bench/reuse_port.py [--rounds 3] [--duration 8]

Each round runs the echo server(s) unpinned and `overlapped bench` (1000
connections, 64 B ping-pong as fast as it goes, then a fixed 40,000
messages/s) against them, reads every process's sessions and bytes from its
own /metrics during the run, and the processes' CPU time from
/proc/PID/stat. Writes docs/reuse-port.json. Loopback only, bounded.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "overlapped"
TICKS = os.sysconf("SC_CLK_TCK")


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid):
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def metric(addr, name):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


class Servers:
    """`processes` echo servers on one port, `threads` workers each."""

    def __init__(self, port, processes, threads, metrics_base):
        self.procs, self.metrics = [], []
        for i in range(processes):
            metrics = f"127.0.0.1:{metrics_base + i}"
            argv = [str(BINARY), "server", "--addr", f"127.0.0.1:{port}", "--model", "port",
                    "--mode", "echo", "--threads", str(threads), "--metrics-addr", metrics,
                    "--handshake-timeout-ms", "0"]
            if processes > 1:
                argv.append("--reuse-port")
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, preexec_fn=raise_fd_limit,
                                    env={**os.environ, "OVERLAPPED_LOG": "info"})
            for line in proc.stderr:
                if "listening on" in line:
                    break
            threading.Thread(target=lambda p=proc: p.stderr.read(), daemon=True).start()
            self.procs.append(proc)
            self.metrics.append(metrics)

    def cpu(self):
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=20)


def one_run(port, processes, threads, bench_args, duration, metrics_base):
    servers = Servers(port, processes, threads, metrics_base)
    try:
        cpu_before = servers.cpu()
        bench = subprocess.Popen([str(BINARY), "bench", "--addr", f"127.0.0.1:{port}", "--json",
                                  "--conns", "1000", "--size", "64", "--duration", str(duration)]
                                 + bench_args,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 preexec_fn=raise_fd_limit)
        # The connections are up within a second or two; read the spread then.
        time.sleep(2 + duration / 2)
        sessions = [metric(m, "overlapped_sessions_open") for m in servers.metrics]
        bytes_in = [metric(m, "overlapped_bytes_in_total") for m in servers.metrics]
        out, _ = bench.communicate(timeout=duration + 120)
        report = json.loads(out.strip().splitlines()[-1])
        cpu = servers.cpu() - cpu_before
    finally:
        servers.stop()
    return {
        "messages_per_sec": report["messages_per_sec"], "p99_us": report["p99_us"],
        "errors": report["errors"], "server_cpu_s": round(cpu, 2),
        "cpu_us_per_message": round(cpu * 1e6 / max(1, report["messages"]), 2),
        "sessions_per_process": sessions, "bytes_in_per_process": bytes_in,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    opts = parser.parse_args()
    raise_fd_limit()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "overlapped-cli"], cwd=ROOT, check=True)
    layouts = {"2 processes × 1 thread (--reuse-port)": (2, 1), "1 process × 2 threads": (1, 2)}
    loads = {"ping-pong": [], "fixed 40,000 msg/s": ["--rate", "40000"]}
    results = {name: {layout: [] for layout in layouts} for name in loads}
    port, metrics_base = 23000, 24000
    for round_ in range(opts.rounds):
        for load, bench_args in loads.items():
            for layout, (processes, threads) in layouts.items():
                port += 1
                metrics_base += 10
                run = one_run(port, processes, threads, bench_args, opts.duration, metrics_base)
                results[load][layout].append(run)
                print(f"round {round_ + 1}, {load}, {layout}: {json.dumps(run)}", flush=True)
    summary = {}
    for load, by_layout in results.items():
        summary[load] = {}
        for layout, runs in by_layout.items():
            summary[load][layout] = {
                "messages_per_sec_median": statistics.median(r["messages_per_sec"] for r in runs),
                "cpu_us_per_message_median": statistics.median(r["cpu_us_per_message"] for r in runs),
                "p99_us_median": statistics.median(r["p99_us"] for r in runs),
                "sessions_per_process": [r["sessions_per_process"] for r in runs],
            }
    out = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": " ".join(["python3", "bench/reuse_port.py"] + sys.argv[1:]),
           "summary": summary, "runs": results}
    (ROOT / "docs" / "reuse-port.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
