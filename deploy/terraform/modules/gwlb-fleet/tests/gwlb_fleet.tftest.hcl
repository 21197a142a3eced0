# `terraform test` for the module, against a mocked AWS provider: plans only, no account, no
# network once the provider is installed. What it adds to tests/deploy (which reads the files
# without terraform): the provider's real schema, and the validations and preconditions evaluated.
#
#   cd deploy/terraform/modules/gwlb-fleet && terraform init && terraform test

mock_provider "aws" {}

variables {
  name                 = "fleet1"
  vpc_id               = "vpc-0123456789abcdef0"
  gwlb_subnet_ids      = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  gwlb_subnet_cidrs    = ["10.0.0.0/24", "10.0.1.0/24"]
  appliance_subnet_ids = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  ami_id               = "ami-0123456789abcdef0"
}

run "plans_a_geneve_fleet" {
  command = plan

  assert {
    condition     = aws_lb.this.load_balancer_type == "gateway"
    error_message = "the load balancer must be a gateway load balancer"
  }

  assert {
    condition     = aws_lb_target_group.appliances.protocol == "GENEVE" && aws_lb_target_group.appliances.port == 6081
    error_message = "the target group must speak GENEVE on 6081"
  }

  assert {
    condition     = one(aws_lb_target_group.appliances.health_check).port == "80" && one(aws_lb_target_group.appliances.health_check).protocol == "HTTP"
    error_message = "the health check must be HTTP on port 80"
  }

  assert {
    condition     = one(aws_lb_target_group.appliances.target_failover).on_deregistration == one(aws_lb_target_group.appliances.target_failover).on_unhealthy
    error_message = "AWS requires equal on_deregistration and on_unhealthy"
  }

  assert {
    condition     = one(aws_launch_template.appliance.metadata_options).http_tokens == "required"
    error_message = "the appliances must require IMDSv2"
  }

  assert {
    condition     = aws_autoscaling_group.appliances.health_check_type == "ELB"
    error_message = "the group must replace instances GWLB finds unhealthy"
  }

  assert {
    condition     = strcontains(local.user_data, "allow_sources = [\"10.0.0.0/24\",\"10.0.1.0/24\"]")
    error_message = "the site config must allow Geneve from the GWLB subnets"
  }
}

run "refuses_values_outside_aws_ranges" {
  command = plan

  variables {
    deregistration_delay_s  = 3601
    target_failover         = "sometimes"
    flow_stickiness         = "source_ip"
    gwlb_subnet_cidrs       = ["10.0.0.0/33"]
    health_check_interval_s = 4
    healthy_threshold       = 11
  }

  expect_failures = [
    var.deregistration_delay_s,
    var.target_failover,
    var.flow_stickiness,
    var.gwlb_subnet_cidrs,
    var.health_check_interval_s,
    var.healthy_threshold,
  ]
}

run "refuses_a_desired_capacity_outside_min_and_max" {
  command = plan

  variables {
    min_size         = 3
    desired_capacity = 2
    max_size         = 4
  }

  expect_failures = [aws_autoscaling_group.appliances]
}

run "refuses_a_timeout_not_below_the_interval" {
  command = plan

  variables {
    health_check_interval_s = 5
    health_check_timeout_s  = 5
  }

  expect_failures = [aws_lb_target_group.appliances]
}

run "adds_stickiness_only_when_asked" {
  command = plan

  variables {
    flow_stickiness = "source_ip_dest_ip"
  }

  assert {
    condition     = one(aws_lb_target_group.appliances.stickiness).type == "source_ip_dest_ip"
    error_message = "flow_stickiness must reach the target group"
  }
}
