"""`appliancectl capture` against the real applianced, with the demo's nc lines through the emulated
GWLB: tshark reads every capture and shows each packet's verdict comment, the rewritten one as
received and as sent; `-w -` feeds `tshark -r -`; a bad filter, an uncreatable file and a second
capture on a busy worker are refused in a sentence; Ctrl-C ends a capture cleanly."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from appliance_proc import APPLIANCECTL, Appliance, run_quiet
from scapy.layers.inet import IP, UDP
from scapy.utils import rdpcap
from testbed import EmulatorHandle, LineReader, Testbed, feed_lines, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.e2e]

LINES = [b"test\n", b"drop me\n", b"weakly typed programming language\n"]
FIELDS = ["-T", "fields", "-e", "frame.comment", "-e", "ip.src", "-e", "udp.dstport"]
FIELDS += ["-e", "frame.p2p_dir"]


def tshark() -> str:
    binary = shutil.which("tshark")
    if binary is None:
        pytest.fail("tshark is not installed (deploy/local/bootstrap.sh installs it)")
    return binary


def capture_argv(appliance: Appliance, *args: str) -> list[str]:
    return [APPLIANCECTL, "--socket", str(appliance.runtime / "control.sock"), "capture", *args]


def started(appliance: Appliance, count: int) -> bool:
    """The worker has taken its `count`th capture (its log says so)."""
    return bool(wait_until(lambda: appliance.stderr().count(" started: filter") >= count, 5, 0.05))


def fields(path: Path | str, stdin: bytes | None = None) -> list[list[str]]:
    done = subprocess.run(
        [tshark(), "-r", str(path), *FIELDS], input=stdin, capture_output=True, check=True
    )
    return [line.split("\t") for line in done.stdout.decode().splitlines()]


def test_captures_show_verdicts_as_received_and_as_sent(
    testbed: Testbed,
    tmp_path: Path,
    start_emulator: Callable[..., EmulatorHandle],
    udp_listener: Callable[..., LineReader],
    udp_sender: Callable[..., subprocess.Popen[bytes]],
) -> None:
    appliance = Appliance(testbed, 1, tmp_path)
    emulator = start_emulator(testbed)
    received = udp_listener(testbed, 4)
    out = tmp_path / "all.pcapng"
    with open(tmp_path / "capture-1.stderr", "wb") as err:
        capture = subprocess.Popen(
            capture_argv(appliance, "all", "--count", "3", "--seconds", "20", "-w", str(out)),
            stderr=err,
        )
    testbed.cleanups.append(lambda: testbed.stop(capture))
    assert started(appliance, 1), appliance.stderr()
    sender = udp_sender(testbed, 4)
    assert feed_lines(testbed, sender, testbed.ns_b, 4, LINES) == [True] * 3
    assert capture.wait(10) == 0
    said = (tmp_path / "capture-1.stderr").read_text()
    assert said == (
        "captured 3 packets (0 dropped by the workers), 4 records with the changed ones as sent\n"
    )

    endpoint = "verdict={} rule={} endpoint={} worker=0 as={}"
    rows = fields(out)
    tenant = rows[0][0].split("endpoint=")[1].split()[0]
    assert len(tenant) == 16
    a, b = testbed.a_ip4, testbed.b_ip4
    assert rows == [
        [endpoint.format("pass", "-", tenant, "received"), b, "3000", "1"],
        [endpoint.format("drop", "drop-me", tenant, "received"), b, "3000", "1"],
        [
            endpoint.format("rewrite", "weakly-to-strongly-typed", tenant, "received"),
            b,
            "3000",
            "1",
        ],
        [endpoint.format("rewrite", "weakly-to-strongly-typed", tenant, "sent"), b, "3000", "0"],
    ]
    packets = rdpcap(str(out))
    assert bytes(packets[2][UDP].payload) == LINES[2]
    assert bytes(packets[3][UDP].payload) == LINES[2].replace(b"weakly", b"strongly")
    assert packets[3][IP].dst == a
    assert received.wait_for(lambda r: len(r.lines) >= 2, 5.0)

    # Filtered, to standard output, into tshark as it comes.
    ctl = subprocess.Popen(
        capture_argv(appliance, "0", "--filter", "udp and port 3000 and not verdict pass",
                     "--count", "2", "--seconds", "20", "-w", "-"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    reader = subprocess.Popen(
        [tshark(), "-r", "-", *FIELDS],
        stdin=ctl.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert ctl.stdout is not None
    ctl.stdout.close()  # tshark holds the pipe now
    testbed.cleanups += [lambda: testbed.stop(ctl), lambda: testbed.stop(reader)]
    assert started(appliance, 2), appliance.stderr()
    assert feed_lines(testbed, sender, testbed.ns_b, 4, LINES) == [True] * 3
    assert ctl.wait(10) == 0
    out_text, _ = reader.communicate(timeout=10)
    assert [
        r[0].split()[:2] for r in (line.split("\t") for line in out_text.decode().splitlines())
    ] == [
        ["verdict=drop", "rule=drop-me"],
        ["verdict=rewrite", "rule=weakly-to-strongly-typed"],
        ["verdict=rewrite", "rule=weakly-to-strongly-typed"],
    ]
    assert ctl.stderr is not None and ctl.stderr.read().decode().startswith(
        "captured 2 packets (0 dropped"
    )

    report = emulator.finish()
    assert appliance.stop() == 0
    assert report["violations"]["total"] == 0, report["violations"]
    counters = appliance.counters()
    assert counters["capture_kept"] == 5 and counters["capture_dropped"] == 0
    assert counters["dropped_by_rule"] == {"drop-me": 2} and counters["rewritten"] == 2


def test_bad_requests_and_a_busy_worker_are_refused_in_a_sentence(
    testbed: Testbed, tmp_path: Path
) -> None:
    appliance = Appliance(testbed, 1, tmp_path)

    done = run_quiet(capture_argv(appliance, "--filter", "host 10.1.2", "-w", str(tmp_path / "x")))
    assert done.returncode == 2, done
    assert done.stderr.splitlines()[1] == (
        "appliancectl capture: argument --filter: column 6: expected an IPv4 or IPv6 address "
        "after 'host', found '10.1.2'; correct the filter there ('appliancectl help capture' "
        "shows the words)"
    )
    done = run_quiet(capture_argv(appliance, "-w", "/proc/no/such/file.pcapng"))
    assert done.returncode == 2, done
    assert done.stderr == (
        "appliancectl: capture: cannot write /proc/no/such/file.pcapng: No such file or "
        "directory; name a file in a directory you may write to, or -w - for standard output\n"
    )
    assert not list(tmp_path.glob("x*"))

    first = subprocess.Popen(
        capture_argv(appliance, "all", "--seconds", "30", "-w", str(tmp_path / "first.pcapng")),
        stderr=subprocess.PIPE,
        text=True,
    )
    testbed.cleanups.append(lambda: testbed.stop(first))
    assert started(appliance, 1), appliance.stderr()
    done = run_quiet(capture_argv(appliance, "0", "-w", str(tmp_path / "second.pcapng")))
    assert done.returncode == 1, done
    assert done.stderr.startswith(
        f"appliancectl: capture: worker 0 is already capturing (appliancectl pid {first.pid}'s, "
    ), done.stderr
    assert done.stderr.endswith(f"wait for it or stop it (Ctrl-C there, or kill {first.pid})\n")
    assert not (tmp_path / "second.pcapng").exists()

    first.send_signal(signal.SIGINT)  # Ctrl-C: it stops the capture and says what it had
    _, said = first.communicate(timeout=10)
    assert first.returncode == 0
    assert said == "captured 0 packets (0 dropped by the workers)\n"
    assert fields(tmp_path / "first.pcapng") == []  # a valid, empty capture
    assert wait_until(lambda: "capture 1 stopped" in appliance.stderr(), 5.0, 0.05)
    assert "capture 1" not in appliance.stderr().split("capture 1 stopped")[1]

    done = run_quiet(capture_argv(appliance, "0", "--seconds", "0.5", "-w", str(tmp_path / "s")))
    assert done.returncode == 0, done  # the worker is free again
    assert done.stderr == "captured 0 packets (0 dropped by the workers)\n"
    assert appliance.stop() == 0
