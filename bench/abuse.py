#!/usr/bin/env python3
"""Attacks on the release chat/echo server, loopback only, each bounded in
time, on each backend; prints RSS over time, the healthy client's round-trip
percentiles and who was dropped, and writes docs/abuse.json.

    python3 bench/abuse.py [--backends uring,epoll] [--only NAME] [--seconds 40]

Scenarios (issue #17):
  flood-200         200 clients that never read, one flooding 5-byte C_CHATs,
                    one healthy client (a round trip every 50 ms), one reading
                    as fast as it can; then everyone leaves (defaults)
  flood-200-norate  the same with --max-chat-rate 0 (the flood is not
                    refused: the send queues and the memory budget hold it)
  flood-2000        2000 non-readers, the flooder unlimited, --max-memory 256M
  half-close        20 echoes of 1 MiB ended by shutdown(SHUT_WR), 20 chats
                    ended the same way: every byte must come back
  one-address       5000 idle connections from 127.0.0.1, then one from
                    127.0.0.2: it must get in
  partial-frames    15,000 clients each sending a maximum-size frame less one
                    byte (--max-packet 65535): RSS while they wait, and after
  metrics-flood     (issue #23) a game of 50 rooms x 20 bots with
                    --metrics-addr, whose endpoint takes 9,900 idle
                    connections, 200 slowloris heads (a byte a second) and
                    20 requests with a 1 MiB header, while an honest scrape
                    runs every 100 ms: threads, descriptors, RSS during and
                    after, scrape latency, ticks the game lost
"""

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "overlapped"
C_CHAT, S_CHAT, S_WELCOME, C_PING, S_PONG = 1, 2, 3, 4, 5


def frame(kind, payload=b""):
    return struct.pack("<HH", len(payload) + 4, kind) + payload


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_frame(sock):
    size, kind = struct.unpack("<HH", read_exact(sock, 4))
    return kind, read_exact(sock, size - 4)


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    def __init__(self, backend, args):
        self.port = free_port()
        env = {**os.environ, "OVERLAPPED_BACKEND": backend, "OVERLAPPED_LOG": "info"}
        self.proc = subprocess.Popen(
            [str(BINARY), "server", "--addr", f"127.0.0.1:{self.port}", "--model", "port"] + args,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=raise_fd_limit)
        self.lines = []
        threading.Thread(target=self._read_log, daemon=True).start()
        deadline = time.time() + 30
        while not any("listening on" in l for l in self.lines):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the server did not start: " + "".join(self.lines[-5:]))
            time.sleep(0.05)

    def _read_log(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def addr(self):
        return ("127.0.0.1", self.port)

    def dropped(self, needle):
        return [l.strip() for l in self.lines if "disconnected" in l and needle in l]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def join(addr, local="127.0.0.1", rcvbuf=None):
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((local, 0))
    sock.settimeout(10)
    sock.connect(addr)
    kind, payload = read_frame(sock)
    assert kind == S_WELCOME, kind
    return sock, struct.unpack("<Q", payload)[0]


def percentile(samples, p):
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def flood(backend, non_readers, seconds, extra):
    server = Server(backend, ["--mode", "chat", "--max-sessions-per-ip", "0"] + extra)
    baseline = rss_mib(server.proc.pid)
    # Each says hello once (a ping: the server drops a client that never
    # speaks), then never reads again.
    hoarders = [join(server.addr(), rcvbuf=4096)[0] for _ in range(non_readers)]
    for sock in hoarders:
        sock.sendall(frame(C_PING))
    healthy, healthy_id = join(server.addr())
    reader, _ = join(server.addr())
    reader.sendall(frame(C_PING))
    flooder, _ = join(server.addr())
    stop = threading.Event()
    rtts, events = [], {"healthy_dropped": False, "reader_dropped": False, "reader_bytes": 0}

    def keep_healthy():
        try:
            while not stop.is_set():
                started = time.monotonic()
                healthy.sendall(frame(C_CHAT, b"ping"))
                while True:
                    kind, payload = read_frame(healthy)
                    if kind == S_CHAT and payload[:8] == struct.pack("<Q", healthy_id):
                        break
                rtts.append((time.monotonic() - started) * 1000)
                time.sleep(0.05)
        except (OSError, ConnectionError):
            events["healthy_dropped"] = True

    def read_fast():
        while not stop.is_set():
            try:
                chunk = reader.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                events["reader_dropped"] = True
                return
            if not chunk:
                events["reader_dropped"] = True
                return
            events["reader_bytes"] += len(chunk)

    def flood_chat():
        burst = frame(C_CHAT, b"x") * 4096
        try:
            while not stop.is_set():
                flooder.sendall(burst)
        except OSError:
            pass

    def drain_flooder():
        # The flooder reads its own echoes, so that nothing slows it down
        # but the server.
        flooder.settimeout(1)
        while not stop.is_set():
            try:
                if not flooder.recv(1 << 20):
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    reader.settimeout(1)
    threads = [threading.Thread(target=f, daemon=True)
               for f in (keep_healthy, read_fast, flood_chat, drain_flooder)]
    for t in threads:
        t.start()
    samples, started = [], time.monotonic()
    while time.monotonic() - started < seconds:
        samples.append(round(rss_mib(server.proc.pid), 1))
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    for sock in hoarders + [healthy, reader, flooder]:
        sock.close()
    after = []
    for _ in range(20):
        time.sleep(0.5)
        after.append(round(rss_mib(server.proc.pid), 1))
    result = {
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_mib": max(samples),
        "rss_over_time_mib": samples,
        "rss_10s_after_mib": after[-1],
        "healthy_round_trips": len(rtts),
        "healthy_p50_ms": percentile(rtts, 50),
        "healthy_p99_ms": percentile(rtts, 99),
        "healthy_dropped": events["healthy_dropped"],
        "fast_reader_dropped": events["reader_dropped"],
        "fast_reader_mib": round(events["reader_bytes"] / 2**20, 1),
        "flooder_dropped_for": [l.split("disconnected: ", 1)[1] for l in server.dropped("chat flood")][:1],
        "shed_by_budget": len(server.dropped("memory budget")),
        "dropped_send_queue_full": len(server.dropped("send queue full")),
    }
    server.stop()
    return result


def half_close(backend):
    echo = Server(backend, ["--mode", "echo", "--max-sessions-per-ip", "0"])
    complete = 0
    data = bytes(i % 253 for i in range(1 << 20))
    for _ in range(20):
        sock = socket.create_connection(echo.addr(), timeout=20)
        sender = threading.Thread(target=lambda s=sock: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        sender.join()
        sock.close()
        complete += bytes(got) == data
    echo.stop()
    chat = Server(backend, ["--mode", "chat"])
    own_lines = 0
    for _ in range(20):
        sock, me = join(chat.addr())
        sock.sendall(frame(C_CHAT, b"last words"))
        sock.shutdown(socket.SHUT_WR)
        try:
            # An earlier round's line may come first; ours must come.
            while True:
                kind, payload = read_frame(sock)
                if kind == S_CHAT and payload[:8] == struct.pack("<Q", me):
                    own_lines += 1
                    break
        except (OSError, ConnectionError):
            pass
        sock.close()
    chat.stop()
    return {"echoes_complete_of_20": complete, "own_chats_of_20": own_lines}


def one_address(backend):
    server = Server(backend, ["--mode", "chat", "--max-sessions", "5001"])
    held, refused = [], 0
    for _ in range(5000):
        try:
            held.append(socket.create_connection(server.addr(), timeout=5))
        except OSError:
            refused += 1
    time.sleep(1)
    try:
        other, _ = join(server.addr(), local="127.0.0.2")
        other.close()
        got_in = True
    except (OSError, AssertionError, ConnectionError):
        got_in = False
    limited = len(server.dropped("")) + sum("limit per address" in l for l in server.lines)
    for sock in held:
        sock.close()
    server.stop()
    return {"second_address_got_in": got_in, "refused_lines_logged": limited}


def partial_frames(backend, clients):
    server = Server(backend, ["--mode", "chat", "--max-packet", "65535", "--max-sessions-per-ip", "0",
                              "--handshake-timeout-ms", "0"])
    baseline = rss_mib(server.proc.pid)
    partial = frame(C_CHAT, b"a" * (65535 - 4))[:-1]
    socks = []
    for _ in range(clients):
        try:
            sock = socket.create_connection(server.addr(), timeout=5)
            sock.sendall(partial)
            socks.append(sock)
        except OSError:
            break
    time.sleep(3)
    during = rss_mib(server.proc.pid)
    for sock in socks:
        sock.close()
    time.sleep(10)
    after = rss_mib(server.proc.pid)
    server.stop()
    return {"clients": len(socks), "baseline_rss_mib": round(baseline, 1),
            "rss_while_waiting_mib": round(during, 1),
            "kib_per_client": round((during - baseline) * 1024 / max(1, len(socks)), 1),
            "rss_10s_after_mib": round(after, 1)}


def http_get(addr, path="/metrics", timeout=10):
    """Status and seconds taken of one GET, or (None, seconds) on failure."""
    started = time.time()
    try:
        with socket.create_connection(addr, timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: scrape\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        status = int(data.split(b" ", 2)[1])
        return status, time.time() - started, data
    except (OSError, ValueError, IndexError):
        return None, time.time() - started, b""


def metric_value(body, name):
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def proc_count(pid, what):
    if what == "fds":
        return len(os.listdir(f"/proc/{pid}/fd"))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def metrics_flood(backend, seconds):
    metrics_port = free_port()
    metrics = ("127.0.0.1", metrics_port)
    server = Server(backend, ["--mode", "game", "--metrics-addr", f"127.0.0.1:{metrics_port}"])
    pid = server.proc.pid
    baseline = {"rss_mib": round(rss_mib(pid), 1), "threads": proc_count(pid, "threads"),
                "fds": proc_count(pid, "fds")}
    bench = subprocess.Popen(
        [str(BINARY), "bench", "--mode", "game", "--addr", f"127.0.0.1:{server.port}",
         "--rooms", "50", "--players", "20", "--duration", str(seconds), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # The bots join first; the attack comes once they play.
    time.sleep(5)
    playing = {"rss_mib": round(rss_mib(pid), 1), "threads": proc_count(pid, "threads"),
               "fds": proc_count(pid, "fds")}
    _, _, body = http_get(metrics)
    skipped_before = metric_value(body, "overlapped_ticks_skipped_total") or 0
    stop = threading.Event()
    peak = {"rss_mib": 0.0, "threads": 0, "fds": 0}

    def watch():
        while not stop.is_set():
            peak["rss_mib"] = max(peak["rss_mib"], rss_mib(pid))
            peak["threads"] = max(peak["threads"], proc_count(pid, "threads"))
            peak["fds"] = max(peak["fds"], proc_count(pid, "fds"))
            time.sleep(0.1)

    latencies, failures = [], 0

    def scrape():
        nonlocal failures
        while not stop.is_set():
            status, took, _ = http_get(metrics)
            if status == 200:
                latencies.append(took)
            else:
                failures += 1
            time.sleep(0.1)

    idle, slow = [], []

    def hold_idle():
        for _ in range(9900):
            if stop.is_set():
                return
            try:
                idle.append(socket.create_connection(metrics, timeout=5))
            except OSError:
                time.sleep(0.01)

    def slowloris():
        for _ in range(200):
            try:
                sock = socket.create_connection(metrics, timeout=5)
                sock.setblocking(False)
                slow.append(sock)
            except OSError:
                pass
        while not stop.is_set():
            for sock in slow:
                try:
                    sock.send(b"G")
                except OSError:
                    pass
            time.sleep(1)

    def big_headers():
        head = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * (1 << 20) + b"\r\n\r\n"
        for _ in range(20):
            try:
                with socket.create_connection(metrics, timeout=10) as sock:
                    sock.sendall(head)
                    sock.recv(4096)
            except OSError:
                pass

    threads = [threading.Thread(target=t, daemon=True)
               for t in (watch, scrape, hold_idle, slowloris, big_headers)]
    for t in threads:
        t.start()
    time.sleep(max(5, seconds - 20))
    stop.set()
    for t in threads:
        t.join(timeout=30)
    for sock in idle + slow:
        sock.close()
    # The game still plays, and is scraped as before: what the attack left
    # behind.
    for _ in range(50):
        http_get(metrics)
        time.sleep(0.1)
    after = {"rss_mib": round(rss_mib(pid), 1), "threads": proc_count(pid, "threads"),
             "fds": proc_count(pid, "fds")}
    out, _ = bench.communicate(timeout=seconds + 120)
    game = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    _, _, body = http_get(metrics)
    skipped_after = metric_value(body, "overlapped_ticks_skipped_total") or 0
    summaries = sum("more like the next were not logged" in l for l in server.lines)
    server.stop()
    latencies.sort()
    return {
        "idle_server": baseline, "game_playing": playing,
        "peak_under_attack": {**peak, "rss_mib": round(peak["rss_mib"], 1)},
        "5s_after_attack": after,
        "idle_opened": len(idle), "slowloris": len(slow),
        "honest_scrapes": len(latencies), "honest_failures": failures,
        "honest_p99_ms": round(percentile(latencies, 99) * 1000, 2) if latencies else None,
        "honest_max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "game_ticks_skipped": skipped_after - skipped_before,
        "game_lost_snapshots": game.get("lost"), "game_errors": game.get("errors"),
        "game_lateness_p99_us": game.get("lateness_p99_us"),
        "log_summaries": summaries,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="uring,epoll")
    parser.add_argument("--only", default=None)
    parser.add_argument("--seconds", type=float, default=40)
    opts = parser.parse_args()
    raise_fd_limit()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "overlapped-cli"], cwd=ROOT, check=True)
    scenarios = {
        "flood-200": lambda b: flood(b, 200, opts.seconds, []),
        "flood-200-norate": lambda b: flood(b, 200, opts.seconds, ["--max-chat-rate", "0"]),
        "flood-2000": lambda b: flood(b, 2000, opts.seconds, ["--max-chat-rate", "0", "--max-memory", "256M"]),
        "half-close": half_close,
        "one-address": one_address,
        "partial-frames": lambda b: partial_frames(b, 15000),
        "metrics-flood": lambda b: metrics_flood(b, opts.seconds),
    }
    results = {}
    for backend in opts.backends.split(","):
        for name, run in scenarios.items():
            if opts.only and opts.only != name:
                continue
            print(f"== {backend} {name}", flush=True)
            result = run(backend)
            results.setdefault(backend, {})[name] = result
            print(json.dumps(result), flush=True)
    out = ROOT / "docs" / ("abuse.json" if not opts.only else f"abuse-{opts.only}.json")
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
