"""The local demo: real traffic between two hosts through an emulated GWLB and the appliance.

    python3 deploy/local/demo.py [--appliance-cmd CMD] [--health-port PORT]

It builds the namespace test bed (testbed.py), starts the appliance in {prefix}-app1 and the
emulated GWLB (gwlb_emulator.py) in {prefix}-gwlb, then, over IPv4 and then IPv6, sends three lines
with `nc -u` from b to a and pings a from b ten times. It prints what a received, which pings
were answered, the emulator's report and the appliance's stderr, and removes everything it made.

With the appliance's demo policy, a should get `test` and `strongly typed programming language`
(never `drop me`) and pings 5 and 10 go unanswered. Then a firewall scene (firewall_scene.py):
rules that reject TCP 23 and UDP 514, so from b `nc -z a 23` is refused in milliseconds while
`nc -z a 8080` connects, and a UDP datagram to 514 brings back an ICMP error. Then egress by
name (names_scene.py): `openssl s_client -servername allowed.example` completes its handshake
with a TLS server in a, `-servername denied.example` is reset at once, and a DNS query for
ads.tracker.example is answered REFUSED by the appliance. With the trivial reflector
(--appliance-cmd "python3 deploy/local/trivial_reflector.py") everything arrives unchanged, and
the firewall and names scenes are left out.
The exit status is 0 when the run completed, whatever it showed; 130 after Ctrl-C, which stops
the run and still removes everything it made.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import firewall_scene
import names_scene
from testbed import (
    EmulatorHandle,
    LineReader,
    Testbed,
    TestbedError,
    feed_lines,
    launch_emulator,
    netns_unusable_reason,
    ping,
)

LINES = [b"test\n", b"drop me\n", b"weakly typed programming language\n"]
LISTEN_PORT, SENDER_PORT = 3000, 4000
PINGS = 10
START_TIMEOUT_S = 15.0
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "default.toml"


def default_appliance_cmd() -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "applianced")]


def appliance_argv(cmd: list[str], workdir: Path) -> list[str]:
    """The appliance's command line: applianced gets the shipped default config (the demo
    policy) with its runtime directory moved into `workdir`, so the demo leaves nothing behind."""
    if not cmd[0].endswith("applianced") or "--config" in cmd:
        return cmd
    config = workdir / "applianced.toml"
    text = DEFAULT_CONFIG.read_text()
    text = text.replace('# dir = "/run/gwlb-appliance"', f'dir = "{workdir / "run"}"')
    # The demo's rules, then the scenes' rejects, by port and by name.
    config.write_text(text + firewall_scene.RULES + names_scene.RULES)
    return [*cmd, "--config", str(config)]


def start_appliance(tb: Testbed, argv: list[str], log: Path) -> subprocess.Popen[Any] | None:
    with open(log, "wb") as stderr:
        proc = tb.popen(tb.ns_app(1), argv, stdout=stderr, stderr=subprocess.STDOUT)
    if tb.wait_udp_bound(tb.ns_app(1), 6081, START_TIMEOUT_S, proc):
        return proc
    print(f"!! the appliance never bound UDP 6081 (exit status {proc.poll()})")
    print(tail(log))
    return None


def start_emulator(tb: Testbed, workdir: Path, health_port: int | None) -> EmulatorHandle | None:
    extra = [f"--health-port={health_port}", "--health-interval-s=1"] if health_port else []
    report = workdir / "emulator-report.json"
    log = workdir / "emulator.log"
    handle = launch_emulator(tb, report, log, extra)
    if handle.wait_ready(START_TIMEOUT_S):
        return handle
    print("!! the emulator never said it was ready")
    print(tail(log))
    return None


def tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "    (no output)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"    | {line}" for line in text) or "    (no output)"


def udp_demo(tb: Testbed, version: int) -> None:
    dst = tb.a_ip4 if version == 4 else tb.a_ip6
    listener = tb.popen(
        tb.ns_a,
        ["nc", f"-{version}", "-u", "-l", "-k", "-d", str(LISTEN_PORT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert listener.stdout is not None
    received = LineReader(listener.stdout)
    if not tb.wait_udp_bound(tb.ns_a, LISTEN_PORT, 5.0, listener):
        print("!! nc in a never bound its port")
    sender = tb.popen(
        tb.ns_b,
        ["nc", f"-{version}", "-u", "-p", str(SENDER_PORT), dst, str(LISTEN_PORT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(
        f"b [{tb.b_ip4 if version == 4 else tb.b_ip6}]:{SENDER_PORT} -> "
        f"a [{dst}]:{LISTEN_PORT}, one datagram per line:"
    )
    for line, left in zip(LINES, feed_lines(tb, sender, tb.ns_b, version, LINES), strict=True):
        print(f"    sent {line.decode().strip()!r}" + ("" if left else "  (never left b!)"))
    # Dropped lines never arrive, so this waits out its timeout when the policy drops one.
    received.wait_for(lambda r: len(r.lines) >= len(LINES), 1.5)
    tb.stop(sender)
    tb.stop(listener)
    received.join()
    print("a received:")
    for text in received.lines:
        print(f"    {text.rstrip(chr(10))!r}")
    if not received.lines:
        print("    (nothing)")


def ping_demo(tb: Testbed, version: int) -> None:
    dst = tb.a_ip4 if version == 4 else tb.a_ip6
    print(f"b: ping -{version} -c {PINGS} -i 0.2 -W 1 {dst}")
    answered = sorted(ping(tb, version, PINGS))
    missing = sorted(set(range(1, PINGS + 1)) - set(answered))
    print(f"    answered icmp_seq: {answered}")
    print(f"    missing  icmp_seq: {missing}")


def print_report(report: dict[str, Any]) -> None:
    if not report:
        print("    (no report)")
        return
    flows, packets, violations = report["flows"], report["packets"], report["violations"]
    print(f"    flows: {flows['total']} ({flows['ipv4']} IPv4, {flows['ipv6']} IPv6)")
    print(
        f"    packets: {packets['encapsulated']} encapsulated, {packets['returned']} returned, "
        f"{packets['delivered']} delivered"
    )
    for target, counts in report["targets"].items():
        print(
            f"    target {target}: {counts['flows']} flows, {counts['packets_sent']} sent, "
            f"{counts['packets_returned']} returned, healthy={counts['healthy']}"
        )
    kinds = f" {violations['by_kind']}" if violations["by_kind"] else ""
    print(f"    contract violations: {violations['total']}{kinds}")
    for example in violations["examples"]:
        print(f"      {example['kind']}: {example['detail']}")


@contextlib.contextmanager
def built(tb: Testbed) -> Iterator[Testbed]:
    """The test bed, torn down when the block ends, however it ends: SIGINT is ignored from then
    on, so that a second Ctrl-C cannot cut the teardown short (the first one already switched
    it off in _interrupt_once)."""
    with tb:
        try:
            yield tb
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_demo(appliance_cmd: list[str], health_port: int | None) -> int:
    with (
        tempfile.TemporaryDirectory(prefix="gwlb-demo-") as tmp,
        built(Testbed(appliances=1)) as tb,
    ):
        workdir = Path(tmp)
        print(
            f"test bed {tb.prefix}: a={tb.a_ip4}/{tb.a_ip6} b={tb.b_ip4}/{tb.b_ip6} "
            f"appliance={tb.appliance_ip(1)} (GWLB side {tb.gwlb_ip(1)})"
        )
        log = workdir / "appliance.log"
        print(f"starting the appliance: {shlex.join(appliance_cmd)}")
        appliance = start_appliance(tb, appliance_argv(appliance_cmd, workdir), log)
        if appliance is None:
            return 1
        emulator = start_emulator(tb, workdir, health_port)
        if emulator is None:
            return 1
        if health_port:
            healthy = emulator.wait_event("health", 15.0, where=lambda e: bool(e["healthy"]))
            print(
                f"GWLB health check on port {health_port}: "
                + ("healthy" if healthy else "NOT healthy (traffic fails open)")
            )
        for version in (4, 6):
            print(f"\n=== IPv{version} ===")
            udp_demo(tb, version)
            ping_demo(tb, version)
        if appliance_cmd[0].endswith("applianced"):  # the trivial reflector has no policy
            for version in (4, 6):
                print(f"\n=== firewall, IPv{version}: rules that reject ===")
                firewall_scene.run_scene(tb, version)
            for version in (4, 6):
                print(f"\n=== egress by name, IPv{version}: TLS server names and DNS ===")
                names_scene.run_scene(tb, version)
            print("\n=== appliancectl flows: what the workers track now ===")
            print(firewall_scene.flows_table(appliance_cmd[0], workdir / "run"))
        report = emulator.finish()
        print("\n=== emulated GWLB report ===")
        print_report(report)
        for event in emulator.of("health"):
            state = "healthy" if event["healthy"] else "unhealthy"
            print(f"    health: {event['target']} became {state} ({event['detail']})")
        status = tb.stop(appliance)
        print(f"\n=== appliance output (tail; exit status {status} after SIGTERM) ===")
        print(tail(log))
    return 0


def _interrupt_once(signum: int, frame: object) -> None:
    """The first SIGINT stops the run; any later one (a second Ctrl-C, or the same signal sent to
    the demo's PID as well as to the terminal's process group) is ignored, so that it cannot cut
    short the teardown the first one started and print a second traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the local emulated-GWLB demo.")
    p.add_argument(
        "--appliance-cmd",
        type=shlex.split,
        default=None,
        help="command that runs the appliance (default: applianced next to python)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=80,
        help="port the emulated GWLB health-checks the appliance on, as GWLB does (0: none)",
    )
    args = p.parse_args(argv)
    reason = netns_unusable_reason()
    if reason:
        print(f"demo: cannot run: {reason}", file=sys.stderr)
        return 2
    cmd = args.appliance_cmd or default_appliance_cmd()
    if not cmd or (os.sep in cmd[0] and not os.path.exists(cmd[0])):
        print(
            f"demo: {cmd[0] if cmd else 'the appliance command'} not found; install the "
            "package or pass --appliance-cmd",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        return run_demo(cmd, args.health_port or None)
    except KeyboardInterrupt:  # the test bed's context managers have torn everything down
        print("demo: interrupted; its processes are stopped and its namespaces removed.")
        return 130
    except TestbedError as exc:
        print(f"demo: test bed failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
