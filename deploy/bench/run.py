#!/usr/bin/env python3
"""The appliance benchmark, in one command: `python3 deploy/bench/run.py [--seconds 3] [--quick]`.

It compiles the C load generator (gen.c) and the C reference reflector (reflector.c), builds two
network namespaces joined by a veth pair (generator 10.77.200.1, appliance 10.77.200.2, MTU 9001),
then measures, for each target (the C reflector as the baseline, then applianced with one worker)
and each traffic case (64 and 1400 payload bytes; the traffic mix, then pass-through and rewrite
alone):
  - flood: offered and returned packets per second, loss against the replies expected, validation
    errors, and the CPU time of the target's processes (user and kernel, from /proc/PID/stat) per
    packet its socket received;
  - latency: round-trip p50/p99 at a paced 10,000 packets per second.
The headline is the mix (gen.c says what it holds), next to the generator's ceiling measured in the
same run (gen flooding a sink that never answers). applianced runs as an operator runs it
(--product-mode tree: supervisor, worker and the health service, probed over HTTP during every run)
or as the data path alone (--product-mode worker). With --health-load (tree mode) it also loads the
health service with back-to-back probes from 50 concurrent clients on loopback and measures the
probes' latency and the mix flood's rate and worker CPU with and without that load, in the same
run. The generator runs on one CPU, the target on another (taskset). Nothing here imports the
product: packets are built and checked by gen.c.
Namespaces and processes are always torn down (by name and by PID), also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PREFIX = f"bn{os.getpid()}"
GEN_NS, APP_NS = f"{PREFIX}-gen", f"{PREFIX}-app"
GEN_IF, APP_IF = "gen0", "app0"
GEN_IP, APP_IP = "10.77.200.1", "10.77.200.2"
MTU = 9001
GENEVE_PORT = 6081
LATENCY_RATE = 10_000
RX_NAP_US = [100]  # gen --rx-nap-us, set from --rx-nap-us (a list: main sets it once)
HEALTH_PORT = 80
LOOPBACK = "127.0.0.1"
HEALTH_LOAD_PAYLOAD = 64
PAYLOADS = (64, 1400)
MIX = "mix"
# The mix first (the headline), then the single cases kept from the first version of the bench.
CASES = [(64, MIX), (1400, MIX), (64, "pass"), (64, "rewrite"), (1400, "pass"), (1400, "rewrite")]
BASELINE, PRODUCT = "C reflector", "applianced"
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    pass


def sh(argv: list[str], timeout: float = 30.0) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


# ---------------------------------------------------------------- machine facts


def header_facts() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "product": product_tree(),
    }


def product_tree() -> str:
    """The commit and any uncommitted change to the product's code, so numbers name their code."""
    try:
        head = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip()
        dirty = sh(
            [
                "git",
                "-C",
                str(REPO),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "appliance",
                "config",
                "health",
                "supervisor",
            ]
        ).split("\n")
    except (BenchError, OSError):
        return "unknown (not a git checkout)"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else " (clean)")


def find_applianced(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "applianced"
    if beside.exists():
        return str(beside)
    found = shutil.which("applianced")
    if found:
        return found
    raise BenchError("applianced not found next to sys.executable nor on PATH (pip install -e .?)")


# ---------------------------------------------------------------- build


def compile_tools(work: Path) -> dict[str, str]:
    version = sh(["gcc", "--version"]).splitlines()[0]
    out = {"gcc": version}
    for name, extra in (("gen", ["-pthread"]), ("reflector", [])):
        binary = work / name
        proc = subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", *extra, "-o", str(binary), str(HERE / f"{name}.c")],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if proc.returncode != 0:
            raise BenchError(f"gcc {name}.c failed:\n{proc.stderr}")
        if proc.stderr.strip():
            print(f"warning: gcc {name}.c:\n{proc.stderr}", file=sys.stderr)
        out[name] = str(binary)
    return out


def write_config(work: Path, mode: str) -> Path:
    """The shipped default config (the demo policy) with `[runtime] dir` set to our temp dir; in
    worker mode also `[health] enabled = false` (the data path alone)."""
    runtime = work / "runtime"
    lines = (REPO / "config" / "default.toml").read_text(encoding="utf-8").splitlines()
    wanted = {("[runtime]", "dir"): f'"{runtime}"'}
    if mode == "worker":
        wanted[("[health]", "enabled")] = "false"
    section, done, out = "", set(), []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        for (where, key), value in wanted.items():
            if section == where and re.match(rf"{key}\s*=", stripped):
                line = f"{key} = {value}"
                done.add((where, key))
        out.append(line)
    for (where, key), value in wanted.items():
        if (where, key) not in done:
            out += ["", where, f"{key} = {value}"]
    text = "\n".join(out) + "\n"
    parsed = tomllib.loads(text)
    if parsed["runtime"]["dir"] != str(runtime) or (
        mode == "worker" and parsed["health"]["enabled"] is not False
    ):
        raise BenchError("could not set [runtime] dir / [health] enabled in the config copy")
    path = work / "applianced.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- namespaces


class Netns:
    """Two namespaces and a veth pair created inside them: deleting them removes everything."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def up(self) -> None:
        existing = sh(["ip", "netns", "list"])
        for ns in (GEN_NS, APP_NS):
            if re.search(rf"^{re.escape(ns)}(\s|$)", existing, re.M):
                raise BenchError(f"namespace {ns} already exists (a stale run with our PID?)")
        for ns in (GEN_NS, APP_NS):
            sh(["ip", "netns", "add", ns])
            self.created.append(ns)
            sh(
                in_ns(
                    ns,
                    [
                        "sysctl",
                        "-q",
                        "-w",
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1",
                    ],
                )
            )
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(
            [
                "ip",
                "link",
                "add",
                GEN_IF,
                "netns",
                GEN_NS,
                "mtu",
                str(MTU),
                "type",
                "veth",
                "peer",
                "name",
                APP_IF,
                "netns",
                APP_NS,
                "mtu",
                str(MTU),
            ]
        )
        for ns, dev, ip in ((GEN_NS, GEN_IF, GEN_IP), (APP_NS, APP_IF, APP_IP)):
            sh(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
        sh(
            in_ns(GEN_NS, ["ping", "-c", "1", "-W", "2", APP_IP])
            if shutil.which("ping")
            else ["true"]
        )

    def down(self) -> list[str]:
        problems = []
        for ns in reversed(self.created):
            proc = subprocess.run(
                ["ip", "netns", "del", ns], capture_output=True, text=True, check=False, timeout=30
            )
            if proc.returncode != 0:
                problems.append(f"ip netns del {ns}: {proc.stderr.strip()}")
        self.created.clear()
        return problems


def ns_counters(ns: str) -> dict[str, int]:
    """UDP datagrams delivered and receive-buffer errors, and the veth's drop counters, in `ns`."""
    text = sh(in_ns(ns, ["cat", "/proc/net/snmp", "/proc/net/dev"]))
    out: dict[str, int] = {}
    udp = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    if len(udp) >= 2:
        fields = dict(zip(udp[0][1:], udp[1][1:], strict=False))
        out["udp_in_datagrams"] = int(fields.get("InDatagrams", 0))
        out["udp_rcvbuf_errors"] = int(fields.get("RcvbufErrors", 0))
        out["udp_in_errors"] = int(fields.get("InErrors", 0))
        out["udp_no_ports"] = int(fields.get("NoPorts", 0))
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name.strip() in (GEN_IF, APP_IF):
            cols = rest.split()
            out["dev_rx_drop"] = int(cols[3])
            out["dev_tx_drop"] = int(cols[11])
    return out


def cpu_times() -> dict[int, list[int]]:
    """Per-CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            out[int(name[3:])] = [int(v) for v in values[:8]]
    return out


def cpu_shares(
    after: dict[int, list[int]], before: dict[int, list[int]], cpu: int
) -> dict[str, float]:
    """Where CPU `cpu` spent the interval, in % (user, sys, irq+softirq, steal, idle)."""
    d = [a - b for a, b in zip(after[cpu], before[cpu], strict=True)]
    total = sum(d) or 1
    return {
        "user": 100 * (d[0] + d[1]) / total,
        "sys": 100 * d[2] / total,
        "softirq": 100 * (d[5] + d[6]) / total,
        "steal": 100 * d[7] / total,
        "idle": 100 * (d[3] + d[4]) / total,
    }


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


# ---------------------------------------------------------------- processes


class Target:
    """A reflector running in the appliance namespace, pinned to one CPU."""

    def __init__(self, name: str, argv: list[str], cpu: int, logs: Path) -> None:
        self.name = name
        self.roles: dict[int, str] = {}
        self.descendants: dict[int, int] = {}  # PID -> start time, every one seen
        self.log = logs / f"{name.replace(' ', '_')}.log"
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
            return "supervisor" if self.name == PRODUCT else "reflector"
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
) -> dict[str, Any]:
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
        str(RX_NAP_US[0]),
    ]
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


def describe_mix(gen: str) -> dict[str, Any]:
    """What the mix holds, from gen itself: its slots, and a summary line per class."""
    proc = subprocess.run(
        [gen, "--describe", "--case", MIX], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"gen --describe failed: {proc.stderr.strip()}")
    slots: list[dict[str, Any]] = json.loads(proc.stdout)["slots"]
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


# ---------------------------------------------------------------- measuring


def measure(
    target: Target,
    tools: dict[str, str],
    cpus: tuple[int, int],
    args: argparse.Namespace,
    payload: int,
    case: str,
    probe_rate: float,
    headline_roles: tuple[str, ...] | None,
) -> dict[str, Any]:
    """One case against one target: a flood, then a paced latency run. `headline_roles`: whose CPU
    time the headline counts (None: the whole process tree)."""
    app_before, gen_before = ns_counters(APP_NS), ns_counters(GEN_NS)
    cpu_before, stat_before = target.cpu(), cpu_times()
    flood = run_gen(
        tools["gen"],
        cpus[0],
        "flood",
        payload,
        case,
        args.seconds,
        args.flows,
        int(args.seconds * args.max_pps),
        probe_rate,
    )
    cpu_after, stat_after = target.cpu(), cpu_times()
    app_after, gen_after = ns_counters(APP_NS), ns_counters(GEN_NS)
    latency = run_gen(
        tools["gen"],
        cpus[0],
        "latency",
        payload,
        case,
        args.latency_seconds,
        args.flows,
        int(args.latency_seconds * LATENCY_RATE) + 1,
        probe_rate,
    )
    if not target.alive():
        raise BenchError(f"{target.name} died during {payload} B {case}:\n{target.tail()}")
    kernel_app = delta(app_after, app_before)
    # The packets the target had to handle: what the kernel delivered to its socket(s) in its
    # namespace during the flood (the ones its receive buffer had no room for cost it nothing).
    handled = kernel_app.get("udp_in_datagrams", 0)
    # Over the processes alive at the end (a process that started during the flood counts whole).
    by_role: dict[str, list[int]] = {}
    run_ns = 0
    for pid, (u, st, ns) in cpu_after.items():
        u0, st0, ns0 = cpu_before.get(pid, (0, 0, 0))
        role = target.roles.get(pid, "other")
        acc = by_role.setdefault(role, [0, 0])
        acc[0] += u - u0
        acc[1] += st - st0
        run_ns += ns - ns0
    if any(v[2] < 0 for v in (*cpu_before.values(), *cpu_after.values())):
        run_ns = -1
    counted = [v for role, v in by_role.items() if headline_roles is None or role in headline_roles]
    utime, stime = sum(v[0] for v in counted), sum(v[1] for v in counted)

    def per_pkt(ticks: int) -> float | None:
        return ticks / CLK_TCK * 1e6 / handled if handled else None

    def loss(run: dict[str, Any]) -> float:
        return 100.0 * (1 - run["valid"] / run["expected"]) if run["expected"] else 100.0

    return {
        "target": target.name,
        "payload": payload,
        "case": case,
        "offered_pps": flood["offered_pps"],
        "returned_pps": flood["returned_pps"],
        "sent": flood["sent"],
        "expected": flood["expected"],
        "received": flood["received"],
        "valid": flood["valid"],
        "handled": handled,
        "loss_pct": loss(flood),
        "errors": flood["invalid"] + latency["invalid"],
        # Templates that expect replies and never got one at 10k pps, where nothing should be lost.
        "silent_templates": latency["silent_templates"],
        "errors_by_kind": {
            k: flood["errors"][k] + latency["errors"][k]
            for k in flood["errors"]
            if flood["errors"][k] + latency["errors"][k]
        },
        "cpu_counts": "the whole process tree"
        if headline_roles is None
        else " + ".join(headline_roles),
        "cpu_us_per_pkt": per_pkt(utime + stime),
        "cpu_user_us_per_pkt": per_pkt(utime),
        "cpu_kernel_us_per_pkt": per_pkt(stime),
        "cpu_user_s": utime / CLK_TCK,
        "cpu_system_s": stime / CLK_TCK,
        "cpu_by_role_us_per_pkt": {
            role: per_pkt(u + st) for role, (u, st) in sorted(by_role.items())
        },
        "cpu_tree_sched_us_per_pkt": run_ns / 1e3 / handled if handled and run_ns >= 0 else None,
        "cpu_by_pid": {
            str(pid): [
                target.roles.get(pid, "other"),
                *(
                    a - b
                    for a, b in zip(cpu_after[pid], cpu_before.get(pid, (0, 0, 0)), strict=True)
                ),
            ]
            for pid in cpu_after
        },
        "p50_us": latency["rtt_p50_ns"] / 1e3 if latency["rtt_samples"] else None,
        "p99_us": latency["rtt_p99_ns"] / 1e3 if latency["rtt_samples"] else None,
        "latency_loss_pct": loss(latency),
        "gen_cpu": cpu_shares(stat_after, stat_before, cpus[0]),
        "target_cpu": cpu_shares(stat_after, stat_before, cpus[1]),
        "kernel_app_ns": kernel_app,
        "kernel_gen_ns": delta(gen_after, gen_before),
        "flood": flood,
        "latency": latency,
    }


def wait_healthy(target: Target, gen: str, cpu: int) -> dict[str, Any]:
    """Until the health service answers 200 to a probe from the generator's namespace."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if not target.alive():
            raise BenchError(f"{target.name} exited:\n{target.tail()}")
        proc = subprocess.run(
            in_ns(
                GEN_NS,
                [
                    "taskset",
                    "-c",
                    str(cpu),
                    gen,
                    "--mode",
                    "probe",
                    "--dst",
                    APP_IP,
                    "--probe-port",
                    str(HEALTH_PORT),
                    "--probe-rate",
                    "10",
                    "--seconds",
                    "0.25",
                ],
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode != 0:
            raise BenchError(f"gen --mode probe failed: {proc.stderr.strip()}")
        last = json.loads(proc.stdout)["probes"]
        if last["last_status"] == 200:
            return last
        time.sleep(0.2)
    raise BenchError(
        f"the health service did not answer 200 on {APP_IP}:{HEALTH_PORT} in {READY_TIMEOUT_S} s "
        f"(last probe: {last}):\n{target.tail()}"
    )


def bench_target(
    name: str,
    argv: list[str],
    tools: dict[str, str],
    cpus: tuple[int, int],
    args: argparse.Namespace,
    logs: Path,
    started: list[Target],
    processes: dict[str, list[str]],
    probe_rate: float = 0.0,
    headline_roles: tuple[str, ...] | None = None,
    finish: Callable[[Target], None] | None = None,
) -> list[dict[str, Any]]:
    target = Target(name, argv, cpus[1], logs)
    started.append(target)
    rows = []
    try:
        target.wait_ready()
        cmdline = Path(f"/proc/{target.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if Path(argv[0]).name not in cmdline:  # CPU time must be read from the target itself
            raise BenchError(f"PID {target.pid} is `{cmdline}`, not {argv[0]}")
        if probe_rate:
            wait_healthy(target, tools["gen"], cpus[0])
        # Warm-up (not reported): first packets, page faults, Python's first calls on every path
        # of the mix; it also waits for a target whose socket is bound before its worker runs
        # (applianced's supervisor).
        for _ in range(20):
            warm = run_gen(
                tools["gen"], cpus[0], "flood", 64, MIX, 0.3, args.flows, 100_000, probe_rate
            )
            if warm["received"] or not target.alive():
                break
            time.sleep(0.5)
        if not warm["received"]:
            raise BenchError(f"{name} answered no warm-up packet:\n{target.tail()}")
        processes[name] = target.describe()
        for payload, case in args.cases:
            row = measure(target, tools, cpus, args, payload, case, probe_rate, headline_roles)
            rows.append(row)
            print(
                f"  {name:12} {payload:5} B {case:8} returned {row['returned_pps']:>11,.0f} pps"
                f"  loss {row['loss_pct']:5.1f}%  errors {row['errors']}"
                f"  CPU {fmt(row['cpu_us_per_pkt'], 2)} us/pkt  p50 {fmt(row['p50_us'], 1)} us",
                file=sys.stderr,
                flush=True,
            )
        if finish is not None:
            finish(target)
    finally:
        code = target.stop()
        for row in rows:
            row["target_exit_code"] = code
    return rows


def generator_ceiling(
    tools: dict[str, str],
    cpus: tuple[int, int],
    args: argparse.Namespace,
    logs: Path,
    started: list[Target],
) -> dict[int, dict[str, Any]]:
    """What gen offers the mix when nothing comes back: flooding the reflector in --sink mode,
    which only receives. Its CPU then does nothing but send (and deliver into the sink's socket)."""
    sink = Target("sink", [tools["reflector"], "--sink", "--max-seconds", "600"], cpus[1], logs)
    started.append(sink)
    out = {}
    try:
        sink.wait_ready()
        for payload in sorted({p for p, c in args.cases if c == MIX}):
            flood = run_gen(
                tools["gen"],
                cpus[0],
                "flood",
                payload,
                MIX,
                args.seconds,
                args.flows,
                int(args.seconds * args.max_pps),
            )
            out[payload] = {
                "offered_pps": flood["offered_pps"],
                "sent": flood["sent"],
                "received": flood["received"],
                "send_errors": flood["send_errors"],
                "partial_sends": flood["partial_sends"],
            }
            print(
                f"  gen ceiling  {payload:5} B mix      offers   {flood['offered_pps']:>11,.0f} pps"
                " into a sink",
                file=sys.stderr,
                flush=True,
            )
    finally:
        sink.stop()
    return out


def applianced_counters(applianced: str, runtime: Path) -> str:
    """The product's own totals, from `appliancectl stats` when this build has a control socket."""
    ctl = Path(applianced).parent / "appliancectl"
    sock = runtime / "control.sock"
    if not ctl.exists() or not sock.exists():
        return "no control socket (see stats.json)"
    proc = subprocess.run(
        [str(ctl), "--socket", str(sock), "--json", "stats"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    if proc.returncode != 0:
        return f"appliancectl stats failed ({proc.returncode}): {proc.stderr.strip()[:300]}"
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return proc.stdout.strip()[:600]
    total = data.get("total", data) if isinstance(data, dict) else data
    return json.dumps(total, separators=(",", ":"))[:900]


# ---------------------------------------------------------------- health load


class ProbeLoad:
    """`gen --mode probe-load` in the appliance's namespace: `clients` threads probing the health
    service at 127.0.0.1:80 back to back for `seconds`, pinned to `cpu`. A context manager: the
    process is killed by its PID if it still runs when the block ends (`ip netns exec` and
    `taskset` exec in place, so the PID is gen's own)."""

    def __init__(self, gen: str, cpu: int, clients: int, seconds: float) -> None:
        self.seconds = seconds
        argv = [
            gen,
            "--mode",
            "probe-load",
            "--dst",
            LOOPBACK,
            "--probe-port",
            str(HEALTH_PORT),
            "--probe-clients",
            str(clients),
            "--seconds",
            f"{seconds:g}",
        ]
        self.proc = subprocess.Popen(
            in_ns(APP_NS, ["taskset", "-c", str(cpu), *argv]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def __enter__(self) -> ProbeLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.returncode is not None:
            return  # collected by result()
        if self.proc.poll() is None:
            print(f"cleanup: SIGKILL to probe-load pid {self.proc.pid}", file=sys.stderr)
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.communicate(timeout=STOP_TIMEOUT_S)  # reaps it, closes the pipes

    def result(self) -> dict[str, Any]:
        """Its report, when it is done (every probe is bounded: at most 2 s after `seconds`)."""
        try:
            out, err = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired as error:
            raise BenchError(
                f"gen --mode probe-load did not finish in {self.seconds + 30:g} s"
            ) from error
        if self.proc.returncode != 0:
            raise BenchError(
                f"gen --mode probe-load failed ({self.proc.returncode}): {err.strip()}"
            )
        result: dict[str, Any] = json.loads(out)
        return result


def _usage_by_role(
    target: Target,
    before: dict[int, tuple[int, int, int]],
    after: dict[int, tuple[int, int, int]],
) -> dict[str, dict[str, int]]:
    """CPU used per role of the tree between two `Target.cpu()` snapshots: clock ticks
    (user+kernel) and schedstat ns (-1 without schedstats)."""
    out: dict[str, dict[str, int]] = {}
    for pid, (u, st, ns) in after.items():
        u0, st0, ns0 = before.get(pid, (0, 0, 0))
        acc = out.setdefault(target.roles.get(pid, "other"), {"ticks": 0, "ns": 0})
        acc["ticks"] += u + st - u0 - st0
        known = acc["ns"] >= 0 and ns >= 0 and ns0 >= 0 and ns >= ns0  # (a thread may end)
        acc["ns"] = acc["ns"] + ns - ns0 if known else -1
    return out


def _pct_of_cpu(usage: dict[str, int], wall_ns: int) -> float | None:
    """A role's CPU time as a share of one CPU over `wall_ns`, in %."""
    if wall_ns <= 0:
        return None
    used_ns = usage["ns"] if usage["ns"] >= 0 else usage["ticks"] * 1e9 / CLK_TCK
    return 100.0 * used_ns / wall_ns


def probes_alone(
    target: Target, gen: str, cpus: tuple[int, int], clients: int, seconds: float
) -> dict[str, Any]:
    """The probe load on its own: the health service's latency with no data-path traffic."""
    cpu_before, stat_before, t0 = target.cpu(), cpu_times(), time.monotonic_ns()
    with ProbeLoad(gen, cpus[0], clients, seconds) as load:
        probes = load.result()
    cpu_after, stat_after, t1 = target.cpu(), cpu_times(), time.monotonic_ns()
    usage = _usage_by_role(target, cpu_before, cpu_after)
    return {
        "phase": "probes alone",
        "probes": probes,
        "cpu_pct_by_role": {r: _pct_of_cpu(u, t1 - t0) for r, u in sorted(usage.items())},
        "gen_cpu": cpu_shares(stat_after, stat_before, cpus[0]),
        "target_cpu": cpu_shares(stat_after, stat_before, cpus[1]),
    }


def flood_phase(
    target: Target,
    tools: dict[str, str],
    cpus: tuple[int, int],
    args: argparse.Namespace,
    clients: int,
) -> dict[str, Any]:
    """The 64 B mix flood for --probe-seconds, without health probes at all (clients 0), or while
    `clients` probe the health service back to back: the probe load and the flood start together
    and last as long. The worker's CPU per packet is from schedstat ns when the kernel keeps it."""
    seconds = args.probe_seconds
    app_before, gen_before = ns_counters(APP_NS), ns_counters(GEN_NS)
    cpu_before, stat_before, t0 = target.cpu(), cpu_times(), time.monotonic_ns()
    with contextlib.ExitStack() as stack:
        load = (
            stack.enter_context(ProbeLoad(tools["gen"], cpus[0], clients, seconds))
            if clients
            else None
        )
        flood = run_gen(
            tools["gen"],
            cpus[0],
            "flood",
            HEALTH_LOAD_PAYLOAD,
            MIX,
            seconds,
            args.flows,
            int(seconds * args.max_pps),
        )
        probes = load.result() if load else None
        cpu_after, stat_after, t1 = target.cpu(), cpu_times(), time.monotonic_ns()
    app_after, gen_after = ns_counters(APP_NS), ns_counters(GEN_NS)
    if not target.alive():
        raise BenchError(f"{target.name} died during the health load:\n{target.tail()}")
    kernel_app = delta(app_after, app_before)
    handled = kernel_app.get("udp_in_datagrams", 0)
    usage = _usage_by_role(target, cpu_before, cpu_after)
    worker = usage.get("worker", {"ticks": 0, "ns": -1})
    ticks_us = worker["ticks"] / CLK_TCK * 1e6 / handled if handled else None
    ns_us = worker["ns"] / 1e3 / handled if handled and worker["ns"] >= 0 else None
    overlap = None
    if probes is not None and flood["last_tx_ns"] > flood["first_tx_ns"]:
        start = max(probes["start_ns"], flood["first_tx_ns"])
        end = min(probes["end_ns"], flood["last_tx_ns"])
        overlap = 100.0 * max(0, end - start) / (flood["last_tx_ns"] - flood["first_tx_ns"])
    row = {
        "phase": f"{clients} clients probing" if clients else "no probes",
        "probe_clients": clients,
        "seconds": seconds,
        "payload": HEALTH_LOAD_PAYLOAD,
        "case": MIX,
        "offered_pps": flood["offered_pps"],
        "returned_pps": flood["returned_pps"],
        "sent": flood["sent"],
        "expected": flood["expected"],
        "valid": flood["valid"],
        "errors": flood["invalid"],
        "errors_by_kind": {k: v for k, v in flood["errors"].items() if v},
        "loss_pct": 100.0 * (1 - flood["valid"] / flood["expected"])
        if flood["expected"]
        else 100.0,
        "handled": handled,
        "kernel_app_ns": kernel_app,
        "kernel_gen_ns": delta(gen_after, gen_before),
        "kept_up": kept_up({"kernel_app_ns": kernel_app}),
        "worker_cpu_us_per_pkt": ns_us if ns_us is not None else ticks_us,
        "worker_cpu_us_per_pkt_ticks": ticks_us,
        "worker_cpu_us_per_pkt_schedstat": ns_us,
        "cpu_pct_by_role": {r: _pct_of_cpu(u, t1 - t0) for r, u in sorted(usage.items())},
        "cpu_by_role": usage,
        "wall_s": (t1 - t0) / 1e9,
        "gen_cpu": cpu_shares(stat_after, stat_before, cpus[0]),
        "target_cpu": cpu_shares(stat_after, stat_before, cpus[1]),
        "probes": probes,
        "probe_overlap_pct": overlap,
        "flood": flood,
    }
    return row


def health_load(
    target: Target, tools: dict[str, str], cpus: tuple[int, int], args: argparse.Namespace
) -> dict[str, Any]:
    """--health-load: the probe load alone, then the 64 B mix flood without probes, then the same
    flood while the probe load runs; one applianced, one run."""
    clients, seconds = args.probe_clients, args.probe_seconds
    alone = probes_alone(target, tools["gen"], cpus, clients, seconds)
    p = alone["probes"]
    print(
        f"  health load  {clients} clients alone: {p['probes_per_s']:,.0f} probes/s, "
        f"p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, non-200 {p['other_status']}, "
        f"failed {p['failed']}",
        file=sys.stderr,
        flush=True,
    )
    phases = []
    for n in (0, clients):
        row = flood_phase(target, tools, cpus, args, n)
        phases.append(row)
        print(
            f"  health load  {HEALTH_LOAD_PAYLOAD} B mix, {row['phase']:18} offered "
            f"{row['offered_pps']:>11,.0f} returned {row['returned_pps']:>9,.0f} pps, worker "
            f"{fmt(row['worker_cpu_us_per_pkt'], 2)} us/pkt",
            file=sys.stderr,
            flush=True,
        )
    without, loaded = phases

    def ratio(key: str) -> float | None:
        a, b = without[key], loaded[key]
        return b / a if a and b is not None else None

    return {
        "clients": clients,
        "seconds": seconds,
        "url": f"http://{LOOPBACK}:{HEALTH_PORT}/ in the appliance's namespace",
        "client_cpu": cpus[0],
        "probes_alone": alone,
        "flood_without_probes": without,
        "flood_with_probes": loaded,
        "ratios_with_over_without": {
            k: ratio(k) for k in ("returned_pps", "offered_pps", "worker_cpu_us_per_pkt")
        },
    }


def health_load_report(h: dict[str, Any], cpus: tuple[int, int]) -> list[str]:
    clients, seconds = h["clients"], h["seconds"]
    alone, without, loaded = h["probes_alone"], h["flood_without_probes"], h["flood_with_probes"]
    out = [
        "",
        f"HEALTH LOAD (--health-load): {clients} concurrent clients in the appliance's namespace, "
        f"each sending GET http://{LOOPBACK}:{HEALTH_PORT}/ on a new TCP connection, the next as "
        f"soon as the last is answered, for {seconds:g} s (gen --mode probe-load, C threads, "
        f"pinned to CPU {cpus[0]} with the generator); the health service (gunicorn) runs on CPU "
        f"{cpus[1]} with the worker and the supervisor.",
        "Probes: latency = connect to the end of the response; client CPU = the probing "
        f"process's user+kernel time, in % of CPU {cpus[0]} (its kernel time includes the "
        "loopback delivery of its packets into the server's socket):",
    ]
    table = []
    for name, phase in (
        ("alone (no data-path traffic)", alone),
        (f"during the {HEALTH_LOAD_PAYLOAD} B mix flood", loaded),
    ):
        p = phase["probes"]
        client_pct = 100.0 * (p["client_user_s"] + p["client_sys_s"]) / p["wall_s"]
        table.append(
            [
                name,
                f"{p['probes']:,}",
                fmt(p["probes_per_s"]),
                f"{p['ok_200']:,}",
                str(p["other_status"]),
                str(p["failed"]),
                fmt(p["p50_ms"], 2),
                fmt(p["p99_ms"], 2),
                fmt(p["max_ms"], 1),
                fmt(client_pct, 0),
                fmt(phase["cpu_pct_by_role"].get("health"), 0),
            ]
        )
    out += _table(
        [
            "probes",
            "sent",
            "probes/s",
            "200",
            "non-200",
            "failed",
            "p50 ms",
            "p99 ms",
            "max ms",
            "client CPU %",
            f"health svc % of CPU {cpus[1]}",
        ],
        table,
    )
    out.append(
        f"The data path: the {HEALTH_LOAD_PAYLOAD} B mix flood, {seconds:g} s, without any "
        f"probe (not even the 10/s of the runs above), then with the {clients} clients probing "
        "(started together with the flood, for as long). Worker CPU us/pkt from schedstat ns; "
        "% columns: shares of one CPU from just before the flood to just after gen exited:"
    )
    table = []
    for r in (without, loaded):
        roles = r["cpu_pct_by_role"]
        table.append(
            [
                r["phase"],
                fmt(r["offered_pps"]),
                fmt(r["returned_pps"]),
                str(r["errors"]),
                fmt(r["loss_pct"], 1),
                f"{r['kernel_app_ns'].get('udp_rcvbuf_errors', 0):,}",
                fmt(r["worker_cpu_us_per_pkt"], 2),
                fmt(roles.get("worker"), 0),
                fmt(roles.get("health"), 0),
                fmt(roles.get("supervisor"), 0),
                fmt(100 - r["gen_cpu"]["idle"], 0),
                fmt(100 - r["target_cpu"]["idle"], 0),
            ]
        )
    ratios = h["ratios_with_over_without"]

    def x(key: str) -> str:
        return "-" if ratios[key] is None else f"{ratios[key]:.3f}x"

    table.append(
        [
            "with / without",
            x("offered_pps"),
            x("returned_pps"),
            "",
            "",
            "",
            x("worker_cpu_us_per_pkt"),
        ]
        + [""] * 5
    )
    out += _table(
        [
            "phase",
            "gen offered pps",
            "returned pps",
            "errors",
            "loss %",
            "app rcvbuf ovf",
            "worker us/pkt",
            "worker %",
            "health svc %",
            "supervisor %",
            f"CPU {cpus[0]} busy %",
            f"CPU {cpus[1]} busy %",
        ],
        table,
    )
    notes = []
    if loaded["probe_overlap_pct"] is not None:
        notes.append(
            f"the probes covered {loaded['probe_overlap_pct']:.1f}% of the loaded flood's send "
            "window"
        )
    if without["kept_up"] or loaded["kept_up"]:
        notes.append(
            "applianced's socket did not overflow in "
            + " and ".join(r["phase"] for r in (without, loaded) if r["kept_up"])
            + ": there its returned rate is bounded by what gen offered, not by applianced"
        )
    else:
        notes.append(
            "applianced's socket overflowed in both phases: gen offered more than it handled, so "
            "both returned rates are applianced's, not the generator's"
        )
    change = h["ratios_with_over_without"]["offered_pps"]
    if change is not None:
        notes.append(
            f"gen offered {abs(change - 1) * 100:.1f}% {'less' if change < 1 else 'more'} with "
            f"the probes (CPU {cpus[0]} also runs the clients and the loopback delivery of their "
            "packets; gen's receiver validates fewer replies when fewer come back)"
        )
    out.append("Notes: " + "; ".join(notes) + ".")
    return out


# ---------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _ratio(row: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    if not base or row[key] is None or not base[key]:
        return "-"
    return f"{row[key] / base[key]:.2f}x"


MODE_TEXT = {
    "tree": "applianced as an operator runs it (--product-mode tree): the supervisor, 1 worker and "
    "the health service (gunicorn on port 80, the default config with --workers 1), probed with "
    "HTTP GET / at {probe_rate:g}/s from the generator's namespace during every run; its CPU is "
    "the whole process tree's",
    "worker": "applianced's data path (--product-mode worker): --workers 1, [health] enabled = "
    "false; its CPU is the worker process's alone (the supervisor's is listed apart)",
}


def kept_up(row: dict[str, Any]) -> bool:
    """The target's socket never overflowed in the flood (under 0.1% of what reached it): it
    handled everything gen offered, so its returned rate is the generator's, not its own limit."""
    k: dict[str, int] = row["kernel_app_ns"]
    overflow, delivered = k.get("udp_rcvbuf_errors", 0), k.get("udp_in_datagrams", 0)
    return overflow <= 0.001 * (overflow + delivered)


def report(
    facts: dict[str, Any],
    rows: list[dict[str, Any]],
    extra: dict[str, Any],
    health: dict[str, Any] | None = None,
) -> str:
    base = {(r["payload"], r["case"]): r for r in rows if r["target"] == BASELINE}
    product = {(r["payload"], r["case"]): r for r in rows if r["target"] == PRODUCT}
    mix = facts["mix"]
    out = [
        f"# gwlb-appliance benchmark  {facts['date']}  kernel {facts['kernel']}  "
        f"CPU {facts['cpu_model']} x{facts['cores']}",
        f"# {facts['gcc']}; Python {facts['python']}; applianced {facts['applianced']}; "
        f"product code {facts['product']}",
        "# " + MODE_TEXT[facts["product_mode"]].format(probe_rate=facts["probe_rate"]),
        f"# flood {facts['seconds']:g} s/case, {facts['flows']} flows (outer source ports), "
        f"sendmmsg batch 64; latency {facts['latency_seconds']:g} s at {LATENCY_RATE:,} pps; gen "
        f"on CPU {facts['cpus'][0]}, the target's processes on CPU {facts['cpus'][1]}",
        f"# in a flood, gen's receiver naps {facts['rx_nap_us']} us after a partial batch "
        + (
            "(it is never asleep on its socket, so a reply wakes no one on the target's CPU)"
            if facts["rx_nap_us"]
            else "(0: it sleeps on its socket; each wakeup is charged to the target's CPU)"
        ),
    ]
    for cpu, n in facts.get("noise", {}).items():
        out.append(
            f"# {cpu} before the run: {n['busy_pct_before']:.0f}% busy; 100 us sleeps wake "
            f"late by p50 {n['late_p50_ns'] / 1e3:.0f} us, p99 {n['late_p99_ns'] / 1e3:.0f} "
            f"us, max {n['late_max_ns'] / 1e3:,.0f} us"
        )
    out += [
        "# p99 at 10k pps is mostly this machine's scheduling noise (above): compare p50s, and "
        "repeat runs before reading a p99 ratio.",
        "",
        f"The mix, per {mix['size']} packets (`gen --case mix`; each flow cycles through "
        f"{mix['size']} templates sent interleaved, each its own inner flow and flow cookie):",
        *(f"  {line}" for line in mix["lines"]),
        f"  = {mix['answered']} replies expected per {mix['size']} packets. Every reply is checked "
        "against its template: pass = byte-identical Geneve and inner packet; rewrite = the "
        "rewritten packet, every length and checksum; drop = no reply (one is an error).",
        "",
    ]

    # ---- headline
    out.append(
        "HEADLINE, the mix: returned = replies/s in the flood; errors = invalid or unexpected "
        "replies (flood + latency run); silent = templates never answered at 10k pps though a "
        "reply was due (a wrong drop); loss@10k = expected replies missing or invalid at 10k pps; "
        "CPU = user+kernel time per packet the target's socket received"
    )
    cols = [
        "payload",
        "target",
        "returned pps",
        "vs C",
        "errors",
        "silent",
        "loss@10k %",
        "CPU us/pkt",
        "user",
        "kernel",
        "CPU vs C",
        "p50 us",
        "p50 vs C",
        "p99 us",
        "p99 vs C",
    ]
    table = []
    payloads = sorted({r["payload"] for r in rows if r["case"] == MIX})
    for payload in payloads:
        b = base.get((payload, MIX))
        for r in (b, product.get((payload, MIX))):
            if r is None:
                continue
            table.append(
                [
                    f"{payload} B",
                    r["target"],
                    fmt(r["returned_pps"]),
                    _ratio(r, b, "returned_pps"),
                    str(r["errors"]),
                    str(r["silent_templates"]),
                    f"{r['latency_loss_pct']:.2f}",
                    fmt(r["cpu_us_per_pkt"], 2),
                    fmt(r["cpu_user_us_per_pkt"], 2),
                    fmt(r["cpu_kernel_us_per_pkt"], 2),
                    _ratio(r, b, "cpu_us_per_pkt"),
                    fmt(r["p50_us"], 1),
                    _ratio(r, b, "p50_us"),
                    fmt(r["p99_us"], 1),
                    _ratio(r, b, "p99_us"),
                ]
            )
    out += _table(cols, table)
    ceiling = facts.get("ceiling", {})
    out.append("Generator ceiling in this run (flooding the mix):")
    for payload in payloads:
        b, p = base.get((payload, MIX)), product.get((payload, MIX))
        parts = []
        if payload in ceiling:
            parts.append(
                f"gen alone (into a sink) offers {ceiling[payload]['offered_pps']:,.0f} pps"
            )
        offered = [
            f"{r['offered_pps']:,.0f} to {r['target']} (returned {r['returned_pps']:,.0f}"
            + (", kept up: the generator's rate, not the target's limit" if kept_up(r) else "")
            + ")"
            for r in (b, p)
            if r
        ]
        if offered:
            parts.append("with replies to check it offered " + " and ".join(offered))
        if b and p and b["returned_pps"]:
            share = p["returned_pps"] / b["returned_pps"]
            if not kept_up(p):
                verdict = (
                    "not generator-bound: its socket overflowed, so it was offered more than it "
                    "could take"
                )
            elif share < 0.8:
                verdict = "not generator-bound: the harness carried more with the C reflector"
            else:
                verdict = "near the harness's ceiling: the generator may bound it"
            parts.append(f"applianced returned {100 * share:.1f}% of C: {verdict}")
        out.append(f"  {payload:>5} B: " + "; ".join(parts))
    if any(kept_up(r) for r in rows if r["case"] == MIX):
        out.append(
            "A target that kept up (its socket never overflowed) returned all the generator "
            "offered: its pps ratio then understates the gap; CPU us/pkt compares the work."
        )
    if facts["product_mode"] == "tree":
        out.append(
            "CPU counts: the C reflector's one process; applianced's whole tree (supervisor, "
            "worker, health service: split below). /proc/PID/stat ticks of "
            f"{1000 // CLK_TCK} ms; the user/kernel split is the kernel's estimate."
        )
    else:
        out.append(
            "CPU counts: the C reflector's one process; applianced's worker process alone (the "
            f"supervisor's below). /proc/PID/stat ticks of {1000 // CLK_TCK} ms; the user/kernel "
            "split is the kernel's estimate."
        )

    # ---- every case
    out += ["", "All cases (the mix, then pass-through and rewrite alone):"]
    cols = [
        "target",
        "case",
        "offered pps",
        "returned pps",
        "vs C",
        "loss %",
        "errors",
        "CPU us/pkt",
        "user",
        "kernel",
        "p50 us",
        "p99 us",
        "p50 vs C",
        "p99 vs C",
    ]
    table = []
    for r in rows:
        b = base.get((r["payload"], r["case"]))
        table.append(
            [
                r["target"],
                f"{r['payload']} B {r['case']}",
                fmt(r["offered_pps"]),
                fmt(r["returned_pps"]),
                _ratio(r, b, "returned_pps"),
                fmt(r["loss_pct"], 1),
                str(r["errors"]),
                fmt(r["cpu_us_per_pkt"], 2),
                fmt(r["cpu_user_us_per_pkt"], 2),
                fmt(r["cpu_kernel_us_per_pkt"], 2),
                fmt(r["p50_us"], 1),
                fmt(r["p99_us"], 1),
                _ratio(r, b, "p50_us"),
                _ratio(r, b, "p99_us"),
            ]
        )
    out += _table(cols, table)
    out.append(
        "loss % = expected replies missing in the flood (which overloads the target on purpose: "
        "see its receive-buffer overflows below)."
    )

    # ---- the mix by class
    mix_rows = [r for r in rows if r["case"] == MIX]
    if mix_rows:
        classes = list(dict.fromkeys(c for r in mix_rows for c in r["flood"]["classes"]))
        out += [
            "",
            "The mix by class: valid replies / replies expected (drop: packets sent, no reply "
            "due), in the flood and at 10k pps:",
        ]
        table = []
        for r in mix_rows:
            for run in ("flood", "latency"):
                cells = []
                for c in classes:
                    k = r[run]["classes"].get(c)
                    if k is None:
                        cells.append("-")
                    elif k["slots_answered"] == 0:
                        cells.append(f"{k['sent']:,} sent")
                    else:
                        cells.append(f"{k['valid']:,}/{k['expected']:,}")
                table.append([r["target"], f"{r['payload']} B {run}", *cells])
        out += _table(["target", "run", *classes], table)

    # ---- CPU by process
    prod_rows = [r for r in rows if r["target"] == PRODUCT]
    if prod_rows:
        roles = sorted({k for r in prod_rows for k in r["cpu_by_role_us_per_pkt"]})
        out += ["", "applianced's CPU us/pkt by process (user+kernel, per packet received):"]
        table = [
            [
                r["target"],
                f"{r['payload']} B {r['case']}",
                *(fmt(r["cpu_by_role_us_per_pkt"].get(k), 2) for k in roles),
                fmt(sum(v for v in r["cpu_by_role_us_per_pkt"].values() if v is not None), 2),
                fmt(r["cpu_tree_sched_us_per_pkt"], 2),
            ]
            for r in prod_rows
        ]
        out += _table(["target", "case", *roles, "tree", "tree (schedstat ns)"], table)

    # ---- health probes
    probed = [r for r in rows if r["flood"].get("probes")]
    if probed:
        out += [
            "",
            f"Health probes (HTTP GET / to {APP_IP}:{HEALTH_PORT}, a new connection each, "
            f"{facts['probe_rate']:g}/s) during each flood and latency run:",
        ]
        table = []
        for r in probed:
            for run in ("flood", "latency"):
                p = r[run]["probes"]
                table.append(
                    [
                        r["target"],
                        f"{r['payload']} B {r['case']} {run}",
                        str(p["sent"]),
                        str(p["ok_200"]),
                        str(p["other_status"]),
                        str(p["failed"]),
                        fmt(p["p50_ms"], 2),
                        fmt(p["max_ms"], 1),
                    ]
                )
        out += _table(
            ["target", "run", "probes", "200", "other status", "failed", "p50 ms", "max ms"],
            table,
        )

    if health:
        out += health_load_report(health, facts["cpus"])

    # ---- kernel counters
    out += [
        "",
        "Kernel counters during each flood (deltas): UDP datagrams delivered to the target and "
        "its receive-buffer overflows (app ns), gen's receiver overflows (gen ns), veth drops, "
        "gen partial sendmmsg and send errors; the target CPU's busy share:",
    ]
    diag = []
    for r in rows:
        a, g, f = r["kernel_app_ns"], r["kernel_gen_ns"], r["flood"]
        busy = 100 - r["target_cpu"]["idle"]
        diag.append(
            [
                r["target"],
                f"{r['payload']} B {r['case']}",
                fmt(a.get("udp_in_datagrams")),
                str(a.get("udp_rcvbuf_errors")),
                str(g.get("udp_rcvbuf_errors")),
                str(sum(v for k, v in {**a, **g}.items() if k.startswith("dev_"))),
                str(f["partial_sends"]),
                str(sum(f["send_errors"].values())),
                f"{busy:.0f}",
                fmt(r["latency"]["wake_late_p99_ns"] / 1e3, 0),
            ]
        )
    out += _table(
        [
            "target",
            "case",
            "app delivered",
            "app rcvbuf ovf",
            "gen rcvbuf ovf",
            "veth drops",
            "partial sends",
            "send errors",
            "target CPU busy %",
            "latency-run sender wake late p99 us",
        ],
        diag,
    )
    out.append("")
    for name, pids in facts.get("processes", {}).items():
        out.append(f"{name} processes: {'; '.join(pids)}")
    for name, info in extra.items():
        out.append(f"{name}: {info}")
    bad = [r for r in rows if r["errors"] or r["silent_templates"]]
    if bad:
        out += ["", "VALIDATION ERRORS by kind, and templates never answered at 10k pps by class:"]
        for r in bad:
            silent = {
                c: k["silent_templates"]
                for c, k in r["latency"]["classes"].items()
                if k["silent_templates"]
            }
            name = f"{r['target']} {r['payload']} B {r['case']}"
            out.append(f"  {name}: {r['errors_by_kind']}; silent {silent}")
    samples = [s for r in rows for s in r["flood"]["error_samples"] + r["latency"]["error_samples"]]
    if samples:
        out += ["", "First invalid replies (hex, up to 256 bytes of the Geneve payload):"]
        out += [f"  {s}" for s in samples[:6]]
    return "\n".join(out)


def _table(cols: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)]


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="flood time per case (default 3, 1 with --quick)",
    )
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=None,
        help="paced latency run per case (default 4, 0.5 with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="1 s floods, 0.5 s latency runs")
    p.add_argument("--flows", type=int, default=16, help="outer source ports (default 16)")
    p.add_argument(
        "--max-pps",
        type=float,
        default=3e6,
        help="caps a flood's packet count at seconds * this (default 3e6)",
    )
    p.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    p.add_argument("--applianced", help="the applianced executable (default: next to python)")
    p.add_argument("--only", choices=["reflector", "applianced"], help="benchmark one target")
    p.add_argument(
        "--product-mode",
        choices=["tree", "worker"],
        default="tree",
        help="tree (default): applianced as an operator runs it, supervisor + 1 worker + the "
        "health service on port 80, probed during every run, CPU of the whole tree; worker: "
        "the data path alone (health service off), CPU of the worker process",
    )
    p.add_argument(
        "--probe-rate",
        type=float,
        default=10.0,
        help="health probes per second in tree mode (default 10)",
    )
    p.add_argument(
        "--health-load",
        action="store_true",
        help="tree mode: after the cases, load the health service with --probe-clients clients "
        "probing http://127.0.0.1:80/ back to back (from the appliance's namespace, on the "
        "generator's CPU): their latency alone, then the 64 B mix flood without and with them",
    )
    p.add_argument(
        "--probe-clients",
        type=int,
        default=50,
        help="concurrent probing clients for --health-load (default 50)",
    )
    p.add_argument(
        "--probe-seconds",
        type=float,
        default=3.0,
        help="each --health-load phase: probes alone, flood alone, flood with probes (default 3)",
    )
    p.add_argument(
        "--rx-nap-us",
        type=int,
        default=100,
        help="in a flood, gen's receiver naps this long after a partial batch instead of sleeping "
        "on its socket, so replies do not wake it from the target's CPU (default 100; 0: it "
        "sleeps on the socket, as before 2026-11-26: see README.md)",
    )
    p.add_argument("--mix-only", action="store_true", help="only the mix, not the single cases")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (binaries, logs)")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.latency_seconds is None:
        args.latency_seconds = 0.5 if args.quick else 4.0
    if not (0 < args.seconds <= 30 and 0 < args.latency_seconds <= 30 and 1 <= args.flows <= 64):
        p.error("--seconds and --latency-seconds in (0, 30], --flows in [1, 64]")
    if not 0 < args.probe_rate <= 100:
        p.error("--probe-rate in (0, 100]")
    if not 0 <= args.rx_nap_us <= 10_000:
        p.error("--rx-nap-us in [0, 10000]")
    if not (1 <= args.probe_clients <= 256 and 0 < args.probe_seconds <= 30):
        p.error("--probe-clients in [1, 256], --probe-seconds in (0, 30]")
    if args.health_load and (args.product_mode != "tree" or args.only == "reflector"):
        p.error("--health-load needs applianced in --product-mode tree (the health service)")
    args.cases = [c for c in CASES if c[1] == MIX] if args.mix_only else CASES
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run.py needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    for tool in ("ip", "taskset", "gcc"):
        if shutil.which(tool) is None:
            print(f"run.py needs `{tool}`", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[1]) if len(allowed) >= 2 else (allowed[0], allowed[0])
    if cpus[0] == cpus[1]:
        print("warning: one CPU only: generator and target share it", file=sys.stderr)

    facts = header_facts()
    work = Path(tempfile.mkdtemp(prefix="gwlb-bench-"))
    netns = Netns()
    started: list[Target] = []
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    health: dict[str, Any] = {}
    status = 0
    try:
        applianced = find_applianced(args.applianced)
        tools = compile_tools(work)
        RX_NAP_US[0] = args.rx_nap_us
        facts.update(
            rx_nap_us=args.rx_nap_us,
            gcc=tools["gcc"],
            applianced=applianced,
            seconds=args.seconds,
            latency_seconds=args.latency_seconds,
            flows=args.flows,
            cpus=cpus,
            product_mode=args.product_mode,
            probe_rate=args.probe_rate,
            health_load={"clients": args.probe_clients, "seconds": args.probe_seconds}
            if args.health_load
            else None,
        )
        facts["mix"] = describe_mix(tools["gen"])
        print(f"# {facts['gcc']}; namespaces {GEN_NS} / {APP_NS}; temp {work}", file=sys.stderr)
        facts["noise"] = machine_noise(tools["gen"], cpus, 0.5 if args.quick else 1.0)
        busy = [c for c, n in facts["noise"].items() if n["busy_pct_before"] > 10]
        if busy:
            print(
                f"warning: {', '.join(busy)} already busy before the run: numbers will be noisy",
                file=sys.stderr,
            )
        netns.up()
        facts["ceiling"] = generator_ceiling(tools, cpus, args, work, started)
        # (name, argv, health probes per second, whose CPU the headline counts: None = all)
        targets: list[tuple[str, list[str], float, tuple[str, ...] | None]] = []
        if args.only != "applianced":
            targets.append((BASELINE, [tools["reflector"], "--max-seconds", "600"], 0.0, None))
        if args.only != "reflector":
            config = write_config(work, args.product_mode)
            # One worker on the target's CPU, like the single-threaded C reflector; in tree mode
            # the supervisor and the health service share that CPU (they inherit its affinity).
            argv = [applianced, "--config", str(config), "--workers", "1"]
            if args.product_mode == "tree":
                targets.append((PRODUCT, argv, args.probe_rate, None))
            else:
                targets.append((PRODUCT, argv, 0.0, ("worker",)))
        processes: dict[str, list[str]] = {}
        facts["processes"] = processes

        def product_finish(target: Target) -> None:
            if args.health_load:
                health.update(health_load(target, tools, cpus, args))
            extra["applianced counters"] = applianced_counters(applianced, work / "runtime")

        for name, argv, probe_rate, roles in targets:
            rows += bench_target(
                name,
                argv,
                tools,
                cpus,
                args,
                work,
                started,
                processes,
                probe_rate,
                roles,
                product_finish if name == PRODUCT else None,
            )
            log = started[-1].tail(3).strip().splitlines()
            extra[f"{name} exit"] = f"code {started[-1].proc.returncode}; " + (
                log[-1] if log else ""
            )
        stats = work / "runtime" / "stats.json"  # the first build's counters, written at exit
        if stats.exists():
            extra["applianced stats.json"] = json.dumps(json.loads(stats.read_text())["counters"])
        text = report(facts, rows, extra, health or None)
        print(text)
        if args.json:
            everything = {
                "facts": facts,
                "rows": rows,
                "exits": extra,
                "health_load": health or None,
            }
            Path(args.json).write_text(json.dumps(everything, indent=1, default=str))
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        status = 130
    except (BenchError, subprocess.TimeoutExpired, OSError, json.JSONDecodeError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        status = 1
    except Exception:  # a bug here must still not leave namespaces or processes behind
        traceback.print_exc()
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish the cleanup whatever comes now
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for target in started:
            try:
                target.stop()
            except Exception as error:  # keep cleaning up whatever failed
                print(
                    f"cleanup: stopping {target.name} (pid {target.pid}): {error}", file=sys.stderr
                )
        for problem in netns.down():
            print(f"cleanup: {problem}", file=sys.stderr)
            status = status or 1
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
