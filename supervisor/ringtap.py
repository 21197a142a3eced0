"""What the supervisor makes before any fork when dataplane.io = "ring": the tap.

One packet socket per worker slot on the data-plane interface, joined to one fanout group in slot
order (appliance/ringsocket.py says why the supervisor owns them), a guard UDP socket bound to the
Geneve port (so the host never answers GWLB with ICMP port unreachable, whatever happens to the
nftables rule), and then, once the rings are there to see the datagrams, the nftables ingress
rule that keeps them from the UDP stack (supervisor/ingressdrop.py). The tap takes the datagrams
to `dataplane.bind`, or with 0.0.0.0 to every IPv4 address the interface has at start.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass, field

from appliance.ringsocket import RingGeometry, join_fanout, open_ring_socket
from appliance.sockets import open_data_socket
from config.schema import ApplianceConfig
from supervisor.ingressdrop import IngressDrop
from supervisor.netsetup import SetupError, find_data_interface

GUARD_BUFFER_BYTES = 1 << 16  # the guard socket's datagrams are never read: keep few

log = logging.getLogger("applianced")


@dataclass
class RingTap:
    sockets: list[socket.socket]  # one per slot, in slot order: the fanout group's members
    guard: socket.socket
    ingress: IngressDrop
    facts: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Remove the rule first (the guard then takes what comes), then close everything."""
        self.ingress.remove()
        for sock in (*self.sockets, self.guard):
            sock.close()


def open_ring_tap(config: ApplianceConfig, slots: int) -> RingTap:
    plane = config.dataplane
    iface = find_data_interface(config)
    addresses = iface.addresses if plane.bind == "0.0.0.0" else [plane.bind]
    if plane.bind != "0.0.0.0" and plane.bind not in iface.addresses:
        raise SetupError(
            f"bind address {plane.bind}: not on the data-plane interface {iface.name}, which "
            f"dataplane.io = ring taps; set interface.name in {config.source}"
        )
    if not addresses:
        raise SetupError(f"interface {iface.name}: no IPv4 address for the packet rings to take")
    numbers = [int.from_bytes(socket.inet_aton(a), "big") for a in addresses]
    geometry = RingGeometry.for_bytes(plane.receive_buffer_bytes)
    sockets: list[socket.socket] = []
    guard = None
    try:
        for _ in range(slots):
            sockets.append(
                open_ring_socket(iface.name, numbers, plane.port, geometry, plane.send_buffer_bytes)
            )
        join_fanout(sockets, plane.steering)
        guard = open_data_socket(plane.bind, plane.port, GUARD_BUFFER_BYTES)
        ingress = IngressDrop(iface.name, addresses, plane.port)
        fact = ingress.install()
    except BaseException:
        for sock in sockets:
            sock.close()
        if guard is not None:
            with contextlib.suppress(OSError):
                guard.close()
        raise
    facts = [
        f"packet rings: {slots} on {iface.name}, {geometry.frames} frames of "
        f"{geometry.frame_bytes} bytes each, steering {plane.steering}",
        fact,
    ]
    for line in facts:
        log.info("data plane: %s", line)
    return RingTap(sockets, guard, ingress, facts)
