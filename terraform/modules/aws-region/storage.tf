# PD members and TiKV stores: one instance each at the fixed address the topology
# module chose in its zone's data subnet, with a separate encrypted data volume
# that outlives the instance. Terraform does not replace these instances when the
# AMI or the boot script changes (that would restart the cluster at once); they
# are upgraded one at a time (docs/operations/upgrade.md).

resource "aws_ebs_volume" "pd" {
  for_each          = local.pd_members
  availability_zone = each.value.zone
  size              = local.region.pd.volume_gb
  type              = "gp3"
  encrypted         = true
  tags              = merge(local.tags, { Name = "${var.name_prefix}-${each.key}-data", "rossby:role" = "pd" })
}

resource "aws_instance" "pd" {
  for_each               = local.pd_members
  ami                    = local.ami_id
  instance_type          = local.region.pd.instance_type
  subnet_id              = aws_subnet.data[each.value.zone].id
  private_ip             = each.value.private_ip
  vpc_security_group_ids = [aws_security_group.pd.id]
  iam_instance_profile   = aws_iam_instance_profile.node["pd"].name

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

  user_data_base64 = base64gzip(join("\n", [local.boot_common, templatefile("${path.module}/templates/pd.sh.tftpl", {
    aws_region      = local.aws_region
    name            = each.value.name
    pd_url          = local.artifacts.pd_url
    pd_sha256       = local.artifacts.pd_sha256
    volume_id       = aws_ebs_volume.pd[each.key].id
    pd_config_toml  = var.topology.pd_config_toml
    client_port     = local.ports.pd_client
    peer_port       = local.ports.pd_peer
    client_url      = each.value.client_url
    peer_url        = each.value.peer_url
    initial_cluster = var.topology.pd_initial_cluster
  })]))

  tags = merge(local.tags, {
    Name          = "${var.name_prefix}-${each.key}"
    "rossby:role" = "pd"
    "rossby:zone" = each.value.zone
  })

  lifecycle {
    ignore_changes = [ami, user_data_base64]
  }
}

resource "aws_volume_attachment" "pd" {
  for_each                       = local.pd_members
  device_name                    = "/dev/sdf"
  volume_id                      = aws_ebs_volume.pd[each.key].id
  instance_id                    = aws_instance.pd[each.key].id
  stop_instance_before_detaching = true
}

resource "aws_ebs_volume" "tikv" {
  for_each          = local.tikv_stores
  availability_zone = each.value.zone
  size              = each.value.volume_gb
  type              = "gp3"
  encrypted         = true
  tags              = merge(local.tags, { Name = "${var.name_prefix}-${each.key}-data", "rossby:role" = "tikv" })
}

resource "aws_instance" "tikv" {
  for_each               = local.tikv_stores
  ami                    = local.ami_id
  instance_type          = each.value.instance_type
  subnet_id              = aws_subnet.data[each.value.zone].id
  private_ip             = each.value.private_ip
  vpc_security_group_ids = [aws_security_group.tikv.id]
  iam_instance_profile   = aws_iam_instance_profile.node["tikv"].name

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

  user_data_base64 = base64gzip(join("\n", [local.boot_common, templatefile("${path.module}/templates/tikv.sh.tftpl", {
    aws_region       = local.aws_region
    host             = each.key
    tikv_url         = local.artifacts.tikv_url
    tikv_sha256      = local.artifacts.tikv_sha256
    volume_id        = aws_ebs_volume.tikv[each.key].id
    tikv_config_toml = var.topology.tikv_config_toml[each.key]
    private_ip       = each.value.private_ip
    tikv_port        = local.ports.tikv
    status_port      = local.ports.tikv_status
    pd_endpoints     = join(",", var.topology.pd_endpoints[var.region_name])
  })]))

  tags = merge(local.tags, {
    Name          = "${var.name_prefix}-${each.key}"
    "rossby:role" = "tikv"
    "rossby:zone" = each.value.zone
  })

  lifecycle {
    ignore_changes = [ami, user_data_base64]
  }
}

resource "aws_volume_attachment" "tikv" {
  for_each                       = local.tikv_stores
  device_name                    = "/dev/sdf"
  volume_id                      = aws_ebs_volume.tikv[each.key].id
  instance_id                    = aws_instance.tikv[each.key].id
  stop_instance_before_detaching = true
}
