"""`reload` (SIGHUP, `appliancectl reload`, `systemctl reload`): validate the config file again,
apply what can be applied live, and say exactly what still needs a restart.

The plan comes from a diff of the running config and the new one (config.diff, driven by the
schema's LIVE marks): LIVE keys (the policy, the allow-list) reach every worker at its next
heartbeat through the config snapshot and the generation counter; every other changed key is
named in the outcome as needing a restart, never silently reported as applied. A config that
fails validation is refused whole and the running one stays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.stats import H, StatsTable
from config.diff import reload_plan, with_live_keys
from config.errors import ConfigError
from config.loader import parse_config
from config.schema import ApplianceConfig
from supervisor.boot import write_snapshot

log = logging.getLogger("applianced")


class Reloader:
    def __init__(
        self,
        path: Path,
        running: ApplianceConfig,
        table: StatsTable,
        applied: Callable[[ApplianceConfig], None],
    ) -> None:
        self.path = path
        self.running = running  # what the daemon runs: boot values, live keys as last reloaded
        self.table = table
        self._applied = applied  # told the new running config (workers forked later get it)
        self.last: dict[str, Any] = {"ok": True, "detail": "initial config"}

    def reload(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
            new = parse_config(text, str(self.path))
        except (OSError, UnicodeDecodeError, ConfigError) as error:
            self.table.header[H.RELOADS_REFUSED] += 1
            reason = error.strerror if isinstance(error, OSError) else str(error)
            self.last = _outcome(False, f"refused, the running config stays: {reason}")
            log.error("reload %s", self.last["detail"])
            return self.last
        plan = reload_plan(self.running, new)
        running = with_live_keys(self.running, new)
        generation = int(self.table.header[H.CONFIG_GENERATION]) + 1
        try:
            write_snapshot(running, text, generation)  # before the workers look for it
        except OSError as error:  # a full or read-only runtime dir: nothing changed yet
            self.table.header[H.RELOADS_REFUSED] += 1
            where = self.running.runtime_dir
            self.last = _outcome(
                False,
                f"refused, the running config stays: cannot write the config snapshot in "
                f"{where}: {error.strerror}; free space there and reload again",
            )
            log.error("reload %s", self.last["detail"])
            return self.last
        self.running = running
        self._applied(self.running)
        self.table.header[H.CONFIG_GENERATION] = generation
        detail = f"generation {generation}, {len(new.policy.rules)} rules: {plan.describe()}"
        self.last = _outcome(True, detail, restart=list(plan.restart), live=list(plan.live))
        level = logging.WARNING if plan.restart else logging.INFO
        log.log(level, "reload: %s", detail)
        return self.last


def _outcome(ok: bool, detail: str, **extra: Any) -> dict[str, Any]:
    return {"ok": ok, "detail": detail, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
