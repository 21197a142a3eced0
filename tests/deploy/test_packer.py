"""The Packer template and its provisioning scripts, read as data and checked as shell.

The AMI must exist for both architectures, from Amazon's own Amazon Linux 2023, and hold the
appliance in /opt/gwlb-appliance/venv installed from the uploaded wheelhouse alone, so an instance
boots without compiling or downloading anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from deployfiles import (
    JOURNAL_SH,
    PACKER_DIR,
    PACKER_TEMPLATE,
    PROVISION_SH,
    REPO,
    SITE_CONFIG,
    UNIT_FILE,
    VENV,
    WHEELHOUSE_SH,
    Terraform,
    labelled,
    parse_unit,
    resources,
    unit_value,
)

ARCHITECTURES = {"x86_64", "arm64"}
# The journal copier runs on every instance, not at bake time, but is shell all the same.
SCRIPTS = [PROVISION_SH, WHEELHOUSE_SH, JOURNAL_SH]


def test_both_architectures_are_built_from_amazon_linux_2023(packer):
    sources = resources(packer, "amazon-ebs", kind="source")
    assert set(sources) == ARCHITECTURES
    for arch, source in sources.items():
        (ami_filter,) = source["source_ami_filter"]
        filters = ami_filter["filters"]
        assert filters["architecture"] == arch
        assert filters["name"].startswith("al2023-ami-2023.")  # not -minimal-, not AL2
        assert filters["name"].endswith(f"-{arch}")
        assert ami_filter["owners"] == ["amazon"]  # Amazon's images, not look-alikes
        assert ami_filter["most_recent"] is True
        assert source["ssh_username"] == "ec2-user"
        assert arch in source["ami_name"]  # one AMI name per architecture
        assert source["ena_support"] is True  # jumbo frames (MTU 9001)
    (build,) = packer["build"]
    assert set(build["sources"]) == {f"source.amazon-ebs.{arch}" for arch in ARCHITECTURES}


def test_amis_default_to_imdsv2(packer):
    for source in resources(packer, "amazon-ebs", kind="source").values():
        assert source["imds_support"] == "v2.0"
        (metadata,) = source["metadata_options"]
        assert metadata["http_tokens"] == "required"


def _provisioners(packer, kind):
    (build,) = packer["build"]
    return [p[kind] for p in build["provisioner"] if kind in p]


def test_each_build_uploads_the_wheelhouse_of_its_own_architecture(packer):
    wheelhouse = [
        p for p in _provisioners(packer, "file") if "wheelhouse" in p.get("destination", "")
    ]
    (upload,) = wheelhouse
    # source.name is the architecture: x86_64 wheels (orjson, setproctitle) would not load on arm64.
    assert upload["source"].endswith("/${source.name}/")
    (shell,) = [p for p in _provisioners(packer, "shell") if "script" in p]
    assert "ARCH=${source.name}" in shell["environment_vars"]


def test_every_uploaded_file_exists_in_the_repository(packer):
    uploads = [
        path
        for provisioner in _provisioners(packer, "file")
        for path in provisioner.get("sources", [])
    ]
    assert uploads
    scripts = [p["script"] for p in _provisioners(packer, "shell") if "script" in p]
    for path in [*uploads, *scripts]:
        assert path.startswith("${path.root}/"), path
        resolved = (PACKER_DIR / path.removeprefix("${path.root}/")).resolve()
        assert resolved.is_file(), f"{path} -> {resolved} does not exist"
        assert REPO in resolved.parents


def test_provisioning_runs_as_root_with_the_staging_dir(packer):
    (shell,) = [p for p in _provisioners(packer, "shell") if "script" in p]
    assert (PACKER_DIR / shell["script"].removeprefix("${path.root}/")).resolve() == PROVISION_SH
    assert shell["execute_command"].startswith("sudo ")
    # provision.sh is told where the files are, and every file provisioner uploads there.
    assert "STAGING=${local.staging}" in shell["environment_vars"]
    for provisioner in _provisioners(packer, "file"):
        assert provisioner["destination"].startswith("${local.staging}/")
    (local_values,) = packer["locals"]
    assert local_values["staging"].startswith("/tmp/")


def test_every_packer_variable_is_typed_and_described(packer):
    for name, body in labelled(packer, "variable").items():
        assert body.get("type"), f"variable {name} has no type"
        assert len(body.get("description", "")) > 20, f"variable {name}: describe it"


# ---- provision.sh --------------------------------------------------------------------------------


def _script_settings(text: str) -> dict[str, str]:
    """The script's plain top-level assignments (NAME=value), $PREFIX expanded."""
    settings = dict(re.findall(r"^([A-Z_]+)=(\S+)$", text, re.M))
    return {k: v.replace("$PREFIX", settings.get("PREFIX", "$PREFIX")) for k, v in settings.items()}


def test_provisioning_installs_into_the_venv_from_the_wheelhouse_only():
    text = PROVISION_SH.read_text()
    settings = _script_settings(text)
    assert settings["VENV"] == VENV
    assert settings["PYTHON"] == "python3.11"
    assert re.search(r'"\$PYTHON" -m venv "\$VENV"', text)
    install = re.search(r'"\$VENV/bin/python" -m pip install ([^\n]*\\\n)*[^\n]*', text)
    assert install, "no pip install into the venv"
    # --no-index: nothing from PyPI, at bake time or ever.
    assert "--no-index" in install.group(0)
    assert '--find-links "$STAGING/wheelhouse"' in install.group(0)


def test_provisioning_installs_what_the_unit_refers_to():
    text = PROVISION_SH.read_text()
    unit = parse_unit(UNIT_FILE.read_text())
    executable, _, config = unit_value(unit, "Service", "ExecStart").partition(" --config ")
    assert executable == f"{VENV}/bin/applianced"  # the venv's console script
    assert config == SITE_CONFIG
    assert re.search(r'"\$CONFIG_DIR/appliance\.toml"', text)
    assert _script_settings(text)["CONFIG_DIR"] + "/appliance.toml" == SITE_CONFIG
    assert "/usr/lib/systemd/system/gwlb-appliance.service" in text
    assert "/usr/lib/sysusers.d/gwlb-appliance.conf" in text
    assert re.search(r"^\s*systemctl enable gwlb-appliance\.service$", text, re.M)
    assert re.search(r"^\s*systemd-sysusers ", text, re.M)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_stop_on_the_first_error(script):
    lines = [line for line in script.read_text().splitlines() if not line.startswith("#")]
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert lines[0] == "set -euo pipefail"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_packer_template_is_formatted(terraform: Terraform):
    # `packer fmt` and `terraform fmt` share HCL's formatter; terraform is the one installed here.
    source = PACKER_TEMPLATE.read_text()
    result = terraform("fmt", "-", cwd=PACKER_DIR, input=source)
    assert result.returncode == 0, result.stderr
    assert result.stdout == source, "run: terraform fmt - < gwlb-appliance.pkr.hcl"
