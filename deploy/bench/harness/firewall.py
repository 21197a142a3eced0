"""The firewall case (run.py --firewall): applianced's config with firewall_policy.toml, what gen
says the case holds, and the rate of new connections a flood carried.

Why a config of its own: the demo cases measure the shipped demo policy, so the firewall policy
(50 rules, a flow table) runs in a second applianced, started after the first one stopped, with
its own runtime directory. The C reflector does not implement this policy: gen runs the case
against it with --pass-all (every packet due back unchanged), a pass-through baseline.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from harness.env import FIREWALL, GEN_IP, HERE, BenchError, write_config
from harness.targets import gen_describe

POLICY = HERE / "firewall_policy.toml"


def write_firewall_config(work: Path, mode: str, io: str = "socket") -> Path:
    """env.write_config's copy of the shipped config (runtime dir, allow-list, health, I/O) in
    `work`/firewall, with its [policy] table and rules replaced by firewall_policy.toml's."""
    where = work / "firewall"
    where.mkdir(exist_ok=True)
    path = write_config(where, mode, io=io)
    path.write_text(replace_policy(path.read_text(encoding="utf-8")), encoding="utf-8")
    check_config(path, where / "runtime", mode, io)
    return path


def replace_policy(config: str) -> str:
    """`config` without its [policy] table and [[policy.rules]] (the shipped file ends with them),
    then firewall_policy.toml."""
    lines = config.splitlines()
    try:
        cut = lines.index("[policy]")
    except ValueError:
        raise BenchError("the config copy has no [policy] table to replace") from None
    if any(line.startswith("[") and "policy" not in line for line in lines[cut:]):
        raise BenchError("the config copy has another table after [policy]: cannot cut there")
    return "\n".join(lines[:cut]) + "\n" + POLICY.read_text(encoding="utf-8")


def check_config(path: Path, runtime: Path, mode: str, io: str) -> None:
    """The written config says what we meant: ours, and the policy file's rules and flow table."""
    parsed = tomllib.loads(path.read_text(encoding="utf-8"))
    policy = tomllib.loads(POLICY.read_text(encoding="utf-8"))["policy"]
    if (
        parsed["runtime"]["dir"] != str(runtime)
        or parsed["dataplane"]["allow_sources"] != [f"{GEN_IP}/32"]
        or parsed["dataplane"].get("io", "socket") != io
        or (mode == "worker" and parsed["health"]["enabled"] is not False)
        or parsed["policy"] != policy
        or parsed["policy"].get("track_flows") is not True
    ):
        raise BenchError(f"{path}: the firewall config copy is not what was meant")


def describe_firewall(gen: str) -> dict[str, Any]:
    """What the firewall case holds, from gen itself: its connection kinds, one line each."""
    data = gen_describe(gen, FIREWALL)
    kinds = data["connections"]
    lines = [
        f"{k['expect']:4} IPv{k['ip']} TCP to {k['server']}:{k['port']} via endpoint "
        f"{k['endpoint']} ({k['rule'] or 'no rule: the default'})"
        for k in kinds
    ]
    per = data["packets_per_connection"]
    denied = sum(k["expect"] == "drop" for k in kinds)
    return {
        "kinds": kinds,
        "lines": lines,
        "clients": data["clients"],
        "packets_per_connection": per,
        "size": len(data["slots"]),
        "answered": (len(kinds) - denied) * per,
        "denied_kinds": denied,
        "rules": len(tomllib.loads(POLICY.read_text(encoding="utf-8"))["policy"]["rules"]),
    }


def connection_rates(run: dict[str, Any]) -> dict[str, float | None]:
    """From a gen firewall flood: new connections per second offered (SYNs sent over the send
    window) and carried (the replies per second over the replies due per connection: the rate at
    which the target got through the offered connections, denied ones included; for the C
    reflector, which answers all, the same formula with every packet due)."""
    fw, send_s = run["firewall"], run["send_seconds"]
    opened = fw["connections_opened"]
    offered = opened / send_s if send_s > 0 else None
    carried = run["returned_pps"] * opened / run["expected"] if run["expected"] else None
    return {"offered_conn_per_s": offered, "conn_per_s": carried}
