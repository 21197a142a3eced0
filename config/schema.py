"""The appliance's configuration as typed, immutable values (what the loader produces)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from appliance.policy import Policy

DEFAULT_RUNTIME_DIR = Path("/run/gwlb-appliance")


@dataclass(frozen=True)
class DataPlaneConfig:
    bind: str = "0.0.0.0"
    port: int = 6081
    allow_sources: tuple[ipaddress.IPv4Network, ...] = ()  # empty: any source
    batch_size: int = 64
    receive_buffer_bytes: int = 8 * 1024 * 1024
    send_buffer_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class HealthConfig:
    bind: str = "0.0.0.0"
    port: int = 80


@dataclass(frozen=True)
class ApplianceConfig:
    source: str  # the file it came from, for messages
    dataplane: DataPlaneConfig = field(default_factory=DataPlaneConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    workers: int | None = None  # None: one per CPU
    runtime_dir: Path = DEFAULT_RUNTIME_DIR
    policy: Policy = field(default_factory=Policy)
