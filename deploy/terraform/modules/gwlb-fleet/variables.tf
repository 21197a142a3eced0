# Inputs of the gwlb-fleet module. Ranges in the validations are AWS's own limits for Gateway
# Load Balancer target groups, so a bad value fails at `terraform plan`, not halfway through apply.

# --- where -----------------------------------------------------------------------------------

variable "name" {
  type        = string
  description = "Name of the fleet: the GWLB's name and the prefix of every other resource's name. Letters, digits and hyphens, at most 28 characters (the target group adds \"-tg\" within AWS's 32)."

  validation {
    condition     = can(regex("^[a-zA-Z0-9]([a-zA-Z0-9-]{0,26}[a-zA-Z0-9])?$", var.name))
    error_message = "name must be 1-28 letters, digits and hyphens, not starting or ending with a hyphen."
  }
}

variable "vpc_id" {
  type        = string
  description = "VPC of the GWLB, its target group and the appliances."

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "gwlb_subnet_ids" {
  type        = list(string)
  description = "Subnets the GWLB has a node in (one per Availability Zone). GWLB sends Geneve from its node addresses there."

  validation {
    condition     = length(var.gwlb_subnet_ids) > 0 && alltrue([for id in var.gwlb_subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "gwlb_subnet_ids must be a non-empty list of subnet ids (subnet-...)."
  }
}

variable "gwlb_subnet_cidrs" {
  type        = list(string)
  description = "IPv4 CIDRs of the gwlb_subnet_ids. The only sources the appliances' security group admits (UDP 6081 Geneve, TCP 80 health checks), and the appliance's own dataplane.allow_sources."

  validation {
    # cidrnetmask() accepts IPv4 only: the outer header GWLB sends is always IPv4.
    condition     = length(var.gwlb_subnet_cidrs) > 0 && alltrue([for c in var.gwlb_subnet_cidrs : can(cidrhost(c, 0)) && can(cidrnetmask(c))])
    error_message = "gwlb_subnet_cidrs must be a non-empty list of IPv4 CIDRs such as 10.0.0.0/24."
  }
}

variable "appliance_subnet_ids" {
  type        = list(string)
  description = "Subnets the Auto Scaling group launches appliances in: one per GWLB Availability Zone (often the GWLB subnets themselves)."

  validation {
    condition     = length(var.appliance_subnet_ids) > 0 && alltrue([for id in var.appliance_subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "appliance_subnet_ids must be a non-empty list of subnet ids (subnet-...)."
  }
}

# --- the instances ---------------------------------------------------------------------------

variable "ami_id" {
  type        = string
  description = "The gwlb-appliance AMI (deploy/packer; packer-manifest.json lists the ids). Its architecture must match instance_type."

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be an AMI id (ami-...)."
  }
}

variable "instance_type" {
  type        = string
  description = "Appliance instance type: an ENA type (jumbo frames) of the AMI's architecture, e.g. c6i.large for x86_64 or c7g.large for arm64. applianced runs one worker per vCPU."
  default     = "c6i.large"
}

variable "key_name" {
  type        = string
  description = "EC2 key pair for the appliances, or null. The module's security group admits no SSH: add a group with additional_security_group_ids, or use SSM (iam_instance_profile_name)."
  default     = null
}

variable "iam_instance_profile_name" {
  type        = string
  description = "Instance profile for the appliances, or null: the module then makes one whose role may only write to the fleet's log group (logs.tf; add e.g. AmazonSSMManagedInstanceCore with additional_instance_policy_arns). A profile of your own must allow what the logs_policy_json output holds, or the CloudWatch agent ships nothing. The appliance itself calls no AWS API."
  default     = null
}

variable "additional_instance_policy_arns" {
  type        = list(string)
  description = "Managed policies to attach to the module's own instance role as well, e.g. arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore for Session Manager. Only with iam_instance_profile_name null."
  default     = []

  validation {
    condition     = alltrue([for arn in var.additional_instance_policy_arns : can(regex("^arn:aws[a-z-]*:iam::(aws|[0-9]{12}):policy/.+$", arn))])
    error_message = "additional_instance_policy_arns must be IAM policy ARNs (arn:aws:iam::...:policy/...)."
  }
}

variable "additional_security_group_ids" {
  type        = list(string)
  description = "More security groups for the appliances' interface, e.g. SSH from a bastion. The module's own group stays GWLB-only."
  default     = []
}

variable "https_egress_cidrs" {
  type        = list(string)
  description = "CIDRs the appliances may reach on TCP 443: the CloudWatch agent needs CloudWatch Logs (a logs interface VPC endpoint's subnets, or a NAT), the SSM agent its endpoints. Empty: no egress besides Geneve replies to GWLB, and the logs stay on the instances. Amazon DNS, NTP and instance metadata are not subject to security groups."
  default     = []

  validation {
    condition     = alltrue([for c in var.https_egress_cidrs : can(cidrhost(c, 0))])
    error_message = "https_egress_cidrs must be CIDRs such as 10.0.0.0/16."
  }
}

variable "dataplane_io" {
  type        = string
  description = "How the appliances take GWLB's datagrams (the site config's dataplane.io): \"ring\", a packet ring per worker (about 20% less CPU a packet than \"socket\" and more packets a second than a C program on sockets, same latency; deploy/bench/README.md), or \"socket\", UDP sockets."
  default     = "ring"

  validation {
    condition     = contains(["ring", "socket"], var.dataplane_io)
    error_message = "dataplane_io must be \"ring\" or \"socket\"."
  }
}

variable "policy_toml" {
  type        = string
  description = "The appliance policy: [[policy.rules]] tables in the appliance config's TOML (see config/default.toml). Rendered into the site config at /etc/gwlb-appliance/appliance.toml. The default is the demo policy."
  default     = <<-EOT
    [[policy.rules]]
    name = "drop-me"
    action = "drop"
    match = { protocol = "udp", port = 3000, payload_contains = "drop me" }

    [[policy.rules]]
    name = "weakly-to-strongly-typed"
    action = "replace"
    match = { protocol = "udp", port = 3000 }
    find = "weakly typed"
    replace = "strongly typed"

    [[policy.rules]]
    name = "icmp-echo-every-fifth"
    action = "drop_seq_multiple"
    match = { protocol = "icmp", icmp_type = [8, 0] }
    every = 5

    [[policy.rules]]
    name = "icmpv6-echo-every-fifth"
    action = "drop_seq_multiple"
    match = { protocol = "icmpv6", icmp_type = [128, 129] }
    every = 5
  EOT
}

# --- flow records and logs ---------------------------------------------------------------------

variable "flowlog_enabled" {
  type        = bool
  description = "Whether the appliances write flow records (the site config's [flowlog] enabled; one JSON line per flow denied or ended, see the top-level README), which the CloudWatch agent ships to the fleet's log group with the journal."
  default     = true
}

variable "flowlog_sample_allowed" {
  type        = number
  description = "Record 1 in this many flows that passed ([flowlog] sample_allowed); every denied flow is recorded. Raise it to cut CloudWatch Logs ingestion on a busy fleet."
  default     = 1

  validation {
    condition     = var.flowlog_sample_allowed >= 1 && var.flowlog_sample_allowed <= 1000000 && floor(var.flowlog_sample_allowed) == var.flowlog_sample_allowed
    error_message = "flowlog_sample_allowed must be a whole number from 1 to 1000000."
  }
}

variable "log_retention_days" {
  type        = number
  description = "Days CloudWatch Logs keeps the fleet's flow records and journal (/gwlb-appliance/NAME). One of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653), or 0 to keep them forever."
  default     = 30

  validation {
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be 0 (forever) or one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "log_kms_key_arn" {
  type        = string
  description = "ARN of a KMS key to encrypt the fleet's log group with, or null for CloudWatch Logs' own encryption. Its key policy must let the logs.REGION.amazonaws.com service principal use it."
  default     = null

  validation {
    # can(): regex() of a null fails, and a null is allowed.
    condition     = var.log_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[a-zA-Z0-9-]+$", var.log_kms_key_arn))
    error_message = "log_kms_key_arn must be a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), not an alias."
  }
}

# --- fleet size ------------------------------------------------------------------------------

variable "min_size" {
  type        = number
  description = "Fewest appliances. At least 1: a GWLB without a healthy target drops its traffic."
  default     = 2

  validation {
    condition     = var.min_size >= 1 && var.min_size <= 100 && floor(var.min_size) == var.min_size
    error_message = "min_size must be a whole number from 1 to 100."
  }
}

variable "max_size" {
  type        = number
  description = "Most appliances (room for an instance refresh or a scale-out)."
  default     = 4

  validation {
    condition     = var.max_size >= 1 && var.max_size <= 100 && floor(var.max_size) == var.max_size
    error_message = "max_size must be a whole number from 1 to 100."
  }
}

variable "desired_capacity" {
  type        = number
  description = "Appliances to run now, from min_size to max_size."
  default     = 2

  validation {
    condition     = var.desired_capacity >= 1 && var.desired_capacity <= 100 && floor(var.desired_capacity) == var.desired_capacity
    error_message = "desired_capacity must be a whole number from 1 to 100."
  }
}

variable "health_check_grace_period_s" {
  type        = number
  description = "Seconds after launch before the Auto Scaling group acts on a failing GWLB health check: boot, cloud-init and the first passing checks (healthy_threshold x interval) must fit."
  default     = 180

  validation {
    condition     = var.health_check_grace_period_s >= 0 && var.health_check_grace_period_s <= 7200
    error_message = "health_check_grace_period_s must be from 0 to 7200."
  }
}

variable "instance_refresh_min_healthy_percentage" {
  type        = number
  description = "During an instance refresh (a new AMI or launch template version), the share of the fleet kept in service."
  default     = 50

  validation {
    condition     = var.instance_refresh_min_healthy_percentage >= 0 && var.instance_refresh_min_healthy_percentage <= 100
    error_message = "instance_refresh_min_healthy_percentage must be from 0 to 100."
  }
}

# --- the target group --------------------------------------------------------------------------

variable "health_check_interval_s" {
  type        = number
  description = "Seconds between GWLB health checks of each appliance (HTTP GET / on port 80; applianced answers 200 when its workers are live, 503 otherwise)."
  default     = 10

  validation {
    condition     = var.health_check_interval_s >= 5 && var.health_check_interval_s <= 300
    error_message = "health_check_interval_s must be from 5 to 300."
  }
}

variable "health_check_timeout_s" {
  type        = number
  description = "Seconds a health check may take; less than the interval."
  default     = 5

  validation {
    condition     = var.health_check_timeout_s >= 2 && var.health_check_timeout_s <= 120
    error_message = "health_check_timeout_s must be from 2 to 120."
  }
}

variable "healthy_threshold" {
  type        = number
  description = "Consecutive passing checks before an appliance gets new flows."
  default     = 3

  validation {
    condition     = var.healthy_threshold >= 2 && var.healthy_threshold <= 10
    error_message = "healthy_threshold must be from 2 to 10."
  }
}

variable "unhealthy_threshold" {
  type        = number
  description = "Consecutive failing checks before an appliance gets no new flows (and, after the grace period, is replaced)."
  default     = 3

  validation {
    condition     = var.unhealthy_threshold >= 2 && var.unhealthy_threshold <= 10
    error_message = "unhealthy_threshold must be from 2 to 10."
  }
}

variable "deregistration_delay_s" {
  type        = number
  description = "Seconds a deregistering appliance (scale-in, instance refresh) keeps its existing flows before it is removed; the Auto Scaling group waits this long before terminating it."
  default     = 300

  validation {
    condition     = var.deregistration_delay_s >= 0 && var.deregistration_delay_s <= 3600
    error_message = "deregistration_delay_s must be from 0 to 3600."
  }
}

variable "target_failover" {
  type        = string
  description = "What GWLB does with existing flows of a deregistered or unhealthy appliance: no_rebalance (they stay on it; new flows go elsewhere) or rebalance (they are rehashed to healthy appliances after the deregistration delay or the failed checks). AWS requires the same value for on_deregistration and on_unhealthy, hence one variable."
  default     = "no_rebalance"

  validation {
    condition     = contains(["rebalance", "no_rebalance"], var.target_failover)
    error_message = "target_failover must be rebalance or no_rebalance."
  }
}

variable "flow_stickiness" {
  type        = string
  description = "How GWLB keeps a flow on one appliance: 5-tuple (the default hash), source_ip_dest_ip_proto (3-tuple) or source_ip_dest_ip (2-tuple). Every choice is symmetric, so both directions of a flow reach the same appliance."
  default     = "5-tuple"

  validation {
    condition     = contains(["5-tuple", "source_ip_dest_ip_proto", "source_ip_dest_ip"], var.flow_stickiness)
    error_message = "flow_stickiness must be 5-tuple, source_ip_dest_ip_proto or source_ip_dest_ip."
  }
}

# --- the GWLB and its endpoint service ---------------------------------------------------------

variable "cross_zone_load_balancing" {
  type        = bool
  description = "Let each GWLB node send to appliances in every zone (more even load, cross-zone data charges). The appliance replies to whichever GWLB node sent a packet, so either setting works."
  default     = false
}

variable "enable_deletion_protection" {
  type        = bool
  description = "Protect the GWLB from deletion (set true in production)."
  default     = false
}

variable "endpoint_service_acceptance_required" {
  type        = bool
  description = "Whether each new GWLB endpoint connection must be accepted by hand."
  default     = true
}

variable "endpoint_service_allowed_principals" {
  type        = list(string)
  description = "ARNs (accounts, roles, users) allowed to create GWLB endpoints to this fleet's endpoint service, e.g. arn:aws:iam::123456789012:root."
  default     = []

  validation {
    condition     = alltrue([for arn in var.endpoint_service_allowed_principals : startswith(arn, "arn:")])
    error_message = "endpoint_service_allowed_principals must be ARNs (arn:...)."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource the module creates (Product and Fleet are added)."
  default     = {}
}
