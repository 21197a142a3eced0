"""Fixtures for the deployment-file tests (systemd unit, Packer, cloud-init, Terraform).

They run anywhere: no AWS, no network, no root. Checks that need a tool (terraform,
systemd-analyze, systemd-sysusers, shellcheck) skip, saying which tool, when it is missing; the one
test that starts the daemon under the unit's privileges is marked `netns` and needs root.

    module       the gwlb-fleet module's .tf files, merged (deployfiles.load_dir)
    example      the demo example's .tf files, merged
    packer       the Packer template
    unit         the systemd unit, parsed: section -> key -> values
    terraform    a function running terraform with no CLI config and no network, or a skip
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deployfiles import (
    EXAMPLE_DIR,
    MODULE_DIR,
    PACKER_TEMPLATE,
    UNIT_FILE,
    Terraform,
    load_dir,
    load_hcl,
    parse_unit,
)


@pytest.fixture(scope="session")
def module() -> dict[str, list[Any]]:
    return load_dir(MODULE_DIR)


@pytest.fixture(scope="session")
def example() -> dict[str, list[Any]]:
    return load_dir(EXAMPLE_DIR)


@pytest.fixture(scope="session")
def packer() -> dict[str, Any]:
    return load_hcl(PACKER_TEMPLATE)


@pytest.fixture(scope="session")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def terraform(tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    """`terraform ARGS` in a given directory, or skip where terraform is not installed.

    An empty CLI config file keeps it from reading ~/.terraformrc, and TF_IN_AUTOMATION quiets
    its advice; the commands used here (fmt, and init/plan/apply of provider-less scratch
    configurations) never need the network.
    """
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("terraform is not installed (CI machines have none; developers may)")
    config = tmp_path_factory.mktemp("tfcli") / "terraformrc"
    config.write_text("")
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(config),
        "TF_IN_AUTOMATION": "1",
        "CHECKPOINT_DISABLE": "1",
    }

    def run(*args: str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, **kw
        )

    return run
