# Who may reach what:
# - gateways: QUIC (UDP) from anywhere; the admin port (/livez, /readyz, /metrics)
#   only from this region's load balancers (health checks) and monitoring; the
#   peer port (UDP, mutual TLS) only from the gateway subnets of every region;
# - PD and TiKV: their ports only from inside the deployment (every region's
#   network), their metrics ports also from monitoring.
# Outbound traffic is open (Secrets Manager, SSM, artifact downloads, peers).

resource "aws_security_group" "gateway" {
  name        = "${local.prefix}-gateway"
  description = "Rossby gateways"
  vpc_id      = aws_vpc.this.id
  tags        = merge(local.tags, { Name = "${local.prefix}-gateway" })
}

resource "aws_security_group" "pd" {
  name        = "${local.prefix}-pd"
  description = "PD members"
  vpc_id      = aws_vpc.this.id
  tags        = merge(local.tags, { Name = "${local.prefix}-pd" })
}

resource "aws_security_group" "tikv" {
  name        = "${local.prefix}-tikv"
  description = "TiKV stores"
  vpc_id      = aws_vpc.this.id
  tags        = merge(local.tags, { Name = "${local.prefix}-tikv" })
}

# Client source addresses are preserved through the network load balancer, so
# QUIC must be open to the internet on the instances themselves.
resource "aws_vpc_security_group_ingress_rule" "gateway_quic" {
  security_group_id = aws_security_group.gateway.id
  description       = "QUIC from clients (through the load balancer, source preserved)"
  ip_protocol       = "udp"
  from_port         = local.ports.quic
  to_port           = local.ports.quic
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "gateway_admin_health" {
  for_each          = toset(local.public_cidrs)
  security_group_id = aws_security_group.gateway.id
  description       = "Admin port from the public load balancer (health checks)"
  ip_protocol       = "tcp"
  from_port         = local.ports.admin
  to_port           = local.ports.admin
  cidr_ipv4         = each.key
}

resource "aws_vpc_security_group_ingress_rule" "gateway_admin_lb" {
  security_group_id            = aws_security_group.gateway.id
  description                  = "Admin port from the internal admin load balancer"
  ip_protocol                  = "tcp"
  from_port                    = local.ports.admin
  to_port                      = local.ports.admin
  referenced_security_group_id = aws_security_group.admin_lb.id
}

resource "aws_vpc_security_group_ingress_rule" "gateway_admin_monitoring" {
  for_each          = toset(var.monitoring_cidrs)
  security_group_id = aws_security_group.gateway.id
  description       = "Admin port from monitoring"
  ip_protocol       = "tcp"
  from_port         = local.ports.admin
  to_port           = local.ports.admin
  cidr_ipv4         = each.key
}

resource "aws_vpc_security_group_ingress_rule" "gateway_peer" {
  for_each          = toset(local.gateway_cidrs)
  security_group_id = aws_security_group.gateway.id
  description       = "Gateway-to-gateway notifications (QUIC, mutual TLS)"
  ip_protocol       = "udp"
  from_port         = local.ports.peer
  to_port           = local.ports.peer
  cidr_ipv4         = each.key
}

# The internal admin load balancer: the region's own network and monitoring only.
resource "aws_security_group" "admin_lb" {
  name        = "${local.prefix}-admin-lb"
  description = "Internal load balancer of the gateway admin port"
  vpc_id      = aws_vpc.this.id
  tags        = merge(local.tags, { Name = "${local.prefix}-admin-lb" })
}

resource "aws_vpc_security_group_ingress_rule" "admin_lb" {
  for_each          = toset(distinct(concat([local.region.cidr], var.monitoring_cidrs)))
  security_group_id = aws_security_group.admin_lb.id
  description       = each.key == local.region.cidr ? "Admin port from the region's network" : "Admin port from monitoring"
  ip_protocol       = "tcp"
  from_port         = local.ports.admin
  to_port           = local.ports.admin
  cidr_ipv4         = each.key
}

resource "aws_vpc_security_group_egress_rule" "admin_lb" {
  security_group_id            = aws_security_group.admin_lb.id
  description                  = "To the gateways' admin port"
  ip_protocol                  = "tcp"
  from_port                    = local.ports.admin
  to_port                      = local.ports.admin
  referenced_security_group_id = aws_security_group.gateway.id
}

resource "aws_vpc_security_group_ingress_rule" "pd_client" {
  for_each          = toset(distinct(concat(local.deployment_cidrs, var.monitoring_cidrs)))
  security_group_id = aws_security_group.pd.id
  description       = contains(local.deployment_cidrs, each.key) ? "PD clients inside the deployment" : "PD metrics from monitoring"
  ip_protocol       = "tcp"
  from_port         = local.ports.pd_client
  to_port           = local.ports.pd_client
  cidr_ipv4         = each.key
}

resource "aws_vpc_security_group_ingress_rule" "pd_peer" {
  for_each          = toset(local.deployment_cidrs)
  security_group_id = aws_security_group.pd.id
  description       = "PD peers"
  ip_protocol       = "tcp"
  from_port         = local.ports.pd_peer
  to_port           = local.ports.pd_peer
  cidr_ipv4         = each.key
}

resource "aws_vpc_security_group_ingress_rule" "tikv" {
  for_each          = toset(local.deployment_cidrs)
  security_group_id = aws_security_group.tikv.id
  description       = "TiKV clients and peers inside the deployment"
  ip_protocol       = "tcp"
  from_port         = local.ports.tikv
  to_port           = local.ports.tikv
  cidr_ipv4         = each.key
}

resource "aws_vpc_security_group_ingress_rule" "tikv_status" {
  for_each          = toset(distinct(concat(local.deployment_cidrs, var.monitoring_cidrs)))
  security_group_id = aws_security_group.tikv.id
  description       = contains(local.deployment_cidrs, each.key) ? "TiKV status inside the deployment" : "TiKV metrics from monitoring"
  ip_protocol       = "tcp"
  from_port         = local.ports.tikv_status
  to_port           = local.ports.tikv_status
  cidr_ipv4         = each.key
}

resource "aws_vpc_security_group_egress_rule" "all" {
  for_each = {
    gateway = aws_security_group.gateway.id
    pd      = aws_security_group.pd.id
    tikv    = aws_security_group.tikv.id
  }
  security_group_id = each.value
  description       = "Outbound"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}
