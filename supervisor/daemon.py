"""`applianced`: the appliance daemon, in the foreground, logging to stderr.

It loads and validates the config, then hands over to the supervisor (supervisor/service.py),
which configures the interfaces, opens the sockets, forks one worker per CPU and keeps them alive.
Exit codes are a protocol for whoever starts us (systemd, the tests): 0 stopped by SIGTERM/SIGINT
or `appliancectl shutdown`, 2 the config or the command line was refused, 3 the data path could
not boot (a socket could not be opened, a worker could not start).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from appliance.errors import BootError
from config.errors import ConfigError
from config.loader import default_config_path, parse_config
from config.schema import ApplianceConfig
from supervisor.arbiter import EXIT_BOOT
from supervisor.commands import version
from supervisor.logring import LogRing
from supervisor.netsetup import configure_interfaces
from supervisor.service import Service
from supervisor.workerproc import LOG_FORMAT

EXIT_CONFIG = 2

log = logging.getLogger("applianced")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="applianced", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"applianced {version()}")
    parser.add_argument(
        "--config", type=Path, default=None, help="config file (default: the shipped demo policy)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config, print what the interface setup would change, and exit",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="worker processes: a number or 'auto' (one per CPU; the default)",
    )
    return parser.parse_args(argv)


def _workers(text: str) -> int | None:
    if text == "auto":
        return None
    if text.isdigit() and 1 <= int(text) <= 1024:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be a number from 1 to 1024 or 'auto', not {text!r}")


def setup_logging(ring: LogRing) -> None:
    # Under systemd the journal stamps each of our lines with SyslogIdentifier[pid] already
    # ($JOURNAL_STREAM says stderr goes there); the prefix would appear twice.
    own = "%(levelname)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else LOG_FORMAT
    formatter = logging.Formatter(own)
    stderr = logging.StreamHandler(sys.stderr)
    for handler in (stderr, ring):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def load(path: Path) -> tuple[str, ApplianceConfig]:
    text = path.read_text(encoding="utf-8")
    return text, parse_config(text, str(path))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ring = LogRing()
    setup_logging(ring)
    path = args.config or default_config_path()
    try:
        text, config = load(path)
    except OSError as error:
        log.error("config refused: %s: cannot read: %s", path, error.strerror or error)
        return EXIT_CONFIG
    except (ConfigError, UnicodeDecodeError) as error:
        log.error("config refused: %s", error)
        return EXIT_CONFIG
    if args.check:
        return check(config)
    if not config.interface.manage:
        log.info(
            "interface setup is off ([interface] manage = false): the host's MTU, rp_filter and "
            "net.core.rmem_* are left as they are; `applianced --check` shows what it would set"
        )
    try:
        service = Service(path, text, config, args.workers, ring)
    except BootError as error:
        log.error("cannot boot the data path: %s", error.strerror or error)
        return EXIT_BOOT
    except OSError as error:
        log.error("cannot boot: %s", error)
        return EXIT_BOOT
    try:
        return service.run()
    except Exception:  # a bug: say where, with the traceback, before the process is gone
        log.exception("the supervisor failed; its workers stop with it")
        return 1


def check(config: ApplianceConfig) -> int:
    """`--check`: the config is valid (we got here); show the interface plan, change nothing."""
    try:
        facts = configure_interfaces(config, dry_run=True)
    except BootError as error:
        print(f"applianced: {error.strerror or error}", file=sys.stderr)
        return EXIT_BOOT
    print(f"config {config.source}: valid, {len(config.policy.rules)} rules")
    for fact in facts:
        print(fact)
    return 0


if __name__ == "__main__":
    sys.exit(main())
