variable "region" {
  type        = string
  description = "AWS region of the demo (the appliance AMI must be registered there)."
  default     = "us-east-1"
}

variable "name" {
  type        = string
  description = "Name of the demo: prefix of every resource name and the value of the Project tag."
  default     = "gwlb-demo"
}

variable "appliance_ami_id" {
  type        = string
  description = "The gwlb-appliance AMI baked by deploy/packer (packer-manifest.json), of the architecture of appliance_instance_type."

  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.appliance_ami_id))
    error_message = "appliance_ami_id must be an AMI id (ami-...)."
  }
}

variable "appliance_instance_type" {
  type        = string
  description = "Appliance instance type; c6i.large for an x86_64 AMI, c7g.large for arm64."
  default     = "c6i.large"
}

variable "appliance_count" {
  type        = number
  description = "Appliances behind the GWLB (the Auto Scaling group's desired and minimum size)."
  default     = 1

  validation {
    condition     = var.appliance_count >= 1 && var.appliance_count <= 4
    error_message = "appliance_count must be from 1 to 4 for the demo."
  }
}

variable "host_instance_type" {
  type        = string
  description = "Instance type of the two demo hosts (x86_64: they use the x86_64 Amazon Linux 2023 image)."
  default     = "t3.micro"
}

variable "key_name" {
  type        = string
  description = "Existing EC2 key pair for SSH to the two demo hosts."
}

variable "ssh_ingress_cidr" {
  type        = string
  description = "Where you SSH from (your address as a /32): the only source the hosts admit SSH from."

  validation {
    condition     = can(cidrnetmask(var.ssh_ingress_cidr))
    error_message = "ssh_ingress_cidr must be an IPv4 CIDR such as 203.0.113.7/32."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "IPv4 CIDR of the demo VPC; the four /24 subnets are carved from its start."
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) <= 22
    error_message = "vpc_cidr must be an IPv4 CIDR of /22 or larger."
  }
}
