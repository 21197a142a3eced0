"""Loading and validating the config file (TOML through the standard tomllib).

Every key is checked: an unknown key is an error (a typo must not silently fall back to a default),
and every error names the file, the key path, the line where we can find it, and the reason.
"""

from __future__ import annotations

import grp
import ipaddress
import re
import tomllib
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from appliance.conditions import ICMPS, REGISTRY, Condition, contradiction
from appliance.inspection import Inspector, load_inspector
from appliance.policy import (
    DEFAULTS,
    FLOW_DEFAULTS,
    NAME_DEFAULTS,
    REJECTS_PER_SECOND,
    REWRITABLE_PROTOCOLS,
    Action,
    Policy,
    Rule,
)
from config.errors import ConfigError
from config.runtimedir import default_runtime_dir
from config.schema import (
    ApplianceConfig,
    ControlConfig,
    DataPlaneConfig,
    FlowLogConfig,
    HealthConfig,
    InterfaceConfig,
    WorkersConfig,
)

Path_ = tuple[str | int, ...]
# [policy] keys of the flow table's timeouts, and FlowTable's names for them
MODES = ("enforce", "audit")
RULE_KEYS = frozenset(
    {
        "name",
        "action",
        "match",
        "find",
        "replace",
        "every",
        "mode",
        "inspector",
        "on_error",
        "budget_us",
    }
)
NAME_SETTINGS = ("name_bytes", "name_packets", "dns_reject")
DNS_REJECT_RCODES = {"refused": 5, "nxdomain": 3}
FLOW_TIMEOUTS = {
    "flow_timeout_tcp_s": "tcp_timeout_s",
    "flow_timeout_other_s": "other_timeout_s",
    "flow_linger_s": "closing_linger_s",
}


def default_config_path() -> Path:
    """The shipped default config (the demo policy)."""
    return Path(str(resources.files("config").joinpath("default.toml")))


def load_config(path: str | Path | None = None) -> ApplianceConfig:
    """Read and validate a config file; raise ConfigError naming file, key, line and reason."""
    file = Path(path) if path is not None else default_config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(str(file), "", f"cannot read: {error}") from error
    return parse_config(text, str(file))


def parse_config(text: str, source: str = "<config>") -> ApplianceConfig:
    """Validate config text; `source` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = re.search(r"line (\d+)", str(error))
        line = int(match.group(1)) if match else None
        raise ConfigError(source, "", f"not valid TOML: {error}", line) from error
    return _Reader(text, source).config(data)


class _Reader:
    """Walks the parsed TOML; knows the text only to point errors at a line."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def fail(self, where: Path_, reason: str) -> ConfigError:
        return ConfigError(self.source, _dotted(where), reason, _locate(self.text, where))

    def table(self, data: dict[str, Any], where: Path_, known: set[str]) -> dict[str, Any]:
        value = data.get(str(where[-1]), {}) if where else data
        if not isinstance(value, dict):
            raise self.fail(where, "must be a table")
        for key in value:
            if key not in known:
                raise self.fail((*where, key), f"unknown key (known: {', '.join(sorted(known))})")
        return value

    def integer(
        self, table: dict[str, Any], where: Path_, default: int, low: int, high: int
    ) -> int:
        value = table.get(str(where[-1]), default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(where, f"must be an integer from {low} to {high}, not {value!r}")
        return value

    def address(self, table: dict[str, Any], where: Path_, default: str) -> str:
        value = table.get(str(where[-1]), default)
        try:
            return str(ipaddress.IPv4Address(value))
        except (ValueError, TypeError):
            raise self.fail(where, f"must be an IPv4 address, not {value!r}") from None

    def config(self, data: dict[str, Any]) -> ApplianceConfig:
        self.table(
            data,
            (),
            {
                "dataplane",
                "interface",
                "workers",
                "runtime",
                "health",
                "policy",
                "control",
                "flowlog",
            },
        )
        runtime = self.table(data, ("runtime",), {"dir"})
        return ApplianceConfig(
            source=self.source,
            dataplane=self.dataplane(data),
            health=self.health(data),
            interface=self.interface(data),
            workers=self.workers(data),
            control=self.control(data),
            flowlog=self.flowlog(data),
            runtime_dir=self.path(runtime, ("runtime", "dir"), str(default_runtime_dir())),
            policy=self.policy(data),
        )

    def flowlog(self, data: dict[str, Any]) -> FlowLogConfig:
        where: Path_ = ("flowlog",)
        known = {"enabled", "destination", "path", "max_bytes", "keep", "sample_allowed"}
        t = self.table(data, where, known)
        enabled = t.get("enabled", False)
        if not isinstance(enabled, bool):
            raise self.fail((*where, "enabled"), f"must be true or false, not {enabled!r}")
        default = FlowLogConfig()
        return FlowLogConfig(
            enabled=enabled,
            destination=self.choice(t, (*where, "destination"), "file", ("file", "stdout")),
            path=self.path(t, (*where, "path"), str(default.path)),
            max_bytes=self.integer(t, (*where, "max_bytes"), default.max_bytes, 1 << 16, 1 << 40),
            keep=self.integer(t, (*where, "keep"), default.keep, 0, 1000),
            sample_allowed=self.integer(t, (*where, "sample_allowed"), 1, 1, 1_000_000),
        )

    def path(self, table: dict[str, Any], where: Path_, default: str) -> Path:
        value = table.get(str(where[-1]), default)
        if not isinstance(value, str) or not value.startswith("/"):
            raise self.fail(where, f"must be an absolute path, not {value!r}")
        return Path(value)

    def seconds(self, table: dict[str, Any], where: Path_, default: float, also: str = "") -> float:
        """A number of seconds from 0.1 to 3600; `also` names what else the key allows."""
        value = table.get(str(where[-1]), default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0.1 <= value <= 3600
        ):
            raise self.fail(
                where, f"must be {also}a number of seconds from 0.1 to 3600, not {value!r}"
            )
        return float(value)

    def interface(self, data: dict[str, Any]) -> InterfaceConfig:
        where: Path_ = ("interface",)
        t = self.table(data, where, {"manage", "name", "mtu", "rp_filter", "rmem_bytes"})
        manage = t.get("manage", False)
        if not isinstance(manage, bool):
            raise self.fail((*where, "manage"), f"must be true or false, not {manage!r}")
        name = t.get("name")
        if name is not None and (not isinstance(name, str) or not 0 < len(name) < 16):
            raise self.fail((*where, "name"), f"must be an interface name, not {name!r}")
        rp_filter = t.get("rp_filter", 2)
        if rp_filter != "unchanged":
            rp_filter = self.integer(t, (*where, "rp_filter"), 2, 0, 2)
        rmem = t.get("rmem_bytes")
        return InterfaceConfig(
            manage=manage,
            name=name,
            mtu=self.integer(t, (*where, "mtu"), 9001, 8568, 65535),
            rp_filter=None if rp_filter == "unchanged" else rp_filter,
            rmem_bytes=None
            if rmem is None
            else self.integer(t, (*where, "rmem_bytes"), 0, 1 << 16, 1 << 30),
        )

    def workers(self, data: dict[str, Any]) -> WorkersConfig:
        where: Path_ = ("workers",)
        t = self.table(data, where, {"count", "heartbeat_timeout_s", "stop_timeout_s"})
        count = t.get("count", "auto")
        return WorkersConfig(
            count=None if count == "auto" else self.integer(t, (*where, "count"), 1, 1, 1024),
            heartbeat_timeout_s=self.seconds(t, (*where, "heartbeat_timeout_s"), 5.0),
            stop_timeout_s=self.seconds(t, (*where, "stop_timeout_s"), 5.0),
        )

    def control(self, data: dict[str, Any]) -> ControlConfig:
        where: Path_ = ("control",)
        t = self.table(data, where, {"socket", "mode", "group"})
        mode = t.get("mode", "0600")
        if not isinstance(mode, str) or not re.fullmatch(r"0?[0-7]{3}", mode):
            raise self.fail((*where, "mode"), f'must be an octal string like "0600", not {mode!r}')
        group = t.get("group")
        if group is not None and (not isinstance(group, str) or not group):
            raise self.fail((*where, "group"), "must be a group name")
        if group is not None:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise self.fail(
                    (*where, "group"),
                    f"no group {group!r} on this host: create it (groupadd {group}) or remove "
                    "the key",
                ) from None
        socket = t.get("socket")
        return ControlConfig(
            socket=None if socket is None else self.path(t, (*where, "socket"), ""),
            mode=int(mode, 8),
            group=group,
        )

    def dataplane(self, data: dict[str, Any]) -> DataPlaneConfig:
        where: Path_ = ("dataplane",)
        known = {
            "bind",
            "port",
            "allow_sources",
            "batch_size",
            "receive_buffer_bytes",
            "send_buffer_bytes",
            "steering",
            "io",
        }
        t = self.table(data, where, known)
        sources = t.get("allow_sources", [])
        if not isinstance(sources, list):
            raise self.fail((*where, "allow_sources"), "must be a list of IPv4 CIDRs")
        networks = []
        for i, cidr in enumerate(sources):
            try:
                networks.append(ipaddress.IPv4Network(cidr, strict=False))
            except (ValueError, TypeError):
                raise self.fail(
                    (*where, "allow_sources", i), f"not an IPv4 network: {cidr!r}"
                ) from None
        return DataPlaneConfig(
            bind=self.address(t, (*where, "bind"), "0.0.0.0"),
            port=self.integer(t, (*where, "port"), 6081, 1, 65535),
            allow_sources=tuple(networks),
            batch_size=self.integer(t, (*where, "batch_size"), 128, 1, 1024),
            receive_buffer_bytes=self.integer(
                t, (*where, "receive_buffer_bytes"), 8 << 20, 1 << 16, 1 << 30
            ),
            send_buffer_bytes=self.integer(
                t, (*where, "send_buffer_bytes"), 4 << 20, 1 << 16, 1 << 30
            ),
            steering=self.choice(t, (*where, "steering"), "inner-flow", ("inner-flow", "kernel")),
            io=self.choice(t, (*where, "io"), "socket", ("socket", "ring")),
        )

    def choice(
        self, table: dict[str, Any], where: Path_, default: str, choices: tuple[str, ...]
    ) -> str:
        value = table.get(str(where[-1]), default)
        if value not in choices:
            raise self.fail(where, f"must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    def health(self, data: dict[str, Any]) -> HealthConfig:
        where: Path_ = ("health",)
        t = self.table(
            data,
            where,
            {
                "enabled",
                "bind",
                "port",
                "min_workers",
                "staleness_s",
                "overflow_unready_s",
                "nice",
                "slice_us",
            },
        )
        enabled = t.get("enabled", True)
        if not isinstance(enabled, bool):
            raise self.fail((*where, "enabled"), f"must be true or false, not {enabled!r}")
        minimum = t.get("min_workers", 1)
        valid = isinstance(minimum, int | float) and not isinstance(minimum, bool)
        if not valid or not (0 < minimum < 1 or (minimum >= 1 and minimum == int(minimum))):
            raise self.fail(
                (*where, "min_workers"),
                f"must be a whole count from 1 or a fraction in (0, 1), not {minimum!r}",
            )
        overflow = t.get("overflow_unready_s", 10)
        if overflow != 0 or isinstance(overflow, bool):  # 0 turns the check off
            overflow = self.seconds(t, (*where, "overflow_unready_s"), 10.0, "0 (off) or ")
        return HealthConfig(
            enabled=enabled,
            bind=self.address(t, (*where, "bind"), "0.0.0.0"),
            port=self.integer(t, (*where, "port"), 80, 1, 65535),
            min_workers=float(minimum),
            staleness_s=self.seconds(t, (*where, "staleness_s"), 3.0),
            overflow_unready_s=float(overflow),
            nice=self.integer(t, (*where, "nice"), 10, 0, 19),
            slice_us=self.integer(t, (*where, "slice_us"), 100, 0, 100_000),
        )

    def policy(self, data: dict[str, Any]) -> Policy:
        policy = self.table(
            data,
            ("policy",),
            {
                "rules",
                "default",
                "mode",
                "reject_per_second",
                "max_flows",
                "track_flows",
                *FLOW_TIMEOUTS,
                *NAME_SETTINGS,
            },
        )
        audit = self.choice(policy, ("policy", "mode"), "enforce", MODES) == "audit"
        default = self.choice(policy, ("policy", "default"), "pass", tuple(DEFAULTS))
        per_second = self.integer(
            policy, ("policy", "reject_per_second"), REJECTS_PER_SECOND, 0, 1_000_000
        )
        rules = policy.get("rules", [])
        if not isinstance(rules, list):
            raise self.fail(("policy", "rules"), "must be an array of tables ([[policy.rules]])")
        compiled = [self.rule(raw, ("policy", "rules", i)) for i, raw in enumerate(rules)]
        names = [r.name for r in compiled]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise self.fail(("policy", "rules", i, "name"), f"duplicate rule name {name!r}")
        flows: dict[str, float] = {
            "max_flows": self.integer(policy, ("policy", "max_flows"), 200_000, 1, 50_000_000)
        }
        for key, setting in FLOW_TIMEOUTS.items():
            flows[setting] = self.seconds(policy, ("policy", key), FLOW_DEFAULTS[setting])
        track = policy.get("track_flows", False)
        if not isinstance(track, bool):
            raise self.fail(("policy", "track_flows"), f"must be true or false, not {track!r}")
        settings = {
            "name_bytes": self.integer(
                policy, ("policy", "name_bytes"), NAME_DEFAULTS["name_bytes"], 512, 1 << 20
            ),
            "name_packets": self.integer(
                policy, ("policy", "name_packets"), NAME_DEFAULTS["name_packets"], 1, 1000
            ),
            "dns_reject_rcode": DNS_REJECT_RCODES[
                self.choice(policy, ("policy", "dns_reject"), "refused", tuple(DNS_REJECT_RCODES))
            ],
        }
        return Policy(compiled, DEFAULTS[default], per_second, flows, track, audit, settings)

    def rule(self, raw: Any, where: Path_) -> Rule:
        if not isinstance(raw, dict):
            raise self.fail(where, "must be a table")
        for key in raw:
            if key not in RULE_KEYS:
                known = ", ".join(sorted(RULE_KEYS))
                raise self.fail((*where, key), f"unknown key (known: {known})")
        name = raw.get("name", f"rule{where[-1]}")
        if not isinstance(name, str) or not name:
            raise self.fail((*where, "name"), "must be a non-empty string")
        try:
            action = Action(raw.get("action"))
        except ValueError:
            choices = ", ".join(a.value for a in Action)
            raise self.fail(
                (*where, "action"), f"unknown action {raw.get('action')!r} (one of {choices})"
            ) from None
        match = self.match(raw.get("match", {}), (*where, "match"))
        audit = self.choice(raw, (*where, "mode"), "enforce", MODES) == "audit"
        rule = Rule(name=name, action=action, match=match, audit=audit)
        if action is Action.INSPECT:
            return self.inspect_rule(raw, where, rule)
        for key in ("inspector", "on_error", "budget_us"):
            if key in raw:
                raise self.fail((*where, key), f"only for action 'inspect', not {action.value!r}")
        if action is Action.REPLACE:
            return self.replace_rule(raw, where, rule)
        if action is Action.DROP_SEQ_MULTIPLE:
            allowed = rule.protocols()
            if allowed is None or not allowed <= ICMPS:
                raise self.fail(
                    (*where, "match", "protocol"), "drop_seq_multiple needs protocol icmp or icmpv6"
                )
            every = self.integer(raw, (*where, "every"), 0, 1, 65536)
            return Rule(name=name, action=action, match=match, every=every)
        for key in ("find", "replace", "every"):
            if key in raw:
                raise self.fail((*where, key), f"not used by action {action.value!r}")
        return rule

    def inspect_rule(self, raw: dict[str, Any], where: Path_, rule: Rule) -> Rule:
        """An inspector written in Python (appliance/inspection.py), imported now: a module
        that does not import is refused here, with the reason, like any bad key."""
        spec = raw.get("inspector")
        if not isinstance(spec, str):
            raise self.fail(
                (*where, "inspector"), 'inspect needs inspector = "package.module:function"'
            )
        on_error = self.choice(raw, (*where, "on_error"), "pass", ("pass", "drop"))
        budget_us = self.integer(raw, (*where, "budget_us"), 1000, 1, 1_000_000)
        try:
            function = load_inspector(spec, reload=True)
        except ValueError as error:
            raise self.fail((*where, "inspector"), str(error)) from None
        inspector = Inspector(function, spec, budget_us * 1000, on_error)
        return replace(rule, inspector=inspector)

    def replace_rule(self, raw: dict[str, Any], where: Path_, rule: Rule) -> Rule:
        allowed = rule.protocols()
        if allowed is None or not allowed <= REWRITABLE_PROTOCOLS:
            raise self.fail(
                (*where, "match", "protocol"),
                "replace needs protocol udp, icmp or icmpv6 (rewriting TCP would "
                "break its sequence numbers)",
            )
        find, replace = raw.get("find"), raw.get("replace")
        if not isinstance(find, str) or not find:
            raise self.fail((*where, "find"), "replace needs a non-empty string to find")
        if not isinstance(replace, str):
            raise self.fail((*where, "replace"), "replace needs a replacement string")
        return Rule(
            name=rule.name,
            action=rule.action,
            match=rule.match,
            find=find.encode(),
            replace=replace.encode(),
        )

    def match(self, raw: Any, where: Path_) -> tuple[Condition, ...]:
        """Each key is a condition class's (appliance.conditions.REGISTRY), which parses and
        compiles its own value; a rule whose conditions can never all hold is refused."""
        if not isinstance(raw, dict):
            raise self.fail(where, "must be a table")
        conditions = []
        for key, value in raw.items():
            kind = REGISTRY.get(key)
            if kind is None:
                known = ", ".join(sorted(REGISTRY))
                raise self.fail((*where, key), f"unknown match (known: {known})")
            try:
                conditions.append(kind.from_config(value))
            except ValueError as error:
                raise self.fail((*where, key), str(error)) from None
        conflict = contradiction(conditions)
        if conflict:
            raise self.fail((*where, conflict[0]), conflict[1])
        return tuple(conditions)


def _dotted(where: Path_) -> str:
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _locate(text: str, where: Path_) -> int | None:
    """Best effort: the 1-based line of the key `where` names, or of its table's header.

    The schema is shallow: top-level tables, and the array of tables policy.rules.
    """
    if where[:2] == ("policy", "rules") and len(where) > 2:
        table, occurrence, key = "policy.rules", int(where[2]), where[3] if len(where) > 3 else None
    elif len(where) >= 2:
        table, occurrence, key = str(where[0]), 0, where[1]
    else:
        table, occurrence, key = "", 0, where[0] if where else None
    lines = text.splitlines()
    start: int | None = -1 if not table else None
    headers = [n for n, line in enumerate(lines) if line.strip().startswith("[")]
    matching = [n for n in headers if _header_name(lines[n]) == table]
    if table and occurrence < len(matching):
        start = matching[occurrence]
    if start is None:
        return None
    stop = min([n for n in headers if n > start] + [len(lines)])
    for number in range(start + 1, stop):
        if isinstance(key, str) and re.match(rf"{re.escape(key)}\s*=", lines[number].strip()):
            return number + 1
    if not table and isinstance(key, str):  # a top-level table: its header is the place
        for n in headers:
            if _header_name(lines[n]) == key or _header_name(lines[n]).startswith(f"{key}."):
                return n + 1
    return start + 1 if table else None


def _header_name(line: str) -> str:
    """The table name of a header line: `[a.b]  # note` and `[[a.b]]` give `a.b`."""
    return line.split("#", 1)[0].strip().strip("[]").strip()
