"""`applianced`: load the config, open the data-path sockets, run the worker in the foreground.

Exit codes are a protocol for whoever starts us (systemd, the tests, later the supervisor):
0 stopped by SIGTERM/SIGINT, 2 the config was refused, 3 the data path could not boot.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import orjson

from appliance.counters import new_counters, snapshot
from appliance.errors import BootError
from appliance.sockets import open_data_socket, open_raw_socket
from appliance.sources import SourceFilter
from appliance.worker import Worker
from config.errors import ConfigError
from config.loader import load_config
from config.schema import ApplianceConfig

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_BOOT = 3
STATS_INTERVAL_NS = 1_000_000_000

log = logging.getLogger("applianced")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="applianced", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: the shipped demo policy)")
    parser.add_argument("--workers", default=None, help="worker count: a number or 'auto'")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"applianced[{os.getpid()}]: %(levelname)s: %(message)s",
    )
    try:
        config = load_config(args.config)
    except ConfigError as error:
        log.error("config refused: %s", error)
        return EXIT_CONFIG
    if args.workers not in (None, "auto", "1"):
        log.warning("--workers %s: this build runs one worker in the foreground", args.workers)
    try:
        worker = boot_worker(config)
    except BootError as error:
        log.error("cannot boot the data path: %s", error.strerror or error)
        return EXIT_BOOT
    return run(worker, config)


def boot_worker(config: ApplianceConfig) -> Worker:
    """Open the sockets (the privileged part) and build the worker."""
    plane = config.dataplane
    raw = open_raw_socket(plane.send_buffer_bytes)
    data = open_data_socket(plane.bind, plane.port, plane.receive_buffer_bytes)
    sources = SourceFilter(plane.allow_sources) if plane.allow_sources else None
    worker = Worker(data, raw, config.policy, new_counters(), sources, plane.batch_size)
    log.info(
        "worker ready on %s:%d, %d rules from %s", plane.bind, plane.port,
        len(config.policy.rules), config.source,
    )
    return worker


def run(worker: Worker, config: ApplianceConfig) -> int:
    names = tuple(rule.name for rule in config.policy.rules)
    stats_file = config.runtime_dir / "stats.json"
    config.runtime_dir.mkdir(parents=True, exist_ok=True)
    last_write = [0]

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.stopping = True  # only a flag: the loop finishes its batch and returns

    def heartbeat() -> None:
        now = time.monotonic_ns()
        if now - last_write[0] >= STATS_INTERVAL_NS:
            last_write[0] = now
            write_stats(stats_file, worker, names)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.heartbeat = heartbeat
    worker.run()
    write_stats(stats_file, worker, names)
    log.info("stopped: %s", orjson.dumps(snapshot(worker.counters, names)).decode())
    return EXIT_OK


def write_stats(path: Path, worker: Worker, rule_names: tuple[str, ...]) -> None:
    """Publish the counters for readers (atomically: readers never see a half-written file)."""
    document = {"pid": os.getpid(), "monotonic_ns": time.monotonic_ns(),
                "counters": snapshot(worker.counters, rule_names)}
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(document))
    temporary.replace(path)


if __name__ == "__main__":
    sys.exit(main())
