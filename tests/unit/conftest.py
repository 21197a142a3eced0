"""Shared packet builders for the unit tier.

scapy is the oracle: it builds the packets our codec parses, and it dissects and re-checksums the
packets our codec builds. It is imported here and in the tests, never by the product.

The builders are handed to tests through session-scoped fixtures (`gwlb`, `default_policy`) rather
than imported from this file, so hypothesis tests can use them too.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import pytest
from scapy.compat import raw
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.packet import NoPayload, Packet

from appliance.policy import Policy
from config.loader import load_config

AWS_CLASS = 0x0108
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

# Fields scapy derives when they are None: deleting them and rebuilding gives scapy's own values.
DERIVED_FIELDS = ("len", "plen", "chksum", "cksum")

Option = tuple[int, int, bytes]  # (class, type, body)


class Gwlb:
    """Builds GWLB datagrams (Geneve + inner packet) and checks ours with scapy."""

    endpoint_id = bytes.fromhex("8f3a5c2e91b04d67")
    attachment_id = bytes.fromhex("5e1f0a9c3b7d2864")
    flow_cookie = 0x6A1B2C3D
    v4: ClassVar[dict[str, Any]] = {"src": "10.1.0.5", "dst": "10.2.0.9"}
    v6: ClassVar[dict[str, Any]] = {"src": "fd00:a::5", "dst": "fd00:b::9"}

    # ---- Geneve -------------------------------------------------------------------------------

    def aws_options(
        self,
        endpoint_id: bytes | None = None,
        attachment_id: bytes | None = None,
        flow_cookie: int | None = None,
        order: Sequence[int] = (1, 2, 3),
        extra: Iterable[Option] = (),
    ) -> list[Option]:
        """GWLB's three options in `order`, then the `extra` ones."""
        bodies = {
            1: self.endpoint_id if endpoint_id is None else endpoint_id,
            2: self.attachment_id if attachment_id is None else attachment_id,
            3: (self.flow_cookie if flow_cookie is None else flow_cookie).to_bytes(4, "big"),
        }
        return [(AWS_CLASS, kind, bodies[kind]) for kind in order] + list(extra)

    def geneve_scapy(self, protocol: int, options: Sequence[Option], **fields: Any) -> bytes:
        """The Geneve header and options, built by scapy."""
        opts = [GeneveOptions(classid=c, type=t, data=body) for c, t, body in options]
        return raw(GENEVE(proto=protocol, vni=0, options=opts, **fields))

    def geneve_struct(self, protocol: int, options: Sequence[Option]) -> bytes:
        """The Geneve header and options, built by hand (fast enough for hypothesis)."""
        body = b"".join(struct.pack("!HBB", c, t, len(b) // 4) + b for c, t, b in options)
        return struct.pack("!BBHI", len(body) // 4, 0, protocol, 0) + body

    def wrap(self, inner: Packet | bytes, protocol: int | None = None, **options: Any) -> bytes:
        """A GWLB datagram (the UDP payload: Geneve onwards) around `inner`."""
        data = inner if isinstance(inner, bytes) else raw(inner)
        if protocol is None:
            protocol = ETH_P_IP if data[0] >> 4 == 4 else ETH_P_IPV6
        return self.geneve_scapy(protocol, self.aws_options(**options)) + data

    # ---- inner packets --------------------------------------------------------------------------

    def udp4(self, payload: bytes = b"", sport: int = 40000, dport: int = 3000, **ip: object) -> IP:
        return IP(**{**self.v4, **ip}) / UDP(sport=sport, dport=dport) / payload

    def udp6(self, payload: bytes = b"", sport: int = 40000, dport: int = 3000) -> IPv6:
        return IPv6(**self.v6) / UDP(sport=sport, dport=dport) / payload

    def tcp4(self, payload: bytes = b"", sport: int = 40000, dport: int = 3000) -> IP:
        return IP(**self.v4) / TCP(sport=sport, dport=dport, flags="PA") / payload

    def tcp6(self, payload: bytes = b"", sport: int = 40000, dport: int = 3000) -> IPv6:
        return IPv6(**self.v6) / TCP(sport=sport, dport=dport, flags="PA") / payload

    def icmp4(self, seq: int, icmp_type: int = 8, payload: bytes = b"ping") -> IP:
        return IP(**self.v4) / ICMP(type=icmp_type, id=0x1234, seq=seq) / payload

    def icmp6(self, seq: int, request: bool = True, payload: bytes = b"ping") -> IPv6:
        echo = ICMPv6EchoRequest if request else ICMPv6EchoReply
        return IPv6(**self.v6) / echo(id=0x1234, seq=seq, data=payload)

    # ---- scapy's second opinion -----------------------------------------------------------------

    def recomputed(self, pkt: Packet) -> bytes:
        """`pkt` rebuilt by scapy with every length and checksum derived afresh."""
        copy = pkt.copy()
        layer: Packet = copy
        while not isinstance(layer, NoPayload):
            names = {f.name for f in layer.fields_desc}
            for name in DERIVED_FIELDS:
                if name in names:
                    delattr(layer, name)
            layer = layer.payload
        return raw(copy)


def pytest_configure(config: pytest.Config) -> None:
    # Why: when a hypothesis test fails, its pytest plugin imports libcst to write a patch, and
    # libcst touches mypy_extensions.TypedDict, which warns. With warnings as errors that turns a
    # plain test failure into an INTERNALERROR that ends the session and hides the failure.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    )


@pytest.fixture(scope="session")
def gwlb() -> Gwlb:
    return Gwlb()


@pytest.fixture(scope="session")
def default_policy() -> Policy:
    """The shipped demo policy: drop-me, weakly-to-strongly-typed, every fifth echo (v4, v6)."""
    return load_config().policy
