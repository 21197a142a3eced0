"""The gwlb-fleet Terraform module and the demo example, read as data (python-hcl2).

What GWLB requires of its targets (DESIGN.md §1) must hold in the module: Geneve on UDP 6081, an
HTTP health check on port 80 that our 200/503 answers fit, the security group admitting exactly
that and only from the GWLB subnets. Where terraform is installed, it also formats the files,
evaluates the variables' validation blocks and renders the user data with the module's own
expression; no provider and no network is needed for any of that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from deployfiles import (
    DEPLOY,
    EXAMPLE_DIR,
    MODULE_DIR,
    PLACEHOLDER,
    USER_DATA,
    Terraform,
    dynamic_blocks,
    expr,
    labelled,
    only,
    resources,
)

from config.loader import parse_config
from config.schema import DataPlaneConfig, HealthConfig

GWLB_CIDRS = "${var.gwlb_subnet_cidrs}"
USER_DATA_PLACEHOLDERS = {
    "allow_sources",
    "dataplane_io",
    "policy_toml",
    "flowlog_enabled",
    "flowlog_sample_allowed",
    "log_group_name",
}
META_ARGUMENTS = {"source", "version", "providers", "depends_on", "count", "for_each"}


def matcher_codes(matcher: str) -> set[int]:
    """The HTTP codes an ELB matcher ("200", "200,202", "200-399") accepts."""
    codes: set[int] = set()
    for part in matcher.split(","):
        low, _, high = part.strip().partition("-")
        codes.update(range(int(low), int(high or low) + 1))
    return codes


# ---- the load balancer, its target group and listener --------------------------------------------


def test_gwlb_is_a_gateway_load_balancer_in_the_gwlb_subnets(module):
    lb = only(resources(module, "aws_lb"))
    assert lb["load_balancer_type"] == "gateway"
    assert lb["subnets"] == "${var.gwlb_subnet_ids}"


def test_target_group_speaks_geneve_on_6081_to_instances(module):
    group = only(resources(module, "aws_lb_target_group"))
    assert group["protocol"] == "GENEVE"
    assert int(group["port"]) == 6081 == DataPlaneConfig().port
    assert group["target_type"] == "instance"  # what an Auto Scaling group registers


def test_health_check_is_http_get_slash_on_the_appliance_health_port(module):
    (check,) = only(resources(module, "aws_lb_target_group"))["health_check"]
    assert check["enabled"] is True
    assert check["protocol"] == "HTTP"
    assert int(check["port"]) == HealthConfig().port == 80
    assert check["path"] == "/"
    # Our health service answers 200 when healthy and 503 when not: the matcher must tell them
    # apart, with 200 in and 503 out.
    codes = matcher_codes(check["matcher"])
    assert 200 in codes and 503 not in codes
    for key, variable in [
        ("interval", "health_check_interval_s"),
        ("timeout", "health_check_timeout_s"),
        ("healthy_threshold", "healthy_threshold"),
        ("unhealthy_threshold", "unhealthy_threshold"),
    ]:
        assert expr(check[key]) == f"var.{variable}"


def test_target_group_drain_and_failover_come_from_validated_variables(module):
    group = only(resources(module, "aws_lb_target_group"))
    assert expr(group["deregistration_delay"]) == "var.deregistration_delay_s"
    (failover,) = group["target_failover"]
    # AWS requires on_deregistration and on_unhealthy to be equal: one variable feeds both.
    assert expr(failover["on_deregistration"]) == expr(failover["on_unhealthy"])
    assert expr(failover["on_unhealthy"]) == "var.target_failover"
    variables = labelled(module, "variable")
    (enum,) = variables["target_failover"]["validation"]
    assert re.search(
        r'contains\(\["rebalance", "no_rebalance"\], var\.target_failover\)', enum["condition"]
    )
    assert variables["target_failover"]["default"] == "no_rebalance"  # GWLB's own default


def test_target_group_stickiness_is_optional_and_gwlb_typed(module):
    (sticky,) = dynamic_blocks(only(resources(module, "aws_lb_target_group")), "stickiness")
    assert "var.flow_stickiness" in sticky["for_each"]
    (enum,) = labelled(module, "variable")["flow_stickiness"]["validation"]
    for kind in ("source_ip_dest_ip_proto", "source_ip_dest_ip", "5-tuple"):
        assert f'"{kind}"' in enum["condition"]


def test_listener_forwards_everything_to_the_target_group(module):
    listener = only(resources(module, "aws_lb_listener"))
    assert expr(listener["load_balancer_arn"]) == "aws_lb.this.arn"
    (action,) = listener["default_action"]
    assert action["type"] == "forward"
    assert expr(action["target_group_arn"]) == "aws_lb_target_group.appliances.arn"
    # A GWLB listener takes no port or protocol; giving one fails at apply.
    assert "port" not in listener and "protocol" not in listener


def test_endpoint_service_publishes_the_gwlb(module):
    service = only(resources(module, "aws_vpc_endpoint_service"))
    assert service["gateway_load_balancer_arns"] == ["${aws_lb.this.arn}"]
    assert expr(service["acceptance_required"]) == "var.endpoint_service_acceptance_required"
    assert expr(service["allowed_principals"]) == "var.endpoint_service_allowed_principals"


# ---- the instances -------------------------------------------------------------------------------


def test_autoscaling_group_registers_in_the_target_group_and_heeds_its_health(module):
    group = only(resources(module, "aws_autoscaling_group"))
    assert group["target_group_arns"] == ["${aws_lb_target_group.appliances.arn}"]
    assert group["health_check_type"] == "ELB"
    assert expr(group["health_check_grace_period"]) == "var.health_check_grace_period_s"
    assert expr(group["vpc_zone_identifier"]) == "var.appliance_subnet_ids"
    (template,) = group["launch_template"]
    assert expr(template["id"]) == "aws_launch_template.appliance.id"
    # latest_version, so a new AMI or user data makes a new version and rolls the fleet...
    assert expr(template["version"]) == "aws_launch_template.appliance.latest_version"
    (refresh,) = group["instance_refresh"]
    assert refresh["strategy"] == "Rolling"  # ...through the instance refresh
    for size in ("min_size", "max_size", "desired_capacity"):
        assert expr(group[size]) == f"var.{size}"
    (lifecycle,) = group["lifecycle"]
    (precondition,) = lifecycle["precondition"]
    assert "var.min_size <= var.desired_capacity" in precondition["condition"]


def test_launch_template_requires_imdsv2_and_boots_the_appliance(module):
    template = only(resources(module, "aws_launch_template"))
    (metadata,) = template["metadata_options"]
    assert metadata["http_tokens"] == "required"
    assert metadata["http_endpoint"] == "enabled"
    assert expr(template["image_id"]) == "var.ami_id"
    assert expr(template["user_data"]) == "base64encode(local.user_data)"
    (interface,) = template["network_interfaces"]
    assert "aws_security_group.appliances.id" in interface["security_groups"]
    assert interface["associate_public_ip_address"] is False
    # Security groups go on the interface; top-level ones conflict with network_interfaces.
    assert "vpc_security_group_ids" not in template


def _rules(group: dict[str, Any], direction: str) -> list[dict[str, Any]]:
    static = group.get(direction, [])
    dynamic = [block["content"][0] for block in dynamic_blocks(group, direction)]
    return static + dynamic


def test_security_group_admits_only_geneve_and_health_checks_from_the_gwlb_subnets(module):
    group = only(resources(module, "aws_security_group"))
    ingress = _rules(group, "ingress")
    assert sorted((r["protocol"], r["from_port"], r["to_port"]) for r in ingress) == [
        ("tcp", 80, 80),
        ("udp", 6081, 6081),
    ]
    for rule in ingress:
        assert rule["cidr_blocks"] == GWLB_CIDRS
        # Nothing else may widen the sources.
        for key in ("ipv6_cidr_blocks", "security_groups", "self", "prefix_list_ids"):
            assert key not in rule
    # No rule resources elsewhere in the module that could add ingress to the group.
    for rtype in ("aws_security_group_rule", "aws_vpc_security_group_ingress_rule"):
        assert not resources(module, rtype)


def test_security_group_lets_the_geneve_replies_out(module):
    egress = _rules(only(resources(module, "aws_security_group")), "egress")
    # The reply keeps GWLB's source port and goes to 6081: not the inbound flow's return half.
    replies = [r for r in egress if r["protocol"] == "udp"]
    assert [(r["from_port"], r["to_port"], r["cidr_blocks"]) for r in replies] == [
        (6081, 6081, GWLB_CIDRS)
    ]
    assert all(r["cidr_blocks"] != ["0.0.0.0/0"] for r in egress)


def test_gwlb_cidr_variable_is_validated_as_ipv4_cidrs(module):
    (validation,) = labelled(module, "variable")["gwlb_subnet_cidrs"]["validation"]
    assert "can(cidrhost(c, 0))" in validation["condition"]
    assert "can(cidrnetmask(c))" in validation["condition"]  # IPv4 only, like allow_sources
    assert "length(var.gwlb_subnet_cidrs) > 0" in validation["condition"]


# ---- the user data -------------------------------------------------------------------------------


def test_user_data_template_gets_exactly_the_placeholders_it_uses(module):
    call = expr(_locals(module)["user_data"])
    match = re.fullmatch(r'templatefile\("\$\{path\.module\}/([^"]+)", \{(.*)\}\)', call, re.S)
    assert match, call
    assert (MODULE_DIR / match.group(1)).resolve() == USER_DATA
    passed = set(re.findall(r"(\w+) += ", match.group(2)))
    used = {name.strip() for name in PLACEHOLDER.findall(USER_DATA.read_text())}
    assert passed == used == USER_DATA_PLACEHOLDERS
    # No template directives or stray interpolations for templatefile() to trip over.
    assert "%{" not in USER_DATA.read_text()


def _locals(doc: dict[str, list[Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in doc.get("locals", []):
        merged.update(block)
    return merged


# ---- variables, outputs, versions ----------------------------------------------------------------


def test_every_variable_is_typed_and_described(module, example):
    for where, doc in (("module", module), ("example", example)):
        for name, body in labelled(doc, "variable").items():
            assert body.get("type"), f"{where} variable {name} has no type"
            assert len(body.get("description", "")) > 20, f"{where} variable {name}: describe it"


def test_every_output_is_described(module, example):
    for doc in (module, example):
        for name, body in labelled(doc, "output").items():
            assert body.get("description"), f"output {name} has no description"


def test_bounded_variables_have_validations(module):
    variables = labelled(module, "variable")
    for name in [
        "deregistration_delay_s",
        "target_failover",
        "flow_stickiness",
        "min_size",
        "max_size",
        "desired_capacity",
        "health_check_interval_s",
        "health_check_timeout_s",
        "healthy_threshold",
        "unhealthy_threshold",
        "health_check_grace_period_s",
        "gwlb_subnet_cidrs",
        "gwlb_subnet_ids",
        "appliance_subnet_ids",
        "ami_id",
        "name",
        "flowlog_sample_allowed",
        "log_retention_days",
        "log_kms_key_arn",
        "additional_instance_policy_arns",
    ]:
        validations = variables[name].get("validation", [])
        assert validations, f"variable {name} has no validation"
        for validation in validations:
            assert f"var.{name}" in validation["condition"]
            assert validation["error_message"].endswith(".")


def test_aws_provider_is_pinned_to_major_version_5(module, example):
    for doc in (module, example):
        (settings,) = doc["terraform"]
        (providers,) = settings["required_providers"]
        assert providers["aws"]["source"] == "hashicorp/aws"
        assert providers["aws"]["version"] == "~> 5.0"


# ---- the demo example ----------------------------------------------------------------------------


def test_example_passes_the_module_only_variables_it_has_and_all_it_needs(module, example):
    call = labelled(example, "module")["fleet"]
    assert (EXAMPLE_DIR / call["source"]).resolve() == MODULE_DIR
    variables = labelled(module, "variable")
    passed = set(call) - META_ARGUMENTS
    assert passed <= set(variables), f"unknown module variables: {passed - set(variables)}"
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= passed, f"required module variables not passed: {required - passed}"


def test_example_reads_only_outputs_the_module_has(module):
    text = "".join(path.read_text() for path in EXAMPLE_DIR.glob("*.tf"))
    read = set(re.findall(r"module\.fleet\.(\w+)", text))
    assert read and read <= set(labelled(module, "output"))


def test_example_sends_host_traffic_through_the_gwlb_endpoint(example):
    ((endpoint_name, endpoint),) = [
        (name, body)
        for name, body in resources(example, "aws_vpc_endpoint").items()
        if body["vpc_endpoint_type"] == "GatewayLoadBalancer"
    ]
    assert expr(endpoint["service_name"]) == "module.fleet.endpoint_service_name"
    through = {
        expr(route["route_table_id"]): expr(route["destination_cidr_block"])
        for route in resources(example, "aws_route").values()
        if expr(route.get("vpc_endpoint_id")) == f"aws_vpc_endpoint.{endpoint_name}.id"
    }
    # Both directions: a's table sends b's subnet to the endpoint and b's table a's subnet, or the
    # replies would bypass the appliance (GWLB does not support asymmetric routing).
    assert through == {
        "aws_route_table.host_a.id": "aws_subnet.host_b.cidr_block",
        "aws_route_table.host_b.id": "aws_subnet.host_a.cidr_block",
    }
    # The endpoint's own subnet must not route back into the endpoint.
    assert expr(endpoint["subnet_ids"][0]) == "aws_subnet.endpoint.id"
    associations = resources(example, "aws_route_table_association")
    assert expr(associations["endpoint"]["route_table_id"]) not in through


def test_example_outputs_what_the_walkthrough_uses(example):
    assert {
        "endpoint_service_name",
        "gwlb_arn",
        "autoscaling_group_name",
        "host_a_private_ip",
        "host_b_private_ip",
        "host_a_public_ip",
        "host_b_public_ip",
        "log_group_name",
    } <= set(labelled(example, "output"))


# ---- with terraform installed --------------------------------------------------------------------


def test_terraform_files_are_formatted(terraform: Terraform):
    result = terraform(
        "fmt", "-check", "-recursive", "-diff", str(DEPLOY / "terraform"), cwd=DEPLOY
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


def _scratch_module(tmp_path: Path) -> Path:
    """The module's variables and its user-data local, without a provider: plan needs no network.

    The locals block is copied as text, so the expression rendered is the module's own.
    """
    main = (MODULE_DIR / "main.tf").read_text()
    start = main.index("locals {")
    depth, end = 0, start
    for end in range(start, len(main)):
        depth += {"{": 1, "}": -1}.get(main[end], 0)
        if depth == 0 and main[end] == "}":
            break
    block = main[start : end + 1].replace("${path.module}", str(MODULE_DIR))
    shutil.copy(MODULE_DIR / "variables.tf", tmp_path / "variables.tf")
    (tmp_path / "main.tf").write_text(
        block + '\n\noutput "user_data" {\n  value = local.user_data\n}\n'
    )
    return tmp_path


GOOD_VARIABLES = {
    "name": "fleet1",
    "vpc_id": "vpc-0123456789abcdef0",
    "gwlb_subnet_ids": ["subnet-0123456789abcdef0"],
    "gwlb_subnet_cidrs": ["10.0.1.0/24", "10.0.2.0/24"],
    "appliance_subnet_ids": ["subnet-0123456789abcdef0"],
    "ami_id": "ami-0123456789abcdef0",
}


def test_terraform_renders_a_user_data_the_appliance_accepts(terraform: Terraform, tmp_path):
    scratch = _scratch_module(tmp_path)
    (scratch / "good.tfvars.json").write_text(json.dumps(GOOD_VARIABLES))
    init = terraform("init", "-input=false", "-backend=false", cwd=scratch)
    assert init.returncode == 0, init.stderr
    apply = terraform(
        "apply", "-input=false", "-auto-approve", "-var-file=good.tfvars.json", cwd=scratch
    )
    assert apply.returncode == 0, apply.stderr
    rendered = terraform("output", "-raw", "user_data", cwd=scratch).stdout
    cloud_config = yaml.safe_load(rendered)
    (site,) = cloud_config["write_files"]
    config = parse_config(site["content"], "rendered by terraform")
    assert [str(n) for n in config.dataplane.allow_sources] == GOOD_VARIABLES["gwlb_subnet_cidrs"]
    # Terraform's own rendering of a bool and a number is TOML's.
    assert config.flowlog.enabled is True and config.flowlog.sample_allowed == 1
    assert "s|@LOG_GROUP_NAME@|/gwlb-appliance/fleet1|g" in cloud_config["runcmd"][1][2]
    assert [rule.name for rule in config.policy.rules] == [
        "drop-me",
        "weakly-to-strongly-typed",
        "icmp-echo-every-fifth",
        "icmpv6-echo-every-fifth",
    ]


def test_terraform_refuses_out_of_range_variables(terraform: Terraform, tmp_path):
    scratch = _scratch_module(tmp_path)
    bad = {
        "deregistration_delay_s": 3601,
        "target_failover": "sometimes",
        "flow_stickiness": "source_ip",
        "min_size": 0,
        "gwlb_subnet_cidrs": ["10.0.0.0/33"],
        "health_check_interval_s": 4,
        "healthy_threshold": 11,
        "log_retention_days": 31,
        "log_kms_key_arn": "alias/gwlb",
        "flowlog_sample_allowed": 0,
        "additional_instance_policy_arns": ["AmazonSSMManagedInstanceCore"],
    }
    (scratch / "bad.tfvars.json").write_text(json.dumps({**GOOD_VARIABLES, **bad}))
    assert terraform("init", "-input=false", "-backend=false", cwd=scratch).returncode == 0
    plan = terraform("plan", "-input=false", "-no-color", "-var-file=bad.tfvars.json", cwd=scratch)
    assert plan.returncode != 0
    refused = set(re.findall(r"var\.(\w+) is ", plan.stderr))
    assert refused == set(bad), plan.stderr


# ---- with terraform and the AWS provider ---------------------------------------------------------

PLUGIN_DIR_VARIABLE = "GWLB_TF_PLUGIN_DIR"


@pytest.mark.parametrize("directory", [MODULE_DIR, EXAMPLE_DIR], ids=["module", "example"])
def test_terraform_validate_and_test_against_the_provider_schema(
    terraform: Terraform, tmp_path, directory
):
    """`terraform validate` and the `terraform test` files, against the real provider schema
    (a mocked provider: plans only, no account). The provider must come from a local mirror
    named by $GWLB_TF_PLUGIN_DIR (`terraform providers mirror DIR` makes one): tests never
    download. A few seconds per directory, so opt-in."""
    plugins = os.environ.get(PLUGIN_DIR_VARIABLE)
    if not plugins:
        pytest.skip(f"set {PLUGIN_DIR_VARIABLE} to a provider mirror to run terraform test")
    # A copy, so .terraform/ never lands in the work tree; cloud-init/ comes along for the
    # module's relative templatefile() path.
    for part in ("terraform", "cloud-init"):
        shutil.copytree(DEPLOY / part, tmp_path / part)
    scratch = tmp_path / directory.relative_to(DEPLOY)
    init = terraform(
        "init", "-input=false", "-backend=false", f"-plugin-dir={plugins}", cwd=scratch
    )
    assert init.returncode == 0, init.stdout + init.stderr
    for command in (("validate", "-no-color"), ("test", "-no-color")):
        result = terraform(*command, cwd=scratch)
        assert result.returncode == 0, result.stdout + result.stderr
