"""Dependencies point one way (STYLE.md): codec <- policy <- worker <- supervisor; config sits on
the data path's types; health reads only the stats table (through the snapshot reader it shares
with the supervisor) and the state names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "appliance": {"appliance"},
    "config": {"config", "appliance"},
    "supervisor": {"supervisor", "appliance", "config"},
    # The health service knows the stats table's layout and the state names, nothing else.
    "health": {
        "health",
        "appliance.counters",
        "appliance.stats",
        "config",
        "supervisor.states",
        "supervisor.snapshot",
    },
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in ALLOWED}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_it_may(package: str) -> None:
    allowed = ALLOWED[package]
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imports(path):
            assert any(name == a or name.startswith(a + ".") for a in allowed), (
                f"{path.relative_to(ROOT)} imports {name}"
            )


def test_the_codec_does_no_io() -> None:
    codec = (
        "checksum",
        "geneve",
        "inner",
        "conditions",
        "policy",
        "rewrite",
        "reject",
        "datapath",
        "fastpath",
        "batch",
        "flowkey",
        "flows",
        "flowlist",
        "flowverdict",
    )
    for module in codec:
        tree = ast.parse((ROOT / "appliance" / f"{module}.py").read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not names & {"socket", "logging", "os", "ctypes"}, module
