"""The appliance's configuration as typed, immutable values (what the loader produces).

Each key says how a reload treats it: the fields marked `LIVE` are applied by `reload` (SIGHUP)
in every worker between two batches; every other key takes effect at the next start of the
daemon, and a reload that changes one says so (config.diff derives the plan from these marks).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from appliance.policy import Policy

DEFAULT_RUNTIME_DIR = Path("/run/gwlb-appliance")
LIVE = {"reload": "live"}  # field metadata: a reload applies this key in the running workers
NOT_A_KEY = {"reload": "ignore"}  # field metadata: bookkeeping, not something a file sets


@dataclass(frozen=True)
class DataPlaneConfig:
    bind: str = "0.0.0.0"
    port: int = 6081
    allow_sources: tuple[ipaddress.IPv4Network, ...] = field(default=(), metadata=LIVE)  # ():any
    batch_size: int = 128
    receive_buffer_bytes: int = 8 * 1024 * 1024
    send_buffer_bytes: int = 4 * 1024 * 1024
    steering: str = "inner-flow"  # or "kernel": the kernel's reuseport hash of the outer header
    io: str = "socket"  # or "ring": packet rings (appliance/ringio.py) instead of UDP sockets


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = True
    bind: str = "0.0.0.0"
    port: int = 80
    min_workers: float = 1.0  # a count (>= 1) or a fraction of the workers (< 1)
    staleness_s: float = 3.0  # heartbeats older than this do not count as alive
    overflow_unready_s: float = 10.0  # a worker's receive-buffer drops rising this long: 503; 0 off
    nice: int = 10  # CPU priority below the workers': a probe flood must not slow the data path
    slice_us: int = 100  # its time slice (Linux 6.12+), so a woken worker waits little: schedattr


@dataclass(frozen=True)
class InterfaceConfig:
    manage: bool = False  # true (the AMI's config): make the host right for the data path
    name: str | None = None  # None: the default route's interface (see supervisor.netsetup)
    mtu: int = 9001  # set when the interface's MTU is below 8568
    rp_filter: int | None = 2  # 0 off, 1 strict, 2 loose; None: leave as it is
    rmem_bytes: int | None = None  # None: dataplane.receive_buffer_bytes


@dataclass(frozen=True)
class WorkersConfig:
    count: int | None = None  # None: one per CPU
    heartbeat_timeout_s: float = 5.0  # a worker silent this long is stuck: SIGABRT, then SIGKILL
    stop_timeout_s: float = 5.0  # graceful stop, then SIGKILL


@dataclass(frozen=True)
class ControlConfig:
    socket: Path | None = None  # None: control.sock in the runtime dir
    mode: int = 0o600
    group: str | None = None


@dataclass(frozen=True)
class FlowLogConfig:
    """Flow records (appliance/flowlog.py): one JSON line per flow ended or denied."""

    enabled: bool = False
    destination: str = "file"  # or "stdout": the daemon's standard output (journald under systemd)
    path: Path = Path("/var/log/gwlb-appliance/flows.log")
    max_bytes: int = 100 << 20  # rotate once the file is this big
    keep: int = 5  # rotated files kept: flows.log.1 ... flows.log.5
    sample_allowed: int = 1  # 1 in N flows that passed is recorded; every denied one is


@dataclass(frozen=True)
class ApplianceConfig:
    source: str = field(metadata=NOT_A_KEY)  # the file it came from, for messages
    dataplane: DataPlaneConfig = field(default_factory=DataPlaneConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    interface: InterfaceConfig = field(default_factory=InterfaceConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    flowlog: FlowLogConfig = field(default_factory=FlowLogConfig)
    runtime_dir: Path = field(default=DEFAULT_RUNTIME_DIR, metadata={"key": "runtime.dir"})
    policy: Policy = field(default_factory=Policy, metadata=LIVE)

    @property
    def control_socket(self) -> Path:
        return self.control.socket or self.runtime_dir / "control.sock"

    @property
    def flowlog_socket(self) -> Path:
        """Where the workers send flow records to the writer (supervisor/flowlogproc.py)."""
        return self.runtime_dir / "flowlog.sock"
