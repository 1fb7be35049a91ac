# Gateways: stateless, in an autoscaling group spread over the zones' app subnets,
# behind an internet-facing network load balancer (UDP for QUIC, health check
# GET /readyz on the admin port) and an internal one for the admin port.

locals {
  gateway_user_data = join("\n", [local.boot_common, templatefile("${path.module}/templates/gateway.sh.tftpl", {
    aws_region        = local.aws_region
    region_name       = var.region_name
    rossby_url        = local.artifacts.rossby_url
    rossby_sha256     = local.artifacts.rossby_sha256
    config_dir        = var.topology.gateway_files.config_dir
    data_dir          = var.topology.gateway_files.data_dir
    files             = var.topology.gateway_files
    secret_arns       = { for k, s in data.aws_secretsmanager_secret.this : k => s.arn }
    gateway_toml      = var.topology.gateway_config_toml[var.region_name]
    topology_json     = var.topology.topology_json
    peer_environment  = join("\n", concat([for k, v in var.topology.gateway_peer_environment : "${k}=${v}"], local.attachment_environment, local.push_environment))
    push_files        = local.push_files
    stop_timeout_secs = var.topology.drain.stop_timeout_secs
    peer_port         = local.ports.peer
    peer_cert_days    = var.peer_certificate_days
    asg_name          = local.asg_name
    drain_hook        = local.drain_hook
  })])
  # Attachments go to the deployment's bucket through the instance role.
  attachment_environment = var.attachments == null ? [] : [
    "ROSSBY_BLOB_STORE=s3://${var.attachments.name}${var.attachments.prefix == "" ? "" : "/${var.attachments.prefix}"}",
    "ROSSBY_BLOB_S3_REGION=${var.attachments.region}",
    "ROSSBY_MAX_ATTACHMENT_AGE_DAYS=${var.attachments.max_age_days}",
  ]
  # Wake-up push credentials: written next to the gateway secret at boot from
  # their Secrets Manager replicas; the options name the files.
  secret_dir = dirname(var.topology.gateway_files.secret)
  push_files = {
    webpush_vapid_key   = "${local.secret_dir}/vapid.pem"
    apns_key            = "${local.secret_dir}/apns.p8"
    fcm_service_account = "${local.secret_dir}/fcm.json"
  }
  push_options = {
    ROSSBY_WEBPUSH_VAPID_KEY   = var.secret_names.webpush_vapid_key == null ? null : local.push_files.webpush_vapid_key
    ROSSBY_APNS_KEY            = var.secret_names.apns_key == null ? null : local.push_files.apns_key
    ROSSBY_FCM_SERVICE_ACCOUNT = var.secret_names.fcm_service_account == null ? null : local.push_files.fcm_service_account
    ROSSBY_WEBPUSH_SUBJECT     = var.push_settings.webpush_subject
    ROSSBY_APNS_KEY_ID         = var.push_settings.apns_key_id
    ROSSBY_APNS_TEAM_ID        = var.push_settings.apns_team_id
    ROSSBY_APNS_TOPIC          = var.push_settings.apns_topic
    ROSSBY_APNS_URL            = var.push_settings.apns_url
    ROSSBY_APNS_PUSH_TYPE      = var.push_settings.apns_push_type
  }
  push_environment = [for k, v in local.push_options : "${k}=${v}" if v != null]
  # Known before the group exists: the boot script names the group, and the group
  # depends on the launch template that carries the script.
  asg_name    = "${local.prefix}-gateways"
  drain_hook  = "drain"
  gateway_max = var.gateway_max_count != null ? var.gateway_max_count : 2 * local.region.gateway.count
  health      = var.topology.health_check
}

resource "aws_launch_template" "gateway" {
  name_prefix            = "${local.prefix}-gateway-"
  image_id               = local.ami_id
  instance_type          = local.region.gateway.instance_type
  vpc_security_group_ids = [aws_security_group.gateway.id]
  update_default_version = true
  user_data              = base64gzip(local.gateway_user_data)

  iam_instance_profile {
    arn = aws_iam_instance_profile.node["gateway"].arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_type           = "gp3"
      volume_size           = 20
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${local.prefix}-gateway", "rossby:role" = "gateway" })
  }

  tags = local.tags
}

resource "aws_lb" "public" {
  name                             = "${local.short}-gw"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = [for z in local.zones : aws_subnet.public[z].id]
  enable_cross_zone_load_balancing = true
  tags                             = local.tags
}

resource "aws_lb_target_group" "quic" {
  name        = "${local.short}-quic"
  port        = local.ports.quic
  protocol    = "UDP"
  target_type = "instance"
  vpc_id      = aws_vpc.this.id
  # A deregistered gateway gets no new flows but keeps its existing ones (no
  # connection termination), so the QUIC close frames of its drain still reach
  # its clients, which then reconnect through the load balancer to another one.
  deregistration_delay   = var.topology.drain.grace_secs
  connection_termination = false

  health_check {
    enabled             = true
    protocol            = local.health.protocol
    port                = tostring(local.health.port)
    path                = local.health.path
    matcher             = "200"
    interval            = local.health.interval_secs
    timeout             = local.health.timeout_secs
    healthy_threshold   = local.health.healthy_threshold
    unhealthy_threshold = local.health.unhealthy_threshold
  }

  tags = local.tags
}

resource "aws_lb_listener" "quic" {
  load_balancer_arn = aws_lb.public.arn
  port              = local.ports.quic
  protocol          = "UDP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.quic.arn
  }

  tags = local.tags
}

# The region's admin address in the topology document: reachable from the
# region's own network and from monitoring, never from the internet. Client
# addresses are not preserved, so the gateways' security group admits the load
# balancer's own security group, and an instance may reach its region's address
# without the load balancer's hairpin restriction.
resource "aws_lb" "admin" {
  name                             = "${local.short}-adm"
  load_balancer_type               = "network"
  internal                         = true
  subnets                          = [for z in local.zones : aws_subnet.app[z].id]
  security_groups                  = [aws_security_group.admin_lb.id]
  enable_cross_zone_load_balancing = true
  tags                             = local.tags
}

resource "aws_lb_target_group" "admin" {
  name                 = "${local.short}-adm"
  port                 = local.ports.admin
  protocol             = "TCP"
  target_type          = "instance"
  vpc_id               = aws_vpc.this.id
  preserve_client_ip   = false
  deregistration_delay = var.topology.drain.grace_secs

  health_check {
    enabled             = true
    protocol            = local.health.protocol
    port                = tostring(local.health.port)
    path                = local.health.path
    matcher             = "200"
    interval            = local.health.interval_secs
    timeout             = local.health.timeout_secs
    healthy_threshold   = local.health.healthy_threshold
    unhealthy_threshold = local.health.unhealthy_threshold
  }

  tags = local.tags
}

resource "aws_lb_listener" "admin" {
  load_balancer_arn = aws_lb.admin.arn
  port              = local.ports.admin
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.admin.arn
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "gateway" {
  name                = local.asg_name
  min_size            = local.region.gateway.count
  max_size            = max(local.gateway_max, local.region.gateway.count)
  desired_capacity    = local.region.gateway.count
  vpc_zone_identifier = [for z in local.zones : aws_subnet.app[z].id]
  target_group_arns   = [aws_lb_target_group.quic.arn, aws_lb_target_group.admin.arn]
  # An instance whose /readyz keeps failing is replaced; a new one has time to
  # boot, fetch its secrets and connect to PD first.
  health_check_type         = "ELB"
  health_check_grace_period = 600
  default_instance_warmup   = 120
  # Gateways become ready only once PD and TiKV are up; do not block the apply.
  wait_for_capacity_timeout = "0"

  launch_template {
    id      = aws_launch_template.gateway.id
    version = aws_launch_template.gateway.latest_version
  }

  # An instance leaving the group (scale-in, instance refresh, rebalancing) waits
  # in Terminating:Wait while its own watcher drains the gateway (SIGTERM) and
  # then completes this action; if it never does, termination goes ahead after
  # the heartbeat timeout.
  initial_lifecycle_hook {
    name                 = local.drain_hook
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    default_result       = "CONTINUE"
    heartbeat_timeout    = var.topology.drain.stop_timeout_secs + 60
  }

  # A new launch template version (release, configuration, topology) replaces the
  # gateways one at a time, starting each new one before draining an old one.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 200
      instance_warmup        = 120
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, {
      Name                       = "${local.prefix}-gateway"
      "rossby:role"              = "gateway"
      "rossby:placement-runner"  = var.placement_runner ? "true" : "false"
      "rossby:gateway-region-id" = tostring(local.region.code)
    })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}

resource "aws_route53_record" "quic" {
  count   = var.public_zone_id != null && local.region.gateway.quic_host != null ? 1 : 0
  zone_id = var.public_zone_id
  name    = local.region.gateway.quic_host
  type    = "A"

  alias {
    name                   = aws_lb.public.dns_name
    zone_id                = aws_lb.public.zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_record" "admin" {
  count   = var.create_admin_dns_record ? 1 : 0
  zone_id = var.private_zone_id
  name    = local.region.gateway.admin_host
  type    = "A"

  alias {
    name                   = aws_lb.admin.dns_name
    zone_id                = aws_lb.admin.zone_id
    evaluate_target_health = true
  }
}
