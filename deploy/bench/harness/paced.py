"""Paced load for soak.py and chaos.py: `gen --mode paced` in the background, and its timeline.

gen sends the mix at a fixed rate (the flood's sendmmsg batches, one every batch / rate seconds),
validates every reply as in the benchmark, and files each packet sent and each valid reply under
the send time the packet carries, in buckets of --bucket-ms. Losses can then be placed in time:
around a kill, a SIGSTOP, a reload. Every run is bounded in time (gen stops sending after
`seconds`, drains for at most 3 s, and is killed by its PID if it outlives its deadline).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.env import (
    APP_IP,
    GEN_IP,
    GEN_NS,
    HEALTH_PORT,
    MIX,
    STOP_TIMEOUT_S,
    BenchError,
    in_ns,
)

BUCKET_MS = 100
PACED_BATCH = 64  # the flood's sendmmsg batch: the same shape as the capacity measurement
FLOWS = 16


class PacedGen:
    """`gen --mode paced` running in the generator's namespace, pinned to `cpu`. A context
    manager: whatever happens, the process is gone (killed by its PID) when the block ends."""

    def __init__(
        self,
        gen: str,
        cpu: int,
        rate: float,
        seconds: float,
        work: Path,
        *,
        name: str = "paced",
        payload: int = 64,
        probe_rate: float = 10.0,
        batch: int = PACED_BATCH,
        rx_nap_us: int = 100,
    ) -> None:
        self.seconds = seconds
        self.out_path = work / f"{name}.json"
        self.err_path = work / f"{name}.err"
        argv = [
            gen,
            "--mode",
            "paced",
            "--src",
            GEN_IP,
            "--dst",
            APP_IP,
            "--payload",
            str(payload),
            "--case",
            MIX,
            "--flows",
            str(FLOWS),
            "--batch",
            str(batch),
            "--seconds",
            f"{seconds:g}",
            "--rate",
            f"{rate:.1f}",
            "--probe-rate",
            f"{probe_rate:g}",
            "--probe-port",
            str(HEALTH_PORT),
            "--rx-nap-us",
            str(rx_nap_us),
            "--bucket-ms",
            str(BUCKET_MS),
        ]
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                in_ns(GEN_NS, ["taskset", "-c", str(cpu), *argv]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def __enter__(self) -> PacedGen:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            print(f"cleanup: SIGKILL to paced gen pid {self.proc.pid}", file=sys.stderr)
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT_S)

    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self) -> dict[str, Any]:
        """gen's report once it is done (sending ends after `seconds`, the drain 3 s later)."""
        try:
            self.proc.wait(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired as error:
            raise BenchError(f"paced gen did not finish in {self.seconds + 30:g} s") from error
        err = self.err_path.read_text(errors="replace").strip()
        if self.proc.returncode != 0:
            raise BenchError(f"paced gen failed ({self.proc.returncode}): {err}")
        result: dict[str, Any] = json.loads(self.out_path.read_text())
        return result


@dataclass
class Window:
    """What happened to the packets sent between two moments (CLOCK_MONOTONIC ns)."""

    seconds: float
    sent: int
    expected: int
    valid: int

    @property
    def lost(self) -> int:
        return self.expected - self.valid

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.expected if self.expected else 0.0

    @property
    def sent_pps(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def valid_pps(self) -> float:
        return self.valid / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "sent": self.sent,
            "expected": self.expected,
            "valid": self.valid,
            "lost": self.lost,
            "loss_pct": round(self.loss_pct, 5),
            "sent_pps": round(self.sent_pps, 1),
            "valid_pps": round(self.valid_pps, 1),
        }


class Timeline:
    """gen's per-bucket counts, by send time. Bucket i holds the packets sent in
    [start + i * bucket, start + (i + 1) * bucket) and the valid replies to them, whenever those
    came back. Times are CLOCK_MONOTONIC ns, the clock of Python's time.monotonic_ns()."""

    def __init__(self, result: dict[str, Any]) -> None:
        tl = result["timeline"]
        self.start_ns: int = tl["start_ns"]
        self.bucket_ns: int = tl["bucket_ns"]
        self.sent: list[int] = tl["sent"]
        self.expected: list[int] = tl["expected"]
        self.valid: list[int] = tl["valid"]

    def index(self, t_ns: int) -> int:
        return max(0, (t_ns - self.start_ns) // self.bucket_ns)

    def window(self, t_from_ns: int, t_to_ns: int) -> Window:
        """The whole buckets between t_from and t_to, each end rounded to the nearest bucket
        boundary: windows that share an end share no bucket and miss none."""
        first, last = (round((t - self.start_ns) / self.bucket_ns) for t in (t_from_ns, t_to_ns))
        first, last = max(first, 0), min(last, len(self.sent))
        if last <= first:
            return Window(0.0, 0, 0, 0)
        return Window(
            (last - first) * self.bucket_ns / 1e9,
            sum(self.sent[first:last]),
            sum(self.expected[first:last]),
            sum(self.valid[first:last]),
        )

    def lossy_buckets(self) -> list[tuple[float, int]]:
        """(seconds after the start, replies lost) of every bucket that lost some."""
        return [
            (round(i * self.bucket_ns / 1e9, 3), e - v)
            for i, (e, v) in enumerate(zip(self.expected, self.valid, strict=True))
            if e != v
        ]

    def at(self, t_ns: int) -> float:
        """Seconds after the start of the run."""
        return (t_ns - self.start_ns) / 1e9


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """gen's totals without the timeline and the per-class detail (those go in the JSON file)."""
    keys = (
        "sent",
        "partial_sends",
        "send_errors",
        "offered_pps",
        "expected",
        "received",
        "valid",
        "invalid",
        "silent_templates",
        "late_stamps",
        "errors",
        "error_samples",
        "probes",
    )
    out = {k: result.get(k) for k in keys}
    out["errors"] = {k: v for k, v in (result.get("errors") or {}).items() if v}
    out["lost"] = result["expected"] - result["valid"]
    timeline = result.get("timeline") or {}
    out["rate"] = timeline.get("rate")
    out["stalls"] = timeline.get("stalls")  # batches sent over 10 ms late (the schedule restarts)
    return out
