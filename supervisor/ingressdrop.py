"""The nftables rule that keeps the tapped Geneve datagrams from the UDP stack (dataplane.io =
"ring"), installed before the first worker starts and removed when the supervisor stops.

Why: the ring backend's packet sockets see each frame before the ingress hooks (only ETH_P_ALL
sockets do), and the kernel would then still hand the same datagram to the UDP stack: a second
copy of the work the ring takes out of the path. A netdev-family ingress chain on the data-plane
interface drops, after the tap, exactly what the tap filter keeps (appliance/ringbpf.py): IPv4
without options, not a fragment, UDP to the appliance's port at one of its addresses. Each rule
counts what it drops (`dropped`: the datagrams handed to the rings, less what a full ring lost).
A guard UDP socket stays bound to the port all along (supervisor/boot.py), so that if the rule is
missing (deleted by hand, or not yet there) the host still never answers GWLB with ICMP port
unreachable: the duplicates then wait in its small buffer, unread, and are dropped there.

Why pyroute2 and not the `nft` command: pyroute2 is a dependency already, the nftables package
is not on every host, and its netlink messages say exactly what the rule is. pyroute2 0.9's
nftables API names no netdev hooks, so the chain's hook (ingress, on a device) and the rules'
expressions are spelled out as netlink attributes here; everything happens in one table of
our own, `netdev gwlb_appliance`, which a start replaces whole (one left by a killed supervisor
included) and a stop deletes.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import OrderedDict
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.nftables.main import NFTables

from appliance.errors import BootError

TABLE = "gwlb_appliance"
CHAIN = "ingress"
NFPROTO_NETDEV = 5
NF_NETDEV_INGRESS = 0
NF_DROP = 0
NFT_META_PROTOCOL = 1
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_REG_1 = 1  # a 16-byte register (the kernel's NFT_REG_1)
NFT_CMP_EQ = 0
PRIORITY = 0  # the filter priority of an ingress chain

log = logging.getLogger("applianced")


def _expression(name: str, **data: Any) -> dict[str, Any]:
    attrs = [(f"NFTA_{name.upper()}_{key.upper()}", value) for key, value in data.items()]
    return {"attrs": [("NFTA_EXPR_NAME", name), ("NFTA_EXPR_DATA", {"attrs": attrs})]}


def _value(data: bytes) -> dict[str, Any]:
    return {"attrs": [("NFTA_DATA_VALUE", data)]}


def _field_is(offset: int, value: bytes, mask: bytes | None = None) -> list[dict[str, Any]]:
    """The network header's bytes at `offset` (masked) equal `value`."""
    ops = [
        _expression(
            "payload",
            dreg=NFT_REG_1,
            base=NFT_PAYLOAD_NETWORK_HEADER,
            offset=offset,
            len=len(value),
        )
    ]
    if mask is not None:
        ops.append(
            _expression(
                "bitwise",
                sreg=NFT_REG_1,
                dreg=NFT_REG_1,
                len=len(value),
                mask=_value(mask),
                xor=_value(bytes(len(value))),
            )
        )
    ops.append(_expression("cmp", sreg=NFT_REG_1, op=NFT_CMP_EQ, data=_value(value)))
    return ops


def drop_rule(address: str, port: int) -> list[dict[str, Any]]:
    """`meta protocol ip; ip ihl 5, not a fragment, udp, daddr address; udp dport port;
    counter; drop` as netlink expressions (the UDP header right behind a 20-byte IPv4 one)."""
    return [
        _expression("meta", dreg=NFT_REG_1, key=NFT_META_PROTOCOL),
        _expression("cmp", sreg=NFT_REG_1, op=NFT_CMP_EQ, data=_value(b"\x08\x00")),
        *_field_is(0, b"\x45"),
        *_field_is(6, b"\x00\x00", mask=b"\x3f\xff"),
        *_field_is(9, b"\x11"),
        *_field_is(16, socket.inet_aton(address)),
        *_field_is(22, port.to_bytes(2, "big")),
        _expression("counter"),
        _expression(
            "immediate",
            dreg=0,  # NFT_REG_VERDICT
            data={"attrs": [("NFTA_DATA_VERDICT", {"attrs": [("NFTA_VERDICT_CODE", NF_DROP)]})]},
        ),
    ]


class IngressDrop:
    """The table on `interface` dropping UDP to `port` at `addresses`, after the tap."""

    def __init__(self, interface: str, addresses: list[str], port: int) -> None:
        self.interface = interface
        self.addresses = addresses
        self.port = port

    def install(self) -> str:
        """Replace our table with a fresh one; a sentence for the status facts."""
        try:
            with _nftables() as nft:
                _delete_table(nft)
                nft.table("add", name=TABLE)
                hook = {
                    "attrs": [
                        ("NFTA_HOOK_HOOKNUM", NF_NETDEV_INGRESS),
                        ("NFTA_HOOK_PRIORITY", PRIORITY),
                        ("NFTA_HOOK_DEV", self.interface),
                    ]
                }
                chain = OrderedDict(table=TABLE, name=CHAIN, hook=hook, type="filter")
                nft.chain("add", kwarg=chain)
                for address in self.addresses:
                    rule = OrderedDict(
                        table=TABLE, chain=CHAIN, expressions=drop_rule(address, self.port)
                    )
                    nft.rule("add", kwarg=rule)
        except (NetlinkError, OSError) as error:
            code = getattr(error, "code", None) or getattr(error, "errno", None) or errno.EIO
            self.remove()
            raise BootError(
                code,
                f"cannot install the nftables ingress rule on {self.interface}: {error}",
            ) from error
        return (
            f"nftables: netdev {TABLE} drops UDP {self.port} to {', '.join(self.addresses)} on "
            f"{self.interface} after the packet rings (dataplane.io = ring)"
        )

    def remove(self) -> None:
        """Delete our table (nothing when it is gone already); errors are logged, not raised:
        this runs on the way out."""
        try:
            with _nftables() as nft:
                _delete_table(nft)
        except (NetlinkError, OSError) as error:
            log.warning("cannot remove the nftables table netdev %s: %s", TABLE, error)

    def dropped(self) -> int:
        """Datagrams the rules dropped so far (their counters added up); 0 without the table."""
        total = 0
        with _nftables() as nft:
            for rule in nft.get_rules():
                if rule.get_attr("NFTA_RULE_TABLE") != TABLE:
                    continue
                for expression in rule.get_attr("NFTA_RULE_EXPRESSIONS") or []:
                    if expression.get_attr("NFTA_EXPR_NAME") == "counter":
                        data = expression.get_attr("NFTA_EXPR_DATA")
                        total += int(data.get_attr("NFTA_COUNTER_PACKETS") or 0)
        return total


def _nftables() -> NFTables:
    return NFTables(nfgen_family=NFPROTO_NETDEV)


def _delete_table(nft: NFTables) -> None:
    try:
        nft.table("del", name=TABLE)
    except NetlinkError as error:
        if error.code != errno.ENOENT:
            raise
