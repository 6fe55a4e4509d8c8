#!/usr/bin/env python3
"""Runs every shell command the README shows, as written, and fails when
one exits non-zero or reports an error.

The README's ```sh blocks are the commands; README.commands, beside it,
says how to run each (a server in the background, a client that runs
until stopped, a command CI runs elsewhere, ...). The two must list the
same commands in the same order, so neither drifts from the other.

    python3 scripts/readme_check.py            # run them all
    python3 scripts/readme_check.py --list     # only compare the two lists

Each command runs from the repository's root through `bash -c`, exactly
as the README shows it, on default flags; servers listen on their README
addresses. Bounded: every command has a time limit, and servers are
stopped by SIGTERM at the next server or at the end.
"""

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
LIST = os.path.join(ROOT, "README.commands")

# Log lines (`TIMESTAMP LEVEL message`) report trouble at WARN or ERROR,
# or when they tell of a refusal; an INFO line may quote an OS error as a
# client's reason for leaving. Any other line reports trouble with the word
# "error" (the client's `WSASend Error : N`, `overlapped: ...error...`).
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+\s+(TRACE|DEBUG|INFO|WARN|ERROR)\b")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What a server says once it accepts connections.
READY = "listening on"
# Addresses the README's servers use; they must be free before a start.
README_PORTS = [7777, 9100]


def strip_comment(line):
    """The command without a trailing `# comment` (a # after a blank,
    outside quotes)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands():
    """Every command of the README's ```sh blocks, in order."""
    commands, inside = [], False
    with open(README) as f:
        for line in f:
            fence = line.strip()
            if fence.startswith("```"):
                inside = fence == "```sh" if not inside else False
                continue
            if inside:
                command = strip_comment(line.strip())
                if command:
                    commands.append(command)
    return commands


def listed_commands():
    """(how, command) for each line of README.commands."""
    entries = []
    with open(LIST) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            how, sep, command = line.partition(" | ")
            if not sep:
                sys.exit(f"README.commands:{number}: expected 'HOW | COMMAND': {line!r}")
            entries.append((parse_how(how, number), command.strip()))
    return entries


def parse_how(text, number):
    """`run timeout=60 expect='Send Bytes'` -> {'kind': 'run', ...}."""
    words = shlex.split(text)
    how = {"kind": words[0]}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            sys.exit(f"README.commands:{number}: expected KEY=VALUE, got {word!r}")
        how[key] = value
    if how["kind"] not in ("run", "serve", "until-stopped", "ci", "skip"):
        sys.exit(f"README.commands:{number}: unknown kind {how['kind']!r}")
    if how["kind"] in ("ci", "skip") and "why" not in how:
        sys.exit(f"README.commands:{number}: say why it is not run here (why=...)")
    return how


def compare(readme, listed):
    """Fails unless both name the same commands in the same order."""
    listed_only = [c for _, c in listed]
    if readme == listed_only:
        return
    for i, (a, b) in enumerate(zip(readme + [None] * len(listed_only),
                                   listed_only + [None] * len(readme))):
        if a != b:
            sys.exit(
                f"README.md and README.commands differ at command {i + 1}:\n"
                f"  README.md:       {a!r}\n  README.commands: {b!r}\n"
                "Every ```sh command of the README needs a line in README.commands, in order."
            )


class Running:
    """A command started in its own process group, its output collected."""

    def __init__(self, command, stdin_text=None):
        self.command = command
        self.lines = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=ROOT,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        if stdin_text is not None:
            self.proc.stdin.write(stdin_text)
            self.proc.stdin.close()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if READY in line:
                self.ready.set()

    def show(self, last):
        """Prints the last `last` lines of its output."""
        for line in self.lines[-last:]:
            print(f"    | {ANSI.sub('', line)}", flush=True)

    def send(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, limit, on_timeout=signal.SIGKILL):
        """The exit status, or None if it ran past `limit` (then ended by
        `on_timeout`, as Ctrl-C would, or killed)."""
        try:
            code = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.send(on_timeout)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
                self.proc.wait()
            self.reader.join(timeout=10)
            return None
        self.reader.join(timeout=10)
        return code

    def output(self):
        return "\n".join(self.lines)


def is_trouble(line):
    line = ANSI.sub("", line).strip()
    log = LOG_LINE.match(line)
    if log:
        return log.group(1) in ("WARN", "ERROR") or " refused " in line
    return re.search(r"(?i)\berror\b", line) is not None and not expected_noise(line)


def trouble(running, how):
    """What is wrong with a finished command's output, if anything."""
    problems = [l for l in running.lines if is_trouble(l)]
    if problems:
        return "it reported trouble:\n      " + "\n      ".join(problems[:10])
    expect = how.get("expect")
    if expect and expect not in running.output():
        return f"its output lacks {expect!r}"
    return None


def expected_noise(line):
    """Lines of the build that carry our trouble words but are not ours."""
    return line.lstrip().startswith(("Compiling", "Finished", "Running", "Building"))


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Check:
    def __init__(self):
        self.server = None
        self.failures = []

    def fail(self, command, why, running=None):
        if running:
            running.show(40)
        print(f"  FAILED: {command!r}: {why}", flush=True)
        self.failures.append(f"{command}\n    {why}")

    def stop_server(self):
        server, self.server = self.server, None
        if server is None:
            return
        running, how = server
        print(f"  stopping {running.command!r} (SIGTERM)", flush=True)
        running.send(signal.SIGTERM)
        code = running.wait(float(how.get("timeout", 60)))
        if code != 0:
            self.fail(running.command, f"the server exited with {code} on SIGTERM", running)
        elif (why := trouble(running, how)):
            self.fail(running.command, why, running)
        else:
            running.show(3)

    def run(self, how, command):
        kind = how["kind"]
        print(f"\n$ {command}    [{kind}]", flush=True)
        if kind in ("ci", "skip"):
            print(f"  not run here: {how['why']}", flush=True)
            return
        if kind == "serve":
            self.serve(how, command)
            return
        running = Running(command, how.get("stdin", "").replace("\\n", "\n") if "stdin" in how else None)
        if kind == "until-stopped":
            seconds = float(how.get("for", 3))
            code = running.wait(seconds, on_timeout=signal.SIGINT)
            if code is not None:
                self.fail(command, f"it ended with {code} before it was stopped", running)
                return
        else:
            code = running.wait(float(how.get("timeout", 300)))
            if code != 0:
                why = "it did not finish in time" if code is None else f"it exited with {code}"
                self.fail(command, why, running)
                return
        if (why := trouble(running, how)):
            self.fail(command, why, running)
        else:
            running.show(8)

    def serve(self, how, command):
        self.stop_server()
        busy = [p for p in README_PORTS if not port_free(p)]
        if busy:
            self.fail(command, f"127.0.0.1 ports {busy} are taken before the start")
            return
        running = Running(command)
        # A server built by `cargo run` compiles first.
        if not running.ready.wait(float(how.get("start", 900))):
            code = running.proc.poll()
            running.send(signal.SIGKILL)
            self.fail(command, f"it never said {READY!r} (exit {code})", running)
            return
        self.server = (running, how)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="only compare the two lists")
    args = parser.parse_args()
    listed = listed_commands()
    compare(readme_commands(), listed)
    print(f"README.md and README.commands agree: {len(listed)} commands")
    if args.list:
        return
    check = Check()
    try:
        for how, command in listed:
            check.run(how, command)
        check.stop_server()
    finally:
        if check.server:
            check.server[0].send(signal.SIGKILL)
    if check.failures:
        print(f"\n{len(check.failures)} README commands failed:")
        for failure in check.failures:
            print(f"  {failure}")
        sys.exit(1)
    print("\nevery README command did what the README says")


if __name__ == "__main__":
    main()
