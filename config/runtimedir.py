"""Where a daemon keeps its runtime files when the config does not say: one directory per network
namespace.

Why: `/run` is shared by every network namespace on a host (`ip netns exec` does not remount it),
and two daemons on one runtime directory would replace each other's stats table, control socket
and health service. In a network namespace that `ip netns` named, the directory is
`/run/gwlb-appliance/netns/NAME`; anywhere else (the host's own namespace, a container with its
own /run) it is the systemd unit's `RuntimeDirectory`, `/run/gwlb-appliance`. `appliancectl`
finds the same directory the same way, so both agree without a flag in the same namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

from config.schema import DEFAULT_RUNTIME_DIR

NAMED_NETNS_DIR = Path("/run/netns")  # where `ip netns add` bind-mounts the namespaces it names


def netns_name() -> str | None:
    """The `ip netns` name of this process's network namespace, None when it has none."""
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        entries = sorted(NAMED_NETNS_DIR.iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            if entry.stat().st_ino == own:
                return entry.name
        except OSError:
            continue
    return None


def default_runtime_dir() -> Path:
    """The runtime directory for this process's network namespace (see the module's doc)."""
    name = netns_name()
    return DEFAULT_RUNTIME_DIR if name is None else DEFAULT_RUNTIME_DIR / "netns" / name
