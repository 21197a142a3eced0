# The gwlb-appliance AMI: Amazon Linux 2023 with the appliance installed, for x86_64 and arm64.
#
# Everything the instance runs is decided here, at bake time: the wheelhouse (the appliance's wheel
# and every dependency's wheel, for the build's architecture) is built beforehand by
# deploy/packer/build-wheelhouse.sh, uploaded, and installed with `pip --no-index`, so nothing is
# compiled or downloaded when an instance boots. At boot cloud-init only writes the site config
# (deploy/cloud-init/user-data.yaml), restarts the enabled unit if needed and starts the CloudWatch
# agent (installed here, from Amazon's signed package) on the fleet's log group.
#
#   bash deploy/packer/build-wheelhouse.sh          # dist/wheelhouse/{x86_64,arm64}/
#   packer init deploy/packer
#   packer build -var region=eu-west-1 deploy/packer
#   packer build -only='*.arm64' deploy/packer      # one architecture
#
# MTU: the appliance needs 8500 bytes of inner packet plus 68 of Geneve overhead. Inside a VPC the
# DHCP option gives every ENA interface MTU 9001, and applianced's interface setup ([interface]
# mtu in the config) raises the data-plane interface to 9001 if it finds less, so the image pins
# nothing; both sources use ENA instance types, which all carry jumbo frames.

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type        = string
  description = "AWS region the builder instances run in and the AMIs are registered in."
  default     = "us-east-1"
}

variable "ami_regions" {
  type        = list(string)
  description = "Other regions to copy the finished AMIs to (empty: only var.region)."
  default     = []
}

variable "instance_type_x86_64" {
  type        = string
  description = "Builder instance type for the x86_64 AMI (any ENA type; it only installs files)."
  default     = "c6i.large"
}

variable "instance_type_arm64" {
  type        = string
  description = "Builder instance type for the arm64 (Graviton) AMI."
  default     = "c7g.large"
}

variable "wheelhouse_dir" {
  type        = string
  description = "Directory with one subdirectory per architecture (x86_64/, arm64/), each holding exactly one gwlb_appliance wheel and the wheels of all its dependencies for that architecture and CPython 3.11, as build-wheelhouse.sh makes them. Empty: dist/wheelhouse in the repository."
  default     = ""
}

variable "ami_name_prefix" {
  type        = string
  description = "Start of the AMI name; the architecture and a UTC timestamp follow."
  default     = "gwlb-appliance"
}

variable "subnet_id" {
  type        = string
  description = "Subnet for the builder instances (it needs SSH from where Packer runs). Empty: the region's default VPC."
  default     = ""
}

variable "tags" {
  type        = map(string)
  description = "Extra tags for the AMIs and their snapshots (Product, Architecture and the base AMI are always set)."
  default     = {}
}

locals {
  timestamp  = formatdate("YYYYMMDDhhmmss", timestamp())
  wheelhouse = var.wheelhouse_dir != "" ? var.wheelhouse_dir : "${path.root}/../../dist/wheelhouse"
  # Uploaded as ec2-user, installed by provision.sh as root, then deleted.
  staging = "/tmp/gwlb-appliance-staging"
  tags = merge(var.tags, {
    Product        = "gwlb-appliance"
    BaseAMI        = "{{ .SourceAMI }}"
    BaseAMIName    = "{{ .SourceAMIName }}"
    BuildRegion    = "{{ .BuildRegion }}"
    BuildTimestamp = local.timestamp
  })
}

# The two sources differ only in architecture and instance type. The filter takes the newest
# standard AL2023 image (al2023-ami-2023.*, not the -minimal- one) published by Amazon itself.
source "amazon-ebs" "x86_64" {
  region          = var.region
  ami_regions     = var.ami_regions
  instance_type   = var.instance_type_x86_64
  subnet_id       = var.subnet_id
  ami_name        = "${var.ami_name_prefix}-x86_64-${local.timestamp}"
  ami_description = "gwlb-appliance (GWLB Geneve appliance) on Amazon Linux 2023, x86_64"

  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-x86_64"
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  ssh_username = "ec2-user"
  ena_support  = true
  # Instances launched from the AMI default to IMDSv2 only; the builder itself too.
  imds_support = "v2.0"
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags          = merge(local.tags, { Architecture = "x86_64" })
  snapshot_tags = merge(local.tags, { Architecture = "x86_64" })
}

source "amazon-ebs" "arm64" {
  region          = var.region
  ami_regions     = var.ami_regions
  instance_type   = var.instance_type_arm64
  subnet_id       = var.subnet_id
  ami_name        = "${var.ami_name_prefix}-arm64-${local.timestamp}"
  ami_description = "gwlb-appliance (GWLB Geneve appliance) on Amazon Linux 2023, arm64"

  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-arm64"
      architecture        = "arm64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  ssh_username = "ec2-user"
  ena_support  = true
  imds_support = "v2.0"
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags          = merge(local.tags, { Architecture = "arm64" })
  snapshot_tags = merge(local.tags, { Architecture = "arm64" })
}

build {
  name    = "gwlb-appliance"
  sources = ["source.amazon-ebs.x86_64", "source.amazon-ebs.arm64"]

  # A directory source ending in "/" uploads its contents, into a destination that must exist.
  provisioner "shell" {
    inline = ["mkdir -p ${local.staging}/wheelhouse"]
  }

  # The wheelhouse of this build's architecture only: orjson, setproctitle and markupsafe are
  # binary wheels, so an x86_64 wheelhouse would not install on Graviton.
  provisioner "file" {
    source      = "${local.wheelhouse}/${source.name}/"
    destination = "${local.staging}/wheelhouse"
  }

  # The unit, its system user, the baked config (the shipped demo policy; cloud-init replaces it
  # with the site's) and the operator notes; then the logs' way to CloudWatch: the agent's config,
  # the journal copier with its unit, and journal.log's rotation (provision.sh downloads the agent
  # itself and checks its signature).
  provisioner "file" {
    sources = [
      "${path.root}/../systemd/gwlb-appliance.service",
      "${path.root}/../systemd/gwlb-appliance.sysusers",
      "${path.root}/../../config/default.toml",
      "${path.root}/../README.md",
      "${path.root}/cloudwatch-agent.json",
      "${path.root}/../systemd/gwlb-appliance-journal.service",
      "${path.root}/../systemd/gwlb-appliance-journal.sh",
      "${path.root}/gwlb-appliance.logrotate",
    ]
    destination = "${local.staging}/"
  }

  provisioner "shell" {
    script           = "${path.root}/provision.sh"
    execute_command  = "sudo env {{ .Vars }} bash '{{ .Path }}'"
    environment_vars = ["STAGING=${local.staging}", "ARCH=${source.name}"]
  }

  # ami ids per architecture and region, for `terraform apply -var appliance_ami_id=...`.
  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
  }
}
