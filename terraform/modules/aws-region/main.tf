# One region of a Rossby deployment on AWS: network, PD and TiKV instances at the
# addresses the topology module fixed, gateways in an autoscaling group behind a
# UDP network load balancer. Everything derived (labels, addresses, configuration
# files) comes from the topology module; this module only places it.

data "aws_ssm_parameter" "al2023" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.architecture}"
}

locals {
  region = var.topology.regions[var.region_name]
  # The AWS region's name (see variable aws_region).
  aws_region = coalesce(var.aws_region, var.region_name)
  zones      = local.region.zones
  slug       = local.region.slug
  prefix     = "${var.name_prefix}-${local.slug}"
  # Load balancer and target group names are limited to 32 characters: use the
  # region code rather than its name.
  short   = "${var.name_prefix}-${local.region.code}"
  ports   = var.topology.ports
  ami_id  = var.ami_id != null ? var.ami_id : data.aws_ssm_parameter.al2023[0].insecure_value
  tf_arch = var.architecture == "x86_64" ? "amd64" : "arm64"

  pd_members  = { for k, m in var.topology.pd_members : k => m if m.region == var.region_name }
  tikv_stores = { for k, s in var.topology.tikv_stores : k => s if s.region == var.region_name }

  # Every region's network: PD, TiKV and the gateways talk across all of them.
  deployment_cidrs = sort(values(var.topology.cidrs))
  # Where gateways run, in every region (gateway-to-gateway notifications).
  gateway_cidrs = sort(flatten([for r in values(var.topology.regions) : [for s in values(r.subnets) : s.app]]))
  # Where this region's internet-facing load balancer sends health checks from.
  public_cidrs = sort([for s in values(local.region.subnets) : s.public])

  artifacts = {
    rossby_url    = var.rossby_artifact.url
    rossby_sha256 = var.rossby_artifact.sha256
    pd_url        = var.tikv_artifacts != null ? var.tikv_artifacts.pd_url : "https://tiup-mirrors.pingcap.com/pd-${var.tikv_version}-linux-${local.tf_arch}.tar.gz"
    pd_sha256     = var.tikv_artifacts != null ? var.tikv_artifacts.pd_sha256 : ""
    tikv_url      = var.tikv_artifacts != null ? var.tikv_artifacts.tikv_url : "https://tiup-mirrors.pingcap.com/tikv-${var.tikv_version}-linux-${local.tf_arch}.tar.gz"
    tikv_sha256   = var.tikv_artifacts != null ? var.tikv_artifacts.tikv_sha256 : ""
  }

  tags = merge(var.tags, {
    "rossby:deployment" = var.name_prefix
    "rossby:region"     = var.region_name
  })

  # Shell functions shared by every boot script (plain bash, no template syntax).
  boot_common = file("${path.module}/templates/common.sh")
}
