# Where the appliances' logs go: one CloudWatch Logs group for the fleet with two streams per
# instance, {instance_id}/flows (the flow records the appliance writes to
# /var/log/gwlb-appliance/flows.log) and {instance_id}/journal (the unit's journal, which the AMI
# copies to /var/log/gwlb-appliance/journal.log). The AMI's CloudWatch agent ships both
# (deploy/packer/cloudwatch-agent.json); cloud-init starts it with this group's name.
#
# The group belongs to Terraform, retention and encryption included: the agent only creates its
# streams in it and writes to them. The instance role the module makes (when
# iam_instance_profile_name is null) may do exactly that, on this group alone. Not AWS's managed
# CloudWatchAgentServerPolicy: it lets the instance create any log group, write to every group in
# the account, set retention, put CloudWatch metrics, describe EC2 volumes and tags and read the
# SSM parameters named AmazonCloudWatch-*. The agent here collects no metrics and reads its config
# from a file, so it needs none of that, and an appliance that sits in the path of every packet
# should not be able to write into other workloads' logs or change their retention.

resource "aws_cloudwatch_log_group" "appliances" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = local.tags
}

locals {
  create_instance_profile = var.iam_instance_profile_name == null
  # one(): the list is empty when a profile is given, and that branch is not taken.
  instance_profile_name = local.create_instance_profile ? one(aws_iam_instance_profile.appliance[*].name) : var.iam_instance_profile_name

  # What the CloudWatch agent calls (its cloudwatchlogs output): CreateLogStream for each of its
  # two streams (CreateLogGroup only if that says the group is missing, which Terraform rules
  # out), then PutLogEvents. DescribeLogStreams is for older agents, which looked a stream up
  # before writing to it. On the group's own ARN and ARN:* (its streams,
  # ...:log-group:NAME:log-stream:ID), nothing wider. Also an output, for a profile of your own.
  # Objects written as IAM's JSON, not aws_iam_policy_document data sources: the same document,
  # and `terraform test`'s mocked provider can plan it.
  logs_policy = {
    Version = "2012-10-17"
    Statement = [{
      Sid      = "ShipToTheFleetLogGroup"
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
      Resource = [aws_cloudwatch_log_group.appliances.arn, "${aws_cloudwatch_log_group.appliances.arn}:*"]
    }]
  }

  assume_role_policy = {
    Version = "2012-10-17"
    Statement = [{
      Sid       = "FleetInstances"
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "ec2.amazonaws.com" }
    }]
  }
}

# IAM names are global to the account: a prefix (at most 38 characters; name is at most 28), so
# two fleets of the same name in two regions do not collide.
resource "aws_iam_role" "appliance" {
  count              = local.create_instance_profile ? 1 : 0
  name_prefix        = "${var.name}-"
  description        = "gwlb-appliance instances of fleet ${var.name}: ship logs to ${local.log_group_name}"
  assume_role_policy = jsonencode(local.assume_role_policy)
  tags               = local.tags
}

resource "aws_iam_role_policy" "appliance_logs" {
  count  = local.create_instance_profile ? 1 : 0
  name   = "cloudwatch-logs"
  role   = aws_iam_role.appliance[0].id
  policy = jsonencode(local.logs_policy)
}

# Opt-in, e.g. AmazonSSMManagedInstanceCore for Session Manager. By index, not for_each: an ARN
# may be unknown until apply.
resource "aws_iam_role_policy_attachment" "appliance_additional" {
  count      = local.create_instance_profile ? length(var.additional_instance_policy_arns) : 0
  role       = aws_iam_role.appliance[0].name
  policy_arn = var.additional_instance_policy_arns[count.index]
}

resource "aws_iam_instance_profile" "appliance" {
  count       = local.create_instance_profile ? 1 : 0
  name_prefix = "${var.name}-"
  role        = aws_iam_role.appliance[0].name
  tags        = local.tags
}
