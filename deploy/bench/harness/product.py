"""applianced as an operator drives it, for soak.py and chaos.py: its config file, `appliancectl`,
the health endpoint, and its processes by role.

Only the operator interface is used (the config file, `appliancectl --json`, signals, HTTP on the
health port, /proc): nothing here imports the product, so these tools keep working while its
insides change.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import re
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.env import GEN_IP, REPO, BenchError
from harness.targets import Target

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
T = TypeVar("T")

# ---------------------------------------------------------------- the config file


def _set_key(lines: list[str], section: str, key: str, value: str) -> list[str]:
    """`key = value` in `[section]`: any line setting it there is replaced (commented-out examples
    stay), the section is appended when the file has none."""
    out: list[str] = []
    current, placed = "", False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.split("#", 1)[0].strip()
            out.append(line)
            if current == f"[{section}]" and not placed:
                out.append(f"{key} = {value}")
                placed = True
            continue
        if current == f"[{section}]" and re.match(rf"{re.escape(key)}\s*=", stripped):
            continue  # replaced by the line placed under the header
        out.append(line)
    if not placed:
        out += ["", f"[{section}]", f"{key} = {value}"]
    return out


def config_text(runtime: Path, extra: str = "", *, health: bool = True) -> str:
    """The shipped default config (the demo policy) with `[runtime] dir` set, the allow-list a
    fleet has (only the generator may send), and `extra` (more rules, or deliberate errors)
    appended."""
    lines = (REPO / "config" / "default.toml").read_text(encoding="utf-8").splitlines()
    lines = _set_key(lines, "runtime", "dir", json.dumps(str(runtime)))
    lines = _set_key(lines, "dataplane", "allow_sources", f'["{GEN_IP}/32"]')
    if not health:
        lines = _set_key(lines, "health", "enabled", "false")
    return "\n".join(lines) + "\n" + extra


def write_config(path: Path, text: str, *, check: bool = True) -> None:
    """Write the config the way an operator's tooling should: whole, then renamed into place, so
    a reload never reads half a file. `check`: it must parse and say what we set."""
    if check:
        parsed = tomllib.loads(text)
        if parsed["dataplane"]["allow_sources"] != [f"{GEN_IP}/32"]:
            raise BenchError("could not set dataplane.allow_sources in the config copy")
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def drop_rule(name: str, port: int) -> str:
    """A harmless rule (no packet of the mix goes to `port`) that drops UDP to `port`."""
    return (
        f'\n[[policy.rules]]\nname = "{name}"\naction = "drop"\n'
        f'match = {{ protocol = "udp", port = {port} }}\n'
    )


# ---------------------------------------------------------------- appliancectl


@dataclass
class CtlResult:
    argv: list[str]
    code: int
    stdout: str
    stderr: str
    t0_ns: int
    t1_ns: int
    data: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": " ".join(self.argv[3:]),
            "exit": self.code,
            "stdout": self.stdout.strip()[:2000],
            "stderr": self.stderr.strip()[:2000],
            "ms": round((self.t1_ns - self.t0_ns) / 1e6, 1),
        }


class Ctl:
    """`appliancectl --socket SOCKET [--json] ...` as an operator runs it."""

    def __init__(self, appliancectl: str, socket: Path) -> None:
        self.exe = appliancectl
        self.socket = socket

    def run(self, *args: str, as_json: bool = True, timeout: float = 15.0) -> CtlResult:
        argv = [self.exe, "--socket", str(self.socket), *(["--json"] if as_json else []), *args]
        t0 = time.monotonic_ns()
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as error:
            code, out, err = -1, str(error.stdout or ""), f"timed out after {timeout:g} s"
        result = CtlResult(argv, code, out, err, t0, time.monotonic_ns())
        if as_json and out.strip():
            with contextlib.suppress(json.JSONDecodeError):
                result.data = json.loads(out)
        return result


def find_appliancectl(applianced: str) -> str:
    ctl = Path(applianced).parent / "appliancectl"
    if not ctl.exists():
        raise BenchError(f"no appliancectl next to {applianced}")
    return str(ctl)


# ---------------------------------------------------------------- inside a network namespace

_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """fn() run by a thread that first joins network namespace `ns` (setns affects only the
    calling thread; sockets it creates stay in that namespace)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            enter_netns(ns)
            box["value"] = fn()
        except BaseException as error:  # handed to the caller below
            box["error"] = error

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def enter_netns(ns: str) -> None:
    fd = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
    finally:
        os.close(fd)


def http_get(host: str, port: int, path: str, timeout: float = 1.0) -> tuple[int, Any]:
    """(status, JSON body or text) of GET http://host:port/path; call it inside a namespace."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(body)
    except json.JSONDecodeError:
        return response.status, body.decode(errors="replace")[:500]


@dataclass
class Sample:
    t0_ns: int
    t1_ns: int
    ok: bool
    status: int = 0
    data: Any = None
    error: str = ""


@dataclass
class Poller:
    """A thread polling a source every `interval` s until stopped (or `max_seconds` passed),
    keeping every answer with the moments it was asked and answered. `fetch` returns
    (status, data); an exception is a failed sample."""

    fetch: Callable[[], tuple[int, Any]]
    interval: float
    max_seconds: float
    netns: str | None = None
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=30)
        return self.samples

    def _run(self) -> None:
        if self.netns:
            enter_netns(self.netns)
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic_ns()
            try:
                status, data = self.fetch()
                self.samples.append(Sample(t0, time.monotonic_ns(), True, status, data))
            except Exception as error:  # a refused or stalled request is a sample too
                self.samples.append(Sample(t0, time.monotonic_ns(), False, error=repr(error)))
            self._stop.wait(self.interval)


def ctl_fetch(ctl: Ctl, *args: str) -> Callable[[], tuple[int, Any]]:
    def fetch() -> tuple[int, Any]:
        result = ctl.run(*args, timeout=10)
        return result.code, result.data if result.data is not None else result.stderr.strip()

    return fetch


# ---------------------------------------------------------------- its processes


def roles(target: Target) -> dict[int, str]:
    """PID -> role for applianced's tree: `supervisor`, `worker N`, `health master`,
    `health worker` (gunicorn's arbiter and its worker), or `other: NAME`."""
    out: dict[int, str] = {}
    pids = target.tree()
    for pid in pids:
        if pid == target.pid:
            out[pid] = "supervisor"
            continue
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        worker = re.match(r"applianced: worker (\d+)", title)
        if worker:
            out[pid] = f"worker {worker.group(1)}"
        elif "gunicorn" in title or "applianced: health" in title or "health.wsgi" in title:
            out[pid] = "health master" if ppid == target.pid else "health worker"
        else:
            out[pid] = f"other: {title[:40]}"
    return out


def pids_with(target: Target, prefix: str) -> list[int]:
    return [pid for pid, role in roles(target).items() if role.startswith(prefix)]


def wait_until(predicate: Callable[[], bool], seconds: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
