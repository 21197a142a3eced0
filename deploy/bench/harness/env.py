"""Where the benchmark runs: constants, shell helpers, the machine's facts, the build, the
network namespaces and the kernel counters read from them."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent  # deploy/bench
REPO = HERE.parent.parent
PREFIX = f"bn{os.getpid()}"
GEN_NS, APP_NS = f"{PREFIX}-gen", f"{PREFIX}-app"
GEN_IF, APP_IF = "gen0", "app0"
GEN_IP, APP_IP = "10.77.200.1", "10.77.200.2"
MTU = 9001
GENEVE_PORT = 6081
LATENCY_RATE = 10_000
HEALTH_PORT = 80
LOOPBACK = "127.0.0.1"
HEALTH_LOAD_PAYLOAD = 64
PAYLOADS = (64, 1400)
MIX = "mix"
# The mix first (the headline), then the single cases kept from the first version of the bench.
CASES = [(64, MIX), (1400, MIX), (64, "pass"), (64, "rewrite"), (1400, "pass"), (1400, "rewrite")]
# run.py --firewall: new TCP connections under firewall_policy.toml, in an applianced of its own.
FIREWALL = "firewall"
FIREWALL_CASES = [(64, FIREWALL), (1400, FIREWALL)]
BASELINE, PRODUCT = "C reflector", "applianced"
PRODUCT_RING = "applianced ring"  # applianced with dataplane.io = "ring" (run.py --io ring)
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


def write_config(work: Path, mode: str, track_flows: bool = False, io: str = "socket") -> Path:
    """The shipped default config (the demo policy) with `[runtime] dir` set to our temp dir and
    the allow-list a fleet has (deploy/terraform sets it to the GWLB subnets): only the generator
    may send; in worker mode also `[health] enabled = false` (the data path alone); with
    `track_flows` the flow table on (`[policy] track_flows = true`: what every packet pays once a
    policy decides flows); with `io` "ring" the packet-ring backend (`dataplane.io`)."""
    runtime = work / "runtime"
    lines = (REPO / "config" / "default.toml").read_text(encoding="utf-8").splitlines()
    wanted = {
        ("[runtime]", "dir"): f'"{runtime}"',
        ("[dataplane]", "allow_sources"): f'["{GEN_IP}/32"]',
    }
    if mode == "worker":
        wanted[("[health]", "enabled")] = "false"
    if track_flows:
        wanted[("[policy]", "track_flows")] = "true"
    if io != "socket":
        wanted[("[dataplane]", "io")] = f'"{io}"'
    section, done, out = "", set(), []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        for (where, key), value in wanted.items():
            # a key the default file only shows commented out counts too ("# dir = ...")
            if section == where and re.match(rf"(# )?{key}\s*=", stripped):
                line = f"{key} = {value}"
                done.add((where, key))
        out.append(line)
    for (where, key), value in wanted.items():
        if (where, key) not in done:
            out += ["", where, f"{key} = {value}"]
    text = "\n".join(out) + "\n"
    parsed = tomllib.loads(text)
    if (
        parsed["runtime"]["dir"] != str(runtime)
        or parsed["dataplane"]["allow_sources"] != [f"{GEN_IP}/32"]
        or (mode == "worker" and parsed["health"]["enabled"] is not False)
    ):
        raise BenchError("could not set [runtime] dir, allow_sources, [health] in the config copy")
    path = work / ("applianced.toml" if io == "socket" else f"applianced-{io}.toml")
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
            out["dev_rx_packets"] = int(cols[1])
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
