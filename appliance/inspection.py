"""Inspection hooks: operators' own functions in Python that judge the packets of flows a policy
rule sends them. This docstring is the reference of the API, version 1 (`API_VERSION`).

Enabling one: a rule with `action = "inspect"` names the function as "package.module:function";
the module must be importable from the appliance's environment (the virtualenv it runs from):

    [[policy.rules]]
    name = "dns-tunnel"
    action = "inspect"
    inspector = "appliance.inspectors.dns_tunnel:inspect"
    on_error = "pass"    # or "drop": what an error or a call over its budget decides
    budget_us = 1000     # the time a call may take (the default: 1 ms)
    match = { protocol = "udp", dst_port = 53 }

The function is `def inspect(packet: Packet) -> Result | None`, written against

    from appliance.inspection import Packet, PASS, DROP, REJECT, PASS_FLOW, DROP_FLOW, REJECT_FLOW

and tested with `from_ip_packet(bytes(IP(...) / UDP(...) / ...))`, which builds a Packet the way
the worker does (appliance/inspectors/dns_tunnel.py and its tests are a worked example).

What it receives, a `Packet`, read-only:
    endpoint      str   the GWLB endpoint id, 16 hex digits ("2b8ee1d4db0c51c4")
    version       int   4 or 6
    protocol      int   the transport protocol (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...)
    src, dst      str   the addresses, as `ipaddress` writes them
    src_port, dst_port  int for TCP and UDP, else None
    direction     str   "forward" (the way the flow's first packet went) or "reverse"
    payload       memoryview, read-only: the bytes after the transport header (UDP, TCP, the
                  8 bytes of ICMP), or after the IP headers for any other protocol
    names         Mapping[str, str], read-only: the names the flow has shown so far, under
                  "tls_sni", "http_host" and "dns_name" (a kind not seen is absent)
    flow_packets  int   the flow's packets so far, both ways, this one included

What it may return:
    PASS, DROP, REJECT      this packet only: the flow stays undecided, and its next packet,
                            either way, is shown again. None means PASS.
    PASS_FLOW, DROP_FLOW, REJECT_FLOW   the whole flow, both ways: no later packet of it is
                            shown; the flow table applies the verdict.
REJECT drops and tells the sender, as the `reject` action does (a TCP RST, an ICMP unreachable).
Anything else returned counts as an error (below).

Guarantees:
- The function is called only for packets of flows that the rule's conditions match and that
  nothing has decided yet.
- Calls are single-threaded: a worker process makes one call at a time, and workers share
  nothing. State the module keeps across calls (a dict of counts, say) is per worker process,
  starts empty in each, and is gone when the worker restarts or the module is imported again.
- The Packet, its payload above all, is valid only during the call: the memoryview looks into
  the worker's receive buffer, which the next batch overwrites. Copy what you keep
  (`bytes(packet.payload[:64])`, `packet.src`). After the call the payload is released, so a
  kept Packet raises ValueError instead of showing another packet's bytes (a view sliced from
  it stays readable, and shows whatever the buffer holds later). Never mutate what you get.
- The module is imported when the appliance starts and imported afresh at each reload (SIGHUP,
  `appliancectl reload`), so edited code takes effect without a restart; a config whose import
  fails is refused, and the running version stays. Only the named module is imported again:
  modules it imports keep their first version until the appliance restarts. Its top level runs
  at every load (`applianced --check` too): keep it to definitions, no I/O.
- Errors: an exception (SystemExit and KeyboardInterrupt included: a faulty inspector never
  ends a worker) or a returned value that is not a result is counted and logged (the first of
  each kind with its traceback, then at most one line per 10 s per inspector), and the rule's
  `on_error` decides the packet: "pass" or "drop", this packet only.
- Time: each call is timed against the rule's `budget_us`. A call that returns after it is
  counted as overtime, and on_error replaces its result. Python cannot stop a call that runs
  on: the worker waits for it, with its batch and every other flow in hand, and a call that
  hangs hangs the worker until the supervisor's heartbeat watchdog (workers.heartbeat_timeout_s,
  5 s) kills it; the worker restarts with an empty flow table. The time measured is wall time,
  a garbage collection the call happens to trigger included: set the budget well above the
  function's usual time.

Compatibility: within API_VERSION 1, Packet's fields and the results are only ever added, never
removed or changed in meaning or type; `names` may gain keys. A change that could break a
function written for version 1 comes with API_VERSION 2.

For the worker (not part of the operators' API): `make_packet` builds a Packet from the parsed
inner packet; an `Inspector` wraps a loaded function with its rule's budget, on_error and
counters, calls it, returns an `Outcome` and retires the Packet (`retire`); `load_inspector`
turns the rule's "package.module:function" into the function, or a ValueError that says why.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import ipaddress
import logging
import sys
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from appliance import flowverdict
from appliance.checksum import Buffer
from appliance.geneve import ETH_P_IP, ETH_P_IPV6
from appliance.inner import PROTO_TCP, PROTO_UDP, InnerPacket, parse_inner

API_VERSION = 1

FORWARD = "forward"
REVERSE = "reverse"
TLS_SNI = "tls_sni"  # keys of Packet.names
HTTP_HOST = "http_host"
DNS_NAME = "dns_name"

DEFAULT_BUDGET_NS = 1_000_000  # 1 ms: some hundred times a parser's work, a batch's whole time
LOG_INTERVAL_NS = 10_000_000_000  # after the first error of a kind, one log line per 10 s
MAX_LOGGED_KINDS = 32  # kinds logged in full; beyond, all share the rate limit
# A child of the daemon's logger: the worker's handlers sit on "applianced" (supervisor/
# workerproc.py), so these lines reach the supervisor's log and `appliancectl tail`.
log = logging.getLogger("applianced.inspector")


# --- results ---------------------------------------------------------------------------------


class Result(enum.Enum):
    """What an inspector returns. The module-level names (PASS, DROP_FLOW, ...) are the API."""

    PASS = "pass"
    DROP = "drop"
    REJECT = "reject"
    PASS_FLOW = "pass_flow"
    DROP_FLOW = "drop_flow"
    REJECT_FLOW = "reject_flow"


PASS = Result.PASS
DROP = Result.DROP
REJECT = Result.REJECT
PASS_FLOW = Result.PASS_FLOW
DROP_FLOW = Result.DROP_FLOW
REJECT_FLOW = Result.REJECT_FLOW


class Outcome(NamedTuple):
    """What a call decided, as the worker branches on it: `verdict, whole_flow = outcome`.
    One shared value per case, nothing allocated per call."""

    verdict: int  # a flow verdict code (appliance/flowverdict.py): PASS_PLAIN, DROP or REJECT
    whole_flow: bool  # the flow is decided: no later packet of it is shown


_OUTCOME_OF = {
    PASS: Outcome(flowverdict.PASS_PLAIN, False),
    DROP: Outcome(flowverdict.DROP, False),
    REJECT: Outcome(flowverdict.REJECT, False),
    PASS_FLOW: Outcome(flowverdict.PASS_PLAIN, True),
    DROP_FLOW: Outcome(flowverdict.DROP, True),
    REJECT_FLOW: Outcome(flowverdict.REJECT, True),
}
# Keyed by identity: a returned object's own __hash__ and __eq__ (user code, which may raise or
# claim equality with anything) never run outside the guarded call.
_OUTCOMES: dict[int, Outcome] = {id(r): o for r, o in _OUTCOME_OF.items()}
_OUTCOMES[id(None)] = _OUTCOME_OF[PASS]
ON_ERROR = {"pass": _OUTCOME_OF[PASS], "drop": _OUTCOME_OF[DROP]}  # this packet only


# --- the packet ------------------------------------------------------------------------------

_RETIRED = memoryview(b"")
_RETIRED.release()  # what a retired Packet reads instead of the buffer: every access raises
_NO_NAMES: Mapping[str, str] = MappingProxyType({})


class Packet:
    """One packet of a flow, as an inspector sees it: read-only, valid during the call only.

    Why lazy: a Packet is built for every inspected packet, and most functions read a few of
    its fields. Measured (CPython 3.11, this VM, an IPv4 DNS query, timeit, best of 7):
    construction 0.11 us; the payload view 0.22 us more at its first read (three objects: a
    memoryview, its slice, the read-only view); an address as text 1.2 us at its first read
    (ipaddress); so neither is made for a function that does not ask. `retire` 0.05 us, a field
    read 0.06 us. Build one with `make_packet` (the worker) or `from_ip_packet` (tests); the
    constructor's arguments are not part of the API.
    """

    __slots__ = (
        "_buf",
        "_dst",
        "_endpoint",
        "_flow_packets",
        "_forward",
        "_inner",
        "_names",
        "_payload",
        "_src",
    )

    def __init__(
        self,
        buf: Buffer,
        inner: InnerPacket,
        endpoint: bytes,
        forward: bool,
        names: Mapping[str, str | None],
        flow_packets: int,
    ) -> None:
        self._buf: Buffer = buf
        self._inner = inner
        self._endpoint = endpoint
        self._forward = forward
        self._names = names
        self._flow_packets = flow_packets
        self._payload: memoryview | None = None
        self._src: str | None = None
        self._dst: str | None = None

    @property
    def endpoint(self) -> str:
        """The GWLB endpoint id (Geneve option type 1) as 16 hex digits."""
        return self._endpoint.hex()

    @property
    def version(self) -> int:
        """The IP version: 4 or 6."""
        return self._inner.version

    @property
    def protocol(self) -> int:
        """The transport protocol number, after any IPv6 extension headers."""
        return self._inner.protocol

    @property
    def src(self) -> str:
        """The source address, as `ipaddress` writes it."""
        if self._src is None:
            self._src = self._address(12 if self._inner.version == 4 else 8)
        return self._src

    @property
    def dst(self) -> str:
        """The destination address in the IP header (an IPv6 routing header's final
        destination is not looked up)."""
        if self._dst is None:
            self._dst = self._address(16 if self._inner.version == 4 else 24)
        return self._dst

    @property
    def src_port(self) -> int | None:
        """The source port of TCP or UDP; None for other protocols."""
        port = self._inner.src_port
        return port if port >= 0 and self._inner.protocol in _PORTED else None

    @property
    def dst_port(self) -> int | None:
        """The destination port of TCP or UDP; None for other protocols."""
        port = self._inner.dst_port
        return port if port >= 0 and self._inner.protocol in _PORTED else None

    @property
    def direction(self) -> str:
        """Whether the packet goes the way the flow's first packet went, "forward", or the
        other way, "reverse"."""
        return FORWARD if self._forward else REVERSE

    @property
    def payload(self) -> memoryview:
        """The bytes after the transport header (UDP's, TCP's with its options, ICMP's 8), or
        after the IP headers for other protocols: read-only, valid during the call only."""
        view = self._payload
        if view is None:
            inner = self._inner
            view = memoryview(self._buf)[inner.payload : inner.end].toreadonly()
            self._payload = view
        return view

    @property
    def names(self) -> Mapping[str, str]:
        """Names the flow has shown so far, read-only, under "tls_sni", "http_host" and
        "dns_name": lower-case, without a trailing dot; a kind not (or not yet) seen is absent."""
        if not self._names:
            return _NO_NAMES
        # The flow's own record also notes kinds it cannot carry (None) and protocols seen
        # without a name (""): not names. A copy, so it stays what it was during the call.
        return MappingProxyType({kind: name for kind, name in self._names.items() if name})

    @property
    def flow_packets(self) -> int:
        """The flow's packets so far, both ways, this one included."""
        return self._flow_packets

    def _address(self, offset: int) -> str:
        at = self._inner.start + offset
        size = 4 if self._inner.version == 4 else 16
        return str(ipaddress.ip_address(bytes(self._buf[at : at + size])))

    def __repr__(self) -> str:
        try:
            src = _join(self.src, self.src_port)
            dst = _join(self.dst, self.dst_port)
            size = self._inner.end - self._inner.payload
        except ValueError:
            return "<Packet: retired after its call>"
        return (
            f"<Packet {self.endpoint} {_PROTOCOL_NAMES.get(self.protocol, self.protocol)} "
            f"{src} > {dst} {self.direction}, {size} payload bytes>"
        )


_PORTED = frozenset({PROTO_TCP, PROTO_UDP})
_PROTOCOL_NAMES: dict[int, str | int] = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}

# The worker's name for the constructor: make_packet(buf, inner, endpoint, forward, names,
# flow_packets), where `inner` is the parsed InnerPacket inside `buf`, `endpoint` the 8-byte
# GWLB endpoint id, `forward` whether it goes the flow's first packet's way, `flow_packets` the
# flow's count with this packet. An alias, not a wrapper: a call less per inspected packet.
make_packet = Packet


def _join(address: str, port: int | None) -> str:
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def retire(packet: Packet) -> None:
    """End `packet`'s validity once the last inspector has seen it: its payload view is
    released and its buffer forgotten, so a Packet an inspector kept raises ValueError instead
    of reading the next batch's bytes. A view the inspector exported from the payload (with
    `memoryview(payload)`, say) keeps the payload from being released; that is its own."""
    view = packet._payload
    if view is not None:
        try:  # noqa: SIM105 (contextlib.suppress costs 0.2 us more, per inspected packet)
            view.release()
        except BufferError:  # exported: see above
            pass
    packet._buf = _RETIRED


def from_ip_packet(
    data: bytes,
    *,
    endpoint: str = "0000000000000000",
    direction: str = FORWARD,
    names: Mapping[str, str] | None = None,
    flow_packets: int = 1,
) -> Packet:
    """A Packet over the IPv4 or IPv6 packet `data` (the bytes scapy's `bytes(IP()/UDP())`
    gives), for testing an inspector. Part of the API. ValueError when `data` is no packet the
    appliance would accept, or an argument is out of range."""
    if len(endpoint) != 16 or not all(c in "0123456789abcdefABCDEF" for c in endpoint):
        raise ValueError(f"an endpoint id is 16 hex digits, not {endpoint!r}")
    if direction not in (FORWARD, REVERSE):
        raise ValueError(f'direction is "forward" or "reverse", not {direction!r}')
    if flow_packets < 1:
        raise ValueError(f"flow_packets counts this packet, so it is at least 1: {flow_packets}")
    buf = bytes(data)
    version = buf[0] >> 4 if buf else 0
    if version not in (4, 6):
        raise ValueError(f"not an IPv4 or IPv6 packet (IP version {version})")
    inner = parse_inner(buf, 0, len(buf), ETH_P_IP if version == 4 else ETH_P_IPV6)
    return Packet(
        buf, inner, bytes.fromhex(endpoint), direction == FORWARD, dict(names or {}), flow_packets
    )


# --- loading ---------------------------------------------------------------------------------


def load_inspector(spec: str, *, reload: bool = False) -> Callable[[Packet], object]:
    """The function `spec` ("package.module:function") names. With `reload`, the module is
    imported afresh (a new module object, so the running function and its globals are untouched
    if the import fails) and on failure the old one stays in sys.modules. ValueError, in one
    sentence an operator can act on, when the spec is malformed, the module cannot be imported,
    or what it names is missing, not a plain function, or cannot take one argument."""
    module_name, _, attribute = spec.partition(":")
    if not _dotted(module_name) or not _dotted(attribute):
        raise ValueError(
            f'inspector "{spec}" must have the form "package.module:function" '
            "(an importable module, a colon, a function's name)"
        )
    module = _import(spec, module_name, reload)
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except Exception:  # a module's own __getattr__ may raise anything
            raise ValueError(
                f'inspector "{spec}": module "{module_name}" has no "{attribute}"'
            ) from None
    return _checked_function(spec, target)


def _dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _import(spec: str, module_name: str, reload: bool) -> object:
    importlib.invalidate_caches()  # finds a module file added since the appliance started
    old = sys.modules.pop(module_name, None) if reload else None
    try:
        return importlib.import_module(module_name)
    except (Exception, SystemExit) as error:  # a module's top level may do anything
        if old is not None:
            sys.modules[module_name] = old
        missing = error.name if isinstance(error, ModuleNotFoundError) else None
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ValueError(
                f'inspector "{spec}": no module "{module_name}" in the appliance\'s environment '
                f"({sys.prefix}): install it there or correct the name ({error})"
            ) from error
        raise ValueError(
            f'inspector "{spec}": importing module "{module_name}" failed: '
            f"{type(error).__name__}: {error}"
        ) from error


def _checked_function(spec: str, target: object) -> Callable[[Packet], object]:
    if not callable(target):
        raise ValueError(
            f'inspector "{spec}" names a {type(target).__name__}, not a function to call'
        )
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise ValueError(f'inspector "{spec}" is async: it must be a plain function')
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins have none to read: let them be
        return target
    try:
        signature.bind(None)
    except TypeError:
        raise ValueError(
            f'inspector "{spec}" must take one argument, the Packet, but its signature is '
            f"{signature}"
        ) from None
    return target


# --- calling ---------------------------------------------------------------------------------


class Inspector:
    """One loaded function with its rule's budget and on_error, and its counters.

    `__call__(packet)` never raises, and retires the packet when the call is over (`retire`):
    whatever the function does, SystemExit included, the call ends in an Outcome. It catches
    BaseException on purpose: in a worker none can be the worker's own (SIGTERM sets a flag,
    SIGINT is ignored: supervisor/workerproc.py), so any is the function's. The counters
    (calls, errors, overtime) are this process's; a call can count as an error and overtime.
    Its own cost: 0.23 us a call (two clock reads and a lookup; timeit, this VM).
    """

    def __init__(
        self,
        function: Callable[[Packet], object],
        name: str = "",
        budget_ns: int = DEFAULT_BUDGET_NS,
        on_error: str = "pass",
        *,
        log_interval_ns: int = LOG_INTERVAL_NS,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f'on_error must be "pass" or "drop", not {on_error!r}')
        if budget_ns <= 0:
            raise ValueError(f"the time budget must be positive, not {budget_ns} ns")
        self.function = function  # replaceable: a reload may swap in the new version
        self.name = name or getattr(function, "__qualname__", repr(function))
        self.budget_ns = budget_ns
        self.on_error = on_error
        self.log_interval_ns = log_interval_ns
        self.calls = 0
        self.errors = 0  # exceptions, and returned values that are not results
        self.overtime = 0  # calls that ended after budget_ns
        self._error_outcome = ON_ERROR[on_error]
        self._logged_kinds: set[str] = set()
        self._quiet_until_ns = 0
        self._unlogged = 0  # errors since the last line that were not logged

    def __repr__(self) -> str:
        return f"Inspector({self.name!r}, budget_ns={self.budget_ns}, on_error={self.on_error!r})"

    def __call__(self, packet: Packet) -> Outcome:
        self.calls += 1
        start = _clock()
        try:
            result = self.function(packet)
        except BaseException as error:  # class doc: nothing the function raises ends a worker
            self._raised(packet, error, start)
            retire(packet)
            return self._error_outcome
        elapsed = _clock() - start
        outcome = _OUTCOMES.get(id(result))
        if outcome is None or elapsed > self.budget_ns:
            outcome = self._failed(packet, result, outcome is None, elapsed, start + elapsed)
        retire(packet)
        return outcome

    def _raised(self, packet: Packet, error: BaseException, start: int) -> None:
        now = _clock()
        self.errors += 1
        if now - start > self.budget_ns:
            self.overtime += 1
        kind = f"{type(error).__module__}.{type(error).__qualname__}"
        self._report(kind, packet, f"raised {type(error).__name__}", error, now)

    def _failed(
        self, packet: Packet, result: object, junk: bool, elapsed: int, now: int
    ) -> Outcome:
        """A call that returned something that is no result, or returned late."""
        what = []
        if junk:
            self.errors += 1
            what.append(f"returned {_describe(result)}")
        if elapsed > self.budget_ns:
            self.overtime += 1
            what.append(f"took {elapsed / 1e6:.3f} ms, over its {self.budget_ns / 1e6:g} ms")
        self._report("result" if junk else "overtime", packet, " and ".join(what), None, now)
        return self._error_outcome

    def _report(
        self, kind: str, packet: Packet, what: str, error: BaseException | None, now: int
    ) -> None:
        """Log the first of each kind in full; the rest at most once per log_interval_ns."""
        first = kind not in self._logged_kinds and len(self._logged_kinds) < MAX_LOGGED_KINDS
        if first:
            self._logged_kinds.add(kind)
        elif now < self._quiet_until_ns:
            self._unlogged += 1
            return
        self._quiet_until_ns = now + self.log_interval_ns
        unlogged, self._unlogged = self._unlogged, 0
        log.log(
            logging.WARNING if kind == "overtime" else logging.ERROR,
            "inspector %s %s on %s; on_error %r applied (%d calls, %d errors, %d overtime; "
            "%d not logged since the last line)",
            self.name,
            what,
            repr(packet),  # now: the packet is retired once the call is over
            self.on_error,
            self.calls,
            self.errors,
            self.overtime,
            unlogged,
            exc_info=error if first else None,
        )


_clock = time.perf_counter_ns


def _describe(result: object) -> str:
    """A returned value for the log, without running its own __repr__ (user code)."""
    if type(result) in (str, int, float, bool, bytes):
        return repr(result)[:40]
    return f"a {type(result).__name__}, not a result (PASS, DROP_FLOW, ...)"
