#!/usr/bin/env python3
"""Soak: N clients echo pattern-checked data through `overlapped server
--model port --mode echo` for M minutes, on each backend, and report bytes
sent, bytes verified, errors, and the server's RSS and descriptor count at
the start, every minute, and at the end. The server is stopped with SIGTERM
at the end and must exit 0.

    python3 bench/soak.py [--clients 1000] [--minutes 10] [--backends uring,epoll]

Writes docs/soak.json and prints a Markdown summary (docs/reliability.md
quotes it).
"""

import argparse
import json
import os
import platform
import resource
import select
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release" / "overlapped"


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_server(backend, port):
    proc = subprocess.Popen(
        [str(RELEASE), "server", "--addr", f"127.0.0.1:{port}", "--model", "port", "--mode", "echo",
         "--max-sessions-per-ip", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=raise_fd_limit,
        env={**os.environ, "OVERLAPPED_BACKEND": backend, "OVERLAPPED_LOG": "warn,overlapped=info"},
    )
    log = []
    listening = threading.Event()

    def read_log():
        for line in proc.stderr:
            if "listening on" in line:
                listening.set()
            elif "connected" not in line:
                log.append(line.rstrip())

    threading.Thread(target=read_log, daemon=True).start()
    if not listening.wait(30):
        proc.kill()
        raise RuntimeError(f"server on {backend} did not start: {log}")
    return proc, log


def soak(backend, clients, minutes, port):
    server, log = start_server(backend, port)
    seconds = minutes * 60
    bench = subprocess.Popen(
        [str(RELEASE), "bench", "--addr", f"127.0.0.1:{port}", "--conns", str(clients), "--size", "1024",
         "--mode", "pingpong", "--duration", str(seconds), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=raise_fd_limit,
    )
    samples = []
    started = time.time()
    # The first sample once every client is connected and echoing.
    time.sleep(10)
    while bench.poll() is None:
        samples.append({
            "t": round(time.time() - started),
            "rss_kib": rss_kib(server.pid),
            "fds": fd_count(server.pid),
        })
        remaining = seconds - (time.time() - started)
        time.sleep(max(1, min(60, remaining - 5)) if remaining > 10 else 5)
    out, err = bench.communicate()
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"failure": err}
    server.terminate()
    try:
        exit_code = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        exit_code = "killed"
    return {
        "backend": backend,
        "clients": clients,
        "minutes": minutes,
        "report": report,
        "samples": samples,
        "server_exit": exit_code,
        "server_log": log[-20:],
    }


def summary(results):
    lines = [
        "| backend | clients | minutes | bytes sent | bytes verified | unanswered | errors | mismatches "
        "| RSS start → end (KiB) | fds start → end | exit on SIGTERM |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rep, s = r["report"], r["samples"]
        first, last = (s[0], s[-1]) if s else ({}, {})
        lines.append(
            f"| {r['backend']} | {r['clients']} | {r['minutes']} | {rep.get('bytes_sent', '?'):,} "
            f"| {rep.get('bytes_verified', '?'):,} | {rep.get('unanswered', '?')} | {rep.get('errors', '?')} "
            f"| {rep.get('mismatches', '?')} | {first.get('rss_kib')} → {last.get('rss_kib')} "
            f"| {first.get('fds')} → {last.get('fds')} | {r['server_exit']} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--backends", default="uring,epoll")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--bin", "overlapped"], cwd=ROOT, check=True)
    results = []
    for index, backend in enumerate(args.backends.split(",")):
        print(f"soak: {backend}, {args.clients} clients, {args.minutes} min", file=sys.stderr)
        results.append(soak(backend, args.clients, args.minutes, 23000 + index))
    record = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        "results": results,
    }
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "soak.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"Soak run {record['date']} on {record['machine']}:\n")
    print(summary(results))
    ok = all(
        r["report"].get("mismatches") == 0 and r["report"].get("errors") == 0
        and r["report"].get("unanswered") == 0 and r["server_exit"] == 0
        for r in results
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
