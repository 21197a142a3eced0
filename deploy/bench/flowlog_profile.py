"""Profile flow records (appliance/flowlog.py): what a record costs the worker, how many records a
second the writer (supervisor/flowlogd.py) sustains, and that a stopped writer costs the worker
nothing more (its records are dropped and counted).

    python3 deploy/bench/flowlog_profile.py [--flows 200000]

A real flow table is filled with `--flows` TCP flows (both directions seen, as a finished
connection is), then every flow is ended through FlowLog as the worker ends them, in batches of
128 with a flush per batch, into a real flowlogd process writing to a file in a temporary
directory; then again with the writer stopped (SIGSTOP). Root is not needed; nothing touches the
network (a unix socket in the temporary directory).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.flowkey import PORTS_V4
from appliance.flowlog import FlowLog
from appliance.flows import FlowTable

BATCH = 128


def flows(count: int) -> list[object]:
    table = FlowTable(count + 1)
    out = []
    for k in range(count):
        key = (
            bytes(8)
            + b"\x06"
            + bytes([10, 0, k >> 16 & 255, k >> 8 & 255])
            + bytes([10, 1, 0, k & 255])
            + (40000 + k % 20000).to_bytes(2, "big")
            + (443).to_bytes(2, "big")
        )
        flow = table.open(key, 0, 60, 0, 3, 0x02)
        flow.rev_packets, flow.rev_bytes, flow.fwd_packets, flow.fwd_bytes = 10, 9000, 12, 1500
        out.append(flow)
    assert PORTS_V4  # the key layout is flowkey's (endpoint, protocol, ends)
    return out


def run(log: FlowLog, ended: list[object]) -> float:
    """Seconds of CPU per record, ending every flow as the worker does (flush per batch)."""
    start = time.process_time()
    for k in range(0, len(ended), BATCH):
        for flow in ended[k : k + BATCH]:
            log.ended(flow, "idle", 1_000_000_000)  # type: ignore[arg-type]
        log.flush()
    return (time.process_time() - start) / len(ended)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200_000)
    args = parser.parse_args()
    made = flows(args.flows)
    with tempfile.TemporaryDirectory(prefix="gwlb-flowlog-") as work:
        path, out = Path(work) / "flowlog.sock", Path(work) / "flows.log"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE, as the supervisor
        argv = [sys.executable, "-m", "supervisor.flowlogd", "--fd", str(sock.fileno())]
        argv += ["--file", str(out), "--max-bytes", str(1 << 40)]
        writer = subprocess.Popen(argv, pass_fds=[sock.fileno()])
        try:
            log = FlowLog(path, 0, 1, ("allow-https",) * 4)
            began = time.monotonic()
            per_record = run(log, made)
            sent = log.sent
            while out.exists() and out.stat().st_size and _lines(out) < sent:
                if time.monotonic() - began > 120:
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - began
            written = _lines(out)
            print(f"{args.flows} flows ended, {BATCH} a batch, one flush each:")
            print(f"  worker: {per_record * 1e6:.2f} us of CPU per record")
            print(f"  sent {sent}, dropped {log.dropped} (the writer's socket full)")
            rate = written / elapsed
            print(f"  writer: {written} records on disk in {elapsed:.2f} s: {rate:,.0f}/s")
            os.kill(writer.pid, signal.SIGSTOP)
            log2 = FlowLog(path, 0, 1, ("allow-https",) * 4)
            stopped = run(log2, made)
            print("with the writer stopped (SIGSTOP):")
            print(f"  worker: {stopped * 1e6:.2f} us of CPU per record, {log2.dropped} dropped")
            os.kill(writer.pid, signal.SIGCONT)
            log.close()
            log2.close()
        finally:
            writer.terminate()
            writer.wait(10)
            sock.close()


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


if __name__ == "__main__":
    main()
