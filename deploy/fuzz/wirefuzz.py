"""The differential wire fuzz: mutated GWLB datagrams against a running applianced, every reply
judged by an independent strict decoder (deploy/fuzz/gwfuzz; README.md beside this file).

    python3 deploy/fuzz/wirefuzz.py --count 1000000 [--seed N]     (root: network namespaces)
    python3 deploy/fuzz/wirefuzz.py --show SEED:INDEX               one datagram and its verdict
    python3 deploy/fuzz/wirefuzz.py --replay HEX                    send one datagram, show its fate

It builds its own namespaces (deploy/local/testbed.py), starts applianced there with
config/default.toml (the demo policy; runtime directory in a temporary directory, no health
service), sends the datagrams, prints the figures, and removes everything, also on failure or
Ctrl-C. Exit status: 0 when nothing is unexplained (no rejected reply, no worker restart, no
unexplained difference, the counters agree), 1 otherwise, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import sys
import tempfile
import tomllib
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gwfuzz.bed import ROOT, FuzzBed
from gwfuzz.mutate import make
from gwfuzz.oracle import predict
from gwfuzz.report import Outcome, counter_rows, render
from gwfuzz.session import Session
from gwfuzz.stats import appliancectl_stats

DEFAULT_CONFIG = ROOT / "config" / "default.toml"
# The demo policy as the strict decoder models it (gwfuzz/demo_policy.py), field by field.
EXPECTED_RULES = [
    {"name": "drop-me", "action": "drop",
     "match": {"protocol": "udp", "port": 3000, "payload_contains": "drop me"}},
    {"name": "weakly-to-strongly-typed", "action": "replace",
     "match": {"protocol": "udp", "port": 3000}, "find": "weakly typed",
     "replace": "strongly typed"},
    {"name": "icmp-echo-every-fifth", "action": "drop_seq_multiple",
     "match": {"protocol": "icmp", "icmp_type": [8, 0]}, "every": 5},
    {"name": "icmpv6-echo-every-fifth", "action": "drop_seq_multiple",
     "match": {"protocol": "icmpv6", "icmp_type": [128, 129]}, "every": 5},
]  # fmt: skip


def policy_problem(template: str) -> str | None:
    """Why the config's rules are not the demo policy the decoder models, or None."""
    rules = tomllib.loads(template).get("policy", {}).get("rules", [])
    if rules != EXPECTED_RULES:
        return "its [[policy.rules]] are not the demo policy gwfuzz/demo_policy.py models"
    return None


def default_applianced() -> list[str]:
    for candidate in (Path(sys.executable).with_name("applianced"), ROOT / ".venv/bin/applianced"):
        if candidate.exists():
            return [str(candidate)]
    return ["applianced"]


def show(spec: str) -> int:
    seed, index = (int(part) for part in spec.split(":"))
    made = make(seed, index)
    p = predict(made.payload)
    print(f"{spec}: {made.recipe}")
    print(f"  outer UDP: checksum {made.outer_checksum}, length {made.outer_length_delta:+d}")
    print(f"  datagram ({len(made.payload)} bytes): {made.payload.hex()}")
    print(f"  violations: {p.decoded.violations or 'none'}; notes: {p.decoded.notes or 'none'}")
    verdict = f"{p.verdict.outcome.value} {p.verdict.rule}".strip() if p.verdict else "-"
    print(f"  policy: {verdict}; a strict appliance {'answers' if p.strict_answers else 'drops'}"
          f"; the product is expected to {'answer' if p.lenient_answers else 'drop'}")  # fmt: skip
    return 0


def replay(args: argparse.Namespace, template: str, command: list[str]) -> int:
    """Send the datagram --replay names to a fresh appliance; print what became of it."""
    payload = bytes.fromhex(args.replay)
    with (
        tempfile.TemporaryDirectory(prefix="wirefuzz-") as tmp,
        FuzzBed(command, Path(tmp), template) as bed,
    ):
        sent, f, delta = Session(bed, 0).replay(payload)
        status = bed.stop_appliance()
    p = predict(payload)
    print(f"datagram ({len(payload)} bytes): violations {p.decoded.violations or 'none'}")
    print(f"  a strict appliance {'answers' if p.strict_answers else 'drops'} it; class {f.cls} "
          f"({f.status}) {' '.join(f.problems)}")  # fmt: skip
    print("  counters moved: " + ", ".join(f"{k} {v}" for k, v in delta.items() if v))
    for reply in sent.replies:
        print(f"  reply: {reply.hex()}")
    print(f"  applianced exit status {status}")
    return 0 if f.status in ("agree", "explained") else 1


def fuzz(args: argparse.Namespace) -> int:
    template = Path(args.config).read_text()
    if problem := policy_problem(template):
        print(f"wirefuzz: {args.config}: {problem}", file=sys.stderr)
        return 2
    command = shlex.split(args.appliance_cmd) if args.appliance_cmd else default_applianced()
    if args.workers:
        command += ["--workers", str(args.workers)]
    if args.replay:
        return replay(args, template, command)
    ctl = args.appliancectl or str(Path(command[0]).with_name("appliancectl"))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(
        f"wirefuzz: seed {seed} (replay with --seed {seed}), {args.count:,} datagrams", flush=True
    )

    def progress(done: int, seconds: float) -> None:
        if done * 10 // args.count != (done - 1) * 10 // args.count or done == args.count:
            print(f"  {done:>9,} sent, {seconds:6.1f} s", flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="wirefuzz-") as tmp,
        FuzzBed(command, Path(tmp), template) as bed,
    ):
        session = Session(bed, seed, args.examples)
        run = session.run(args.count, progress=progress)
        totals = appliancectl_stats(ctl, bed.runtime)
        restarts = bed.table.restarts()
        status = bed.stop_appliance()
        tracebacks = bed.stderr_path.read_text(errors="replace").count("Traceback")
    outcome = Outcome(seed, args.count, shlex.join(command), session.tally, run, totals, restarts,
                      status, tracebacks)  # fmt: skip
    outcome.counters = counter_rows(session.tally, run, totals)
    print(render(outcome))
    if args.json:
        Path(args.json).write_text(json.dumps(_json(outcome), indent=1))
    return 1 if outcome.failures else 0


def _json(o: Outcome) -> dict[str, object]:
    return {
        "seed": o.seed, "count": o.count, "command": o.command, "seconds": o.run.seconds,
        "classes": dict(o.tally.classes), "statuses": dict(o.tally.statuses),
        "status_of": o.tally.status_of, "categories": dict(o.tally.categories),
        "examples": o.tally.examples, "run": asdict(o.run),
        "counters": o.counters, "appliancectl": o.appliancectl, "restarts": o.restarts,
        "exit_status": o.exit_status, "failures": o.failures,
    }  # fmt: skip


def _interrupt_once(signum: int, frame: object) -> None:
    """The first SIGINT stops the run; later ones cannot cut short the teardown it started."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=100_000, help="datagrams to send")
    p.add_argument("--seed", type=int, help="default: a random one, printed first")
    p.add_argument("--appliance-cmd", help="command that runs applianced (default: the venv's)")
    p.add_argument("--appliancectl", help="default: appliancectl beside the applianced command")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="config template (demo policy)")
    p.add_argument("--workers", type=int, help="worker count (default: the config's)")
    p.add_argument("--examples", type=int, default=3, help="examples kept per class")
    p.add_argument("--json", help="also write the figures and examples to this file")
    p.add_argument("--show", metavar="SEED:INDEX", help="print one datagram and its verdict")
    p.add_argument("--replay", metavar="HEX", help="send this one datagram and show its fate")
    args = p.parse_args(argv)
    if args.show:
        return show(args.show)
    if os.geteuid() != 0:
        print("wirefuzz: needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        return fuzz(args)
    except KeyboardInterrupt:  # the bed's teardown has run on the way out
        print("wirefuzz: interrupted; its namespaces and processes are gone.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
