"""The cloud-init template: rendered as the gwlb-fleet module renders it, it must be valid
cloud-config that writes a config the appliance accepts, where the unit reads it, with the GWLB
subnets as the only allowed Geneve sources."""

from __future__ import annotations

import ipaddress
import shlex

import pytest
import yaml
from deployfiles import (
    MODULE_DIR,
    SERVICE_USER,
    SITE_CONFIG,
    UNIT_FILE,
    USER_DATA,
    heredoc_default,
    parse_unit,
    render_user_data,
    unit_value,
)

from config.loader import default_config_path, parse_config
from config.schema import DEFAULT_RUNTIME_DIR, FlowLogConfig
from supervisor.workerproc import SNAPSHOT_NAME

GWLB_CIDRS = ["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"]
DEMO_RULES = [
    "drop-me",
    "weakly-to-strongly-typed",
    "icmp-echo-every-fifth",
    "icmpv6-echo-every-fifth",
]


@pytest.fixture(scope="module")
def cloud_config():
    policy = heredoc_default(MODULE_DIR / "variables.tf", "policy_toml")
    return yaml.safe_load(render_user_data(GWLB_CIDRS, policy))


@pytest.fixture(scope="module")
def site_file(cloud_config):
    (entry,) = [f for f in cloud_config["write_files"] if f["path"] == SITE_CONFIG]
    return entry


def test_template_is_cloud_config():
    # cloud-init only treats user data as cloud-config when this is its very first line.
    assert USER_DATA.read_text().splitlines()[0] == "#cloud-config"


def test_site_config_lands_where_the_unit_reads_it(site_file):
    start = unit_value(parse_unit(UNIT_FILE.read_text()), "Service", "ExecStart")
    assert shlex.split(start)[1:] == ["--config", site_file["path"]]


def test_site_config_is_readable_by_the_service_user_only(site_file):
    assert site_file["owner"] == f"root:{SERVICE_USER}"
    assert site_file["permissions"] == "0640"


def test_rendered_site_config_is_a_valid_appliance_config(site_file):
    config = parse_config(site_file["content"], "user-data.yaml, rendered")
    # Geneve only from the GWLB subnets, the same CIDRs the security group admits.
    assert config.dataplane.allow_sources == tuple(map(ipaddress.IPv4Network, GWLB_CIDRS))
    assert config.dataplane.port == 6081
    # The packet-ring backend, as the module's default says (the shipped default is "socket").
    assert config.dataplane.io == "ring"
    # The target group health-checks port 80.
    assert config.health.enabled and config.health.port == 80
    # The module's default policy is the demo's, every rule intact.
    assert [rule.name for rule in config.policy.rules] == DEMO_RULES
    # Flow records on, to the default path (the one the CloudWatch agent ships), every flow.
    assert config.flowlog.enabled and config.flowlog.destination == "file"
    assert config.flowlog.path == FlowLogConfig().path
    assert config.flowlog.sample_allowed == 1


def test_flowlog_variables_reach_the_site_config():
    rendered = render_user_data(GWLB_CIDRS, "", flowlog_enabled=False, flowlog_sample_allowed=1000)
    (site,) = yaml.safe_load(rendered)["write_files"]
    flowlog = parse_config(site["content"]).flowlog
    assert (flowlog.enabled, flowlog.sample_allowed) == (False, 1000)


def test_dataplane_io_reaches_the_site_config():
    for io in ("ring", "socket"):
        rendered = render_user_data(GWLB_CIDRS, "", dataplane_io=io)
        (site,) = yaml.safe_load(rendered)["write_files"]
        assert parse_config(site["content"]).dataplane.io == io


def test_module_default_policy_is_the_shipped_demo_policy():
    shipped = parse_config(default_config_path().read_text())
    ours = parse_config(heredoc_default(MODULE_DIR / "variables.tf", "policy_toml"))
    assert ours.policy.rules == shipped.policy.rules


def test_a_multiline_policy_stays_inside_the_block_scalar(cloud_config):
    # indent(6, ...) must line the policy up with the block scalar, or YAML would end the file's
    # content at the first rule and take the rest for keys of its own.
    assert set(cloud_config) == {"write_files", "runcmd"}
    assert "[[policy.rules]]" in cloud_config["write_files"][0]["content"]


def test_runcmd_restarts_the_unit_only_when_it_runs_another_config(cloud_config):
    command, _agent = cloud_config["runcmd"]  # the agent's start: test_cloudwatch.py
    assert command[:2] == ["sh", "-c"]
    words = shlex.split(command[2])
    snapshot = DEFAULT_RUNTIME_DIR / SNAPSHOT_NAME  # the daemon's copy of the config it runs
    assert words[:4] == ["cmp", "-s", SITE_CONFIG, str(snapshot)]
    assert words[4:] == ["||", "systemctl", "restart", UNIT_FILE.name]


def test_an_empty_policy_renders_too():
    site = yaml.safe_load(render_user_data(GWLB_CIDRS[:1], ""))["write_files"][0]
    config = parse_config(site["content"])
    assert config.policy.rules == ()
    assert [str(n) for n in config.dataplane.allow_sources] == GWLB_CIDRS[:1]
