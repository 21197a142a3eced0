"""Capture filters: every primitive over IPv4 and IPv6, precedence, tcpdump's qualifier form,
refusals naming their column, and a property test holding the compiled predicate to a plain
evaluation (written with `ipaddress`) of random expressions over random packets."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw

from appliance.capturefilter import (
    MAX_DEPTH,
    MAX_FILTER_LEN,
    VERDICTS,
    CaptureView,
    FilterError,
    compile_filter,
)
from appliance.geneve import ETH_P_IP, ETH_P_IPV6
from appliance.inner import parse_inner
from appliance.policy import Verdict

TENANT_A, TENANT_B = "2b8ee1d4db0c51c4", "00000000000000b2"
TCP, UDP, ICMP, ICMPV6, GRE = 6, 17, 1, 58, 47


def view(
    src: str = "10.1.0.5",
    dst: str = "10.2.0.9",
    protocol: int = TCP,
    sport: int = 40000,
    dport: int = 443,
    endpoint: str = TENANT_A,
    verdict: str = "pass",
) -> CaptureView:
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    assert source.version == destination.version
    if protocol not in (TCP, UDP):
        sport = dport = -1
    return CaptureView(
        source.version,
        protocol,
        source.packed,
        destination.packed,
        sport,
        dport,
        bytes.fromhex(endpoint),
        verdict,
    )


V4_TCP = view()
V4_UDP = view(protocol=UDP, sport=5353, dport=53, verdict="drop")
V4_ICMP = view(src="192.168.1.1", dst="10.2.0.9", protocol=ICMP, verdict="reject")
V6_TCP = view(src="fd00:a::5", dst="fd00:b::9", endpoint=TENANT_B, verdict="rewrite")
V6_UDP = view(src="fd00:a::5", dst="2001:db8::1", protocol=UDP, sport=53, dport=8080)
V6_ICMP = view(src="fd00:a::5", dst="fd00:b::9", protocol=ICMPV6, verdict="unrewritable")
V6_GRE = view(src="2001:db8::7", dst="fd00:b::9", protocol=GRE)
V4_ICMPV6 = view(protocol=ICMPV6)  # nonsense on the wire; `icmp6` still asks for IPv6
VIEWS = {
    "V4_TCP": V4_TCP,
    "V4_UDP": V4_UDP,
    "V4_ICMP": V4_ICMP,
    "V6_TCP": V6_TCP,
    "V6_UDP": V6_UDP,
    "V6_ICMP": V6_ICMP,
    "V6_GRE": V6_GRE,
    "V4_ICMPV6": V4_ICMPV6,
}


def matching(expression: str) -> set[str]:
    predicate = compile_filter(expression)
    return {name for name, v in VIEWS.items() if predicate(v)}


PRIMITIVES = [
    ("host 10.1.0.5", {"V4_TCP", "V4_UDP", "V4_ICMPV6"}),
    ("host 10.2.0.9", {"V4_TCP", "V4_UDP", "V4_ICMP", "V4_ICMPV6"}),
    ("host fd00:b::9", {"V6_TCP", "V6_ICMP", "V6_GRE"}),
    ("host fd00:b:0:0::9", {"V6_TCP", "V6_ICMP", "V6_GRE"}),  # any spelling of the address
    ("src 192.168.1.1", {"V4_ICMP"}),
    ("src host 192.168.1.1", {"V4_ICMP"}),
    ("dst 192.168.1.1", set()),
    ("dst host 2001:db8::1", {"V6_UDP"}),
    ("src 2001:db8::7", {"V6_GRE"}),
    ("net 10.0.0.0/8", {"V4_TCP", "V4_UDP", "V4_ICMP", "V4_ICMPV6"}),
    ("net 192.168.0.0/16", {"V4_ICMP"}),
    ("src net 10.0.0.0/8", {"V4_TCP", "V4_UDP", "V4_ICMPV6"}),
    ("dst net 10.2.0.8/31", {"V4_TCP", "V4_UDP", "V4_ICMP", "V4_ICMPV6"}),
    ("net 2001:db8::/32", {"V6_UDP", "V6_GRE"}),
    ("src net 2001:db8::/32", {"V6_GRE"}),
    ("dst net fd00::/8", {"V6_TCP", "V6_ICMP", "V6_GRE"}),
    ("net 0.0.0.0/0", {"V4_TCP", "V4_UDP", "V4_ICMP", "V4_ICMPV6"}),  # every IPv4 packet only
    ("net ::/0", {"V6_TCP", "V6_UDP", "V6_ICMP", "V6_GRE"}),
    ("port 53", {"V4_UDP", "V6_UDP"}),
    ("src port 53", {"V6_UDP"}),
    ("dst port 53", {"V4_UDP"}),
    ("port 443", {"V4_TCP", "V6_TCP"}),
    ("portrange 1-1024", {"V4_TCP", "V4_UDP", "V6_TCP", "V6_UDP"}),
    ("src portrange 5000-6000", {"V4_UDP"}),
    ("dst portrange 8080-8080", {"V6_UDP"}),
    ("portrange 0-65535", {"V4_TCP", "V4_UDP", "V6_TCP", "V6_UDP"}),  # never a packet without
    ("tcp", {"V4_TCP", "V6_TCP"}),
    ("udp", {"V4_UDP", "V6_UDP"}),
    ("icmp", {"V4_ICMP"}),
    ("icmp6", {"V6_ICMP"}),
    ("proto 47", {"V6_GRE"}),
    ("proto 58", {"V6_ICMP", "V4_ICMPV6"}),
    ("ip", {"V4_TCP", "V4_UDP", "V4_ICMP", "V4_ICMPV6"}),
    ("ip6", {"V6_TCP", "V6_UDP", "V6_ICMP", "V6_GRE"}),
    (f"endpoint {TENANT_B}", {"V6_TCP"}),
    (f"endpoint {TENANT_B.upper()}", {"V6_TCP"}),
    ("verdict drop", {"V4_UDP"}),
    ("verdict reject", {"V4_ICMP"}),
    ("verdict rewrite", {"V6_TCP"}),
    ("verdict unrewritable", {"V6_ICMP"}),
    ("verdict pass", {"V4_TCP", "V6_UDP", "V6_GRE", "V4_ICMPV6"}),
]


@pytest.mark.parametrize(("expression", "expected"), PRIMITIVES)
def test_each_primitive(expression: str, expected: set[str]) -> None:
    assert matching(expression) == expected


@pytest.mark.parametrize(
    ("expression", "same_as"),
    [
        ("not tcp and udp or icmp", "((not tcp) and udp) or icmp"),
        ("icmp or udp and not tcp", "icmp or (udp and (not tcp))"),
        ("not ip6 or tcp and port 443", "(not ip6) or (tcp and port 443)"),
        ("! ! tcp", "tcp"),
        ("tcp || udp && ip6", "tcp || (udp && ip6)"),
        ("ip and tcp or ip6 and udp", "(ip and tcp) or (ip6 and udp)"),
        ("not (tcp or udp)", "not tcp and not udp"),  # De Morgan
        ("tcp port 443", "tcp and port 443"),  # tcpdump's qualifier form
        ("udp src port 53", "udp and src port 53"),
        ("ip6 net fd00::/8", "ip6 and net fd00::/8"),
        ("ip host 10.1.0.5 or icmp6", "(ip and host 10.1.0.5) or icmp6"),
        ("not tcp port 443", "not (tcp and port 443)"),
        ("ip proto 58", "ip and proto 58"),
        ("TCP AND Port 443 Or VERDICT Drop", "tcp and port 443 or verdict drop"),
        ("tcp&&port 443||!ip6", "tcp and port 443 or not ip6"),
        ("(((tcp)))", "tcp"),
    ],
)
def test_precedence_and_spellings(expression: str, same_as: str) -> None:
    assert matching(expression) == matching(same_as)


def test_precedence_is_not_left_to_right() -> None:
    # read left to right, `icmp or udp and ip6` would be (icmp or udp) and ip6: V6_UDP only
    assert matching("icmp or udp and ip6") == {"V4_ICMP", "V6_UDP"}
    assert matching("(icmp or udp) and ip6") == {"V6_UDP"}


def test_an_empty_filter_keeps_everything() -> None:
    assert matching("") == set(VIEWS)
    assert matching("   ") == set(VIEWS)


def test_long_chains_and_the_deepest_nesting_allowed() -> None:
    chain = " or ".join(f"port {p}" for p in range(1000, 1300)) + " or port 53"  # 3600 bytes
    assert matching(chain) == {"V4_UDP", "V6_UDP"}
    ands = " and ".join(["ip6"] * 500)
    assert matching(ands) == matching("ip6")
    deepest = "(" * MAX_DEPTH + "tcp" + ")" * MAX_DEPTH
    assert matching(deepest) == {"V4_TCP", "V6_TCP"}
    assert matching("not " * MAX_DEPTH + "tcp") == {"V4_TCP", "V6_TCP"}  # an even number


def test_verdict_words_are_the_policys_verdicts() -> None:
    # PENDING and INSPECT say a flow is not decided yet; a packet's own fate is one of the rest.
    undecided = {Verdict.PENDING, Verdict.INSPECT}
    assert set(VERDICTS) == {v.name.lower() for v in Verdict if v not in undecided}


def test_a_view_made_from_a_parsed_packet(gwlb) -> None:
    """How the worker is to fill a view: from its InnerPacket and the buffer it parsed."""
    for packet, ethertype in ((gwlb.udp4(dport=53), ETH_P_IP), (gwlb.tcp6(dport=443), ETH_P_IPV6)):
        buf = raw(packet)
        pkt = parse_inner(buf, 0, len(buf), ethertype)
        src_at, size = (12, 4) if pkt.version == 4 else (8, 16)
        v = CaptureView(
            pkt.version,
            pkt.protocol,
            buf[pkt.start + src_at : pkt.start + src_at + size],
            buf[pkt.start + src_at + size : pkt.start + src_at + 2 * size],
            pkt.src_port,
            pkt.dst_port,
            gwlb.endpoint_id,
            "pass",
        )
        host = packet.src
        endpoint = gwlb.endpoint_id.hex()
        wanted = f"src {host} and endpoint {endpoint} and (udp dst port 53 or tcp dst port 443)"
        assert compile_filter(wanted)(v)
        assert not compile_filter(f"dst {host} or verdict drop")(v)


# --- refusals --------------------------------------------------------------------------------

PRIMITIVE_HINT = "expected a primitive (host, net, port, tcp, endpoint, verdict, ...), 'not' or '('"
CIDR = "expected a network in CIDR form (10.0.0.0/8, fd00::/8) after 'net'"
RANGE = "expected a port range low-high (1024-65535) after 'portrange'"
CONTINUE = "expected 'and', 'or' or the end of the filter"
END = "the end of the filter"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("tcp and port http", "column 14: expected a port number after 'port', found 'http'"),
        ("port 70000", "column 6: expected a port number after 'port', found '70000', which is "
         "above 65535"),
        ("port ٣", "column 6: expected a port number after 'port', found '٣'"),
        ("src port", f"column 9: expected a port number after 'port', found {END}"),
        ("host", f"column 5: expected an IPv4 or IPv6 address after 'host', found {END}"),
        ("host 10.0.0.256", "column 6: expected an IPv4 or IPv6 address after 'host', found "
         "'10.0.0.256'"),
        ("dst host fd00::zz", "column 10: expected an IPv4 or IPv6 address after 'host', found "
         "'fd00::zz'"),
        ("src foo", "column 5: expected an address, 'host', 'net', 'port' or 'portrange' after "
         "'src', found 'foo'"),
        ("net 10.1.2.3/8", f"column 5: {CIDR}, found '10.1.2.3/8', which has host bits set (the "
         "network is 10.0.0.0/8)"),
        ("src net fd00::1/16", f"column 9: {CIDR}, found 'fd00::1/16', which has host bits set "
         "(the network is fd00::/16)"),
        ("net 10.0.0.0", f"column 5: {CIDR}, found '10.0.0.0'"),
        ("net fd00::/129", f"column 5: {CIDR}, found 'fd00::/129'"),
        ("portrange 9-1", f"column 11: {RANGE}, found '9-1', which runs downwards"),
        ("portrange 80", f"column 11: {RANGE}, found '80'"),
        ("portrange 1-70000", f"column 11: {RANGE}, found '1-70000', which goes above 65535"),
        ("proto tcp", "column 7: expected a protocol number after 'proto', found 'tcp', a "
         "primitive of its own: write 'tcp'"),
        ("proto 256", "column 7: expected a protocol number after 'proto', found '256', which is "
         "above 255"),
        ("endpoint 12", "column 10: expected a GWLB endpoint id of 16 hex digits after "
         "'endpoint', found '12'"),
        ("verdict maybe", "column 9: expected a verdict (pass, drop, reject, rewrite, "
         "unrewritable) after 'verdict', found 'maybe'"),
        ("(tcp or udp", f"column 12: expected ')' to close the '(' at column 1, found {END}"),
        ("ip and (tcp or (udp)", f"column 21: expected ')' to close the '(' at column 8, found "
         f"{END}"),
        ("tcp)", f"column 4: {CONTINUE}, found ')'"),
        ("tcp udp", f"column 5: {CONTINUE}, found 'udp'"),
        ("tcp & udp", f"column 5: {CONTINUE}, found '&'"),
        ("tcp port 443 443", f"column 14: {CONTINUE}, found '443'"),
        ("host 10.0.0.1 or 10.0.0.2", f"column 18: {PRIMITIVE_HINT}, found '10.0.0.2'"),
        ("and tcp", f"column 1: {PRIMITIVE_HINT}, found 'and'"),
        ("tcp and", f"column 8: {PRIMITIVE_HINT}, found {END}"),
        ("not", f"column 4: {PRIMITIVE_HINT}, found {END}"),
        ("()", f"column 2: {PRIMITIVE_HINT}, found ')'"),
        ("http", f"column 1: {PRIMITIVE_HINT}, found 'http'"),
        ("  tcp   or  bogus", f"column 13: {PRIMITIVE_HINT}, found 'bogus'"),
        ("tcp || | udp", f"column 8: {PRIMITIVE_HINT}, found '|'"),
        ("(" * (MAX_DEPTH + 1) + "tcp" + ")" * (MAX_DEPTH + 1),
         f"column {MAX_DEPTH + 1}: expected a primitive within {MAX_DEPTH} nested parentheses "
         f"and 'not's, found '('"),
    ],
)  # fmt: skip
def test_refusals_name_the_column_and_what_was_expected(expression: str, message: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(expression)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)
    assert caught.value.column == int(message.split()[1].rstrip(":"))


def test_a_filter_too_long_is_refused() -> None:
    assert compile_filter("tcp".ljust(MAX_FILTER_LEN))(V4_TCP)
    message = f"column {MAX_FILTER_LEN + 1}: expected at most {MAX_FILTER_LEN} characters, found"
    with pytest.raises(FilterError, match=message):
        compile_filter("tcp".ljust(MAX_FILTER_LEN + 1))


# --- the property: compiled predicate == plain evaluation ------------------------------------

V4_POOL = ["10.0.0.1", "10.0.0.2", "10.1.0.5", "192.168.1.1"]
V6_POOL = ["fd00::1", "fd00::2", "fd00:a::5", "2001:db8::1"]
NETWORKS = ["10.0.0.0/8", "10.0.0.0/31", "192.168.0.0/16", "0.0.0.0/0", "10.0.0.2/32"]
NETWORKS += ["fd00::/16", "fd00::/127", "2001:db8::/32", "::/0", "fd00:a::5/128"]
PORTS = [0, 22, 53, 443, 8080, 65535]
PROTOCOLS = [ICMP, TCP, UDP, ICMPV6, GRE]
ENDPOINTS = [TENANT_A, TENANT_B]


PLAIN = {
    "tcp": lambda v: v.protocol == TCP,
    "udp": lambda v: v.protocol == UDP,
    "icmp": lambda v: (v.version, v.protocol) == (4, ICMP),
    "icmp6": lambda v: (v.version, v.protocol) == (6, ICMPV6),
    "ip": lambda v: v.version == 4,
    "ip6": lambda v: v.version == 6,
}


def _on(side: str, test):
    """A plain evaluation of `test(value)` on the address or port pair `side` names ("src ",
    "dst ", or "" for either)."""
    if side == "src ":
        return lambda v, pair: test(pair(v)[0])
    if side == "dst ":
        return lambda v, pair: test(pair(v)[1])
    return lambda v, pair: test(pair(v)[0]) or test(pair(v)[1])


def _addresses(v: CaptureView):
    return ipaddress.ip_address(v.src), ipaddress.ip_address(v.dst)


def _ports(v: CaptureView) -> tuple[int, int]:
    return v.src_port, v.dst_port


@st.composite
def qualifiable(draw):
    """(text, plain evaluation) of a primitive tcpdump lets `tcp`, `ip`... qualify."""
    kind = draw(st.sampled_from(["host", "net", "port", "portrange", "proto"]))
    side = draw(st.sampled_from(["", "src ", "dst "]))
    if kind == "host":
        a = ipaddress.ip_address(draw(st.sampled_from(V4_POOL + V6_POOL)))
        word = draw(st.sampled_from(["host ", ""])) if side else "host "
        test = _on(side, lambda x: x == a)
        return side + word + str(a), lambda v: test(v, _addresses)
    if kind == "net":
        n = ipaddress.ip_network(draw(st.sampled_from(NETWORKS)))
        test = _on(side, lambda x: x in n)
        return f"{side}net {n}", lambda v: test(v, _addresses)
    if kind == "port":
        p = draw(st.sampled_from(PORTS))
        test = _on(side, lambda x: x == p)
        return f"{side}port {p}", lambda v: test(v, _ports)
    if kind == "portrange":
        low, high = sorted(draw(st.lists(st.sampled_from(PORTS), min_size=2, max_size=2)))
        test = _on(side, lambda x: x in range(low, high + 1))
        return f"{side}portrange {low}-{high}", lambda v: test(v, _ports)
    n = draw(st.sampled_from(PROTOCOLS))
    return f"proto {n}", lambda v: v.protocol == n


@st.composite
def primitives(draw):
    """(text, plain evaluation) of any primitive, qualified now and then."""
    kind = draw(st.sampled_from(["qualifiable", "qualified", "word", "endpoint", "verdict"]))
    if kind == "qualifiable":
        return draw(qualifiable())
    if kind == "qualified":
        qualifier = draw(st.sampled_from(["tcp", "udp", "ip", "ip6"]))
        text, test = draw(qualifiable())
        first = PLAIN[qualifier]
        return f"{qualifier} {text}", lambda v: first(v) and test(v)
    if kind == "endpoint":
        e = draw(st.sampled_from(ENDPOINTS))
        return f"endpoint {e}", lambda v: v.endpoint.hex() == e
    if kind == "verdict":
        verdict = draw(st.sampled_from(VERDICTS))
        return f"verdict {verdict}", lambda v: v.verdict == verdict
    name = draw(st.sampled_from(sorted(PLAIN)))
    return name, PLAIN[name]


# A tree: ("prim", (text, evaluation), wrap) | ("not", spelling, child, wrap)
#       | ("and" | "or", spelling, left, right, wrap); `wrap` adds parentheses the text needs not.
wraps = st.sampled_from([False, False, False, True])
trees = st.recursive(
    st.tuples(st.just("prim"), primitives(), wraps),
    lambda children: st.one_of(
        st.tuples(st.just("not"), st.sampled_from(["not ", "!", "! ", "NOT "]), children, wraps),
        st.tuples(
            st.just("and"), st.sampled_from([" and ", " && ", "&&", " AND "]), children, children,
            wraps,
        ),
        st.tuples(
            st.just("or"), st.sampled_from([" or ", " || ", "||", " Or "]), children, children,
            wraps,
        ),
    ),
    max_leaves=10,
)  # fmt: skip
PRECEDENCE = {"or": 1, "and": 2, "not": 3, "prim": 4}


def render(tree, need: int = 0):
    """The tree as a filter, with the parentheses precedence needs, and more where it says."""
    kind = tree[0]
    if kind == "prim":
        text = tree[1][0]
    elif kind == "not":
        text = tree[1] + render(tree[2], PRECEDENCE["not"])
    else:
        level = PRECEDENCE[kind]
        text = render(tree[2], level) + tree[1] + render(tree[3], level)
    if PRECEDENCE[kind] < need or tree[-1]:
        text = f"({text})"
    return text


def evaluate(tree, v: CaptureView) -> bool:
    kind = tree[0]
    if kind == "prim":
        return bool(tree[1][1](v))
    if kind == "not":
        return not evaluate(tree[2], v)
    if kind == "and":
        return evaluate(tree[2], v) and evaluate(tree[3], v)
    return evaluate(tree[2], v) or evaluate(tree[3], v)


@st.composite
def views(draw) -> CaptureView:
    version = draw(st.sampled_from([4, 6]))
    pool = V4_POOL if version == 4 else V6_POOL
    protocol = draw(st.sampled_from(PROTOCOLS))
    ported = protocol in (TCP, UDP)
    return CaptureView(
        version,
        protocol,
        ipaddress.ip_address(draw(st.sampled_from(pool))).packed,
        ipaddress.ip_address(draw(st.sampled_from(pool))).packed,
        draw(st.sampled_from(PORTS)) if ported else -1,
        draw(st.sampled_from(PORTS)) if ported else -1,
        bytes.fromhex(draw(st.sampled_from(ENDPOINTS))),
        draw(st.sampled_from(VERDICTS)),
    )


@settings(max_examples=500, deadline=None)
@given(tree=trees, packets=st.lists(views(), min_size=1, max_size=8))
def test_the_compiled_predicate_agrees_with_a_plain_evaluation(tree, packets) -> None:
    text = render(tree)
    predicate = compile_filter(text)
    for v in packets:
        assert predicate(v) == evaluate(tree, v), (text, v)
