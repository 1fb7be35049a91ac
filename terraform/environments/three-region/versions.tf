terraform {
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40.0, < 6.0.0"
    }
  }

  # Keep state in a remote backend with locking (for example S3 with
  # use_lockfile); pass its settings with `terraform init -backend-config=...`.
  backend "s3" {}
}
