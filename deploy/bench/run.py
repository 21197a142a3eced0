#!/usr/bin/env python3
"""The appliance benchmark, in one command: `python3 deploy/bench/run.py [--seconds 3] [--quick]`.

It compiles the C load generator (gen.c) and the C reference reflector (reflector.c), builds two
network namespaces joined by a veth pair (generator 10.77.200.1, appliance 10.77.200.2, MTU 9001),
then measures, for each target (the C reflector as the baseline, then applianced with one worker)
and each traffic case (64 and 1400 payload bytes; pass-through and rewrite):
  - flood: offered and returned packets per second, loss, validation errors, and the CPU time of
    the target's processes per returned packet (user+system from /proc/PID/stat);
  - latency: round-trip p50/p99 at a paced 10,000 packets per second.
The generator runs on one CPU, the target on another (taskset). Nothing here imports the product:
packets are built and checked by gen.c. Namespaces and processes are always torn down (by name and
by PID), also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
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
CASES = [(64, "pass"), (64, "rewrite"), (1400, "pass"), (1400, "rewrite")]
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


def write_config(work: Path) -> Path:
    """The shipped default config (the demo policy), with [runtime] dir set to our temp dir."""
    runtime = work / "runtime"
    lines = (REPO / "config" / "default.toml").read_text(encoding="utf-8").splitlines()
    section, done, out = "", False, []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        if section == "[runtime]" and re.match(r"dir\s*=", stripped):
            line, done = f'dir = "{runtime}"', True
        out.append(line)
    if not done:
        out += ["", "[runtime]", f'dir = "{runtime}"']
    text = "\n".join(out) + "\n"
    if tomllib.loads(text)["runtime"]["dir"] != str(runtime):
        raise BenchError("could not set [runtime] dir in the config copy")
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
    """UDP receive-buffer errors and the veth's drop counters inside `ns`."""
    text = sh(in_ns(ns, ["cat", "/proc/net/snmp", "/proc/net/dev"]))
    out: dict[str, int] = {}
    udp = [line.split() for line in text.splitlines() if line.startswith("Udp:")]
    if len(udp) >= 2:
        fields = dict(zip(udp[0][1:], udp[1][1:], strict=False))
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
        """The target's PID and its descendants' (applianced forks workers), parents first."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue  # gone meanwhile
                children.setdefault(ppid, []).append(int(entry.name))
        out: list[int] = []
        todo = [self.pid]
        while todo and len(out) < 1000:
            pid = todo.pop(0)
            out.append(pid)
            todo += sorted(children.get(pid, []))
        return out

    def cpu(self) -> dict[int, tuple[int, int, int]]:
        """Per process of the tree: (utime, stime) in clock ticks from /proc/PID/stat, and the
        sum_exec_runtime in ns from /proc/PID/schedstat (-1 without schedstats)."""
        out = {}
        for pid in self.tree():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                try:
                    ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    ns = -1
            except OSError:
                continue  # exited meanwhile
            fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state) of proc(5)
            out[pid] = (int(fields[11]), int(fields[12]), ns)  # fields 14 (utime), 15 (stime)
        return out

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
        """SIGTERM by PID, then SIGKILL if it lingers; return its exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.log_file.close()
        return self.proc.returncode

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


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


# ---------------------------------------------------------------- measuring


def measure(
    target: Target,
    tools: dict[str, str],
    cpus: tuple[int, int],
    args: argparse.Namespace,
    payload: int,
    case: str,
) -> dict[str, Any]:
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
    )
    if not target.alive():
        raise BenchError(f"{target.name} died during {payload} B {case}:\n{target.tail()}")
    returned = flood["received"]
    # Over the processes alive at the end (a process that started during the flood counts whole).
    utime = stime = run_ns = 0
    for pid, (u, st, ns) in cpu_after.items():
        u0, st0, ns0 = cpu_before.get(pid, (0, 0, 0))
        utime, stime, run_ns = utime + u - u0, stime + st - st0, run_ns + ns - ns0
    if any(v[2] < 0 for v in (*cpu_before.values(), *cpu_after.values())):
        run_ns = -1
    ticks = utime + stime
    return {
        "target": target.name,
        "payload": payload,
        "case": case,
        "offered_pps": flood["offered_pps"],
        "returned_pps": flood["returned_pps"],
        "sent": flood["sent"],
        "received": returned,
        "loss_pct": 100.0 * (1 - returned / flood["sent"]) if flood["sent"] else 100.0,
        "errors": flood["invalid"] + latency["invalid"],
        "cpu_us_per_pkt": ticks / CLK_TCK * 1e6 / returned if returned else None,
        "cpu_user_s": utime / CLK_TCK,
        "cpu_system_s": stime / CLK_TCK,
        "cpu_sched_us_per_pkt": run_ns / 1e3 / returned if returned and run_ns >= 0 else None,
        "cpu_by_pid": {
            str(pid): [
                a - b for a, b in zip(cpu_after[pid], cpu_before.get(pid, (0, 0, 0)), strict=True)
            ]
            for pid in cpu_after
        },
        "p50_us": latency["rtt_p50_ns"] / 1e3 if latency["rtt_samples"] else None,
        "p99_us": latency["rtt_p99_ns"] / 1e3 if latency["rtt_samples"] else None,
        "latency_loss_pct": 100.0 * (1 - latency["received"] / latency["sent"])
        if latency["sent"]
        else 100.0,
        "gen_cpu": cpu_shares(stat_after, stat_before, cpus[0]),
        "target_cpu": cpu_shares(stat_after, stat_before, cpus[1]),
        "kernel_app_ns": delta(app_after, app_before),
        "kernel_gen_ns": delta(gen_after, gen_before),
        "flood": flood,
        "latency": latency,
    }


def bench_target(
    name: str,
    argv: list[str],
    tools: dict[str, str],
    cpus: tuple[int, int],
    args: argparse.Namespace,
    logs: Path,
    started: list[Target],
    processes: dict[str, list[str]],
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
        # Warm-up (not reported): first packets, page faults, Python's first calls; it also waits
        # for a target whose socket is bound before its worker runs (applianced's supervisor).
        for _ in range(20):
            warm = run_gen(tools["gen"], cpus[0], "flood", 64, "pass", 0.3, args.flows, 100_000)
            if warm["received"] or not target.alive():
                break
            time.sleep(0.5)
        if not warm["received"]:
            raise BenchError(f"{name} answered no warm-up packet:\n{target.tail()}")
        processes[name] = target.describe()
        for payload, case in CASES:
            row = measure(target, tools, cpus, args, payload, case)
            rows.append(row)
            print(
                f"  {name:12} {payload:5} B {case:8} returned {row['returned_pps']:>11,.0f} pps"
                f"  loss {row['loss_pct']:5.1f}%  errors {row['errors']}"
                f"  p50 {fmt(row['p50_us'], 1)} us",
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


# ---------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def report(facts: dict[str, Any], rows: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    base = {(r["payload"], r["case"]): r for r in rows if r["target"] == "C reflector"}
    out = [
        f"# gwlb-appliance benchmark  {facts['date']}  kernel {facts['kernel']}  "
        f"CPU {facts['cpu_model']} x{facts['cores']}",
        f"# {facts['gcc']}; Python {facts['python']}; applianced {facts['applianced']}; "
        f"product code {facts['product']}",
        f"# flood {facts['seconds']:g} s/case, {facts['flows']} flows, sendmmsg batch 64; latency "
        f"{facts['latency_seconds']:g} s at {LATENCY_RATE:,} pps; gen on CPU {facts['cpus'][0]}, "
        f"target on CPU {facts['cpus'][1]}",
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
    ]
    cols = [
        "target",
        "case",
        "offered pps",
        "returned pps",
        "vs C",
        "loss %",
        "errors",
        "CPU us/pkt",
        "p50 us",
        "p99 us",
        "p50 vs C",
        "p99 vs C",
    ]
    table = []
    for r in rows:
        b = base.get((r["payload"], r["case"]))

        def ratio(key: str, row: dict[str, Any] = r, b: dict[str, Any] | None = b) -> str:
            if not b or row[key] is None or not b[key]:
                return "-"
            return f"{row[key] / b[key]:.2f}x"

        table.append(
            [
                r["target"],
                f"{r['payload']} B {r['case']}",
                fmt(r["offered_pps"]),
                fmt(r["returned_pps"]),
                ratio("returned_pps"),
                fmt(r["loss_pct"], 1),
                str(r["errors"]),
                fmt(r["cpu_us_per_pkt"], 2),
                fmt(r["p50_us"], 1),
                fmt(r["p99_us"], 1),
                ratio("p50_us"),
                ratio("p99_us"),
            ]
        )
    out += _table(cols, table)

    out += [
        "",
        "Generator ceiling (flood): what gen offers, what the C reflector returns, what "
        "applianced returns:",
    ]
    product = {(r["payload"], r["case"]): r for r in rows if r["target"] == "applianced"}
    for key, b in base.items():
        p = product.get(key)
        line = (
            f"  {key[0]:>5} B {key[1]:8} gen offers {b['offered_pps']:>11,.0f} pps, "
            f"C returns {b['returned_pps']:>11,.0f}"
        )
        if p:
            share = p["returned_pps"] / b["returned_pps"] if b["returned_pps"] else 0
            verdict = (
                "not generator-bound: the harness carried more with the C reflector"
                if share < 0.8
                else "near the harness's ceiling: the generator may bound it"
            )
            line += (
                f", applianced returns {p['returned_pps']:>9,.0f} (offered "
                f"{p['offered_pps']:,.0f}) = {100 * share:.1f}% of C: {verdict}"
            )
        out.append(line)

    out += [
        "",
        "Kernel counters during each flood (deltas): UDP receive-buffer overflows at the "
        "target (app ns) and at gen's receiver (gen ns), veth drops, gen partial sendmmsg "
        "and send errors:",
    ]
    diag = []
    for r in rows:
        a, g, f = r["kernel_app_ns"], r["kernel_gen_ns"], r["flood"]
        diag.append(
            [
                r["target"],
                f"{r['payload']} B {r['case']}",
                str(a.get("udp_rcvbuf_errors")),
                str(g.get("udp_rcvbuf_errors")),
                str(sum(v for k, v in {**a, **g}.items() if k.startswith("dev_"))),
                str(f["partial_sends"]),
                str(sum(f["send_errors"].values())),
                f"{r['latency_loss_pct']:.2f}",
                fmt(r["latency"]["wake_late_p99_ns"] / 1e3, 0),
            ]
        )
    out += _table(
        [
            "target",
            "case",
            "app rcvbuf ovf",
            "gen rcvbuf ovf",
            "veth drops",
            "partial sends",
            "send errors",
            "latency-run loss %",
            "latency-run sender wake late p99 us",
        ],
        diag,
    )
    out.append("")
    for name, pids in facts.get("processes", {}).items():
        out.append(f"{name} processes: {'; '.join(pids)}")
    for name, info in extra.items():
        out.append(f"{name}: {info}")
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
        help="paced latency run per case (default 2, 0.5 with --quick)",
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
    p.add_argument("--keep", action="store_true", help="keep the temp dir (binaries, logs)")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.latency_seconds is None:
        args.latency_seconds = 0.5 if args.quick else 2.0
    if not (0 < args.seconds <= 30 and 0 < args.latency_seconds <= 30 and 1 <= args.flows <= 64):
        p.error("--seconds and --latency-seconds in (0, 30], --flows in [1, 64]")
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
    status = 0
    try:
        applianced = find_applianced(args.applianced)
        tools = compile_tools(work)
        facts.update(
            gcc=tools["gcc"],
            applianced=applianced,
            seconds=args.seconds,
            latency_seconds=args.latency_seconds,
            flows=args.flows,
            cpus=cpus,
        )
        print(f"# {facts['gcc']}; namespaces {GEN_NS} / {APP_NS}; temp {work}", file=sys.stderr)
        facts["noise"] = machine_noise(tools["gen"], cpus, 0.5 if args.quick else 1.0)
        busy = [c for c, n in facts["noise"].items() if n["busy_pct_before"] > 10]
        if busy:
            print(
                f"warning: {', '.join(busy)} already busy before the run: numbers will be noisy",
                file=sys.stderr,
            )
        netns.up()
        targets = []
        if args.only != "applianced":
            targets.append(("C reflector", [tools["reflector"], "--max-seconds", "600"]))
        if args.only != "reflector":
            config = write_config(work)
            # One worker on the target's CPU, like the single-threaded C reflector.
            targets.append(("applianced", [applianced, "--config", str(config), "--workers", "1"]))
        processes: dict[str, list[str]] = {}
        facts["processes"] = processes

        def product_counters(target: Target) -> None:
            extra["applianced counters"] = applianced_counters(applianced, work / "runtime")

        for name, argv in targets:
            rows += bench_target(
                name,
                argv,
                tools,
                cpus,
                args,
                work,
                started,
                processes,
                product_counters if name == "applianced" else None,
            )
            log = started[-1].tail(3).strip().splitlines()
            extra[f"{name} exit"] = f"code {started[-1].proc.returncode}; " + (
                log[-1] if log else ""
            )
        stats = work / "runtime" / "stats.json"  # the first build's counters, written at exit
        if stats.exists():
            extra["applianced stats.json"] = json.dumps(json.loads(stats.read_text())["counters"])
        text = report(facts, rows, extra)
        print(text)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"facts": facts, "rows": rows, "exits": extra}, indent=1, default=str)
            )
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
