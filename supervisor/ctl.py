"""`appliancectl`: the admin CLI. The control socket arrives with the supervisor; until then every
command says so and exits 4 (LSB: program or service status is unknown)."""

from __future__ import annotations

import argparse
import sys

EXIT_UNREACHABLE = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliancectl", description="Drive a running applianced.")
    parser.add_argument("--socket", default="/run/gwlb-appliance/control.sock")
    parser.add_argument("command", nargs="*", help="status, stats, reload, ...")
    args = parser.parse_args(argv)
    print(
        f"appliancectl: cannot reach applianced at {args.socket}: this build of applianced has no "
        "control socket yet (it runs one worker in the foreground).",
        file=sys.stderr,
    )
    return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
