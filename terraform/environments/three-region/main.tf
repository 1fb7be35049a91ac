# Three regions of one Rossby deployment: the topology computed once, one
# aws-region module per region, VPC peering between every pair, a private DNS zone
# shared by the three VPCs, and the one-shot placement of TiKV's key ranges.

locals {
  tags = merge(var.tags, { "rossby:deployment" = var.name_prefix })
  a    = var.regions[0]
  b    = var.regions[1]
  c    = var.regions[2]
}

module "topology" {
  source = "../../modules/topology"

  regions          = var.regions
  primary          = local.a.name
  survival         = var.survival
  rtt_ms           = var.rtt_ms
  service_name     = var.service_name
  public_domain    = var.public_domain
  internal_domain  = var.internal_domain
  gateway_settings = var.gateway_settings
}

# One attachment bucket for the deployment, in the primary region.
module "attachments" {
  source    = "../../modules/attachments-bucket"
  providers = { aws = aws.region_a }

  region         = local.a.name
  bucket_name    = coalesce(var.attachments_bucket_name, "${var.name_prefix}-rossby-attachments")
  retention_days = try(var.gateway_settings.retention_days, 30)
  kms_key_arn    = var.attachments_kms_key_arn
  tags           = local.tags
}

locals {
  region_common = {
    attachments          = module.attachments.bucket
    name_prefix          = var.name_prefix
    architecture         = var.architecture
    rossby_artifact      = var.rossby_artifact
    tikv_version         = var.tikv_version
    artifact_bucket_arns = var.artifact_bucket_arns
    backup_bucket_arn    = var.backup_bucket_arn
    secret_names         = var.secret_names
    push_settings        = var.push_settings
    secrets_kms_key_arns = var.secrets_kms_key_arns
    monitoring_cidrs     = var.monitoring_cidrs
    tags                 = local.tags
  }
}

module "region_a" {
  source    = "../../modules/aws-region"
  providers = { aws = aws.region_a }

  topology                = module.topology
  region_name             = local.a.name
  aws_region              = local.a.name
  placement_runner        = true
  public_zone_id          = var.public_zone_id
  private_zone_id         = aws_route53_zone.internal.zone_id
  create_admin_dns_record = true
  peers = {
    (local.b.name) = { cidr = local.b.cidr, peering_connection_id = aws_vpc_peering_connection_accepter.ab.id }
    (local.c.name) = { cidr = local.c.cidr, peering_connection_id = aws_vpc_peering_connection_accepter.ac.id }
  }

  name_prefix          = local.region_common.name_prefix
  architecture         = local.region_common.architecture
  rossby_artifact      = local.region_common.rossby_artifact
  tikv_version         = local.region_common.tikv_version
  artifact_bucket_arns = local.region_common.artifact_bucket_arns
  backup_bucket_arn    = local.region_common.backup_bucket_arn
  attachments          = local.region_common.attachments
  secret_names         = local.region_common.secret_names
  push_settings        = local.region_common.push_settings
  secrets_kms_key_arns = local.region_common.secrets_kms_key_arns
  monitoring_cidrs     = local.region_common.monitoring_cidrs
  tags                 = local.region_common.tags
}

module "region_b" {
  source    = "../../modules/aws-region"
  providers = { aws = aws.region_b }

  topology                = module.topology
  region_name             = local.b.name
  aws_region              = local.b.name
  public_zone_id          = var.public_zone_id
  private_zone_id         = aws_route53_zone.internal.zone_id
  create_admin_dns_record = true
  peers = {
    (local.a.name) = { cidr = local.a.cidr, peering_connection_id = aws_vpc_peering_connection_accepter.ab.id }
    (local.c.name) = { cidr = local.c.cidr, peering_connection_id = aws_vpc_peering_connection_accepter.bc.id }
  }

  name_prefix          = local.region_common.name_prefix
  architecture         = local.region_common.architecture
  rossby_artifact      = local.region_common.rossby_artifact
  tikv_version         = local.region_common.tikv_version
  artifact_bucket_arns = local.region_common.artifact_bucket_arns
  backup_bucket_arn    = local.region_common.backup_bucket_arn
  attachments          = local.region_common.attachments
  secret_names         = local.region_common.secret_names
  push_settings        = local.region_common.push_settings
  secrets_kms_key_arns = local.region_common.secrets_kms_key_arns
  monitoring_cidrs     = local.region_common.monitoring_cidrs
  tags                 = local.region_common.tags
}

module "region_c" {
  source    = "../../modules/aws-region"
  providers = { aws = aws.region_c }

  topology                = module.topology
  region_name             = local.c.name
  aws_region              = local.c.name
  public_zone_id          = var.public_zone_id
  private_zone_id         = aws_route53_zone.internal.zone_id
  create_admin_dns_record = true
  peers = {
    (local.a.name) = { cidr = local.a.cidr, peering_connection_id = aws_vpc_peering_connection_accepter.ac.id }
    (local.b.name) = { cidr = local.b.cidr, peering_connection_id = aws_vpc_peering_connection_accepter.bc.id }
  }

  name_prefix          = local.region_common.name_prefix
  architecture         = local.region_common.architecture
  rossby_artifact      = local.region_common.rossby_artifact
  tikv_version         = local.region_common.tikv_version
  artifact_bucket_arns = local.region_common.artifact_bucket_arns
  backup_bucket_arn    = local.region_common.backup_bucket_arn
  attachments          = local.region_common.attachments
  secret_names         = local.region_common.secret_names
  push_settings        = local.region_common.push_settings
  secrets_kms_key_arns = local.region_common.secrets_kms_key_arns
  monitoring_cidrs     = local.region_common.monitoring_cidrs
  tags                 = local.region_common.tags
}

# ---- cross-region connectivity: VPC peering between every pair ----
# Cross-region peering cannot be accepted by the requester; each pair has an
# accepter on the other side, and routes use the accepted connection.

resource "aws_vpc_peering_connection" "ab" {
  provider    = aws.region_a
  vpc_id      = module.region_a.vpc_id
  peer_vpc_id = module.region_b.vpc_id
  peer_region = local.b.name
  auto_accept = false
  tags        = { Name = "${var.name_prefix}-${local.a.name}-${local.b.name}" }
}

resource "aws_vpc_peering_connection_accepter" "ab" {
  provider                  = aws.region_b
  vpc_peering_connection_id = aws_vpc_peering_connection.ab.id
  auto_accept               = true
  tags                      = { Name = "${var.name_prefix}-${local.a.name}-${local.b.name}" }
}

resource "aws_vpc_peering_connection" "ac" {
  provider    = aws.region_a
  vpc_id      = module.region_a.vpc_id
  peer_vpc_id = module.region_c.vpc_id
  peer_region = local.c.name
  auto_accept = false
  tags        = { Name = "${var.name_prefix}-${local.a.name}-${local.c.name}" }
}

resource "aws_vpc_peering_connection_accepter" "ac" {
  provider                  = aws.region_c
  vpc_peering_connection_id = aws_vpc_peering_connection.ac.id
  auto_accept               = true
  tags                      = { Name = "${var.name_prefix}-${local.a.name}-${local.c.name}" }
}

resource "aws_vpc_peering_connection" "bc" {
  provider    = aws.region_b
  vpc_id      = module.region_b.vpc_id
  peer_vpc_id = module.region_c.vpc_id
  peer_region = local.c.name
  auto_accept = false
  tags        = { Name = "${var.name_prefix}-${local.b.name}-${local.c.name}" }
}

resource "aws_vpc_peering_connection_accepter" "bc" {
  provider                  = aws.region_c
  vpc_peering_connection_id = aws_vpc_peering_connection.bc.id
  auto_accept               = true
  tags                      = { Name = "${var.name_prefix}-${local.b.name}-${local.c.name}" }
}

# ---- private DNS: each region's admin address, resolvable from all three VPCs ----

resource "aws_route53_zone" "internal" {
  provider = aws.region_a
  name     = var.internal_domain
  comment  = "Rossby deployment ${var.name_prefix}: gateway admin addresses"

  vpc {
    vpc_id     = module.region_a.vpc_id
    vpc_region = local.a.name
  }
  vpc {
    vpc_id     = module.region_b.vpc_id
    vpc_region = local.b.name
  }
  vpc {
    vpc_id     = module.region_c.vpc_id
    vpc_region = local.c.name
  }
}

# ---- placement: `rossby-admin placement apply` from inside the deployment ----
# An SSM command document run by State Manager on a gateway of the primary region
# (tagged rossby:placement-runner). It waits until PD has a leader, makes the
# primary's PD members the preferred leaders (PD's leader serves every
# transaction's timestamp), and sends the placement rules of the topology to PD.
# A new topology changes the document's parameter and runs it again; applying the
# same rules twice is harmless, so it also runs on each new primary gateway.

locals {
  placement_script = templatefile("${path.module}/templates/placement.sh.tftpl", {
    topology_json = module.topology.topology_json
    pd_urls       = join(" ", [for m in values(module.topology.pd_members) : m.client_url])
    leader_priorities = join(" ", [
      for m in values(module.topology.pd_members) : "${m.name}=${m.leader_priority}"
    ])
  })
}

resource "aws_ssm_document" "placement" {
  provider        = aws.region_a
  name            = "${var.name_prefix}-placement-apply"
  document_type   = "Command"
  document_format = "JSON"
  content = jsonencode({
    schemaVersion = "2.2"
    description   = "Apply the Rossby deployment's TiKV placement rules (rossby-admin placement apply) once PD is up."
    parameters = {
      topologyDigest = {
        type        = "String"
        description = "SHA-256 of the topology document; a new value runs the association again."
        default     = ""
      }
    }
    mainSteps = [{
      action = "aws:runShellScript"
      name   = "placementApply"
      inputs = {
        timeoutSeconds = "3600"
        runCommand     = split("\n", local.placement_script)
      }
    }]
  })
}

resource "aws_ssm_association" "placement" {
  provider         = aws.region_a
  name             = aws_ssm_document.placement.name
  association_name = "${var.name_prefix}-placement-apply"
  document_version = aws_ssm_document.placement.default_version
  parameters = {
    topologyDigest = sha256(module.topology.topology_json)
  }
  max_concurrency     = "1"
  max_errors          = "1"
  compliance_severity = "HIGH"

  targets {
    key    = "tag:rossby:placement-runner"
    values = ["true"]
  }
  targets {
    key    = "tag:rossby:deployment"
    values = [var.name_prefix]
  }
}

check "verification_codes_reach_users" {
  assert {
    condition     = try(!startswith(var.gateway_settings.verifier, "log"), false)
    error_message = "gateway_settings.verifier is unset or \"log\": verification codes only reach the gateways' logs. Set it to webhook:URL (docs/configuration.md) before real users register."
  }
}
