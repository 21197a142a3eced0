"""Starting the real `applianced` in a test bed's appliance namespace, and reading its counters."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pyroute2.nftables.main import NFTables
from testbed import Testbed, in_netns, wait_until

from appliance.counters import snapshot, total
from appliance.stats import H, S, StatsTable
from config.loader import load_config
from supervisor.healthproc import is_health_service
from supervisor.ingressdrop import NFPROTO_NETDEV, TABLE, IngressDrop

APPLIANCED = str(Path(sys.executable).with_name("applianced"))
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "default.toml"
# The I/O backend every Appliance of a test runs with (dataplane.io), set by the conftest's
# `both_backends` fixture; "socket" is the default config's.
BACKEND = ["socket"]


def with_backend(text: str, backend: str | None = None) -> str:
    """A config text with dataplane.io set to `backend` (default: the test's)."""
    io = backend or BACKEND[0]
    if re.search(r"(?m)^io = ", text):
        return re.sub(r"(?m)^io = .*$", f'io = "{io}"', text, count=1)
    if io == "socket":  # the default already
        return text
    if "[dataplane]\n" in text:
        return text.replace("[dataplane]\n", f'[dataplane]\nio = "{io}"\n', 1)
    return text + f'\n[dataplane]\nio = "{io}"\n'


@contextlib.contextmanager
def io_backend(backend: str) -> Iterator[str]:
    BACKEND[0] = backend
    try:
        yield backend
    finally:
        BACKEND[0] = "socket"


def ingress_rule_installed(tb: Testbed, k: int) -> bool:
    """The ring backend's nftables table is in appliance k's namespace."""
    with in_netns(tb.ns_app(k)), NFTables(nfgen_family=NFPROTO_NETDEV) as nft:
        return any(t.get_attr("NFTA_TABLE_NAME") == TABLE for t in nft.get_tables())


def arrivals(tb: Testbed, k: int, worker: int, port: int = 6081) -> int:
    """A count that grows with each datagram that reaches appliance k and waits for `worker`:
    bytes queued in its UDP sockets, or with the ring backend the datagrams the nftables rule
    dropped after the packet rings took them."""
    if BACKEND[0] == "ring":
        with in_netns(tb.ns_app(k)):
            return IngressDrop("eth0", [], port).dropped()
    total = 0
    for line in Path(f"/proc/{worker}/net/udp").read_text().splitlines()[1:]:
        fields = line.split()  # sl local rem st tx_queue:rx_queue ...
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            total += int(fields[4].split(":")[1], 16)
    return total


def config_text(runtime_dir: Path, policy: str | None = None, **edits: str) -> str:
    """The default config with the runtime dir moved to `runtime_dir`, keys set by `edits`
    (first occurrence of `key = ...` replaced) and the rules replaced by `policy`."""
    text = DEFAULT_CONFIG.read_text()
    text = text.replace('# dir = "/run/gwlb-appliance"', f'dir = "{runtime_dir}"')
    for key, value in edits.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text, count=1)
    if policy is not None:
        text = text[: text.index("[[policy.rules]]")] + policy
    return text


class Appliance:
    """A running applianced: its process, stderr file and runtime dir (stats.json)."""

    def __init__(
        self, tb: Testbed, k: int, workdir: Path, config: str | None = None, workers: int = 1
    ) -> None:
        self.tb = tb
        self.runtime = workdir / f"run-app{k}"
        self.config_path = workdir / f"app{k}.toml"
        text = config if config is not None else config_text(self.runtime)
        self.config_path.write_text(with_backend(text))
        self.stderr_path = workdir / f"applianced-app{k}.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = tb.popen(
                tb.ns_app(k),
                [APPLIANCED, "--config", str(self.config_path), "--workers", str(workers)],
                stderr=stderr,
            )
        tb.cleanups.append(self.stop_orphans)
        if not wait_until(self.ready, 15.0, 0.02):
            tb.stop(self.proc)
            raise AssertionError(f"applianced never became ready:\n{self.stderr()}")

    def ready(self) -> bool:
        """Every worker has sent its first heartbeat (the supervisor's READY flag)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"applianced exited {self.proc.returncode}:\n{self.stderr()}")
        try:
            return bool(StatsTable.open(self.runtime).header[H.READY])
        except (OSError, ValueError):
            return False

    def worker_pids(self) -> list[int]:
        table = StatsTable.open(self.runtime)
        return [int(table.slot(k)[S.PID]) for k in range(table.slots)]

    def stop_orphans(self) -> None:
        """Stop what this daemon started and left behind when it was killed (by pidfile)."""
        self.tb.stop(self.proc)
        try:
            pid = int((self.runtime / "health.pid").read_text())
        except (OSError, ValueError):
            return
        with contextlib.suppress(OSError):
            if is_health_service(Path(f"/proc/{pid}/cmdline").read_bytes()):
                os.kill(pid, signal.SIGKILL)

    def health_pid(self) -> int:
        return int((self.runtime / "health.pid").read_text())

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        return self.tb.stop(self.proc)

    def counters(self) -> dict[str, Any]:
        """Every worker's counters added up, read from the stats table (also after the exit)."""
        table = StatsTable.open(self.runtime)
        names = tuple(r.name for r in load_config(self.runtime / "config.toml").policy.rules)
        return total([snapshot(table.counters(k), names) for k in range(table.slots)])

    def wait_counter(self, name: str, value: int, timeout_s: float = 5.0) -> bool:
        """True once counter `name` reached `value` in the published stats."""

        def reached() -> bool:
            try:
                return int(self.counters()[name]) >= value
            except (OSError, ValueError, KeyError):
                return False

        return bool(wait_until(reached, timeout_s, 0.05))


def socket_in(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `ns`, made from this process."""
    with in_netns(ns):
        return socket.socket(family, kind, proto)


def run_quiet(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


APPLIANCECTL = str(Path(sys.executable).with_name("appliancectl"))


def ctl(runtime: Path, *args: str) -> tuple[int, Any]:
    """Run appliancectl against the daemon of `runtime` with --json; (exit code, reply or text)."""
    done = run_quiet([APPLIANCECTL, "--socket", str(runtime / "control.sock"), "--json", *args])
    try:
        return done.returncode, orjson.loads(done.stdout)
    except orjson.JSONDecodeError:
        return done.returncode, done.stdout + done.stderr


def with_rules(
    testbed: Testbed, tmp_path: Path, rules: str, edits: dict[str, str] | None = None
) -> tuple[Appliance, Path]:
    """applianced in app1 with the shipped config (each `edits` key replaced by its value, once),
    its runtime directory under `tmp_path`, and `rules` after the demo's; and that runtime
    directory (for `ctl`)."""
    runtime = tmp_path / "run-app1"
    text = (
        DEFAULT_CONFIG.read_text()
        .replace("# dir = ", "dir = ")
        .replace('"/run/gwlb-appliance"', f'"{runtime}"', 1)
    )
    for old, new in (edits or {}).items():
        assert old in text, f"the shipped config has no {old!r} to replace"
        text = text.replace(old, new, 1)
    return Appliance(testbed, 1, tmp_path, config=text + rules), runtime
