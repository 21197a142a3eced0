"""The processes the benchmark runs: a target (the C reflector or applianced's tree) and gen."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.env import (
    APP_IP,
    APP_NS,
    FIREWALL,
    GEN_IP,
    GEN_NS,
    GENEVE_PORT,
    HEALTH_PORT,
    LATENCY_RATE,
    MIX,
    PRODUCT,
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    BenchError,
    cpu_shares,
    cpu_times,
    in_ns,
)

# ---------------------------------------------------------------- processes


class Target:
    """A reflector running in the appliance namespace, pinned to one CPU (or to a `taskset -c`
    list such as "0,1")."""

    def __init__(
        self, name: str, argv: list[str], cpu: int | str, logs: Path, label: str = ""
    ) -> None:
        """`label`: added to the log file's name, for a second run of the same target."""
        self.name = name
        self.argv = argv
        self.roles: dict[int, str] = {}
        self.descendants: dict[int, int] = {}  # PID -> start time, every one seen
        # The firewall case's next connection number: its flow table has seen every one below.
        self.next_conn = 0
        self.log = logs / f"{(name + (' ' + label if label else '')).replace(' ', '_')}.log"
        self.log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            in_ns(APP_NS, ["taskset", "-c", str(cpu), *argv]),
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us; we stop it ourselves
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        """Until something in its namespace listens on UDP 6081 (`ip netns exec` and `taskset`
        exec in place, so the PID is the target's own and /proc/PID/net is its namespace)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        port = f"{GENEVE_PORT:04X}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                lines = Path(f"/proc/{self.pid}/net/udp").read_text().splitlines()[1:]
            except OSError:
                lines = []
            if any(line.split()[1].rpartition(":")[2] == port for line in lines if line.strip()):
                return
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not bind UDP {GENEVE_PORT} in {READY_TIMEOUT_S} s")

    def tree(self) -> list[int]:
        """The target's PID and its descendants' (applianced forks workers, spawns gunicorn),
        parents first. Each descendant is remembered with its start time, for `stop`."""
        children: dict[int, list[int]] = {}
        started: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    ppid, start = int(fields[1]), int(fields[19])  # proc(5) fields 4 and 22
                except (OSError, IndexError, ValueError):
                    continue  # gone meanwhile
                children.setdefault(ppid, []).append(int(entry.name))
                started[int(entry.name)] = start
        out: list[int] = []
        todo = [self.pid]
        while todo and len(out) < 1000:
            pid = todo.pop(0)
            out.append(pid)
            todo += sorted(children.get(pid, []))
        for pid in out[1:]:
            if pid in started:
                self.descendants[pid] = started[pid]
        return out

    def cpu(self) -> dict[int, tuple[int, int, int]]:
        """Per process of the tree: (utime, stime) in clock ticks from /proc/PID/stat (all its
        threads), and the sum_exec_runtime in ns of its live threads (-1 without schedstats)."""
        out = {}
        for pid in self.tree():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                ns = _threads_runtime_ns(pid)
            except OSError:
                continue  # exited meanwhile
            fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state) of proc(5)
            out[pid] = (int(fields[11]), int(fields[12]), ns)  # fields 14 (utime), 15 (stime)
            self.roles[pid] = self.role(pid)  # a worker retitles itself after the fork
        return out

    def role(self, pid: int) -> str:
        """What a process of the tree is: the reflector, or applianced's supervisor, a worker or
        the health service (gunicorn's master and worker)."""
        if pid == self.pid:
            return "supervisor" if self.name.startswith(PRODUCT) else "reflector"
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return "other"
        if title.startswith("applianced: worker"):
            return "worker"
        if "gunicorn" in title or "applianced: health" in title:
            return "health"
        return "other"

    def describe(self) -> list[str]:
        """`PID name (CPUs n)` for each process of the tree."""
        out = []
        for pid in self.tree():
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            cpus = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M)
            out.append(
                f"{pid} {Path(title).name if '/' in title else title} "
                f"(CPUs {cpus.group(1) if cpus else '?'})"
            )
        return out

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM by PID, then SIGKILL if it lingers; then the same for any descendant still
        running (applianced's health service deliberately outlives a supervisor that was killed);
        return the target's exit code."""
        if self.proc.poll() is None:
            self.tree()  # the descendants as they are now
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        for pid, start in sorted(self.descendants.items()):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not _same_process(pid, start):
                    break
                print(f"cleanup: {sig.name} to {pid}, left by {self.name}", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while _same_process(pid, start) and time.monotonic() < deadline:
                    time.sleep(0.05)
        self.descendants.clear()
        self.log_file.close()
        return self.proc.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _threads_runtime_ns(pid: int) -> int:
    """The CPU time of a process's live threads, ns, from /proc/PID/task/TID/schedstat (-1 without
    schedstats). /proc/PID/schedstat alone is the main thread's: it would miss the request threads
    of the health service (gunicorn gthread). A thread that ended meanwhile is left out."""
    total, seen = 0, False
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
            seen = True
        except FileNotFoundError:
            continue  # ended meanwhile
        except (OSError, ValueError, IndexError):
            return -1
    return total if seen else -1


def _same_process(pid: int, start: int) -> bool:
    """PID still runs the process that started at `start` (not a zombie, not a reused PID)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[19]) == start


def machine_noise(gen: str, cpus: tuple[int, int], seconds: float) -> dict[str, Any]:
    """Before any load: how busy each CPU already is, and how late 100 us sleeps wake up on it
    (a VM's vCPU wake-ups bound every latency measured here; its hiccups make the p99)."""
    before = cpu_times()
    time.sleep(0.5)
    after = cpu_times()
    out: dict[str, Any] = {}
    for cpu in sorted(set(cpus)):
        share = cpu_shares(after, before, cpu)
        proc = subprocess.run(
            [
                "taskset",
                "-c",
                str(cpu),
                gen,
                "--mode",
                "jitter",
                "--seconds",
                f"{seconds:g}",
                "--rate",
                str(LATENCY_RATE),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
        if proc.returncode != 0:
            raise BenchError(f"gen --mode jitter failed: {proc.stderr.strip()}")
        out[f"cpu{cpu}"] = {"busy_pct_before": 100 - share["idle"], **json.loads(proc.stdout)}
    return out


def run_gen(
    gen: str,
    cpu: int,
    mode: str,
    payload: int,
    case: str,
    seconds: float,
    flows: int,
    max_packets: int,
    probe_rate: float = 0.0,
    *,
    rx_nap_us: int,
    first_conn: int = 0,
    pass_all: bool = False,
) -> dict[str, Any]:
    """One gen run; the firewall case's connections start at `first_conn`, and with `pass_all`
    gen expects every packet back (a pass-through target)."""
    argv = [
        gen,
        "--mode",
        mode,
        "--src",
        GEN_IP,
        "--dst",
        APP_IP,
        "--payload",
        str(payload),
        "--case",
        case,
        "--flows",
        str(flows),
        "--seconds",
        f"{seconds:g}",
        "--max-packets",
        str(max_packets),
        "--rate",
        str(LATENCY_RATE),
        "--probe-rate",
        f"{probe_rate:g}",
        "--probe-port",
        str(HEALTH_PORT),
        "--rx-nap-us",
        str(rx_nap_us),
    ]
    if case == FIREWALL:
        argv += ["--first-conn", str(first_conn)] + (["--pass-all"] if pass_all else [])
    proc = subprocess.run(
        in_ns(GEN_NS, ["taskset", "-c", str(cpu), *argv]),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"gen failed ({proc.returncode}): {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def gen_describe(gen: str, case: str) -> dict[str, Any]:
    """`gen --describe --case CASE`: what gen sends in that case, as its JSON says."""
    proc = subprocess.run(
        [gen, "--describe", "--case", case], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"gen --describe --case {case} failed: {proc.stderr.strip()}")
    described: dict[str, Any] = json.loads(proc.stdout)
    return described


def describe_mix(gen: str) -> dict[str, Any]:
    """What the mix holds, from gen itself: its slots, and a summary line per class."""
    slots: list[dict[str, Any]] = gen_describe(gen, MIX)["slots"]
    lines = []
    for cls in dict.fromkeys(s["class"] for s in slots):
        mine = [s for s in slots if s["class"] == cls]
        kinds: dict[str, int] = {}
        for s in mine:
            label = f"IPv{s['ip']} {s['proto'].upper()}"
            kinds[label] = kinds.get(label, 0) + 1
        ports: dict[int, int] = {}
        for s in mine:
            for port in (s["sport"], s["dport"]):
                if port:
                    ports[port] = ports.get(port, 0) + 1
        port_text = ", ".join(f"{p}" + (f" x{n}" if n > 1 else "") for p, n in ports.items())
        expect: dict[str, int] = {}
        for s in mine:
            expect[s["expect"]] = expect.get(s["expect"], 0) + 1
        extra = []
        if any(s["drop_me"] for s in mine):
            extra.append(f'{sum(s["drop_me"] for s in mine)} with "drop me"')
        mods = [s["icmp_seq_mod5"] for s in mine if s["icmp_seq_mod5"] >= 0]
        if mods:
            extra.append("echo sequence numbers mod 5: " + ",".join(str(m) for m in mods))
        lines.append(
            f"{len(mine):3} {cls:10} "
            + " + ".join(f"{n} {k}" for k, n in kinds.items())
            + (f"; ports {port_text}" if port_text else "")
            + (f"; {'; '.join(extra)}" if extra else "")
            + " -> "
            + ", ".join(f"{n} {e}" for e, n in expect.items())
        )
    answered = sum(s["expect"] != "drop" for s in slots)
    return {"slots": slots, "lines": lines, "answered": answered, "size": len(slots)}
