"""What a reload changes: the keys that differ between two configs, split by how they apply.

The marks live on the schema's fields (config.schema: LIVE), so a new key is classified where it
is declared, and the reload plan, the workers and `appliancectl reload` all read the same marks.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from config.schema import ApplianceConfig


@dataclass(frozen=True)
class ReloadPlan:
    live: tuple[str, ...]  # changed keys the running workers apply
    restart: tuple[str, ...]  # changed keys that take effect only when the daemon restarts

    def describe(self) -> str:
        """One sentence for the operator: what changed and what still needs a restart."""
        parts = [f"applied: {', '.join(self.live)}" if self.live else "no live key changed"]
        if self.restart:
            parts.append(
                f"changed but not applied until applianced restarts: {', '.join(self.restart)}"
            )
        return "; ".join(parts)


def reload_plan(old: ApplianceConfig, new: ApplianceConfig) -> ReloadPlan:
    live: list[str] = []
    restart: list[str] = []
    for key, how in _changed(old, new, ""):
        (live if how == "live" else restart).append(key)
    return ReloadPlan(tuple(live), tuple(restart))


def _changed(old: Any, new: Any, prefix: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for f in dataclasses.fields(old):
        how = f.metadata.get("reload", "restart")
        if how == "ignore":
            continue
        key = f.metadata.get("key", f"{prefix}{f.name}")
        before, after = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(before) and how != "live":
            found += _changed(before, after, f"{key}.")
        elif _value(before) != _value(after):
            found.append((key, how))
    return found


def _value(value: Any) -> Any:
    rules = getattr(value, "rules", None)  # a Policy compares by its rules, not by identity
    return rules if rules is not None else value


def live_keys(config_type: type = ApplianceConfig, prefix: str = "") -> tuple[str, ...]:
    """Every key a reload applies in the running workers (the schema's LIVE marks)."""
    keys: list[str] = []
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        key = f.metadata.get("key", f"{prefix}{f.name}")
        kind = hints[f.name]
        if f.metadata.get("reload") == "live":
            keys.append(key)
        elif isinstance(kind, type) and dataclasses.is_dataclass(kind):
            keys += live_keys(kind, f"{key}.")
    return tuple(keys)


def with_live_keys(running: ApplianceConfig, new: ApplianceConfig) -> ApplianceConfig:
    """The running config with every LIVE key taken from `new`: what the daemon runs after a
    reload, restart keys included as they were."""
    return _merge(running, new)  # type: ignore[no-any-return]


def _merge(running: Any, new: Any) -> Any:
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(running):
        before, after = getattr(running, f.name), getattr(new, f.name)
        if f.metadata.get("reload") == "live":
            changes[f.name] = after
        elif dataclasses.is_dataclass(before) and not isinstance(before, type):
            changes[f.name] = _merge(before, after)
    return dataclasses.replace(running, **changes)
