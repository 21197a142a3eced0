"""The inspection API (appliance/inspection.py): loading an operator's function and loading it
again after an edit, what each return value decides, errors and calls over budget absorbed and
counted, and the Packet view, read-only, built from packets scapy makes."""

from __future__ import annotations

import itertools
import logging
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from appliance import flowverdict
from appliance.geneve import ETH_P_IP, ETH_P_IPV6
from appliance.inner import parse_inner
from appliance.inspection import (
    API_VERSION,
    DROP,
    DROP_FLOW,
    PASS,
    PASS_FLOW,
    REJECT,
    REJECT_FLOW,
    Inspector,
    Outcome,
    Packet,
    from_ip_packet,
    load_inspector,
    make_packet,
)

ENDPOINT = bytes.fromhex("8f3a5c2e91b04d67")
_numbers = itertools.count()


def udp4(payload: bytes = b"hello", dport: int = 53) -> Packet:
    return from_ip_packet(
        bytes(IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=40000, dport=dport) / payload)
    )


# --- loading -------------------------------------------------------------------------------


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Writes an operator's module into a directory on sys.path; gives its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    # No .pyc: an edit within the same second and of the same size would reuse stale bytecode.
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    written: list[str] = []

    def write(source: str, name: str | None = None) -> str:
        name = name or f"operator_hook_{next(_numbers)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    "spec", ["", "module", "module:", ":inspect", "module:1st", "a..b:inspect", "mod:f:g"]
)
def test_a_malformed_spec_is_refused_with_the_form_it_needs(spec: str) -> None:
    with pytest.raises(ValueError, match=r'must have the form "package\.module:function"'):
        load_inspector(spec)


@pytest.mark.parametrize(
    ("module", "missing"),
    [("no_such_operator_module", "no_such_operator_module"), ("no_such_pkg.hooks", "no_such_pkg")],
)
def test_a_missing_module_is_named_with_the_import_error(module: str, missing: str) -> None:
    with pytest.raises(ValueError) as caught:
        load_inspector(f"{module}:inspect")
    message = str(caught.value)
    assert f'no module "{module}" in the appliance\'s environment ({sys.prefix})' in message
    assert f"No module named '{missing}'" in message


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("import no_such_dependency_xyz\n", "ModuleNotFoundError: No module named"),
        ("def inspect(packet):\n    return (\n", "SyntaxError"),
        ("raise RuntimeError('config missing')\n", "RuntimeError: config missing"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ],
)
def test_a_module_that_fails_to_import_says_why(
    write_module: Callable[..., str], source: str, reason: str
) -> None:
    name = write_module(source)
    with pytest.raises(ValueError, match=f'importing module "{name}" failed: {reason}'):
        load_inspector(f"{name}:inspect")


@pytest.mark.parametrize(
    ("source", "attribute", "reason"),
    [
        ("", "inspect", 'has no "inspect"'),
        ("inspect = 3\n", "inspect", "names a int, not a function to call"),
        ("async def inspect(packet):\n    pass\n", "inspect", "is async"),
        ("def inspect(packet, extra):\n    pass\n", "inspect", "must take one argument"),
        ("def inspect():\n    pass\n", "inspect", "must take one argument"),
        ("class Box:\n    pass\n", "Box.inspect", 'has no "Box.inspect"'),
    ],
)
def test_what_the_spec_names_must_be_a_function_of_one_packet(
    write_module: Callable[..., str], source: str, attribute: str, reason: str
) -> None:
    name = write_module(source)
    with pytest.raises(ValueError, match=reason):
        load_inspector(f"{name}:{attribute}")


def test_a_function_a_method_and_a_callable_object_load(write_module: Callable[..., str]) -> None:
    name = write_module(
        """
        from appliance.inspection import DROP, PASS

        def inspect(packet):
            return PASS

        def lenient(packet, strict=False):
            return PASS

        class Hook:
            def check(self, packet):
                return DROP

            def __call__(self, packet):
                return DROP

        hook = Hook()
        """
    )
    assert name not in sys.modules  # imported by the first load
    assert load_inspector(f"{name}:inspect")(udp4()) is PASS
    assert load_inspector(f"{name}:lenient")(udp4()) is PASS
    assert load_inspector(f"{name}:hook.check")(udp4()) is DROP
    assert load_inspector(f"{name}:hook")(udp4()) is DROP


EDITABLE = """
from appliance.inspection import {result}

calls = []

def inspect(packet):
    calls.append(1)
    return {result}
"""


def test_reload_imports_the_edited_module_afresh(write_module: Callable[..., str]) -> None:
    name = write_module(EDITABLE.format(result="PASS"))
    first = load_inspector(f"{name}:inspect")
    write_module(EDITABLE.format(result="DROP_FLOW"), name)
    assert load_inspector(f"{name}:inspect") is first  # without reload: what is imported
    second = load_inspector(f"{name}:inspect", reload=True)
    assert second(udp4()) is DROP_FLOW
    assert first(udp4()) is PASS  # the old one is untouched
    assert sys.modules[name].calls == [1]  # the new module's state starts empty


def test_a_reload_that_fails_leaves_the_running_version_whole(
    write_module: Callable[..., str],
) -> None:
    name = write_module(EDITABLE.format(result="DROP"))
    running = load_inspector(f"{name}:inspect")
    module = sys.modules[name]
    write_module("THRESHOLD = 1\nraise RuntimeError('half edited')\n", name)
    with pytest.raises(ValueError, match="RuntimeError: half edited"):
        load_inspector(f"{name}:inspect", reload=True)
    assert sys.modules[name] is module
    assert not hasattr(module, "THRESHOLD")  # the failed import ran in a module of its own
    assert running(udp4()) is DROP


def test_a_module_added_after_start_is_found(write_module: Callable[..., str]) -> None:
    with pytest.raises(ValueError, match="no module"):
        load_inspector("operator_hook_late:inspect")
    write_module(EDITABLE.format(result="REJECT"), "operator_hook_late")
    assert load_inspector("operator_hook_late:inspect", reload=True)(udp4()) is REJECT


# --- results -------------------------------------------------------------------------------


class Records(logging.Handler):
    """The inspector log's records, whatever the daemon's logging setup did to propagation."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    log = logging.getLogger("applianced.inspector")
    handler = Records()
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def returning(value: object) -> Callable[[Packet], object]:
    return lambda packet: value


@pytest.mark.parametrize(
    ("result", "verdict", "whole_flow"),
    [
        (PASS, flowverdict.PASS_PLAIN, False),
        (None, flowverdict.PASS_PLAIN, False),
        (DROP, flowverdict.DROP, False),
        (REJECT, flowverdict.REJECT, False),
        (PASS_FLOW, flowverdict.PASS_PLAIN, True),
        (DROP_FLOW, flowverdict.DROP, True),
        (REJECT_FLOW, flowverdict.REJECT, True),
    ],
)
def test_each_result_is_an_outcome_the_worker_unpacks(
    result: object, verdict: int, whole_flow: bool
) -> None:
    inspector = Inspector(returning(result), "rule", 10**9, "drop")
    outcome = inspector(udp4())
    got_verdict, got_whole = outcome  # what the worker does
    assert (got_verdict, got_whole) == (verdict, whole_flow)
    assert (inspector.calls, inspector.errors, inspector.overtime) == (1, 0, 0)


class Slippery:
    """Claims equality with everything, and its hash and repr raise: none of it may run."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __repr__(self) -> str:
        raise RuntimeError("repr")


@pytest.mark.parametrize(
    "junk",
    [
        "drop",
        1,
        True,
        (flowverdict.DROP, True),
        Outcome(flowverdict.DROP, True),
        [DROP],
        Slippery(),
    ],
    ids=["str", "int", "bool", "tuple", "outcome", "list", "slippery"],
)
@pytest.mark.parametrize("on_error", ["pass", "drop"])
def test_anything_else_returned_is_an_error_and_on_error_decides(
    junk: object, on_error: str, records: Records
) -> None:
    inspector = Inspector(returning(junk), "rule", 10**9, on_error)
    outcome = inspector(udp4())
    verdict = flowverdict.PASS_PLAIN if on_error == "pass" else flowverdict.DROP
    assert outcome == (verdict, False)
    assert (inspector.calls, inspector.errors, inspector.overtime) == (1, 1, 0)
    [record] = records.records
    assert record.levelno == logging.ERROR
    assert "returned" in record.getMessage()


@pytest.mark.parametrize(
    "error",
    [ValueError("bad"), KeyError("x"), RecursionError(), SystemExit(1), KeyboardInterrupt()],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("on_error", ["pass", "drop"])
def test_an_exception_never_leaves_the_call(
    error: BaseException, on_error: str, records: Records
) -> None:
    def faulty(packet: Packet) -> object:
        raise error

    inspector = Inspector(faulty, "rule", 10**9, on_error)
    outcome = inspector(udp4())
    verdict = flowverdict.PASS_PLAIN if on_error == "pass" else flowverdict.DROP
    assert outcome == (verdict, False)
    assert (inspector.calls, inspector.errors, inspector.overtime) == (1, 1, 0)
    [record] = records.records
    assert record.exc_info is not None and record.exc_info[1] is error  # with its traceback
    assert f"raised {type(error).__name__}" in record.getMessage()
    assert "10.1.0.5:40000 > 10.2.0.9:53" in record.getMessage()  # which packet


def test_errors_are_logged_once_per_kind_then_rate_limited(records: Records) -> None:
    kinds = [ValueError, ValueError, ValueError, KeyError, ValueError, ValueError]

    def faulty(packet: Packet) -> object:
        raise kinds.pop(0)("again")

    inspector = Inspector(faulty, "rule", 10**9, "pass", log_interval_ns=3600 * 10**9)
    for _ in range(5):
        inspector(udp4())
    assert inspector.errors == 5
    assert [r.exc_info[0] for r in records.records if r.exc_info] == [ValueError, KeyError]
    assert len(records.records) == 2  # the first of each kind in full; the repeats wait

    inspector.log_interval_ns = inspector._quiet_until_ns = 0  # as if the interval had passed
    inspector(udp4())
    last = records.records[-1]
    assert last.exc_info is None  # a repeat: one line, no traceback
    # The KeyError's line told of the two repeats before it; this one, of the one after it.
    assert "2 not logged since the last line" in records.records[1].getMessage()
    assert "6 calls, 6 errors, 0 overtime; 1 not logged since the last line" in last.getMessage()


def busy(duration_ns: int, result: object) -> Callable[[Packet], object]:
    def slow(packet: Packet) -> object:
        end = time.perf_counter_ns() + duration_ns
        while time.perf_counter_ns() < end:
            pass
        return result

    return slow


@pytest.mark.parametrize("on_error", ["pass", "drop"])
def test_a_call_over_its_budget_is_counted_and_on_error_decides(
    on_error: str, records: Records
) -> None:
    inspector = Inspector(busy(2_000_000, DROP_FLOW), "rule", 1_000, on_error)
    outcome = inspector(udp4())
    verdict = flowverdict.PASS_PLAIN if on_error == "pass" else flowverdict.DROP
    assert outcome == (verdict, False)  # not the DROP_FLOW it returned
    assert (inspector.calls, inspector.errors, inspector.overtime) == (1, 0, 1)
    [record] = records.records
    assert record.levelno == logging.WARNING
    assert "over its 0.001 ms" in record.getMessage()


def test_a_late_exception_counts_as_both() -> None:
    slow = busy(2_000_000, None)

    def slow_then_faulty(packet: Packet) -> object:
        slow(packet)
        raise ValueError("late")

    inspector = Inspector(slow_then_faulty, "rule", 1_000, "pass")
    assert inspector(udp4()) == (flowverdict.PASS_PLAIN, False)
    assert (inspector.errors, inspector.overtime) == (1, 1)


def test_within_budget_the_result_stands() -> None:
    inspector = Inspector(busy(10_000, DROP_FLOW), "rule", 10**9, "pass")
    assert inspector(udp4()) == (flowverdict.DROP, True)
    assert inspector.overtime == 0


@pytest.mark.parametrize(
    ("keywords", "reason"),
    [({"on_error": "reject"}, "on_error"), ({"budget_ns": 0}, "budget")],
)
def test_an_inspector_refuses_settings_it_cannot_apply(
    keywords: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        Inspector(returning(PASS), **keywords)


# --- the packet ----------------------------------------------------------------------------

V1_FIELDS = {
    "endpoint",
    "version",
    "protocol",
    "src",
    "dst",
    "src_port",
    "dst_port",
    "direction",
    "payload",
    "names",
    "flow_packets",
}


def test_version_1_keeps_every_field_it_promised() -> None:
    assert API_VERSION == 1
    public = {name for name in dir(Packet) if not name.startswith("_")}
    assert public >= V1_FIELDS  # fields may be added within a version, never removed


@pytest.mark.parametrize(
    ("packet", "fields"),
    [
        (
            IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=40000, dport=53) / b"query",
            (4, 17, "10.1.0.5", "10.2.0.9", 40000, 53, b"query"),
        ),
        (
            IP(src="192.0.2.1", dst="198.51.100.7", options=b"\x01\x01\x01\x00")
            / TCP(sport=443, dport=51000, flags="PA")
            / b"data",
            (4, 6, "192.0.2.1", "198.51.100.7", 443, 51000, b"data"),
        ),
        (
            IPv6(src="fd00:a::5", dst="fd00:b::9") / UDP(sport=5353, dport=53) / b"v6",
            (6, 17, "fd00:a::5", "fd00:b::9", 5353, 53, b"v6"),
        ),
        (
            IPv6(src="2001:db8::1", dst="2001:db8:0:1::2") / TCP(sport=1, dport=2) / b"",
            (6, 6, "2001:db8::1", "2001:db8:0:1::2", 1, 2, b""),
        ),
        (
            IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=7, seq=3) / b"ping",
            (4, 1, "10.0.0.1", "10.0.0.2", None, None, b"ping"),
        ),
    ],
    ids=["udp4", "tcp4-options", "udp6", "tcp6", "icmp4"],
)
def test_the_packet_shows_what_scapy_built(packet: Any, fields: tuple[Any, ...]) -> None:
    raw = bytes(packet)
    version, protocol, src, dst, sport, dport, payload = fields
    # As the worker sees it: inside a receive arena, after the Geneve header.
    arena = bytearray(64) + bytearray(raw) + bytearray(32)
    inner = parse_inner(arena, 64, 64 + len(raw), ETH_P_IP if version == 4 else ETH_P_IPV6)
    names = {"tls_sni": "www.example.com", "http_host": None, "dns_name": ""}
    view = make_packet(arena, inner, ENDPOINT, False, names, 4)
    assert view.endpoint == "8f3a5c2e91b04d67"
    assert (view.version, view.protocol, view.src, view.dst) == (version, protocol, src, dst)
    assert (view.src_port, view.dst_port) == (sport, dport)
    assert view.direction == "reverse"
    assert bytes(view.payload) == payload
    assert dict(view.names) == {"tls_sni": "www.example.com"}  # only names the flow showed
    assert view.flow_packets == 4
    assert str(view.src) in repr(view) and "reverse" in repr(view)


def test_the_packet_cannot_be_changed() -> None:
    arena = bytearray(bytes(IP() / UDP(dport=53) / b"payload"))
    inner = parse_inner(arena, 0, len(arena), ETH_P_IP)
    view = make_packet(arena, inner, ENDPOINT, True, {"dns_name": "example.com"}, 1)
    for field in V1_FIELDS:
        with pytest.raises(AttributeError):
            setattr(view, field, None)
        with pytest.raises(AttributeError):
            delattr(view, field)
    with pytest.raises(AttributeError):
        view.extra = 1  # type: ignore[attr-defined]
    assert view.payload.readonly
    with pytest.raises(TypeError):
        view.payload[0] = 0  # type: ignore[index]
    with pytest.raises(TypeError):
        view.names["dns_name"] = "evil.example"  # type: ignore[index]
    assert bytes(arena[-7:]) == b"payload"


def test_a_kept_packet_cannot_read_a_later_packets_bytes() -> None:
    arena = bytearray(bytes(IP() / UDP(dport=53) / b"first"))
    inner = parse_inner(arena, 0, len(arena), ETH_P_IP)
    kept: list[Any] = []

    def hoarder(packet: Packet) -> object:
        kept.append(packet)
        kept.append(packet.payload[1:])  # a slice: its own view
        return PASS

    Inspector(hoarder)(make_packet(arena, inner, ENDPOINT, True, {}, 1))
    packet, piece = kept
    with pytest.raises(ValueError, match="released"):
        bytes(packet.payload)
    with pytest.raises(ValueError, match="released"):
        packet.src  # noqa: B018 (never read during the call: the buffer is gone)
    assert repr(packet) == "<Packet: retired after its call>"
    assert bytes(piece) == b"irst"  # a slice stays readable; the API says to copy instead


def test_a_view_exported_from_the_payload_is_no_error() -> None:
    exported: list[memoryview] = []
    inspector = Inspector(lambda packet: exported.append(memoryview(packet.payload)))
    assert inspector(udp4(b"kept")) == (flowverdict.PASS_PLAIN, False)
    assert inspector.errors == 0
    assert bytes(exported[0]) == b"kept"


@pytest.mark.parametrize(
    ("keywords", "reason"),
    [
        ({"endpoint": "xyz"}, "16 hex digits"),
        ({"direction": "up"}, "forward"),
        ({"flow_packets": 0}, "at least 1"),
    ],
)
def test_from_ip_packet_refuses_what_the_worker_never_gives(
    keywords: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        from_ip_packet(bytes(IP() / UDP()), **keywords)


@pytest.mark.parametrize("data", [b"", b"\x50" + bytes(30), bytes(IP() / UDP())[:-2]])
def test_from_ip_packet_refuses_bytes_that_are_no_packet(data: bytes) -> None:
    with pytest.raises(ValueError):
        from_ip_packet(data)
