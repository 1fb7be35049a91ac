output "topology" {
  description = "The topology document as an object: primary, survival, regions [{code, name, zones, gateways [{quic, admin}]}], rtt_ms {\"a:b\" = ms} (one entry per unordered pair, in the order the regions are listed)."
  value       = local.topology
}

output "topology_json" {
  description = "The topology document in its JSON form, as `rossby-gateway --topology`, `rossby-admin placement` and `rossby-loadtest` read it."
  value       = jsonencode(local.topology)
}

output "regions" {
  description = "Per region (by name): code, slug (for resource names), is_primary, zones, cidr, subnets per zone {index, data, app, public}, gateway {count, instance_type, quic_host, admin_host, addresses}, tikv {instance_type, volume_gb, stores_per_zone}, pd {instance_type, volume_gb}."
  value = {
    for r in var.regions : r.name => {
      code       = r.code
      name       = r.name
      slug       = local.slug[r.name]
      is_primary = r.name == var.primary
      zones      = r.zones
      cidr       = r.cidr
      subnets    = local.subnets[r.name]
      gateway = {
        count         = r.gateway_count
        instance_type = r.gateway_instance_type
        quic_host     = local.quic_host[r.name]
        admin_host    = local.admin_host[r.name]
        addresses     = local.gateway_addresses[r.name]
      }
      tikv = {
        instance_type   = r.tikv_instance_type
        volume_gb       = r.tikv_volume_gb
        stores_per_zone = r.tikv_stores_per_zone
      }
      pd = {
        instance_type = r.pd_instance_type
        volume_gb     = r.pd_volume_gb
      }
    }
  }
}

output "cidrs" {
  description = "Every region's network (the deployment's internal address space), by region name."
  value       = { for r in var.regions : r.name => r.cidr }
}

output "tikv_stores" {
  description = "TiKV stores by host name: region, zone, subnet (data subnet CIDR), private_ip (fixed), instance_type, volume_gb and labels {region, zone, host} (the store labels PD places replicas by)."
  value       = local.tikv_stores
}

output "tikv_config_toml" {
  description = "Each TiKV store's configuration file (its [server] labels), by host name."
  value       = local.tikv_config_toml
}

output "pd_members" {
  description = "PD members by name: region, zone, subnet, private_ip (fixed), client_url, peer_url, leader_priority (higher in the primary region, where the leader should serve timestamps)."
  value       = local.pd_members
}

output "pd_initial_cluster" {
  description = "PD's --initial-cluster value: name=peer_url for every member."
  value       = local.pd_initial_cluster
}

output "pd_endpoints" {
  description = "PD client endpoints host:port as each region lists them (its own members first), by region name."
  value       = local.pd_endpoints
}

output "pd_config" {
  description = "PD replication settings: location_labels (region, zone, host), isolation_level (the survival goal), enable_placement_rules."
  value       = local.pd_config
}

output "pd_config_toml" {
  description = "PD's configuration file with those replication settings."
  value       = local.pd_config_toml
}

output "gateway_settings" {
  description = "Each region's gateway options (flat TOML keys of docs/configuration.md), by region name."
  value       = local.gateway_settings
}

output "gateway_config_toml" {
  description = "Each region's gateway.toml (for `rossby-gateway --config`), by region name."
  value       = local.gateway_config_toml
}

output "gateway_files" {
  description = "Where a gateway's directories (config_dir, data_dir) and files (config, topology, environment, cert, key, secret, pepper, peer_ca, peer_cert, peer_key) are on its instance."
  value       = local.gateway_files
}

output "gateway_peer_environment" {
  description = "Environment variables of the gateway-to-gateway endpoint: listen address and the peer CA, certificate and key files (each gateway adds ROSSBY_PEER_ADVERTISE, its own host:port)."
  value       = local.gateway_peer_environment
}

output "ports" {
  description = "The ports in use: quic (UDP), admin, peer (UDP), pd_client, pd_peer, tikv, tikv_status."
  value       = var.ports
}

output "health_check" {
  description = "The load balancer health check the gateways' drain timing assumes: protocol HTTP, path /readyz, port (admin), interval_secs, timeout_secs, healthy_threshold, unhealthy_threshold."
  value = {
    protocol            = "HTTP"
    path                = "/readyz"
    port                = var.ports.admin
    interval_secs       = var.health_check.interval_secs
    timeout_secs        = var.health_check.timeout_secs
    healthy_threshold   = var.health_check.healthy_threshold
    unhealthy_threshold = var.health_check.unhealthy_threshold
  }
}

output "drain" {
  description = "Shutdown timing: grace_secs (readiness fails while requests are still served), timeout_secs (requests in flight may finish), stop_timeout_secs (what a service manager must allow before killing the process)."
  value = {
    grace_secs        = local.drain_grace_secs
    timeout_secs      = var.drain_timeout_secs
    stop_timeout_secs = local.drain_grace_secs + var.drain_timeout_secs + 15
  }
}
