# `terraform test` for the demo, against a mocked AWS provider (plan only; see the module's tests).
#
#   cd deploy/terraform/examples/demo && terraform init && terraform test

mock_provider "aws" {
  override_data {
    target = data.aws_availability_zones.available
    values = { names = ["eu-west-1a", "eu-west-1b"] }
  }

  override_data {
    target = data.aws_caller_identity.current
    values = { account_id = "123456789012" }
  }

  override_data {
    target = data.aws_ssm_parameter.al2023
    values = { value = "ami-0aaaaaaaaaaaaaaaa" }
  }
}

variables {
  appliance_ami_id = "ami-0123456789abcdef0"
  key_name         = "demo"
  ssh_ingress_cidr = "203.0.113.7/32"
}

run "plans_the_demo" {
  command = plan

  assert {
    condition     = aws_route.host_a_to_b.destination_cidr_block == aws_subnet.host_b.cidr_block && aws_route.host_b_to_a.destination_cidr_block == aws_subnet.host_a.cidr_block
    error_message = "each host's route to the other must be the other's whole subnet"
  }

  assert {
    condition     = aws_vpc_endpoint.gwlbe.vpc_endpoint_type == "GatewayLoadBalancer"
    error_message = "the hosts' traffic must go through a GWLB endpoint"
  }

  assert {
    condition     = strcontains(module.fleet.user_data, "allow_sources = [\"${aws_subnet.appliance.cidr_block}\"]")
    error_message = "the appliances must accept Geneve from the GWLB subnet only"
  }

  assert {
    condition     = aws_vpc_endpoint.logs.service_name == "com.amazonaws.${var.region}.logs" && aws_vpc_endpoint.logs.private_dns_enabled && length(aws_vpc_endpoint.logs.subnet_ids) == 1
    error_message = "the appliances' agent must reach CloudWatch Logs through an endpoint in their subnet"
  }

  assert {
    condition     = module.fleet.log_group_name == "/gwlb-appliance/${var.name}"
    error_message = "the demo's logs must go to the fleet's log group"
  }
}
