variable "regions" {
  description = <<-EOT
    The regions of the deployment. For each region:
    - code: the 16-bit region code stored in the BoxIds homed there (1..65535, unique).
    - name: the region's name, also the value of the `region` label of its TiKV stores
      (letters, digits, '-', '_', '.', '/'; unique).
    - zones: its availability zones, the values of the `zone` store label (1..8, unique
      across the whole deployment).
    - cidr: the region's IPv4 network, prefix /16 to /19, not overlapping another region's.
      Each zone gets three /(prefix+5) subnets: data (PD, TiKV at fixed addresses), app
      (gateways) and public (load balancer, NAT).
    - gateway_count: gateways the region runs (the autoscaling group's desired size).
    - gateway_instance_type, tikv_instance_type, pd_instance_type: instance sizes.
    - tikv_stores_per_zone: TiKV stores in each zone (1..50).
    - tikv_volume_gb, pd_volume_gb: data volume sizes.
    - quic_host: the DNS name clients use for this region's gateways (default
      "<region>.<public_domain>").
    - admin_host: the private DNS name of the region's gateway admin port (default
      "gateway-admin.<region>.<internal_domain>").
    - gateway_addresses: the topology document's gateway list for the region, when the
      single entry built from quic_host and admin_host is not wanted.
  EOT
  type = list(object({
    code                  = number
    name                  = string
    zones                 = list(string)
    cidr                  = string
    gateway_count         = number
    gateway_instance_type = optional(string, "c7i.xlarge")
    tikv_stores_per_zone  = optional(number, 1)
    tikv_instance_type    = optional(string, "m7i.2xlarge")
    tikv_volume_gb        = optional(number, 500)
    pd_instance_type      = optional(string, "m7i.large")
    pd_volume_gb          = optional(number, 50)
    quic_host             = optional(string)
    admin_host            = optional(string)
    gateway_addresses = optional(list(object({
      quic  = string
      admin = string
    })))
  }))

  validation {
    condition     = length(var.regions) >= 1
    error_message = "regions must list at least one region."
  }
  validation {
    condition     = alltrue([for r in var.regions : r.code == floor(r.code) && r.code >= 1 && r.code <= 65535])
    error_message = "Every region code must be a whole number from 1 to 65535 (0 is reserved); got ${jsonencode([for r in var.regions : r.code])}."
  }
  validation {
    condition     = length(distinct([for r in var.regions : r.code])) == length(var.regions)
    error_message = "Region codes must be unique; got ${jsonencode([for r in var.regions : r.code])}."
  }
  validation {
    condition     = alltrue([for r in var.regions : can(regex("^[A-Za-z0-9._/-]+$", r.name))])
    error_message = "Region names must be non-empty and use only ASCII letters, digits, '-', '_', '.' and '/' (they become PD label values and rtt_ms keys)."
  }
  validation {
    condition     = length(distinct([for r in var.regions : r.name])) == length(var.regions)
    error_message = "Region names must be unique; got ${jsonencode([for r in var.regions : r.name])}."
  }
  validation {
    # Names also become instance, load balancer and PD member names, so their
    # lower-case alphanumeric forms must differ too.
    condition     = length(distinct([for r in var.regions : trim(replace(lower(r.name), "/[^a-z0-9]+/", "-"), "-")])) == length(var.regions)
    error_message = "Region names must stay distinct when lower-cased with every run of other characters replaced by '-'."
  }
  validation {
    condition     = alltrue([for r in var.regions : length(r.zones) >= 1 && length(r.zones) <= 8])
    error_message = "Every region must list 1 to 8 zones."
  }
  validation {
    condition     = alltrue(flatten([for r in var.regions : [for z in r.zones : can(regex("^[A-Za-z0-9._-]+$", z))]]))
    error_message = "Zone names must be non-empty and use only ASCII letters, digits, '-', '_' and '.'."
  }
  validation {
    condition     = length(distinct(flatten([for r in var.regions : r.zones]))) == length(flatten([for r in var.regions : r.zones]))
    error_message = "A zone may appear only once in the whole deployment (a zone belongs to one region)."
  }
  validation {
    condition = alltrue([for r in var.regions : (
      can(cidrhost(r.cidr, 0)) && can(regex("^[0-9.]+/[0-9]+$", r.cidr))
      && try(tonumber(split("/", r.cidr)[1]) >= 16 && tonumber(split("/", r.cidr)[1]) <= 19, false)
      && try(cidrhost(r.cidr, 0) == split("/", r.cidr)[0], false)
    )])
    error_message = "Every region cidr must be an IPv4 network address with a prefix from /16 to /19 (for example 10.1.0.0/16); got ${jsonencode([for r in var.regions : r.cidr])}."
  }
  validation {
    # Two networks overlap when they agree on the shorter of their two prefixes.
    condition = alltrue(flatten([for i, a in var.regions : [for j, b in var.regions : try(
      j <= i || (
        cidrhost("${split("/", a.cidr)[0]}/${min(tonumber(split("/", a.cidr)[1]), tonumber(split("/", b.cidr)[1]))}", 0)
        != cidrhost("${split("/", b.cidr)[0]}/${min(tonumber(split("/", a.cidr)[1]), tonumber(split("/", b.cidr)[1]))}", 0)
      ),
      true
    )]]))
    error_message = "Region networks must not overlap (VPC peering needs distinct address ranges); got ${jsonencode([for r in var.regions : r.cidr])}."
  }
  validation {
    condition     = alltrue([for r in var.regions : r.gateway_count == floor(r.gateway_count) && r.gateway_count >= 1 && r.gateway_count <= 100])
    error_message = "gateway_count must be a whole number from 1 to 100 in every region."
  }
  validation {
    condition     = alltrue([for r in var.regions : r.tikv_stores_per_zone == floor(r.tikv_stores_per_zone) && r.tikv_stores_per_zone >= 1 && r.tikv_stores_per_zone <= 50])
    error_message = "tikv_stores_per_zone must be a whole number from 1 to 50 in every region."
  }
  validation {
    condition = alltrue([for r in var.regions : (
      r.tikv_volume_gb == floor(r.tikv_volume_gb) && r.tikv_volume_gb >= 10 && r.tikv_volume_gb <= 16384
      && r.pd_volume_gb == floor(r.pd_volume_gb) && r.pd_volume_gb >= 10 && r.pd_volume_gb <= 16384
    )])
    error_message = "tikv_volume_gb and pd_volume_gb must be whole numbers of GiB from 10 to 16384."
  }
  validation {
    condition = alltrue([for r in var.regions : alltrue([
      for h in [r.quic_host, r.admin_host] : h == null || can(regex("^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$", h))
    ])])
    error_message = "quic_host and admin_host must be DNS names (no port)."
  }
  validation {
    condition = alltrue([for r in var.regions : r.gateway_addresses == null || try(
      length(r.gateway_addresses) >= 1 && alltrue([for g in r.gateway_addresses : alltrue([
        for a in [g.quic, g.admin] : can(regex("^([A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\]):[0-9]+$", a)) && tonumber(regex("[0-9]+$", a)) >= 1 && tonumber(regex("[0-9]+$", a)) <= 65535
      ])]),
      false
    )])
    error_message = "gateway_addresses, when given, must list at least one gateway, each with quic and admin addresses of the form host:port (IPv6 as [address]:port)."
  }
  validation {
    condition     = alltrue([for r in var.regions : r.quic_host != null || var.public_domain != null || r.gateway_addresses != null])
    error_message = "Set public_domain, or quic_host (or gateway_addresses) in every region: clients need a name for each region's gateways."
  }
}

variable "primary" {
  description = "Name of the region that holds the leaders of global data (the identifier lookup) and of PD, which hands out every transaction's timestamps."
  type        = string

  validation {
    condition     = contains([for r in var.regions : r.name], var.primary)
    error_message = "primary \"${var.primary}\" is not one of the regions ${jsonencode([for r in var.regions : r.name])}."
  }
}

variable "survival" {
  description = "Survival goal: \"zone\" (each region's data keeps its voters in its own zones and outlives the loss of one zone; commits stay in-region) or \"region\" (voters spread so that losing any one region keeps a majority; commits wait for a cross-region quorum)."
  type        = string
  default     = "zone"

  validation {
    condition     = contains(["zone", "region"], var.survival)
    error_message = "survival must be \"zone\" or \"region\", got \"${var.survival}\"."
  }
  validation {
    condition     = var.survival != "region" || length(var.regions) >= 3
    error_message = "survival = \"region\" needs at least three regions (a majority must outlive any one region); found ${length(var.regions)}."
  }
  validation {
    # With fewer than three zones, one zone holds a majority of a region's voters.
    condition     = var.survival != "zone" || alltrue([for r in var.regions : length(r.zones) >= 3])
    error_message = "survival = \"zone\" needs at least three zones in every region (so no zone holds a majority of a region's voters); regions with fewer: ${jsonencode([for r in var.regions : r.name if length(r.zones) < 3])}."
  }
}

variable "rtt_ms" {
  description = "Round-trip times in milliseconds between regions, one entry per unordered pair of region names, keyed \"a:b\" (for example { \"us-east-1:eu-west-1\" = 75 }). Empty for a single region."
  type        = map(number)
  default     = {}

  validation {
    condition = alltrue([for k, v in var.rtt_ms : (
      length(split(":", k)) == 2
      && contains([for r in var.regions : r.name], split(":", k)[0])
      && contains([for r in var.regions : r.name], try(split(":", k)[1], ""))
      && split(":", k)[0] != try(split(":", k)[1], "")
    )])
    error_message = "Every rtt_ms key must be \"a:b\" with two different region names; unknown or malformed: ${jsonencode([for k, v in var.rtt_ms : k if !(length(split(":", k)) == 2 && contains([for r in var.regions : r.name], split(":", k)[0]) && contains([for r in var.regions : r.name], try(split(":", k)[1], "")) && split(":", k)[0] != try(split(":", k)[1], ""))])}."
  }
  validation {
    condition = alltrue(flatten([for i, a in var.regions : [for j, b in var.regions : (
      j <= i || length([for k in ["${a.name}:${b.name}", "${b.name}:${a.name}"] : k if contains(keys(var.rtt_ms), k)]) == 1
    )]]))
    error_message = "rtt_ms must give every pair of regions exactly once (as \"a:b\" or \"b:a\"); missing or doubled: ${jsonencode(flatten([for i, a in var.regions : [for j, b in var.regions : "${a.name}:${b.name}" if j > i && length([for k in ["${a.name}:${b.name}", "${b.name}:${a.name}"] : k if contains(keys(var.rtt_ms), k)]) != 1]]))}."
  }
  validation {
    condition     = alltrue([for k, v in var.rtt_ms : v == floor(v) && v >= 1 && v <= 60000])
    error_message = "Round-trip times must be whole milliseconds from 1 to 60000."
  }
}

variable "service_name" {
  description = "The deployment's service name, host:port, that every request is signed for (the gateway's service_name); the same on every gateway and client."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*:[0-9]{1,5}$", var.service_name)) && try(tonumber(split(":", var.service_name)[1]) >= 1 && tonumber(split(":", var.service_name)[1]) <= 65535, false)
    error_message = "service_name must be host:port with a DNS name and a port from 1 to 65535, got \"${var.service_name}\"."
  }
}

variable "public_domain" {
  description = "DNS domain under which each region's gateways get their default public name \"<region>.<public_domain>\". Null when every region sets quic_host."
  type        = string
  default     = null

  validation {
    condition     = var.public_domain == null || can(regex("^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$", var.public_domain))
    error_message = "public_domain must be a DNS name."
  }
}

variable "internal_domain" {
  description = "Private DNS domain of the deployment; each region's gateway admin port is reachable at \"gateway-admin.<region>.<internal_domain>\" unless admin_host is set."
  type        = string
  default     = "rossby.internal"

  validation {
    condition     = can(regex("^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$", var.internal_domain))
    error_message = "internal_domain must be a DNS name."
  }
}

variable "ports" {
  description = "Ports: quic (the gateways' client port, UDP), admin (gateway /livez, /readyz, /metrics; TCP), peer (gateway-to-gateway notifications, UDP), pd_client, pd_peer, tikv and tikv_status."
  type = object({
    quic        = optional(number, 7400)
    admin       = optional(number, 7401)
    peer        = optional(number, 7402)
    pd_client   = optional(number, 2379)
    pd_peer     = optional(number, 2380)
    tikv        = optional(number, 20160)
    tikv_status = optional(number, 20180)
  })
  default = {}

  validation {
    condition     = alltrue([for p in values(var.ports) : p == floor(p) && p >= 1 && p <= 65535])
    error_message = "Every port must be a whole number from 1 to 65535."
  }
  validation {
    # quic is UDP, the others TCP; the TCP ports share hosts in small deployments.
    condition     = length(distinct([var.ports.admin, var.ports.pd_client, var.ports.pd_peer, var.ports.tikv, var.ports.tikv_status])) == 5
    error_message = "The TCP ports (admin, pd_client, pd_peer, tikv, tikv_status) must differ."
  }
  validation {
    condition     = var.ports.quic != var.ports.peer
    error_message = "The UDP ports quic and peer must differ."
  }
}

variable "pd_member_count" {
  description = "Number of PD members (odd, 3 to 9). Default: 5 with three or more regions, else 3. Members are spread over the regions (primary first) and, within a region, over its zones."
  type        = number
  default     = null

  validation {
    condition     = var.pd_member_count == null || try(var.pd_member_count == floor(var.pd_member_count) && var.pd_member_count % 2 == 1 && var.pd_member_count >= 3 && var.pd_member_count <= 9, false)
    error_message = "pd_member_count must be an odd whole number from 3 to 9."
  }
}

variable "health_check" {
  description = "The load balancer's health check of GET /readyz on the admin port: interval_secs 5..300, timeout_secs 2..min(120, interval_secs - 1) (120 is the most an AWS target group accepts), thresholds 2..10. The gateways' drain grace is derived from it, so a draining gateway is marked unhealthy before it refuses connections."
  type = object({
    interval_secs       = optional(number, 10)
    timeout_secs        = optional(number, 5)
    healthy_threshold   = optional(number, 2)
    unhealthy_threshold = optional(number, 2)
  })
  default = {}

  validation {
    # The timeout must be shorter than the interval, and AWS accepts at most 120
    # seconds for a target group's health check timeout.
    condition = (
      var.health_check.interval_secs == floor(var.health_check.interval_secs) && var.health_check.interval_secs >= 5 && var.health_check.interval_secs <= 300
      && var.health_check.timeout_secs == floor(var.health_check.timeout_secs) && var.health_check.timeout_secs >= 2 && var.health_check.timeout_secs <= min(120, var.health_check.interval_secs - 1)
      && var.health_check.healthy_threshold == floor(var.health_check.healthy_threshold) && var.health_check.healthy_threshold >= 2 && var.health_check.healthy_threshold <= 10
      && var.health_check.unhealthy_threshold == floor(var.health_check.unhealthy_threshold) && var.health_check.unhealthy_threshold >= 2 && var.health_check.unhealthy_threshold <= 10
    )
    error_message = "health_check: interval_secs 5..300, timeout_secs 2..min(120, interval_secs - 1), thresholds 2..10, all whole numbers; got ${jsonencode(var.health_check)}."
  }
}

variable "drain_timeout_secs" {
  description = "The gateways' drain_timeout_secs: how long requests in flight may take to finish on shutdown, after the drain grace."
  type        = number
  default     = 30

  validation {
    condition     = var.drain_timeout_secs == floor(var.drain_timeout_secs) && var.drain_timeout_secs >= 1 && var.drain_timeout_secs <= 600
    error_message = "drain_timeout_secs must be a whole number of seconds from 1 to 600."
  }
}

variable "gateway_paths" {
  description = "Where gateway files live on an instance: config_dir holds gateway.toml, topology.json, tls/, secrets/ and peer/; data_dir is the gateway's data_dir."
  type = object({
    config_dir = optional(string, "/etc/rossby")
    data_dir   = optional(string, "/var/lib/rossby")
  })
  default = {}

  validation {
    condition     = alltrue([for p in values(var.gateway_paths) : can(regex("^/[A-Za-z0-9._/-]*[A-Za-z0-9._-]$", p))])
    error_message = "gateway_paths must be absolute paths without a trailing slash."
  }
}

variable "gateway_settings" {
  description = "Further gateway options as flat TOML keys (docs/configuration.md), for example { verifier = \"webhook:http://10.0.0.9:8085/codes\", rate_per_ip = \"500/s\" }. Values are strings, numbers, booleans or lists of strings. The keys this module derives cannot be set here."
  type        = any
  default     = {}

  validation {
    condition = length(setintersection(keys(var.gateway_settings), [
      "config", "data_dir", "listen", "admin_listen", "region", "topology", "service_name", "storage",
      "pd", "cert", "key", "secret_file", "pepper_file", "drain_grace_secs", "drain_timeout_secs", "local",
    ])) == 0
    error_message = "gateway_settings cannot set keys the module derives: ${jsonencode(setintersection(keys(var.gateway_settings), ["config", "data_dir", "listen", "admin_listen", "region", "topology", "service_name", "storage", "pd", "cert", "key", "secret_file", "pepper_file", "drain_grace_secs", "drain_timeout_secs", "local"]))}."
  }
  validation {
    condition     = alltrue([for k in keys(var.gateway_settings) : can(regex("^[a-z][a-z0-9_]*$", k))])
    error_message = "gateway_settings keys are TOML keys like max_frame_bytes (lower case, digits and '_')."
  }
}
