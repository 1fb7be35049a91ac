output "gateway_endpoints" {
  description = "Per region: its code, the QUIC address clients (and rossby-loadtest) use, the admin address, and the load balancers' DNS names the public and private names must point at."
  value = {
    for r, m in {
      (local.a.name) = module.region_a
      (local.b.name) = module.region_b
      (local.c.name) = module.region_c
      } : r => {
      code               = module.topology.regions[r].code
      quic               = m.quic_endpoint
      admin              = m.admin_endpoint
      nlb_dns_name       = m.nlb_dns_name
      admin_nlb_dns_name = m.admin_nlb_dns_name
    }
  }
}

output "topology_json" {
  description = "The deployment's topology document (regions, zones, gateway addresses, round trips): what rossby-loadtest and `rossby-admin placement` read."
  value       = module.topology.topology_json
}

output "service_name" {
  description = "The service name clients sign requests for."
  value       = var.service_name
}

output "pd_client_urls" {
  description = "PD members' client URLs (reachable from inside the deployment only)."
  value       = { for name, m in module.topology.pd_members : name => m.client_url }
}

output "gateway_autoscaling_groups" {
  description = "The gateways' autoscaling group in each region."
  value = {
    (local.a.name) = module.region_a.gateway_autoscaling_group
    (local.b.name) = module.region_b.gateway_autoscaling_group
    (local.c.name) = module.region_c.gateway_autoscaling_group
  }
}

output "placement_association_id" {
  description = "The SSM association that applies the placement rules; its executions show the output of `rossby-admin placement apply`."
  value       = aws_ssm_association.placement.association_id
}

output "prober_metrics_targets" {
  description = "Each region's prober metrics target (host:port) for the rossby-prober scrape job; null where the prober is disabled."
  value = {
    for r, m in {
      (local.a.name) = module.region_a
      (local.b.name) = module.region_b
      (local.c.name) = module.region_c
    } : r => try(m.prober.metrics_target, null)
  }
}
