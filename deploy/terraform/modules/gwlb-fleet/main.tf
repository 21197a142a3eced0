# gwlb-fleet: a Gateway Load Balancer in front of an Auto Scaling group of gwlb-appliance
# instances, published as a VPC endpoint service that consumers attach GWLB endpoints to.
#
#   consumer route table ─▶ GWLB endpoint ─▶ aws_lb (gateway) ─▶ listener ─▶ target group
#       (GENEVE 6081, HTTP health checks on port 80) ─▶ the Auto Scaling group's instances
#
# The instances come from the Packer AMI, which already holds the appliance and its enabled unit;
# the launch template's user data only writes the site config (deploy/cloud-init/user-data.yaml)
# and starts the AMI's CloudWatch agent on this fleet's log group (logs.tf).

locals {
  tags = merge(var.tags, {
    Product = "gwlb-appliance"
    Fleet   = var.name
  })

  # Flow records and the appliance's journal, from every instance of the fleet (logs.tf). Only
  # letters, digits, hyphens and slashes (var.name's validation), so it is safe inside the
  # template's sed expression and the agent's JSON alike.
  log_group_name = "/gwlb-appliance/${var.name}"

  # The template lives with the rest of the deployment files; a module taken from git with a
  # //subdirectory still has the whole repository, so the relative path holds.
  user_data = templatefile("${path.module}/../../../cloud-init/user-data.yaml", {
    # A JSON list of strings is also a TOML array of strings.
    allow_sources = jsonencode(var.gwlb_subnet_cidrs)
    dataplane_io  = var.dataplane_io
    # indent() leaves the first line alone: the template places it; the rest must match it.
    policy_toml = indent(6, trimspace(var.policy_toml))
    # A bool and a number render as TOML's true/false and an integer.
    flowlog_enabled        = var.flowlog_enabled
    flowlog_sample_allowed = var.flowlog_sample_allowed
    log_group_name         = local.log_group_name
  })
}

resource "aws_lb" "this" {
  name                             = var.name
  load_balancer_type               = "gateway"
  subnets                          = var.gwlb_subnet_ids
  enable_cross_zone_load_balancing = var.cross_zone_load_balancing
  enable_deletion_protection       = var.enable_deletion_protection
  tags                             = local.tags
}

resource "aws_lb_target_group" "appliances" {
  name        = "${var.name}-tg"
  vpc_id      = var.vpc_id
  target_type = "instance"
  # GWLB speaks only Geneve to its targets, always to UDP 6081.
  protocol             = "GENEVE"
  port                 = 6081
  deregistration_delay = var.deregistration_delay_s

  # applianced's health service (gunicorn, a child of the daemon) answers GET / on port 80 with
  # 200 when enough workers have fresh heartbeats and 503 otherwise (starting, draining, stuck).
  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = "80"
    path                = "/"
    matcher             = "200-399"
    interval            = var.health_check_interval_s
    timeout             = var.health_check_timeout_s
    healthy_threshold   = var.healthy_threshold
    unhealthy_threshold = var.unhealthy_threshold
  }

  target_failover {
    on_deregistration = var.target_failover
    on_unhealthy      = var.target_failover
  }

  # No block is GWLB's default, the 5-tuple hash.
  dynamic "stickiness" {
    for_each = var.flow_stickiness == "5-tuple" ? [] : [var.flow_stickiness]
    content {
      enabled = true
      type    = stickiness.value
    }
  }

  lifecycle {
    precondition {
      condition     = var.health_check_timeout_s < var.health_check_interval_s
      error_message = "health_check_timeout_s must be less than health_check_interval_s."
    }
  }

  tags = local.tags
}

# A GWLB listener has no port or protocol: it takes all traffic and forwards it.
resource "aws_lb_listener" "this" {
  load_balancer_arn = aws_lb.this.arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.appliances.arn
  }

  tags = local.tags
}

# The appliances talk to GWLB and to nothing else. Only the GWLB subnets may send: Geneve on UDP
# 6081 and the health checks on TCP 80. (Source/destination checking can stay on: GWLB traffic is
# addressed to the appliance itself, the client packets travel inside Geneve.)
resource "aws_security_group" "appliances" {
  name_prefix = "${var.name}-appliances-"
  description = "gwlb-appliance: Geneve UDP 6081 and health checks TCP 80 from the GWLB subnets only"
  vpc_id      = var.vpc_id

  ingress {
    description = "Geneve from the GWLB nodes"
    protocol    = "udp"
    from_port   = 6081
    to_port     = 6081
    cidr_blocks = var.gwlb_subnet_cidrs
  }

  ingress {
    description = "GWLB health checks, HTTP GET / on port 80"
    protocol    = "tcp"
    from_port   = 80
    to_port     = 80
    cidr_blocks = var.gwlb_subnet_cidrs
  }

  # The reply keeps GWLB's source port and goes to port 6081 (ports are not swapped), so it is not
  # the return half of the inbound flow that connection tracking would let out on its own.
  egress {
    description = "Geneve back to the GWLB nodes"
    protocol    = "udp"
    from_port   = 6081
    to_port     = 6081
    cidr_blocks = var.gwlb_subnet_cidrs
  }

  dynamic "egress" {
    for_each = length(var.https_egress_cidrs) > 0 ? [var.https_egress_cidrs] : []
    content {
      description = "HTTPS for SSM and CloudWatch agents"
      protocol    = "tcp"
      from_port   = 443
      to_port     = 443
      cidr_blocks = egress.value
    }
  }

  # Replace, then detach the old group: the launch template refers to it by id.
  lifecycle {
    create_before_destroy = true
  }

  tags = merge(local.tags, { Name = "${var.name}-appliances" })
}

resource "aws_launch_template" "appliance" {
  name_prefix            = "${var.name}-"
  description            = "gwlb-appliance instances of fleet ${var.name}"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  key_name               = var.key_name
  user_data              = base64encode(local.user_data)
  update_default_version = true

  # The given profile, or the module's own with just what the CloudWatch agent needs (logs.tf).
  iam_instance_profile {
    name = local.instance_profile_name
  }

  # No public address: the appliance is reached by GWLB inside the VPC only.
  network_interfaces {
    device_index                = 0
    associate_public_ip_address = false
    delete_on_termination       = true
    security_groups             = concat([aws_security_group.appliances.id], var.additional_security_group_ids)
  }

  # IMDSv2 only, one hop: the appliance needs no instance metadata beyond what cloud-init reads.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-appliance" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  lifecycle {
    # Here, not on the module's role: with a profile given, that role does not exist to check.
    precondition {
      condition     = var.iam_instance_profile_name == null || length(var.additional_instance_policy_arns) == 0
      error_message = "additional_instance_policy_arns applies to the module's own role only: attach those policies to the role of iam_instance_profile_name instead."
    }
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "appliances" {
  name_prefix         = "${var.name}-"
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity
  vpc_zone_identifier = var.appliance_subnet_ids

  # The group registers every instance it launches and deregisters every one it terminates, and
  # waits out the deregistration delay first, so existing flows can finish.
  target_group_arns = [aws_lb_target_group.appliances.arn]
  # Replace an instance GWLB finds unhealthy, not only one EC2 finds broken; after the grace
  # period, which covers boot, cloud-init and the first healthy_threshold checks.
  health_check_type         = "ELB"
  health_check_grace_period = var.health_check_grace_period_s

  launch_template {
    id      = aws_launch_template.appliance.id
    version = aws_launch_template.appliance.latest_version
  }

  # A new AMI or user data makes a new launch template version, which rolls the fleet.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = var.instance_refresh_min_healthy_percentage
      instance_warmup        = var.health_check_grace_period_s
    }
  }

  dynamic "tag" {
    for_each = local.tags
    content {
      key   = tag.key
      value = tag.value
      # The launch template tags the instances already.
      propagate_at_launch = false
    }
  }

  lifecycle {
    precondition {
      condition     = var.min_size <= var.desired_capacity && var.desired_capacity <= var.max_size
      error_message = "desired_capacity must be from min_size to max_size."
    }
  }

  # The first instances' agents find their log group and their permission to write to it (the
  # launch template only refers to the profile, not to the role's policy).
  depends_on = [aws_cloudwatch_log_group.appliances, aws_iam_role_policy.appliance_logs]
}

resource "aws_vpc_endpoint_service" "this" {
  acceptance_required        = var.endpoint_service_acceptance_required
  allowed_principals         = var.endpoint_service_allowed_principals
  gateway_load_balancer_arns = [aws_lb.this.arn]
  tags                       = merge(local.tags, { Name = var.name })
}
