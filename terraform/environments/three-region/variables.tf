variable "name_prefix" {
  description = "Name of the deployment (resource names, the rossby:deployment tag): lower case letters, digits and '-', at most 20 characters."
  type        = string
  default     = "rossby"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 2 to 20 characters: lower case letters, digits and '-', starting with a letter and not ending with '-'."
  }
}

variable "regions" {
  description = <<-EOT
    Exactly three regions; the first is the primary (global data and PD leaders).
    Each name is an AWS region (it is also the topology's region name and the
    `region` label of its TiKV stores), zones are its availability zones. The other
    fields are those of the topology module (modules/topology/variables.tf).
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
  }))

  validation {
    condition     = length(var.regions) == 3
    error_message = "This environment has exactly three regions (one provider each); got ${length(var.regions)}."
  }
  validation {
    condition     = alltrue([for r in var.regions : can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]+$", r.name))])
    error_message = "Region names must be AWS regions such as us-east-1."
  }
  validation {
    condition     = alltrue([for r in var.regions : alltrue([for z in r.zones : startswith(z, r.name)])])
    error_message = "Zones must be availability zones of their region (us-east-1a, ...)."
  }
}

variable "survival" {
  description = "Survival goal, \"zone\" or \"region\" (docs/operations/zone-loss.md and region-loss.md)."
  type        = string
  default     = "zone"

  validation {
    condition     = contains(["zone", "region"], var.survival)
    error_message = "survival must be \"zone\" or \"region\"."
  }
}

variable "rtt_ms" {
  description = "Measured round-trip times between the regions in milliseconds, one per pair, keyed \"a:b\"."
  type        = map(number)
}

variable "service_name" {
  description = "The deployment's service name host:port that clients sign requests for (the same on every gateway and client)."
  type        = string
}

variable "public_domain" {
  description = "Domain of the regions' public gateway names: \"<region>.<public_domain>\" unless a region sets quic_host."
  type        = string
  default     = null
}

variable "public_zone_id" {
  description = "Route 53 public hosted zone of the gateway names; when set, alias records to each region's load balancer are created. Null: create them yourself from the gateway_endpoints output."
  type        = string
  default     = null
}

variable "internal_domain" {
  description = "Private DNS domain of the deployment (a Route 53 private zone shared by the three VPCs); each region's admin address is gateway-admin.<region>.<internal_domain>."
  type        = string
  default     = "rossby.internal"
}

variable "gateway_settings" {
  description = "Further gateway options as flat TOML keys (docs/configuration.md), the same in every region. Set verifier to where verification codes must go (webhook:URL)."
  type        = any
  default     = {}
}

variable "rossby_artifact" {
  description = "The Rossby release: URL (s3:// or https://) of a .tar.gz with rossby-gateway, rossby and rossby-admin at its top level, built for the instances' architecture, and its SHA-256."
  type = object({
    url    = string
    sha256 = string
  })
}

variable "architecture" {
  description = "CPU architecture of every instance: \"x86_64\" or \"arm64\"."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be \"x86_64\" or \"arm64\"."
  }
}

variable "tikv_version" {
  description = "TiKV and PD version (for example v8.5.1)."
  type        = string
  default     = "v8.5.1"

  validation {
    condition     = can(regex("^v[0-9]+\\.[0-9]+\\.[0-9]+$", var.tikv_version))
    error_message = "tikv_version must look like v8.5.1."
  }
}

variable "artifact_bucket_arns" {
  description = "S3 buckets (ARNs) holding release artifacts the instances download."
  type        = list(string)
  default     = []
}

variable "backup_bucket_arn" {
  description = "S3 bucket (ARN) for TiKV BR backups (docs/operations/backup-restore.md). Null: no backup access."
  type        = string
  default     = null
}

variable "secret_names" {
  description = "Names of the Secrets Manager secrets (created before the first apply, replicated to all three regions; docs/operations/deploy.md)."
  type = object({
    gateway_secret = optional(string, "rossby/gateway-secret")
    lookup_pepper  = optional(string, "rossby/lookup-pepper")
    tls            = optional(string, "rossby/tls")
    peer_tls       = optional(string, "rossby/peer-ca")
    # Wake-up pushes (docs/operations/push.md): the VAPID key should always be
    # set (one key for every gateway); APNs and FCM are on when named.
    webpush_vapid_key   = optional(string)
    apns_key            = optional(string)
    fcm_service_account = optional(string)
  })
  default = {}
}

variable "push_settings" {
  description = "Non-secret wake-up push options: webpush_subject, and with APNs apns_key_id, apns_team_id, apns_topic, apns_url, apns_push_type (docs/operations/push.md)."
  type = object({
    webpush_subject = optional(string)
    apns_key_id     = optional(string)
    apns_team_id    = optional(string)
    apns_topic      = optional(string)
    apns_url        = optional(string)
    apns_push_type  = optional(string)
  })
  default = {}
}

variable "secrets_kms_key_arns" {
  description = "Customer-managed KMS keys of the secrets, if any (in every region's form)."
  type        = list(string)
  default     = []
}

variable "monitoring_cidrs" {
  description = "Networks of the monitoring system (gateway admin port, PD and TiKV metrics)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.monitoring_cidrs : can(cidrhost(c, 0))])
    error_message = "monitoring_cidrs must be IPv4 CIDR blocks."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "attachments_bucket_name" {
  description = "Name of the attachment bucket (globally unique); null: \"<name_prefix>-rossby-attachments\"."
  type        = string
  default     = null
}

variable "attachments_kms_key_arn" {
  description = "KMS key (in the primary region) for the attachment bucket's server-side encryption; null: SSE-S3."
  type        = string
  default     = null
}
