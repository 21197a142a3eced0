# The demo on real AWS: two hosts, a and b, in subnets of their own, whose traffic to each other
# goes through a GWLB endpoint to the appliance fleet and back (the same demo deploy/local/demo.py
# emulates in network namespaces).
#
#   host a ──(a's route table: b's subnet -> GWLB endpoint)──▶ GWLB endpoint ──▶ GWLB ──Geneve──▶
#   appliance ──▶ GWLB ──▶ GWLB endpoint ──(local route)──▶ host b, and the replies the mirror way
#
# A route more specific than the VPC's local route may target a GWLB endpoint when its
# destination is exactly a subnet's CIDR, so east-west traffic inside one VPC can be inspected.
# One Availability Zone keeps the demo small; the module takes one subnet per zone for more.

data "aws_availability_zones" "available" {
  state = "available"
}

data "aws_caller_identity" "current" {}

# The hosts are plain Amazon Linux 2023 (x86_64, for host_instance_type's default t3.micro).
data "aws_ssm_parameter" "al2023" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

locals {
  az      = data.aws_availability_zones.available.names[0]
  newbits = 24 - tonumber(split("/", var.vpc_cidr)[1])
  cidrs = {
    appliance = cidrsubnet(var.vpc_cidr, local.newbits, 0) # the GWLB and the appliances
    endpoint  = cidrsubnet(var.vpc_cidr, local.newbits, 1) # the GWLB endpoint
    host_a    = cidrsubnet(var.vpc_cidr, local.newbits, 2)
    host_b    = cidrsubnet(var.vpc_cidr, local.newbits, 3)
  }

  # GWLB carries inner packets of at most 8500 bytes, drops larger ones and sends no ICMP "too
  # big" for them: the hosts use MTU 8500 so TCP's MSS fits (nc -u and ping fit anyway).
  host_user_data = <<-EOT
    #!/bin/bash
    set -euo pipefail
    dnf install -y nmap-ncat
    dev=$(ip -o route show default | awk '{print $5; exit}')
    ip link set dev "$dev" mtu 8500
  EOT
}

resource "aws_vpc" "demo" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = var.name }
}

resource "aws_internet_gateway" "demo" {
  vpc_id = aws_vpc.demo.id
  tags   = { Name = var.name }
}

# --- subnets -----------------------------------------------------------------------------------

resource "aws_subnet" "appliance" {
  vpc_id            = aws_vpc.demo.id
  availability_zone = local.az
  cidr_block        = local.cidrs.appliance
  tags              = { Name = "${var.name}-appliance" }
}

resource "aws_subnet" "endpoint" {
  vpc_id            = aws_vpc.demo.id
  availability_zone = local.az
  cidr_block        = local.cidrs.endpoint
  tags              = { Name = "${var.name}-endpoint" }
}

resource "aws_subnet" "host_a" {
  vpc_id                  = aws_vpc.demo.id
  availability_zone       = local.az
  cidr_block              = local.cidrs.host_a
  map_public_ip_on_launch = true # for SSH from ssh_ingress_cidr
  tags                    = { Name = "${var.name}-host-a" }
}

resource "aws_subnet" "host_b" {
  vpc_id                  = aws_vpc.demo.id
  availability_zone       = local.az
  cidr_block              = local.cidrs.host_b
  map_public_ip_on_launch = true
  tags                    = { Name = "${var.name}-host-b" }
}

# --- the appliance fleet and its endpoint -----------------------------------------------------

module "fleet" {
  source = "../../modules/gwlb-fleet"

  name                 = var.name
  vpc_id               = aws_vpc.demo.id
  gwlb_subnet_ids      = [aws_subnet.appliance.id]
  gwlb_subnet_cidrs    = [aws_subnet.appliance.cidr_block]
  appliance_subnet_ids = [aws_subnet.appliance.id]

  ami_id           = var.appliance_ami_id
  instance_type    = var.appliance_instance_type
  min_size         = var.appliance_count
  desired_capacity = var.appliance_count
  max_size         = var.appliance_count + 1

  # The demo's own account attaches the endpoint at once; a demo comes and goes, so drain briefly.
  endpoint_service_acceptance_required = false
  endpoint_service_allowed_principals  = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
  deregistration_delay_s               = 30

  # The CloudWatch agent reaches CloudWatch Logs through the interface endpoint below, in the
  # appliances' own subnet. A week of flow records and journal is plenty for a demo.
  https_egress_cidrs = [aws_subnet.appliance.cidr_block]
  log_retention_days = 7
}

# --- CloudWatch Logs without a way out of the VPC -------------------------------------------------

# The appliances' subnet keeps only the local route. An interface endpoint with private DNS makes
# logs.REGION.amazonaws.com resolve to addresses in that subnet, so the appliances' CloudWatch
# agent ships the flow records and the journal to the fleet's log group (module output
# log_group_name) over the module's HTTPS egress rule.
resource "aws_security_group" "logs_endpoint" {
  name_prefix = "${var.name}-logs-endpoint-"
  description = "CloudWatch Logs endpoint: HTTPS from the appliance subnet"
  vpc_id      = aws_vpc.demo.id

  ingress {
    description = "HTTPS from the CloudWatch agent of the appliances"
    protocol    = "tcp"
    from_port   = 443
    to_port     = 443
    cidr_blocks = [aws_subnet.appliance.cidr_block]
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_endpoint" "logs" {
  vpc_id              = aws_vpc.demo.id
  vpc_endpoint_type   = "Interface"
  service_name        = "com.amazonaws.${var.region}.logs"
  subnet_ids          = [aws_subnet.appliance.id]
  security_group_ids  = [aws_security_group.logs_endpoint.id]
  private_dns_enabled = true # needs the VPC's DNS support and hostnames, both on
  tags                = { Name = "${var.name}-logs" }
}

resource "aws_vpc_endpoint" "gwlbe" {
  vpc_id            = aws_vpc.demo.id
  vpc_endpoint_type = "GatewayLoadBalancer"
  service_name      = module.fleet.endpoint_service_name
  subnet_ids        = [aws_subnet.endpoint.id]
  tags              = { Name = "${var.name}-gwlbe" }
}

# --- routes: a <-> b through the endpoint --------------------------------------------------------

resource "aws_route_table" "host_a" {
  vpc_id = aws_vpc.demo.id
  tags   = { Name = "${var.name}-host-a" }
}

resource "aws_route_table" "host_b" {
  vpc_id = aws_vpc.demo.id
  tags   = { Name = "${var.name}-host-b" }
}

# The endpoint and appliance subnets keep only the local route: what the endpoint hands back goes
# straight to its destination, and the appliances need no way out of the VPC.
resource "aws_route_table" "private" {
  vpc_id = aws_vpc.demo.id
  tags   = { Name = "${var.name}-private" }
}

resource "aws_route" "host_a_internet" {
  route_table_id         = aws_route_table.host_a.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.demo.id
}

resource "aws_route" "host_b_internet" {
  route_table_id         = aws_route_table.host_b.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.demo.id
}

resource "aws_route" "host_a_to_b" {
  route_table_id         = aws_route_table.host_a.id
  destination_cidr_block = aws_subnet.host_b.cidr_block
  vpc_endpoint_id        = aws_vpc_endpoint.gwlbe.id
}

# The return path must cross the same endpoint: GWLB does not support asymmetric routing.
resource "aws_route" "host_b_to_a" {
  route_table_id         = aws_route_table.host_b.id
  destination_cidr_block = aws_subnet.host_a.cidr_block
  vpc_endpoint_id        = aws_vpc_endpoint.gwlbe.id
}

resource "aws_route_table_association" "host_a" {
  subnet_id      = aws_subnet.host_a.id
  route_table_id = aws_route_table.host_a.id
}

resource "aws_route_table_association" "host_b" {
  subnet_id      = aws_subnet.host_b.id
  route_table_id = aws_route_table.host_b.id
}

resource "aws_route_table_association" "endpoint" {
  subnet_id      = aws_subnet.endpoint.id
  route_table_id = aws_route_table.private.id
}

resource "aws_route_table_association" "appliance" {
  subnet_id      = aws_subnet.appliance.id
  route_table_id = aws_route_table.private.id
}

# --- the two hosts ----------------------------------------------------------------------------

resource "aws_security_group" "hosts" {
  name_prefix = "${var.name}-hosts-"
  description = "Demo hosts: SSH from the operator, the demo traffic from the VPC"
  vpc_id      = aws_vpc.demo.id

  ingress {
    description = "SSH from the operator"
    protocol    = "tcp"
    from_port   = 22
    to_port     = 22
    cidr_blocks = [var.ssh_ingress_cidr]
  }

  # After the appliance, packets arrive with the other host's own address as their source.
  ingress {
    description = "ping between the hosts"
    protocol    = "icmp"
    from_port   = -1
    to_port     = -1
    cidr_blocks = [var.vpc_cidr]
  }

  ingress {
    description = "nc -u on port 3000 between the hosts"
    protocol    = "udp"
    from_port   = 3000
    to_port     = 3000
    cidr_blocks = [var.vpc_cidr]
  }

  egress {
    description = "anything: package installs and the demo traffic"
    protocol    = "-1"
    from_port   = 0
    to_port     = 0
    cidr_blocks = ["0.0.0.0/0"]
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_instance" "host_a" {
  ami                    = data.aws_ssm_parameter.al2023.value
  instance_type          = var.host_instance_type
  subnet_id              = aws_subnet.host_a.id
  vpc_security_group_ids = [aws_security_group.hosts.id]
  key_name               = var.key_name
  user_data              = local.host_user_data

  metadata_options {
    http_tokens = "required"
  }

  # Its route to b must exist before the demo starts.
  depends_on = [aws_route.host_a_to_b, aws_route_table_association.host_a]
  tags       = { Name = "${var.name}-host-a" }
}

resource "aws_instance" "host_b" {
  ami                    = data.aws_ssm_parameter.al2023.value
  instance_type          = var.host_instance_type
  subnet_id              = aws_subnet.host_b.id
  vpc_security_group_ids = [aws_security_group.hosts.id]
  key_name               = var.key_name
  user_data              = local.host_user_data

  metadata_options {
    http_tokens = "required"
  }

  depends_on = [aws_route.host_b_to_a, aws_route_table_association.host_b]
  tags       = { Name = "${var.name}-host-b" }
}
