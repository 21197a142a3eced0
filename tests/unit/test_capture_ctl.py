"""`appliancectl capture` outside the worker: the command line, the client writing the pcapng file
(against test_ctl.py's tiny control server, which plays the workers by sending blocks to the
client's socket), and the supervisor's checks and its one-capture-per-worker rule."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, UDP
from scapy.utils import rdpcap
from test_ctl import Answer, FakeDaemon

from appliance.capture import DATA_HEAD, DATA_MAGIC, Request, request_path
from appliance.pcapng import enhanced_packet_block
from appliance.stats import H, StatsTable
from supervisor import ctl, ctlcapture
from supervisor.capturing import CaptureDesk

PACKET = raw(IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=4000, dport=3000) / b"weakly typed")
SENT = raw(IP(src="10.1.0.5", dst="10.2.0.9") / UDP(sport=4000, dport=3000) / b"strongly typed")


def blocks(slot: int, packets: int, rewritten: bool = False) -> bytes:
    """A datagram as a worker sends it (appliance/capture.py)."""
    out = b""
    for k in range(packets):
        comment = f"verdict={'rewrite' if rewritten else 'pass'} rule=- endpoint=00 worker={slot}"
        out += enhanced_packet_block(slot, 1_700_000_000_000_000_000 + k, PACKET, None, comment)
        if rewritten:
            out += enhanced_packet_block(slot, 1_700_000_000_000_000_001, SENT, None, "s", True)
    records = packets * (2 if rewritten else 1)
    return DATA_HEAD.pack(DATA_MAGIC, packets, records) + out


def end(slot: int, kept: int, dropped: int) -> bytes:
    return orjson.dumps({"end": slot, "kept": kept, "dropped": dropped, "reason": "count"})


class Workers:
    """Answers `capture` as the daemon would, then plays its workers: `datagrams(path)` are sent
    to the client's socket before the reply goes."""

    def __init__(self, *datagrams: bytes, slots: tuple[int, ...] = (0,)) -> None:
        self.datagrams = datagrams
        self.slots = slots

    def __call__(self, command: str, args: list[str]) -> dict[str, Any]:
        if args[:1] == ["stop"]:
            return {"slots": list(self.slots)}
        path = next(a.partition("=")[2] for a in args if a.startswith("socket="))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            for datagram in self.datagrams:
                sock.sendto(datagram, path)
        return {"slots": list(self.slots), "workers": 2, "request": 1}


@pytest.fixture
def start_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., FakeDaemon]]:
    started: list[FakeDaemon] = []

    def start(answer: Answer) -> FakeDaemon:
        directory = tmp_path_factory.mktemp("ctl")  # short: a socket path has 107 bytes at most
        started.append(FakeDaemon(directory / "c.sock", answer))
        return started[-1]

    yield start
    for daemon in started:
        daemon.close()


def run(daemon: FakeDaemon, *args: str) -> int:
    return ctl.main(["--socket", str(daemon.path), "capture", *args])


@pytest.fixture(autouse=True)
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctlcapture, "STOP_WAIT_S", 0.05)
    monkeypatch.setattr(ctlcapture, "END_GRACE_S", 0.05)


# --- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--filter", "port http", "-w", "x"], "column 6: expected a port number after 'port'"),
        (["--filter", "udp and", "-w", "x"], "column 8:"),
        (["--count", "0", "-w", "x"], "a number of packets, 1 to 10000000, not '0'"),
        (["--seconds", "3601", "-w", "x"], "at most 3600 seconds"),
        (["all"], "the following arguments are required: -w"),
    ],
)
def test_bad_arguments_exit_2_with_a_sentence_before_connecting(
    start_daemon, capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    daemon = start_daemon(Workers())
    assert run(daemon, *args) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 2  # the usage line, and one sentence
    assert daemon.connections == 0


def test_a_file_that_cannot_be_created_is_refused_before_anything_starts(
    start_daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(Workers())
    assert run(daemon, "-w", str(tmp_path / "no" / "such" / "dir.pcapng")) == 2
    err = capsys.readouterr().err
    assert err == (
        f"appliancectl: capture: cannot write {tmp_path}/no/such/dir.pcapng: No such file or "
        "directory; name a file in a directory you may write to, or -w - for standard output\n"
    )
    assert daemon.connections == 0


# --- the client ------------------------------------------------------------------------------


def test_the_file_has_an_interface_per_worker_then_the_blocks_and_the_summary(
    start_daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(
        Workers(blocks(1, 1), blocks(1, 2, rewritten=True), end(1, 3, 4), slots=(1,))
    )
    out = tmp_path / "c.pcapng"
    assert (
        run(daemon, "1", "--filter", "udp", "--count", "10", "--seconds", "5", "-w", str(out)) == 0
    )
    assert capsys.readouterr().err == (
        "captured 3 packets (4 dropped by the workers), 5 records with the changed ones as sent\n"
    )
    (command, args), *_ = daemon.requests
    path = out.parent  # the socket went beside the control socket, and is gone again
    assert (command, args[:4]) == ("capture", ["1", "filter=udp", "count=10", "seconds=5"])
    assert args[4] == f"socket={daemon.path.parent}/capture-{os.getpid()}.sock"
    assert not Path(args[4][7:]).exists() and path.exists()
    packets = rdpcap(str(out))
    assert [p.direction for p in packets] == [1, 1, 2, 1, 2]
    assert [raw(p) for p in packets] == [PACKET, PACKET, SENT, PACKET, SENT]
    assert packets[0].comments == [b"verdict=pass rule=- endpoint=00 worker=1"]
    if tshark := shutil.which("tshark"):
        names = subprocess.run(
            [tshark, "-r", str(out), "-T", "fields", "-e", "frame.interface_name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        assert names[:5] == ["worker 1"] * 5


def test_the_count_is_of_packets_and_then_the_daemon_is_asked_to_stop(
    start_daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(Workers(blocks(0, 2, rewritten=True), blocks(0, 3)))
    out = tmp_path / "c.pcapng"
    assert run(daemon, "--count", "3", "-w", str(out)) == 0
    packets = rdpcap(str(out))
    assert [p.direction for p in packets] == [1, 2, 1, 2, 1]  # the third's as-sent would follow
    assert daemon.commands() == ["capture", "capture"]
    assert daemon.requests[1][1] == [
        "stop",
        f"socket={daemon.path.parent}/capture-{os.getpid()}.sock",
    ]
    err = capsys.readouterr().err
    assert err.startswith("captured 3 packets (0 dropped by the workers)")
    assert err.endswith("; worker 0 did not report what it dropped\n")


def test_a_refused_capture_leaves_no_file_and_no_socket(
    start_daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    busy = "worker 0 is already capturing (appliancectl pid 7's); wait for it or stop it"
    daemon = start_daemon(lambda command, args: {"ok": False, "error": busy})
    out, kept = tmp_path / "new.pcapng", tmp_path / "old.pcapng"
    kept.write_bytes(b"earlier")
    assert run(daemon, "-w", str(out)) == 1
    assert run(daemon, "-w", str(kept)) == 1
    assert capsys.readouterr().err == f"appliancectl: capture: {busy}\n" * 2
    assert not out.exists() and kept.read_bytes() == b"earlier"  # not emptied before agreement
    assert list(daemon.path.parent.glob("capture-*")) == []


def test_standard_output_gets_the_stream(
    start_daemon, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    daemon = start_daemon(Workers(blocks(0, 2), end(0, 2, 0)))
    assert run(daemon, "-w", "-") == 0
    captured = capfdbinary.readouterr()
    assert captured.out[:4] == b"\x0a\x0d\x0d\x0a" and captured.out.count(PACKET) == 2
    assert captured.err == b"captured 2 packets (0 dropped by the workers)\n"


# --- the supervisor's part -------------------------------------------------------------------


@pytest.fixture
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CaptureDesk, Path]]:
    runtime = tmp_path_factory.mktemp("run")
    yield CaptureDesk(StatsTable.create(runtime, 2), runtime), runtime


def bound(runtime: Path, pid: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(runtime / f"capture-{pid}.sock"))
    return sock


def words(runtime: Path, pid: int, text: str = "udp", seconds: str = "30") -> list[str]:
    return [
        f"filter={text}",
        "count=5",
        f"seconds={seconds}",
        f"socket={runtime}/capture-{pid}.sock",
    ]


def test_a_capture_is_posted_to_each_worker_then_the_word_bumped(desk) -> None:
    desk, runtime = desk
    with bound(runtime, 11):
        before = time.monotonic_ns()
        reply = desk.begin([0, 1], words(runtime, 11))
        assert reply == {"slots": [0, 1], "request": 1, "count": 5, "seconds": 30.0}
        assert int(desk.table.header[H.CAPTURE_REQUEST]) == 1
        for k in (0, 1):
            request = Request.read(request_path(runtime, k))
            assert request[:3] == (1, "udp", 5) and request.socket == f"{runtime}/capture-11.sock"
            assert 29e9 < request.deadline_ns - before < 31e9 and not request.stop
        assert desk.stop(words(runtime, 11)[3:]) == {"slots": [0, 1]}
        assert Request.read(request_path(runtime, 1))[::5] == (2, True)
        assert int(desk.table.header[H.CAPTURE_REQUEST]) == 2 and desk.sessions == {}


def test_a_busy_worker_is_refused_until_its_client_is_gone(desk) -> None:
    desk, runtime = desk
    first = bound(runtime, 11)
    desk.begin([0], words(runtime, 11))
    with bound(runtime, 12):
        with pytest.raises(
            ValueError, match=r"^worker 0 is already capturing \(appliancectl pid 11's"
        ):
            desk.begin([0, 1], words(runtime, 12))
        assert desk.begin([1], words(runtime, 12))["slots"] == [1]  # another worker is free
        first.close()
        (runtime / "capture-11.sock").unlink()
        assert desk.begin([0], words(runtime, 12))["slots"] == [0]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"filter": "port"}, "the filter does not parse at column 5: expected a port number"),
        ({"count": "0"}, "count must be a whole number from 1 to 10000000, not '0'"),
        ({"seconds": "0"}, "seconds must be above 0 and at most 3600, not '0'"),
        (
            {"socket": "/tmp/capture-11.sock"},
            "the capture socket must be capture-PID.sock beside the control socket",
        ),
        (
            {"socket": "RUN/control.sock"},
            "the capture socket must be capture-PID.sock beside the control socket",
        ),
        ({"socket": "RUN/capture-12.sock"}, "is not there"),
        ({"socket": "RUN/capture-13.sock"}, "is not a socket; remove it and capture again"),
        ({"colour": "red"}, "capture takes filter, count, seconds, socket as key=value"),
    ],
)
def test_what_the_daemon_refuses(desk, change: dict[str, str], said: str) -> None:
    desk, runtime = desk
    (runtime / "capture-13.sock").write_text("a file")
    options = {
        "filter": "udp",
        "count": "5",
        "seconds": "30",
        "socket": f"{runtime}/capture-11.sock",
    }
    options.update({k: v.replace("RUN", str(runtime)) for k, v in change.items()})
    with bound(runtime, 11), pytest.raises(ValueError, match=said.replace("(", r"\(")):
        desk.begin([0], [f"{k}={v}" for k, v in options.items()])
    assert int(desk.table.header[H.CAPTURE_REQUEST]) == 0


def test_no_running_worker_is_said(desk) -> None:
    desk, runtime = desk
    with bound(runtime, 11), pytest.raises(ValueError, match="no worker asked for is running"):
        desk.begin([], words(runtime, 11))


def test_json_puts_the_counts_on_stderr(
    start_daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(Workers(blocks(0, 1, rewritten=True), end(0, 1, 2)))
    assert run(daemon, "--json", "-w", str(tmp_path / "c.pcapng")) == 0
    counts = orjson.loads(capsys.readouterr().err)
    assert counts == {"packets": 1, "records": 2, "dropped": 2, "unreported": []}


def test_the_socket_may_be_beside_a_control_socket_the_config_moved(desk, tmp_path) -> None:
    desk, runtime = desk
    elsewhere = tmp_path / "ctl"
    elsewhere.mkdir()
    (runtime / "config.toml").write_text(f'[control]\nsocket = "{elsewhere}/c.sock"\n')
    with bound(elsewhere, 11):
        assert desk.begin([0], words(elsewhere, 11))["slots"] == [0]
        assert Request.read(request_path(runtime, 0)).socket == f"{elsewhere}/capture-11.sock"


def test_the_client_and_the_workers_agree_on_the_bounds() -> None:
    from appliance import capture
    from supervisor import ctlargs

    assert capture.MAX_COUNT == ctlargs.CAPTURE_MAX_COUNT
