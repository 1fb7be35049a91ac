# The whole environment planned with the AWS provider mocked (no credentials, no
# AWS calls): Terraform checks every resource and data source of the three
# aws-region modules, the attachment bucket, the peering and the placement
# document against the provider's schema, and the provider validates the values
# known at plan time. It needs the AWS provider itself (Terraform asks it for its
# schema and its validation), so it runs only where `terraform init` can install
# hashicorp/aws; terraform/README.md ("Testing") says how.

mock_provider "aws" {
  alias  = "region_a"
  source = "./tests/aws"
}

mock_provider "aws" {
  alias  = "region_b"
  source = "./tests/aws"
}

mock_provider "aws" {
  alias  = "region_c"
  source = "./tests/aws"
}

variables {
  name_prefix = "rossby-test"
  survival    = "zone"
  regions = [
    { code = 1, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 3 },
    { code = 2, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], cidr = "10.2.0.0/16", gateway_count = 3 },
    { code = 3, name = "ap-southeast-1", zones = ["ap-southeast-1a", "ap-southeast-1b", "ap-southeast-1c"], cidr = "10.3.0.0/16", gateway_count = 2 },
  ]
  rtt_ms = {
    "us-east-1:eu-west-1"      = 68
    "us-east-1:ap-southeast-1" = 215
    "eu-west-1:ap-southeast-1" = 165
  }
  service_name   = "chat.example.net:7400"
  public_domain  = "gw.example.net"
  public_zone_id = "Z0123456789EXAMPLE"
  rossby_artifact = {
    url    = "s3://example-rossby-releases/rossby-0.1.0-x86_64-linux.tar.gz"
    sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
  }
  artifact_bucket_arns = ["arn:aws:s3:::example-rossby-releases"]
  backup_bucket_arn    = "arn:aws:s3:::example-rossby-backups"
  monitoring_cidrs     = ["10.100.0.0/24"]
  secret_names = {
    webpush_vapid_key   = "rossby/webpush-vapid-key"
    apns_key            = "rossby/apns-key"
    fcm_service_account = "rossby/fcm-service-account"
  }
  push_settings = {
    webpush_subject = "mailto:ops@example.net"
    apns_key_id     = "ABC123DEFG"
    apns_team_id    = "DEF123GHIJ"
    apns_topic      = "net.example.chat"
  }
}

run "three_regions_plan_against_the_provider" {
  command = plan

  assert {
    condition     = [for r in jsondecode(output.topology_json).regions : r.name] == ["us-east-1", "eu-west-1", "ap-southeast-1"]
    error_message = "The topology document lists the three regions, primary first."
  }
  assert {
    condition     = { for r, e in output.gateway_endpoints : r => e.code } == { "us-east-1" = 1, "eu-west-1" = 2, "ap-southeast-1" = 3 }
    error_message = "Every region has its gateway endpoints, with its code."
  }
  assert {
    condition     = module.attachments.bucket.region == "us-east-1"
    error_message = "The attachment bucket is in the primary region, whose name the environment passes in."
  }
}
