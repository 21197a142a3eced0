"""The pcapng writer, read back by two readers written by others: tshark (Wireshark's wiretap,
also through capinfos) and scapy's PcapNgReader. Packets are built by scapy.

tshark (and capinfos, from the same install) is required where CI is set: CI runs on a machine
deploy/local/bootstrap.sh prepared, which installs it, so there a missing tshark fails these
tests instead of letting them skip. Elsewhere they skip, naming it. The scapy checks need nothing
and always run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from appliance.pcapng import (
    LINKTYPE_RAW,
    MAX_OPTION_LEN,
    MAX_SNAPLEN,
    PcapngWriter,
    enhanced_packet_block,
    interface_description_block,
    section_header_block,
)

T0_NS = 1_700_000_000_123_456_789  # 2023-11-14 22:13:20.123456789 UTC
TCP4 = raw(
    IP(src="10.1.0.5", dst="10.2.0.9") / TCP(sport=40000, dport=443, flags="PA") / (b"x" * 5)
)
UDP6 = raw(IPv6(src="fd00:a::5", dst="fd00:b::9") / UDP(sport=5353, dport=53) / (b"q" * 200))
UDP4 = raw(IP(src="10.1.0.6", dst="10.2.0.10") / UDP(sport=1234, dport=3000) / b"hi")


def _tool(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        message = (
            f"{name} is not installed (Debian: apt-get install --no-install-recommends tshark)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, where the bootstrap must have installed it")
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def tshark() -> str:
    return _tool("tshark")


@pytest.fixture(scope="session")
def capinfos() -> str:
    return _tool("capinfos")  # wireshark-common, which tshark depends on


def run(*command: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(command, input=stdin, capture_output=True, timeout=60, check=False)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"{command[0]} exited {done.returncode}:\n{stderr}"
    return done.stdout.decode()


def fields(tshark: str, path: Path, *names: str) -> list[list[str]]:
    """One row a packet, one column a field (tshark -T fields)."""
    args = [a for name in names for a in ("-e", name)]
    out = run(tshark, "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=f", *args)
    return [line.split("\t") for line in out.splitlines()]


def comments(tshark: str, path: Path) -> list[str | None]:
    """Each packet's comment (None: none), through -T json, which keeps tabs and newlines."""
    out = run(tshark, "-n", "-r", str(path), "-T", "json", "-j", "pkt_comment frame")
    return [
        p["_source"]["layers"].get("pkt_comment", {}).get("frame.comment") for p in json.loads(out)
    ]


def ns(packet) -> int:
    """scapy's timestamp in nanoseconds: it is an EDecimal of seconds, which compares with an int
    through float."""
    exact = Decimal(packet.time) * 10**9
    assert exact == int(exact)
    return int(exact)


def write(path: Path) -> None:
    """Two interfaces, three packets: whole, cut by the interface's snaplen, and one the caller
    had already cut (original_length)."""
    with path.open("wb") as f:
        writer = PcapngWriter(f)
        worker0 = writer.add_interface("worker0")
        worker1 = writer.add_interface("worker1", snaplen=64)
        writer.packet(worker0, T0_NS, TCP4, comment="drop: rule 'no-https' (3)")
        writer.packet(worker1, T0_NS + 1, memoryview(UDP6), comment="pass", outbound=True)
        writer.packet(worker0, T0_NS + 1_000, UDP4[:21], original_length=len(UDP4), outbound=None)


def test_tshark_reads_packets_interfaces_comments_timestamps_and_lengths(tshark, tmp_path) -> None:
    path = tmp_path / "three.pcapng"
    write(path)
    frame = ["frame.interface_id", "frame.interface_name", "frame.time_epoch", "frame.len"]
    frame += ["frame.cap_len", "frame.comment", "frame.packet_flags_direction", "frame.protocols"]
    rows = fields(tshark, path, *frame, "ip.src", "ipv6.dst", "tcp.dstport", "udp.dstport")
    assert rows == [
        ["0", "worker0", "1700000000.123456789", "45", "45", "drop: rule 'no-https' (3)",
         "0x00000001", "raw:ip:tcp:data", "10.1.0.5", "", "443", ""],
        ["1", "worker1", "1700000000.123456790", "248", "64", "pass",
         "0x00000002", "raw:ipv6:udp:dns", "", "fd00:b::9", "", "53"],
        ["0", "worker0", "1700000000.123457789", "30", "21", "",
         "", "raw:ip:udp", "10.1.0.6", "", "", ""],  # one byte of UDP
    ]  # fmt: skip


def test_capinfos_reads_the_section_and_interface_options(capinfos, tmp_path) -> None:
    path = tmp_path / "three.pcapng"
    write(path)
    out = run(capinfos, str(path))
    assert "Capture application: gwlb-appliance" in out
    assert "Number of packets:   3" in out
    interfaces = out.split("Interface #")[1:]
    assert [" Name = worker0" in i for i in interfaces] == [True, False]
    assert [" Name = worker1" in i for i in interfaces] == [False, True]
    for interface, snaplen in zip(interfaces, (MAX_SNAPLEN, 64), strict=True):
        assert "Encapsulation = Raw IP" in interface
        assert f"Capture length = {snaplen}" in interface
        assert "Time precision = nanoseconds (9)" in interface


def test_scapy_reads_the_same_file(tmp_path) -> None:
    path = tmp_path / "three.pcapng"
    write(path)
    packets = rdpcap(str(path))
    assert [p.sniffed_on for p in packets] == ["worker0", "worker1", "worker0"]
    assert [ns(p) for p in packets] == [T0_NS, T0_NS + 1, T0_NS + 1_000]
    assert [p.wirelen for p in packets] == [len(TCP4), len(UDP6), len(UDP4)]
    assert [p.original for p in packets] == [TCP4, UDP6[:64], UDP4[:21]]
    assert [p.comments for p in packets] == [[b"drop: rule 'no-https' (3)"], [b"pass"], None]
    assert [p.direction for p in packets] == [1, 2, None]
    assert IP(packets[0].original)[TCP].dport == 443  # the bytes are the packet scapy built


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
def test_every_padding_of_data_and_comment_reads_back(tshark, tmp_path, size) -> None:
    """Data and comment lengths of each remainder mod 4, in one file: a padding error shifts
    every block after it, and the reader would fail or misread the next packet."""
    path = tmp_path / "padding.pcapng"
    data = [UDP4 + b"z" * n for n in range(4)]  # 30..33 bytes (the IP lengths lie: no matter)
    with path.open("wb") as f:
        writer = PcapngWriter(f)
        interface = writer.add_interface("é" * size)  # 2 bytes each in UTF-8
        for n, packet in enumerate(data):
            writer.packet(interface, T0_NS + n, packet, comment="c" * (size + n))
    rows = fields(tshark, path, "frame.cap_len", "frame.interface_name")
    assert rows == [[str(len(d)), "é" * size] for d in data]
    assert comments(tshark, path) == ["c" * (size + n) for n in range(4)]


def test_comments_keep_any_text(tshark, tmp_path) -> None:
    texts = ["tabs\tand\nnewlines", "ünïcødé ✓ 🚫", "commas, quotes \" and 'apostrophes'", ""]
    path = tmp_path / "comments.pcapng"
    with path.open("wb") as f:
        writer = PcapngWriter(f)
        interface = writer.add_interface("worker0")
        for n, text in enumerate(texts):
            writer.packet(interface, T0_NS + n, TCP4, comment=text)
        writer.packet(interface, T0_NS + 9, TCP4)
    got = comments(tshark, path)
    assert got[:3] == texts[:3]
    assert got[3] in ("", None)  # an empty comment is legal; tshark may show it or not
    assert got[4] is None


def test_the_longest_comment_is_written_and_a_longer_one_refused(tshark, tmp_path) -> None:
    path = tmp_path / "long.pcapng"
    with path.open("wb") as f:
        writer = PcapngWriter(f)
        interface = writer.add_interface("worker0")
        writer.packet(interface, T0_NS, TCP4, comment="ü" * (MAX_OPTION_LEN // 2) + "x")
        with pytest.raises(ValueError, match="opt_comment is 65536 bytes"):
            writer.packet(interface, T0_NS, TCP4, comment="ü" * (MAX_OPTION_LEN // 2 + 1))
    assert comments(tshark, path) == ["ü" * (MAX_OPTION_LEN // 2) + "x"]


def test_streaming_into_a_pipe_read_by_tshark(tshark) -> None:
    reader = subprocess.Popen(
        [tshark, "-n", "-r", "-", "-T", "fields", "-e", "frame.number", "-e", "frame.comment"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdin is not None
    writer = PcapngWriter(reader.stdin)
    interface = writer.add_interface("worker0")
    for n in range(200):
        writer.packet(interface, T0_NS + n, TCP4 if n % 2 else UDP6, comment=f"packet {n}")
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err.decode(errors="replace")
    assert out.decode().splitlines() == [f"{n + 1}\tpacket {n}" for n in range(200)]


def test_blocks_made_apart_are_the_file_the_writer_writes() -> None:
    """A worker may make packet blocks and send them elsewhere: the same bytes."""
    stream = io.BytesIO()
    writer = PcapngWriter(stream)
    writer.add_interface("worker0", snaplen=100)
    writer.packet(0, T0_NS, UDP6, comment="pass", outbound=True)
    apart = (
        section_header_block()
        + interface_description_block("worker0", LINKTYPE_RAW, 100)
        + enhanced_packet_block(0, T0_NS, UDP6, comment="pass", outbound=True, snaplen=100)
    )
    assert stream.getvalue() == apart


def test_an_enhanced_packet_block_is_laid_out_as_the_draft_says() -> None:
    block = enhanced_packet_block(3, T0_NS, b"abcde", original_length=9, comment="hi")
    kind, total = struct.unpack_from("<II", block)
    assert (kind, total, len(block)) == (6, 60, 60)
    assert struct.unpack_from("<I", block, total - 4) == (total,)
    interface, high, low, captured, original = struct.unpack_from("<5I", block, 8)
    assert (interface, (high << 32) | low, captured, original) == (3, T0_NS, 5, 9)
    assert block[28:36] == b"abcde\0\0\0"
    options = block[36:-4]
    assert options == (
        struct.pack("<HH", 1, 2) + b"hi\0\0" + struct.pack("<HHI", 2, 4, 1) + b"\0\0\0\0"
    )


def test_the_section_header_is_little_endian_with_an_unknown_length() -> None:
    block = section_header_block()
    assert block[:4] == b"\x0a\x0d\x0d\x0a"
    assert block[8:12] == b"\x4d\x3c\x2b\x1a"  # 0x1A2B3C4D, little-endian
    assert struct.unpack_from("<HHq", block, 12) == (1, 0, -1)
    assert len(block) % 4 == 0


def test_bounds_are_refused() -> None:
    writer = PcapngWriter(io.BytesIO())
    with pytest.raises(ValueError, match="no interface 0"):
        writer.packet(0, T0_NS, TCP4)
    writer.add_interface("worker0")
    with pytest.raises(ValueError, match="no interface 1"):
        writer.packet(1, T0_NS, TCP4)
    with pytest.raises(ValueError, match="original length 10 is shorter than the 45 bytes"):
        writer.packet(0, T0_NS, TCP4, original_length=10)
    with pytest.raises(ValueError, match="timestamp"):
        writer.packet(0, -1, TCP4)
    with pytest.raises(ValueError, match="timestamp"):
        writer.packet(0, 2**64, TCP4)
    with pytest.raises(ValueError, match="snaplen must be 1-262144"):
        writer.add_interface("big", snaplen=MAX_SNAPLEN + 1)
    with pytest.raises(ValueError, match="snaplen must be 1-262144"):
        writer.add_interface("none", snaplen=0)
    with pytest.raises(ValueError, match="if_name is 65536 bytes"):
        writer.add_interface("n" * 65536)
    with pytest.raises(ValueError, match="link type"):
        interface_description_block("x", linktype=65536)
    with pytest.raises(ValueError, match="interface number"):
        enhanced_packet_block(-1, T0_NS, TCP4)
    with pytest.raises(ValueError, match="original length"):
        enhanced_packet_block(0, T0_NS, TCP4, original_length=2**32)


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=300),
    extra=st.integers(0, 1000),
    snaplen=st.integers(1, 400),
    timestamp_ns=st.integers(0, 2**64 - 1),
    comment=st.none() | st.text(max_size=40),
    outbound=st.none() | st.booleans(),
)
def test_scapy_reads_back_any_packet(data, extra, snaplen, timestamp_ns, comment, outbound) -> None:
    stream = io.BytesIO()
    writer = PcapngWriter(stream)
    writer.add_interface("worker0", snaplen=snaplen)
    writer.packet(0, timestamp_ns, data, len(data) + extra, comment, outbound)
    stream.seek(0)
    [packet] = rdpcap(stream)
    assert packet.original == data[:snaplen]  # as read, not as scapy would rebuild it
    assert packet.wirelen == len(data) + extra
    assert ns(packet) == timestamp_ns
    assert packet.comments == (None if comment is None else [comment.encode()])
    assert packet.direction == {None: None, False: 1, True: 2}[outbound]
