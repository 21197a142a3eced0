terraform {
  # 1.5: lifecycle preconditions, import blocks; nothing newer is used.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}
