"""The fuzz's test bed: namespaces, applianced, and the sockets that play GWLB.

Built on deploy/local/testbed.py (DESIGN.md §4): applianced runs in the bed's appliance namespace
and this process plays GWLB from the gwlb namespace with three sockets made there:
- a raw IPPROTO_RAW socket sends each datagram with the outer IPv4 and UDP headers written here,
  so every datagram gets its own (GWLB address, UDP source port): the reply comes back to exactly
  that pair (DESIGN.md §1), which attributes it to one datagram whatever the mutation did to the
  rest. Two GWLB addresses send to two appliance addresses, so each reply's outer addresses are
  checked against the datagram's as well;
- a raw IPPROTO_UDP socket sees each reply whole, outer headers included;
- a UDP socket bound to 6081 (as GWLB has, so that the kernel does not answer replies with port
  unreachable) with a classic BPF filter that refuses everything: nothing queues in it.
Everything is removed on exit, also after a failure: the bed's teardown stops the processes it
started and deletes its namespaces.
"""

from __future__ import annotations

import ctypes
import re
import socket
import struct
import sys
from pathlib import Path
from types import TracebackType

from gwfuzz.stats import StatsTable

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "deploy" / "local"))
from testbed import Testbed, in_netns, wait_until  # type: ignore[import-not-found]  # noqa: E402  (deploy/local is not a package)

SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
CAPTURE_BUFFER_BYTES = 64 << 20
EXTRA_GWLB_IP, EXTRA_APPLIANCE_IP = "10.77.101.11", "10.77.101.12"


def config_text(template: str, runtime: Path) -> str:
    """The template config with its runtime directory moved to `runtime` and the health service
    off (the fuzz talks to the data path only)."""
    text = re.sub(r"(?m)^#?\s*dir = .*\n", "", template)
    text = text.replace("[runtime]\n", f'[runtime]\ndir = "{runtime}"\n', 1)
    if f'dir = "{runtime}"' not in text:
        text += f'\n[runtime]\ndir = "{runtime}"\n'
    return re.sub(r"(?ms)^(\[health\].*?^enabled = )true", r"\1false", text, count=1)


class FuzzBed:
    """The namespaces, a running applianced and the GWLB sockets."""

    def __init__(self, appliance_cmd: list[str], workdir: Path, template: str) -> None:
        self.appliance_cmd, self.workdir, self.template = appliance_cmd, workdir, template
        # dataplane.io = "ring": the UDP stack never sees the datagrams (session.py copes)
        self.ring = re.search(r'(?m)^io = "ring"', template) is not None
        self.tb = Testbed(appliances=1)
        self.gwlb_ips = [socket.inet_aton(ip) for ip in (self.tb.gwlb_ip(1), EXTRA_GWLB_IP)]
        self.appliance_ips = [
            socket.inet_aton(ip) for ip in (self.tb.appliance_ip(1), EXTRA_APPLIANCE_IP)
        ]
        self.runtime = workdir / "run"
        self.stderr_path = workdir / "applianced.stderr"
        self.sockets: list[socket.socket] = []

    def __enter__(self) -> FuzzBed:
        self.tb.__enter__()
        try:
            self._start()
        except BaseException:
            self.tb.teardown()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sock in self.sockets:
            sock.close()
        self.tb.teardown()

    def _start(self) -> None:
        tb = self.tb
        tb.ip(tb.ns_gwlb, "addr", "add", f"{EXTRA_GWLB_IP}/24", "dev", "to-app1")
        tb.ip(tb.ns_app(1), "addr", "add", f"{EXTRA_APPLIANCE_IP}/24", "dev", "eth0")
        config = self.workdir / "applianced.toml"
        config.write_text(config_text(self.template, self.runtime))
        with open(self.stderr_path, "wb") as stderr:
            self.proc = tb.popen(
                tb.ns_app(1), [*self.appliance_cmd, "--config", str(config)], stderr=stderr
            )
        if not wait_until(self._ready, 20.0, 0.05):
            raise RuntimeError(f"applianced never became ready:\n{self.stderr_tail()}")
        self.table = StatsTable(self.runtime)
        self._open_sockets()

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"applianced exited {self.proc.returncode}:\n{self.stderr_tail()}")
        try:
            table = StatsTable(self.runtime)
        except (OSError, ValueError):
            return False
        try:
            return table.ready and 6081 in self.tb.udp_ports_bound(self.tb.ns_app(1))
        finally:
            table.close()

    def _open_sockets(self) -> None:
        with in_netns(self.tb.ns_gwlb):
            self.sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.capture = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sockets += [self.sender, self.capture, sink]
        self.capture.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, CAPTURE_BUFFER_BYTES)
        self.sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.capture.setblocking(False)
        refuse_all = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, 0: keep no byte
        program = ctypes.create_string_buffer(refuse_all)
        fprog = struct.pack("HL", 1, ctypes.addressof(program))
        sink.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        sink.bind(("0.0.0.0", 6081))

    def stderr_tail(self, limit: int = 3000) -> str:
        return self.stderr_path.read_text(errors="replace")[-limit:]

    def stop_appliance(self) -> int:
        """SIGTERM and wait; the exit status."""
        self.table.close()
        status: int = self.tb.stop(self.proc)
        return status
