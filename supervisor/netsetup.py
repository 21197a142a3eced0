"""Startup interface configuration with pyroute2, run by the supervisor before any fork.

It makes the host right for the data path, "ensure" style: read the current value, change only
what differs, read it back, and log every change. With `dry_run` it only says what it would do
(`applianced --check`). pyroute2 runs its own event loop, so the netlink socket is opened and
closed here, long before the supervisor forks.

- The data-plane interface: `interface.name`, else the one holding the default route, else the
  one holding the bind address, else the only non-loopback interface with an IPv4 address.
- Its MTU must carry 8500 bytes of inner packet plus 68 of Geneve overhead: below 8568 it is set
  to `interface.mtu` (9001, the EC2 jumbo MTU).
- Its reverse-path filter is set to `interface.rp_filter` (also on `all` when `all` is stricter,
  since the kernel applies the larger of the two).
- net.core.rmem_max and rmem_default are raised (never lowered) to `interface.rmem_bytes`. They
  are host-wide: from inside a network namespace they cannot be written, which is only a warning
  because the worker sockets ask for their buffer with SO_RCVBUFFORCE anyway.
- With flow records on, net.unix.max_dgram_qlen is raised (never lowered) to 512. The workers
  send a batch's records as one datagram to the supervisor's socket, and a Unix datagram socket
  queues at most that many datagrams whatever its buffer (the kernel's default, 10, would drop a
  burst of eleven batches while the writer is busy). It is per network namespace and read when a
  socket is made, so it is set here, before the supervisor binds that socket.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from appliance.errors import BootError
from config.schema import ApplianceConfig

MIN_MTU = 8500 + 68  # GWLB's largest inner packet plus the outer headers and Geneve options
FLOWLOG_QUEUE_DATAGRAMS = 512  # net.unix.max_dgram_qlen with flow records on (module doc)
SYSCTL = Path("/proc/sys")
CHANGED = " -> "  # how a fact says that we changed something: "old -> new"

log = logging.getLogger("applianced")


class SetupError(BootError):
    """The host cannot be made right for the data path; the message names interface and reason."""


@dataclass
class Interface:
    index: int
    name: str
    mtu: int
    addresses: list[str]


def configure_interfaces(config: ApplianceConfig, dry_run: bool = False) -> list[str]:
    """Ensure the interface settings; return one sentence per fact or change, for status."""
    settings = config.interface
    if not settings.manage:
        with IPRoute() as ipr:  # a read, not a change: a bind address that is nowhere is named
            _check_bind_address(ipr, config.dataplane.bind)
        return ["interface configuration: off ([interface] manage = false)"]
    facts: list[str] = []
    with IPRoute() as ipr:
        iface = _find_interface(ipr, config)
        facts.append(
            f"data-plane interface {iface.name} (index {iface.index}), IPv4 "
            f"{', '.join(iface.addresses) or 'none'}"
        )
        _check_bind_address(ipr, config.dataplane.bind)
        facts.append(_ensure_mtu(ipr, iface, settings.mtu, dry_run))
    if settings.rp_filter is not None:
        facts += _ensure_rp_filter(iface.name, settings.rp_filter, dry_run)
    rmem = settings.rmem_bytes or config.dataplane.receive_buffer_bytes
    facts += [
        _ensure_sysctl_at_least(f"net/core/{key}", rmem, dry_run, _HOST_WIDE)
        for key in ("rmem_max", "rmem_default")
    ]
    if config.flowlog.enabled:
        facts.append(
            _ensure_sysctl_at_least(
                "net/unix/max_dgram_qlen", FLOWLOG_QUEUE_DATAGRAMS, dry_run, _QUEUE_LEFT
            )
        )
    if not dry_run:
        for fact in facts:
            # A change to the host is worth an operator's attention; a fact is not.
            level = logging.WARNING if CHANGED in fact else logging.INFO
            log.log(level, "interface setup: %s", fact)
    return facts


def find_data_interface(config: ApplianceConfig) -> Interface:
    """The data-plane interface, chosen as the module doc says; a read, not a change."""
    with IPRoute() as ipr:
        return _find_interface(ipr, config)


def _interface(ipr: IPRoute, index: int) -> Interface:
    link = ipr.get_links(index)[0]
    addresses = [
        a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=socket.AF_INET)
    ]
    return Interface(index, link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU"), addresses)


def _find_interface(ipr: IPRoute, config: ApplianceConfig) -> Interface:
    name = config.interface.name
    if name:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise SetupError(
                f"interface {name}: no such interface (interface.name in {config.source})"
            )
        return _interface(ipr, found[0])
    for route in ipr.get_default_routes(family=socket.AF_INET):
        index = route.get_attr("RTA_OIF")
        if index:
            return _interface(ipr, index)
    bind = config.dataplane.bind
    candidates = []
    for addr in ipr.get_addr(family=socket.AF_INET):
        if addr.get_attr("IFA_ADDRESS") == bind:
            return _interface(ipr, addr["index"])
        if not ipaddress.IPv4Address(addr.get_attr("IFA_ADDRESS")).is_loopback:
            candidates.append(addr["index"])
    if len(set(candidates)) == 1:
        return _interface(ipr, candidates[0])
    names = sorted(_interface(ipr, i).name for i in set(candidates))
    raise SetupError(
        f"no data-plane interface: no default route and {len(names)} candidates "
        f"({', '.join(names) or 'none'}); set interface.name in {config.source}"
    )


def _check_bind_address(ipr: IPRoute, bind: str) -> None:
    if bind == "0.0.0.0":
        return
    present = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)}
    if bind not in present:
        raise SetupError(f"bind address {bind}: on no interface of this host")


def _ensure_mtu(ipr: IPRoute, iface: Interface, wanted: int, dry_run: bool) -> str:
    if iface.mtu >= MIN_MTU:
        return f"{iface.name}: MTU {iface.mtu} carries {MIN_MTU}-byte datagrams: unchanged"
    if dry_run:
        return f"{iface.name}: MTU {iface.mtu} is below {MIN_MTU}: would set {wanted}"
    try:
        ipr.link("set", index=iface.index, mtu=wanted)
    except NetlinkError as error:
        raise SetupError(
            f"interface {iface.name}: the device refused MTU {wanted} ({error.code}: {error})"
        ) from error
    now = ipr.get_links(iface.index)[0].get_attr("IFLA_MTU")
    if now != wanted:
        raise SetupError(f"interface {iface.name}: MTU reads back as {now}, not {wanted}")
    return f"{iface.name}: MTU {iface.mtu} -> {now}"


def _ensure_rp_filter(name: str, wanted: int, dry_run: bool) -> list[str]:
    facts = [_ensure_sysctl(f"net/ipv4/conf/{name}/rp_filter", wanted, dry_run)]
    all_path = "net/ipv4/conf/all/rp_filter"
    if _read(all_path) > wanted:  # the kernel uses max(all, interface)
        facts.append(_ensure_sysctl(all_path, wanted, dry_run))
    return facts


def _read(key: str) -> int:
    return int((SYSCTL / key).read_text().split()[0])


def _ensure_sysctl(key: str, wanted: int, dry_run: bool) -> str:
    dotted = key.replace("/", ".")
    current = _read(key)
    if current == wanted:
        return f"{dotted} = {current}: unchanged"
    if dry_run:
        return f"{dotted} = {current}: would set {wanted}"
    try:
        (SYSCTL / key).write_text(f"{wanted}\n")
    except OSError as error:
        raise SetupError(f"{dotted}: cannot set {wanted}: {error.strerror}") from error
    return f"{dotted} = {current} -> {_read(key)}"


# What an unwritable raise leaves, for the fact that says so: {dotted}, {current}, {wanted}.
_HOST_WIDE = (
    "{dotted} = {current}: host-wide, not writable from this network namespace; left as it is "
    "(worker sockets force their own {wanted}-byte buffers)"
)
_QUEUE_LEFT = (
    "{dotted} = {current}: not writable ({reason}); left as it is, so flow records beyond "
    "{current} queued batches are dropped and counted (flowlog_dropped)"
)


def _ensure_sysctl_at_least(key: str, wanted: int, dry_run: bool, left: str) -> str:
    dotted = key.replace("/", ".")
    current = _read(key)
    if current >= wanted:
        return f"{dotted} = {current} (at least {wanted}): unchanged"
    if dry_run:
        return f"{dotted} = {current}: would raise to {wanted}"
    try:
        (SYSCTL / key).write_text(f"{wanted}\n")
    except OSError as error:  # rmem: host-wide, read-only inside a namespace, as expected
        return left.format(dotted=dotted, current=current, wanted=wanted, reason=error.strerror)
    return f"{dotted} = {current} -> {_read(key)}"
