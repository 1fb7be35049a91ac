output "vpc_id" {
  description = "The region's VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "The region's network."
  value       = aws_vpc.this.cidr_block
}

output "private_route_table_ids" {
  description = "Private route tables (data and app subnets), by zone."
  value       = { for z, t in aws_route_table.private : z => t.id }
}

output "nlb_dns_name" {
  description = "DNS name of the internet-facing load balancer; quic_host must resolve to it."
  value       = aws_lb.public.dns_name
}

output "nlb_zone_id" {
  description = "Route 53 zone id of the load balancer, for alias records."
  value       = aws_lb.public.zone_id
}

output "admin_nlb_dns_name" {
  description = "DNS name of the internal admin load balancer; admin_host must resolve to it."
  value       = aws_lb.admin.dns_name
}

output "quic_endpoint" {
  description = "host:port clients use for this region (the topology's first gateway entry)."
  value       = local.region.gateway.addresses[0].quic
}

output "admin_endpoint" {
  description = "host:port of the region's admin address (the topology's first gateway entry)."
  value       = local.region.gateway.addresses[0].admin
}

output "gateway_autoscaling_group" {
  description = "Name of the gateways' autoscaling group."
  value       = aws_autoscaling_group.gateway.name
}

output "gateway_security_group_id" {
  description = "Security group of the gateways."
  value       = aws_security_group.gateway.id
}

output "pd_instances" {
  description = "PD members of this region: instance id and private address, by member name."
  value       = { for k, i in aws_instance.pd : k => { id = i.id, private_ip = i.private_ip } }
}

output "tikv_instances" {
  description = "TiKV stores of this region: instance id and private address, by host name."
  value       = { for k, i in aws_instance.tikv : k => { id = i.id, private_ip = i.private_ip } }
}

output "prober" {
  description = "The region's prober: instance id, private address and metrics target (host:port) for the rossby-prober scrape job; null when disabled."
  value = local.prober_enabled ? {
    id             = aws_instance.prober[0].id
    private_ip     = aws_instance.prober[0].private_ip
    metrics_target = "${aws_instance.prober[0].private_ip}:${var.prober.metrics_port}"
  } : null
}

output "role_arns" {
  description = "Instance role ARNs: gateway, pd, tikv (and prober when enabled)."
  value       = { for k, r in aws_iam_role.node : k => r.arn }
}
