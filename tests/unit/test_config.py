"""The config loader: the shipped default, and broken files refused with file, key, line, reason."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.inner import PROTO_ICMP, PROTO_ICMPV6, PROTO_UDP
from appliance.policy import Action, Match, Verdict
from config.errors import ConfigError
from config.loader import default_config_path, load_config, parse_config


def line_of(text: str, needle: str, occurrence: int = 0) -> int:
    """The 1-based number of the line holding the `occurrence`-th `needle` in `text`."""
    found = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    return found[occurrence]


# ---- the shipped default -----------------------------------------------------------------------


def test_default_config_is_the_demo_policy():
    config = load_config()
    assert Path(config.source) == default_config_path()
    assert default_config_path().is_file()
    rules = config.policy.rules
    assert [r.name for r in rules] == [
        "drop-me",
        "weakly-to-strongly-typed",
        "icmp-echo-every-fifth",
        "icmpv6-echo-every-fifth",
    ]
    drop, replace, echo4, echo6 = rules
    assert drop.action is Action.DROP
    assert drop.match == Match(
        protocol=PROTO_UDP, ports=frozenset({3000}), payload_contains=b"drop me"
    )
    assert replace.action is Action.REPLACE
    assert replace.match == Match(protocol=PROTO_UDP, ports=frozenset({3000}))
    assert (replace.find, replace.replace) == (b"weakly typed", b"strongly typed")
    assert echo4.action is echo6.action is Action.DROP_SEQ_MULTIPLE
    assert echo4.match == Match(protocol=PROTO_ICMP, icmp_types=frozenset({0, 8}))
    assert echo6.match == Match(protocol=PROTO_ICMPV6, icmp_types=frozenset({128, 129}))
    assert echo4.every == echo6.every == 5
    assert config.policy.default is Verdict.PASS


def test_default_config_values():
    config = load_config(default_config_path())
    assert (config.dataplane.bind, config.dataplane.port) == ("0.0.0.0", 6081)
    assert config.dataplane.allow_sources == ()
    assert config.dataplane.batch_size == 128
    assert (config.health.bind, config.health.port) == ("0.0.0.0", 80)
    assert (config.health.nice, config.health.slice_us) == (10, 100)
    assert config.health.overflow_unready_s == parse_config("").health.overflow_unready_s == 10
    assert config.workers.count is None  # "auto": one per CPU
    assert config.runtime_dir == Path("/run/gwlb-appliance")
    # The host is left alone unless the config asks (the AMI's does): no surprise on a laptop.
    assert config.interface.manage is False
    assert parse_config("").interface.manage is False


def test_the_io_backend_is_the_socket_one_unless_the_ring_is_asked_for():
    assert load_config(default_config_path()).dataplane.io == "socket"
    assert parse_config("").dataplane.io == "socket"
    assert parse_config('[dataplane]\nio = "ring"\n').dataplane.io == "ring"


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("0.0", 0.0), ("1", 1.0), ("2.5", 2.5)])
def test_the_overflow_bound_may_be_off_or_seconds(value, seconds):
    config = parse_config(f"[health]\noverflow_unready_s = {value}\n")
    assert config.health.overflow_unready_s == seconds


def test_empty_file_means_defaults_and_no_rules(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    config = load_config(path)
    assert config.policy.rules == ()
    assert config.dataplane.port == 6081
    assert config.source == str(path)


def test_values_are_read():
    config = parse_config("""
[dataplane]
bind = "10.0.0.7"
port = 6082
allow_sources = ["10.1.0.0/16", "10.2.3.4"]
batch_size = 8
receive_buffer_bytes = 65536
send_buffer_bytes = 1048576

[workers]
count = 3

[runtime]
dir = "/tmp/appliance-run"

[health]
bind = "127.0.0.1"
port = 8080

[[policy.rules]]
name = "stop-here"
action = "pass"
match = { ip_version = 6, protocol = 17, src_port = [53, 123], dst_port = 9 }
""")
    plane = config.dataplane
    assert (plane.bind, plane.port, plane.batch_size) == ("10.0.0.7", 6082, 8)
    assert plane.allow_sources == (
        ipaddress.IPv4Network("10.1.0.0/16"),
        ipaddress.IPv4Network("10.2.3.4/32"),
    )
    assert (plane.receive_buffer_bytes, plane.send_buffer_bytes) == (65536, 1048576)
    assert config.workers.count == 3
    assert config.runtime_dir == Path("/tmp/appliance-run")
    assert (config.health.bind, config.health.port) == ("127.0.0.1", 8080)
    (rule,) = config.policy.rules
    assert rule.action is Action.PASS
    assert rule.match == Match(
        ip_version=6, protocol=PROTO_UDP, src_ports=frozenset({53, 123}), dst_ports=frozenset({9})
    )


# ---- broken configs ----------------------------------------------------------------------------

RULE = """
[[policy.rules]]
name = "first"
action = "drop"
match = { protocol = "udp", port = 3000, payload_contains = "drop me" }
"""

# (id, text, key path, the text on the line the error must name, words the reason must contain)
BROKEN = [
    (
        "bad-toml",
        "[dataplane]\nport = 6081\nbatch_size = 64 64\n",
        "",
        "batch_size = 64 64",
        "not valid TOML",
    ),
    ("bad-toml-unclosed-string", RULE + 'name = "oops\n', "", 'name = "oops', "not valid TOML"),
    (
        "unknown-action",
        RULE + '\n[[policy.rules]]\nname = "x"\naction = "explode"\n',
        "policy.rules[1].action",
        'action = "explode"',
        "unknown action 'explode'",
    ),
    # a key that is missing: the line of its table's header
    (
        "missing-action",
        '# no action\n\n[[policy.rules]]\nname = "x"\n',
        "policy.rules[0].action",
        "[[policy.rules]]",
        "unknown action None",
    ),
    (
        "port-too-big",
        RULE.replace("port = 3000", "port = 70000"),
        "policy.rules[0].match.port",
        "port = 70000",
        "not 70000",
    ),
    (
        "port-negative",
        RULE.replace("port = 3000", "port = -1"),
        "policy.rules[0].match.port",
        "port = -1",
        "not -1",
    ),
    (
        "port-string",
        RULE.replace("port = 3000", 'port = "3000"'),
        "policy.rules[0].match.port",
        'port = "3000"',
        "not '3000'",
    ),
    (
        "port-list-bad-item",
        RULE.replace("port = 3000", 'dst_port = [53, "x"]'),
        "policy.rules[0].match.dst_port",
        'dst_port = [53, "x"]',
        "not 'x'",
    ),
    (
        "listen-port-zero",
        '[dataplane]\nbind = "0.0.0.0"\nport = 0\n',
        "dataplane.port",
        "port = 0",
        "must be an integer from 1 to 65535, not 0",
    ),
    ("listen-port-string", '[health]\nport = "80"\n', "health.port", 'port = "80"', "not '80'"),
    (
        "health-slice-too-long",
        "[health]\nslice_us = 200000\n",
        "health.slice_us",
        "slice_us = 200000",
        "must be an integer from 0 to 100000, not 200000",
    ),
    (
        "health-overflow-negative",
        "[health]\nstaleness_s = 3\noverflow_unready_s = -1\n",
        "health.overflow_unready_s",
        "overflow_unready_s = -1",
        "must be 0 (off) or a number of seconds from 0.1 to 3600, not -1",
    ),
    (
        "health-overflow-not-a-number",
        '[health]\noverflow_unready_s = "10s"\n',
        "health.overflow_unready_s",
        "overflow_unready_s",
        "not '10s'",
    ),
    (
        "typo-in-table",
        "[dataplane]\nport = 6081\nbatch_sise = 32\n",
        "dataplane.batch_sise",
        "batch_sise",
        "unknown key",
    ),
    (
        "typo-in-rule",
        RULE.replace("action =", "acton ="),
        "policy.rules[0].acton",
        "acton =",
        "unknown key",
    ),
    (
        "typo-in-match",
        RULE.replace("payload_contains", "payload_contain"),
        "policy.rules[0].match.payload_contain",
        "payload_contain",
        "unknown match",
    ),
    ("typo-top-level-table", RULE + "\n[helth]\nport = 80\n", "helth", "[helth]", "unknown key"),
    (
        "replace-on-tcp",
        '[[policy.rules]]\nname = "r"\naction = "replace"\n'
        'match = { protocol = "tcp", port = 80 }\nfind = "a"\nreplace = "b"\n',
        "policy.rules[0].match.protocol",
        "match = {",
        "replace needs protocol udp",
    ),
    (
        "replace-any-protocol",
        '[[policy.rules]]\nname = "r"\naction = "replace"\nfind = "a"\nreplace = "b"\n',
        "policy.rules[0].match.protocol",
        "[[policy.rules]]",
        "replace needs protocol udp",
    ),
    (
        "replace-empty-find",
        '[[policy.rules]]\nname = "r"\naction = "replace"\n'
        'match = { protocol = "udp" }\nfind = ""\nreplace = "b"\n',
        "policy.rules[0].find",
        'find = ""',
        "non-empty",
    ),
    (
        "drop-seq-on-udp",
        '[[policy.rules]]\nname = "d"\naction = "drop_seq_multiple"\n'
        'match = { protocol = "udp" }\nevery = 5\n',
        "policy.rules[0].match.protocol",
        "match = {",
        "drop_seq_multiple needs protocol icmp",
    ),
    (
        "drop-seq-every-zero",
        '[[policy.rules]]\nname = "d"\naction = "drop_seq_multiple"\n'
        'match = { protocol = "icmp" }\nevery = 0\n',
        "policy.rules[0].every",
        "every = 0",
        "not 0",
    ),
    (
        "icmp-type-on-udp",
        RULE.replace('protocol = "udp"', 'protocol = "udp", icmp_type = 8'),
        "policy.rules[0].match.icmp_type",
        "icmp_type = 8",
        "needs protocol icmp",
    ),
    (
        "find-on-drop",
        RULE + 'find = "x"\n',
        "policy.rules[0].find",
        'find = "x"',
        "not used by action 'drop'",
    ),
    (
        "duplicate-rule-names",
        RULE + RULE.replace('action = "drop"', 'action = "pass"'),
        "policy.rules[1].name",
        ('name = "first"', 1),
        "duplicate rule name 'first'",
    ),
    (
        "bad-cidr",
        '[dataplane]\nallow_sources = ["10.0.0.0/8", "10.0.0.300/24"]\n',
        "dataplane.allow_sources[1]",
        "allow_sources",
        "not an IPv4 network: '10.0.0.300/24'",
    ),
    (
        "ipv6-cidr",
        '[dataplane]\nallow_sources = ["fd00::/8"]\n',
        "dataplane.allow_sources[0]",
        "allow_sources",
        "not an IPv4 network",
    ),
    (
        "bad-bind",
        '[dataplane]\nbind = "localhost"\n',
        "dataplane.bind",
        "bind =",
        "must be an IPv4 address",
    ),
    (
        "runtime-dir-relative",
        '[runtime]\ndir = "run/gwlb-appliance"\n',
        "runtime.dir",
        "dir =",
        "must be an absolute path",
    ),
    ("workers-zero", "[workers]\ncount = 0\n", "workers.count", "count = 0", "not 0"),
    (
        "control-group-missing",
        '[control]\ngroup = "no-such-group-here"\n',
        "control.group",
        "group =",
        "no group 'no-such-group-here' on this host: create it",
    ),
    (
        "header-with-comment",
        "[dataplane]   # the Geneve listener\nport = 0\n",
        "dataplane.port",
        "port = 0",
        "not 0",
    ),
    ("mtu-too-small", "[interface]\nmtu = 1500\n", "interface.mtu", "mtu = 1500", "8568"),
    ("rp-filter-3", "[interface]\nrp_filter = 3\n", "interface.rp_filter", "rp_filter", "not 3"),
    (
        "ifname-too-long",
        '[interface]\nname = "a-very-long-ifname"\n',
        "interface.name",
        "name",
        "interface name",
    ),
    (
        "steering-typo",
        '[dataplane]\nsteering = "inner"\n',
        "dataplane.steering",
        "steering",
        "inner-flow, kernel",
    ),
    ("io-typo", '[dataplane]\nio = "rings"\n', "dataplane.io", "io", "socket, ring"),
    (
        "health-min-workers",
        "[health]\nmin_workers = 1.5\n",
        "health.min_workers",
        "min_workers",
        "fraction",
    ),
    ("control-mode", '[control]\nmode = "777x"\n', "control.mode", "mode", "octal"),
    (
        "name-wildcard-over-public-suffix",
        '[[policy.rules]]\naction = "pass"\nmatch = { tls_sni = ["github.com", "*.co.uk"] }\n',
        "policy.rules[0].match.tls_sni",
        "tls_sni",
        "public suffix",
    ),
    (
        "name-not-a-name",
        '[[policy.rules]]\naction = "drop"\nmatch = { http_host = ["exa mple.com"] }\n',
        "policy.rules[0].match.http_host",
        "http_host",
        "exa mple.com",
    ),
    (
        "policy-mode",
        '[policy]\nmode = "learn"\n',
        "policy.mode",
        "mode",
        "enforce",
    ),
    (
        "rule-mode",
        '[[policy.rules]]\naction = "drop"\nmode = "warn"\n',
        "policy.rules[0].mode",
        "mode",
        "audit",
    ),
    (
        "inspector-for-a-drop",
        '[[policy.rules]]\naction = "drop"\ninspector = "a:b"\n',
        "policy.rules[0].inspector",
        "inspector",
        "only for action 'inspect'",
    ),
    (
        "inspect-without-inspector",
        '[[policy.rules]]\naction = "inspect"\n',
        "policy.rules[0].inspector",
        "[[policy.rules]]",  # a missing key: the table that misses it
        "package.module:function",
    ),
    (
        "flowlog-destination",
        '[flowlog]\ndestination = "syslog"\n',
        "flowlog.destination",
        "destination",
        "file, stdout",
    ),
    (
        "flowlog-relative-path",
        '[flowlog]\npath = "flows.log"\n',
        "flowlog.path",
        "path",
        "absolute path",
    ),
    (
        "dns-reject",
        '[policy]\ndns_reject = "servfail"\n',
        "policy.dns_reject",
        "dns_reject",
        "refused",
    ),
    (
        "name-packets-zero",
        "[policy]\nname_packets = 0\n",
        "policy.name_packets",
        "name_packets",
        "not 0",
    ),
    (
        "heartbeat-timeout",
        "[workers]\nheartbeat_timeout_s = 0\n",
        "workers.heartbeat_timeout_s",
        "heartbeat_timeout_s",
        "seconds",
    ),
]


@pytest.mark.parametrize(
    ("text", "where", "line", "reason"), [pytest.param(*case[1:], id=case[0]) for case in BROKEN]
)
def test_broken_config_is_refused_with_file_key_line_reason(tmp_path, text, where, line, reason):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.file == str(path)
    assert error.where == where
    assert reason in error.reason
    needle, occurrence = line if isinstance(line, tuple) else (line, 0)
    assert error.line == line_of(text, needle, occurrence)
    message = str(error)
    assert message.startswith(f"{path}:{error.line}: ")
    assert where in message and reason in message


def test_unreadable_file_is_refused(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == str(path)
    assert "cannot read" in str(caught.value)


def test_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[dataplane]\nbind = "\xe9"\n')
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


# ---- the real daemon refuses a broken config ---------------------------------------------------


def applianced() -> list[str]:
    script = Path(sys.executable).with_name("applianced")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "supervisor.daemon"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[[policy.rules]]\nname = "x"\naction = "explode"\n', "unknown action 'explode'"),
        ("[dataplane]\nport = 6081\nbatch_size = 64 64\n", "not valid TOML"),
    ],
    ids=["unknown-action", "bad-toml"],
)
def test_applianced_exits_2_on_a_broken_config(tmp_path, text, reason):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    result = subprocess.run(
        [*applianced(), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"{path}:3" in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
