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

  assert {
    condition     = aws_cloudwatch_log_group.appliances.name == "/gwlb-appliance/fleet1" && aws_cloudwatch_log_group.appliances.retention_in_days == 30
    error_message = "the fleet's log group must be /gwlb-appliance/NAME, kept 30 days by default"
  }

  assert {
    condition     = strcontains(local.user_data, "s|@LOG_GROUP_NAME@|/gwlb-appliance/fleet1|g") && strcontains(local.user_data, "enabled = true\n      sample_allowed = 1\n")
    error_message = "the instances must write flow records and ship them to the fleet's log group"
  }
}

run "gives_the_instances_a_role_that_only_writes_the_fleet_logs" {
  command = plan

  # The role's and the profile's names (from their prefix) and the group's ARN are known only once
  # AWS made them: stand-ins, so the plan can compare them.
  override_resource {
    target          = aws_iam_role.appliance
    override_during = plan
    values          = { name = "fleet1-20250101000000000000000001", id = "fleet1-20250101000000000000000001" }
  }

  override_resource {
    target          = aws_iam_instance_profile.appliance
    override_during = plan
    values          = { name = "fleet1-20250101000000000000000002" }
  }

  override_resource {
    target          = aws_cloudwatch_log_group.appliances
    override_during = plan
    values          = { arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/gwlb-appliance/fleet1" }
  }

  assert {
    condition     = one(aws_launch_template.appliance.iam_instance_profile).name == aws_iam_instance_profile.appliance[0].name
    error_message = "without iam_instance_profile_name the instances must get the module's profile"
  }

  assert {
    condition     = aws_iam_instance_profile.appliance[0].role == aws_iam_role.appliance[0].name && aws_iam_role_policy.appliance_logs[0].role == aws_iam_role.appliance[0].id
    error_message = "the profile's role must carry the logs policy"
  }

  assert {
    condition = jsondecode(aws_iam_role_policy.appliance_logs[0].policy).Statement == [{
      Sid      = "ShipToTheFleetLogGroup"
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
      Resource = [aws_cloudwatch_log_group.appliances.arn, "${aws_cloudwatch_log_group.appliances.arn}:*"]
    }]
    error_message = "the role may only create streams in and write to the fleet's log group"
  }

  assert {
    condition     = jsondecode(aws_iam_role.appliance[0].assume_role_policy).Statement[0].Principal == { Service = "ec2.amazonaws.com" }
    error_message = "only EC2 instances may assume the role"
  }

  assert {
    condition     = length(aws_iam_role_policy_attachment.appliance_additional) == 0
    error_message = "no managed policy unless asked for"
  }

  assert {
    condition     = output.logs_policy_json == aws_iam_role_policy.appliance_logs[0].policy
    error_message = "logs_policy_json must be the policy the module's role has"
  }
}

run "uses_the_given_profile_and_makes_none" {
  command = plan

  variables {
    iam_instance_profile_name = "ops-appliances"
  }

  assert {
    condition     = one(aws_launch_template.appliance.iam_instance_profile).name == "ops-appliances"
    error_message = "the launch template must use iam_instance_profile_name"
  }

  assert {
    condition     = length(aws_iam_role.appliance) == 0 && length(aws_iam_instance_profile.appliance) == 0 && length(aws_iam_role_policy.appliance_logs) == 0
    error_message = "a given profile means no role or profile of the module's"
  }
}

run "attaches_additional_policies_to_its_own_role" {
  command = plan

  variables {
    additional_instance_policy_arns = ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]
  }

  assert {
    condition     = aws_iam_role_policy_attachment.appliance_additional[0].policy_arn == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    error_message = "additional_instance_policy_arns must be attached to the module's role"
  }
}

run "refuses_additional_policies_for_a_given_profile" {
  command = plan

  variables {
    iam_instance_profile_name       = "ops-appliances"
    additional_instance_policy_arns = ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]
  }

  expect_failures = [aws_launch_template.appliance]
}

run "encrypts_and_keeps_the_logs_as_asked" {
  command = plan

  variables {
    log_retention_days     = 365
    log_kms_key_arn        = "arn:aws:kms:eu-west-1:123456789012:key/0a1b2c3d-0a1b-0a1b-0a1b-0a1b2c3d4e5f"
    flowlog_enabled        = false
    flowlog_sample_allowed = 100
    dataplane_io           = "socket"
  }

  assert {
    condition     = aws_cloudwatch_log_group.appliances.retention_in_days == 365 && aws_cloudwatch_log_group.appliances.kms_key_id == var.log_kms_key_arn
    error_message = "the log group must take log_retention_days and log_kms_key_arn"
  }

  assert {
    condition     = strcontains(local.user_data, "enabled = false\n      sample_allowed = 100\n")
    error_message = "flowlog_enabled and flowlog_sample_allowed must reach the site config"
  }

  assert {
    condition     = strcontains(local.user_data, "io = \"socket\"")
    error_message = "dataplane_io must reach the site config"
  }
}

run "refuses_values_outside_aws_ranges" {
  command = plan

  variables {
    deregistration_delay_s          = 3601
    target_failover                 = "sometimes"
    flow_stickiness                 = "source_ip"
    gwlb_subnet_cidrs               = ["10.0.0.0/33"]
    health_check_interval_s         = 4
    healthy_threshold               = 11
    log_retention_days              = 31
    log_kms_key_arn                 = "alias/gwlb"
    flowlog_sample_allowed          = 0
    dataplane_io                    = "xdp"
    additional_instance_policy_arns = ["AmazonSSMManagedInstanceCore"]
  }

  expect_failures = [
    var.deregistration_delay_s,
    var.target_failover,
    var.flow_stickiness,
    var.gwlb_subnet_cidrs,
    var.health_check_interval_s,
    var.healthy_threshold,
    var.log_retention_days,
    var.log_kms_key_arn,
    var.flowlog_sample_allowed,
    var.dataplane_io,
    var.additional_instance_policy_arns,
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
