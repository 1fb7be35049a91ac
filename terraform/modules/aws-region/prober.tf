# The region's cross-region prober (`rossby-admin prober`,
# docs/operations/prober.md): its own small instance in the first zone's app
# subnet, so a gateway's replacement or drain never stops the measure, with a
# volume that keeps its accounts' state across instance replacements. It talks to
# the region's gateways through their public address, as clients do, and serves
# its metrics to the monitoring networks.

locals {
  prober_enabled       = var.prober.enabled
  prober_zone          = local.zones[0]
  prober_dir           = "/var/lib/rossby-prober"
  prober_default_type  = var.architecture == "x86_64" ? "t3.micro" : "t4g.micro"
  prober_instance_type = coalesce(var.prober.instance_type, local.prober_default_type)
}

resource "aws_security_group" "prober" {
  count       = local.prober_enabled ? 1 : 0
  name        = "${local.prefix}-prober"
  description = "Rossby cross-region prober"
  vpc_id      = aws_vpc.this.id
  tags        = merge(local.tags, { Name = "${local.prefix}-prober" })
}

resource "aws_vpc_security_group_ingress_rule" "prober_metrics" {
  for_each          = local.prober_enabled ? toset(var.monitoring_cidrs) : toset([])
  security_group_id = aws_security_group.prober[0].id
  description       = "Prober metrics from monitoring"
  ip_protocol       = "tcp"
  from_port         = var.prober.metrics_port
  to_port           = var.prober.metrics_port
  cidr_ipv4         = each.key
}

resource "aws_vpc_security_group_egress_rule" "prober" {
  count             = local.prober_enabled ? 1 : 0
  security_group_id = aws_security_group.prober[0].id
  description       = "Outbound (the gateways' public address, artifacts, SSM)"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_ebs_volume" "prober" {
  count             = local.prober_enabled ? 1 : 0
  availability_zone = local.prober_zone
  size              = var.prober.volume_gb
  type              = "gp3"
  encrypted         = true
  tags              = merge(local.tags, { Name = "${local.prefix}-prober-state", "rossby:role" = "prober" })
}

resource "aws_instance" "prober" {
  count                  = local.prober_enabled ? 1 : 0
  ami                    = local.ami_id
  instance_type          = local.prober_instance_type
  subnet_id              = aws_subnet.app[local.prober_zone].id
  vpc_security_group_ids = [aws_security_group.prober[0].id]
  iam_instance_profile   = aws_iam_instance_profile.node["prober"].name

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 20
    encrypted   = true
  }

  user_data_base64 = base64gzip(join("\n", [local.boot_common, templatefile("${path.module}/templates/prober.sh.tftpl", {
    region_name      = var.region_name
    rossby_url       = local.artifacts.rossby_url
    rossby_sha256    = local.artifacts.rossby_sha256
    volume_id        = aws_ebs_volume.prober[0].id
    state_dir        = local.prober_dir
    topology_json    = var.topology.topology_json
    account_template = var.prober.account_template
    interval_secs    = var.prober.interval_secs
    deadline_secs    = var.prober.deadline_secs
    metrics_port     = var.prober.metrics_port
  })]))

  tags = merge(local.tags, {
    Name          = "${local.prefix}-prober"
    "rossby:role" = "prober"
    "rossby:zone" = local.prober_zone
  })

  lifecycle {
    ignore_changes = [ami, user_data_base64]
  }
}

resource "aws_volume_attachment" "prober" {
  count                          = local.prober_enabled ? 1 : 0
  device_name                    = "/dev/sdf"
  volume_id                      = aws_ebs_volume.prober[0].id
  instance_id                    = aws_instance.prober[0].id
  stop_instance_before_detaching = true
}
