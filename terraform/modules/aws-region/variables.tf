variable "name_prefix" {
  description = "Name of the deployment, used in resource names and the rossby:deployment tag (lower case letters, digits and '-', at most 20 characters)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 2 to 20 characters: lower case letters, digits and '-', starting with a letter and not ending with '-'."
  }
}

variable "topology" {
  description = "The outputs of the topology module (pass the whole module: `topology = module.topology`)."
  type = object({
    regions                  = any
    topology_json            = string
    cidrs                    = map(string)
    tikv_stores              = any
    tikv_config_toml         = map(string)
    pd_members               = any
    pd_initial_cluster       = string
    pd_config_toml           = string
    pd_endpoints             = map(list(string))
    gateway_config_toml      = map(string)
    gateway_files            = map(string)
    gateway_peer_environment = map(string)
    ports                    = map(number)
    health_check             = any
    drain                    = map(number)
  })
}

variable "region_name" {
  description = "Which of the topology's regions this module builds (its name in the topology); the aws provider passed in must be configured for the matching AWS region."
  type        = string

  validation {
    condition     = contains(keys(var.topology.regions), var.region_name)
    error_message = "region_name \"${var.region_name}\" is not a region of the topology (${join(", ", keys(var.topology.regions))})."
  }
}

variable "aws_region" {
  description = "The AWS region the aws provider passed in is configured for (for example \"us-east-1\"): the boot scripts' AWS_REGION and the region of the ARNs this module writes. Null: region_name, for a topology that names its regions by their AWS names (environments/three-region passes it explicitly). It is passed in rather than read from the aws_region data source, whose attribute for it differs between provider majors (5.x: name; 6.x: region, with name and later id deprecated)."
  type        = string
  default     = null

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+$", coalesce(var.aws_region, var.region_name)))
    error_message = "aws_region (or, when it is null, region_name) must be an AWS region name such as us-east-1; got \"${coalesce(var.aws_region, var.region_name)}\"."
  }
  validation {
    # Subnets are created in the topology's zones, which are availability zones
    # of this region, and availability zone names start with their region's.
    condition = try(alltrue([
      for z in var.topology.regions[var.region_name].zones : startswith(z, coalesce(var.aws_region, var.region_name)) && length(z) > length(coalesce(var.aws_region, var.region_name))
    ]), true)
    error_message = "The zones of region ${var.region_name} must be availability zones of AWS region \"${coalesce(var.aws_region, var.region_name)}\" (names starting with it); got ${jsonencode(try(var.topology.regions[var.region_name].zones, []))}."
  }
}

variable "architecture" {
  description = "CPU architecture of every instance: \"x86_64\" or \"arm64\" (instance types, the Rossby artifact and the TiKV/PD builds must match)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be \"x86_64\" or \"arm64\"."
  }
}

variable "ami_id" {
  description = "AMI of every instance. Null: the latest Amazon Linux 2023 for the architecture (read from SSM when the instances are created; later AMI releases do not replace running PD and TiKV instances)."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must look like ami-0123456789abcdef0."
  }
}

variable "rossby_artifact" {
  description = "The Rossby release for this architecture: a .tar.gz holding the rossby-gateway, rossby and rossby-admin binaries at its top level, at an s3:// or https:// URL, with its SHA-256."
  type = object({
    url    = string
    sha256 = string
  })

  validation {
    condition     = can(regex("^(s3|https)://[^\\s]+\\.tar\\.gz$", var.rossby_artifact.url))
    error_message = "rossby_artifact.url must be an s3:// or https:// URL of a .tar.gz file."
  }
  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.rossby_artifact.sha256))
    error_message = "rossby_artifact.sha256 must be 64 lower-case hex digits (sha256sum of the file)."
  }
}

variable "tikv_version" {
  description = "TiKV and PD version, as PingCAP publishes them (for example v8.5.1). The server tarballs are downloaded from the TiUP mirror unless tikv_artifacts names other copies."
  type        = string
  default     = "v8.5.1"

  validation {
    condition     = can(regex("^v[0-9]+\\.[0-9]+\\.[0-9]+$", var.tikv_version))
    error_message = "tikv_version must look like v8.5.1."
  }
}

variable "tikv_artifacts" {
  description = "Where to get pd-server and tikv-server instead of the TiUP mirror (for example copies in your own S3 bucket): URLs of the tarballs and, optionally, their SHA-256 digests."
  type = object({
    pd_url      = string
    pd_sha256   = optional(string, "")
    tikv_url    = string
    tikv_sha256 = optional(string, "")
  })
  default = null

  validation {
    condition     = var.tikv_artifacts == null || try(alltrue([for u in [var.tikv_artifacts.pd_url, var.tikv_artifacts.tikv_url] : can(regex("^(s3|https)://[^\\s]+\\.tar\\.gz$", u))]), false)
    error_message = "tikv_artifacts URLs must be s3:// or https:// URLs of .tar.gz files."
  }
  validation {
    condition     = var.tikv_artifacts == null || try(alltrue([for s in [var.tikv_artifacts.pd_sha256, var.tikv_artifacts.tikv_sha256] : s == "" || can(regex("^[0-9a-f]{64}$", s))]), false)
    error_message = "tikv_artifacts digests must be empty or 64 lower-case hex digits."
  }
}

variable "artifact_bucket_arns" {
  description = "S3 buckets (ARNs) the instances may read release artifacts from."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.artifact_bucket_arns : can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9.-]{3,63}$", a))])
    error_message = "artifact_bucket_arns must be S3 bucket ARNs (arn:aws:s3:::bucket)."
  }
}

variable "backup_bucket_arn" {
  description = "S3 bucket (ARN) TiKV stores write BR backups to and read restores from. Null: no backup access."
  type        = string
  default     = null

  validation {
    condition     = var.backup_bucket_arn == null || can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9.-]{3,63}$", var.backup_bucket_arn))
    error_message = "backup_bucket_arn must be an S3 bucket ARN (arn:aws:s3:::bucket)."
  }
}

variable "secret_names" {
  description = <<-EOT
    Names of the Secrets Manager secrets the gateways read at boot, replicated into this
    region. Terraform reads only their metadata (ARN), never their values:
    - gateway_secret: the server secret (hex, at least 32 bytes), the same everywhere;
    - lookup_pepper: the identifier lookup pepper (hex, at least 16 bytes);
    - tls: JSON {"certificate_chain": PEM, "private_key": PEM}, the gateways' certificate
      for every region's quic_host;
    - peer_tls: JSON {"ca_certificate": PEM, "ca_private_key": PEM}, the deployment's
      gateway-to-gateway CA; each gateway signs its own certificate (for its private
      address) with it at boot and keeps only the CA certificate.
    Wake-up push credentials (docs/operations/push.md), each optional:
    - webpush_vapid_key: the VAPID private key (PEM), the same everywhere; without it
      each gateway generates its own and Web Push breaks across gateways;
    - apns_key: the APNs token signing key (the .p8 file's contents); turns APNs on
      (with push_settings.apns_key_id, apns_team_id and apns_topic);
    - fcm_service_account: the Firebase service account JSON; turns FCM on.
  EOT
  type = object({
    gateway_secret      = string
    lookup_pepper       = string
    tls                 = string
    peer_tls            = string
    webpush_vapid_key   = optional(string)
    apns_key            = optional(string)
    fcm_service_account = optional(string)
  })

  validation {
    condition     = alltrue([for n in values(var.secret_names) : n == null || can(regex("^[A-Za-z0-9/_+=.@-]{1,512}$", n))])
    error_message = "Secret names use letters, digits and /_+=.@- (Secrets Manager's rules)."
  }
}

variable "push_settings" {
  description = <<-EOT
    The non-secret wake-up push options (docs/operations/push.md): the VAPID subject
    (a mailto: or https: contact for push service operators) and, with the apns_key
    secret, the APNs key id, team id, app bundle id (topic), base URL (the sandbox for
    development builds) and push type (alert or background).
  EOT
  type = object({
    webpush_subject = optional(string)
    apns_key_id     = optional(string)
    apns_team_id    = optional(string)
    apns_topic      = optional(string)
    apns_url        = optional(string)
    apns_push_type  = optional(string)
  })
  default = {}

  validation {
    condition     = var.push_settings.webpush_subject == null || can(regex("^(mailto:|https://)", var.push_settings.webpush_subject))
    error_message = "push_settings.webpush_subject must start with mailto: or https://."
  }
  validation {
    condition     = alltrue([for v in [var.push_settings.apns_key_id, var.push_settings.apns_team_id] : v == null || can(regex("^[A-Za-z0-9]{10}$", v))])
    error_message = "push_settings.apns_key_id and apns_team_id are Apple's 10-character ids."
  }
  validation {
    condition = var.secret_names.apns_key == null || alltrue([
      for v in [var.push_settings.apns_key_id, var.push_settings.apns_team_id, var.push_settings.apns_topic] : v != null
    ])
    error_message = "With the apns_key secret, push_settings needs apns_key_id, apns_team_id and apns_topic."
  }
  validation {
    condition     = var.push_settings.apns_push_type == null || contains(["alert", "background"], coalesce(var.push_settings.apns_push_type, "alert"))
    error_message = "push_settings.apns_push_type is alert or background."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer-managed KMS keys (ARNs) the secrets are encrypted with, if any; the gateways get kms:Decrypt on them."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.secrets_kms_key_arns : can(regex("^arn:aws[a-z-]*:kms:", a))])
    error_message = "secrets_kms_key_arns must be KMS key ARNs."
  }
}

variable "peer_certificate_days" {
  description = "Validity of the peer certificate each gateway issues itself at boot (gateways are replaced by every release; see docs/operations/rotation.md)."
  type        = number
  default     = 397

  validation {
    condition     = var.peer_certificate_days == floor(var.peer_certificate_days) && var.peer_certificate_days >= 7 && var.peer_certificate_days <= 825
    error_message = "peer_certificate_days must be a whole number from 7 to 825."
  }
}

variable "monitoring_cidrs" {
  description = "Networks of the monitoring system, allowed to the gateway admin port (/metrics, /readyz), PD's client port and TiKV's status port."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.monitoring_cidrs : can(cidrhost(c, 0))])
    error_message = "monitoring_cidrs must be IPv4 CIDR blocks."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for the region instead of one per zone (cheaper; instances in other zones lose outbound access when its zone is lost)."
  type        = bool
  default     = false
}

variable "peers" {
  description = "Other regions of the deployment, by region name: their network and the VPC peering connection that reaches it. Routes to them are added to every private route table."
  type = map(object({
    cidr                  = string
    peering_connection_id = string
  }))
  default = {}

  validation {
    condition     = alltrue([for p in values(var.peers) : can(cidrhost(p.cidr, 0))])
    error_message = "Every peer cidr must be an IPv4 CIDR block."
  }
}

variable "public_zone_id" {
  description = "Route 53 public hosted zone holding the region's quic_host; when set, an alias record points it at the load balancer. Null: point the name at the nlb_dns_name output yourself."
  type        = string
  default     = null
}

variable "create_admin_dns_record" {
  description = "Whether to create the admin_host record in private_zone_id (a separate flag because the zone is usually created in the same apply)."
  type        = bool
  default     = false
}

variable "private_zone_id" {
  description = "Route 53 private hosted zone (associated with this VPC) holding the region's admin_host, an alias of the internal admin load balancer."
  type        = string
  default     = null
}

variable "placement_runner" {
  description = "Tag this region's gateways rossby:placement-runner = true, so the deployment's one-shot `rossby-admin placement apply` runs on one of them (set for the primary region)."
  type        = bool
  default     = false
}

variable "gateway_max_count" {
  description = "Largest size of the gateway autoscaling group (room for instance refreshes and manual scale-out). Null: twice the region's gateway_count."
  type        = number
  default     = null

  validation {
    condition     = var.gateway_max_count == null || try(var.gateway_max_count == floor(var.gateway_max_count) && var.gateway_max_count >= 1, false)
    error_message = "gateway_max_count must be a whole number of at least 1."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "attachments" {
  description = "The attachment bucket of the deployment (the attachments-bucket module's `bucket` output): the gateways store attachment ciphertext there (ROSSBY_BLOB_STORE) and may put, get and delete objects under its prefix and list that prefix, nothing more. null: each gateway keeps attachments on its own disk (one gateway per region only)."
  type = object({
    name         = string
    arn          = string
    region       = string
    prefix       = string
    kms_key_arn  = optional(string)
    max_age_days = optional(number, 0)
  })
  default = null
}

variable "prober" {
  description = "The region's cross-region prober (rossby-admin prober, docs/operations/prober.md): a small instance of its own in the first zone's app subnet, with a volume for its accounts' state, serving metrics on metrics_port to monitoring_cidrs. Its two accounts are provisioned once by the operator; the prober starts once they are. instance_type defaults to t3.micro (x86_64) or t4g.micro (arm64)."
  type = object({
    enabled          = optional(bool, true)
    instance_type    = optional(string)
    interval_secs    = optional(number, 10)
    deadline_secs    = optional(number, 60)
    metrics_port     = optional(number, 7410)
    account_template = optional(string, "rossby-prober-{region}-{role}@prober.rossby.invalid")
    volume_gb        = optional(number, 1)
  })
  default = {}

  validation {
    condition     = var.prober.interval_secs >= 1 && var.prober.deadline_secs > var.prober.interval_secs
    error_message = "prober.interval_secs must be at least 1, and prober.deadline_secs longer than the interval."
  }
  validation {
    condition     = var.prober.metrics_port >= 1024 && var.prober.metrics_port <= 65535 && floor(var.prober.metrics_port) == var.prober.metrics_port
    error_message = "prober.metrics_port must be a port number from 1024 to 65535."
  }
  validation {
    condition     = strcontains(var.prober.account_template, "{region}") && strcontains(var.prober.account_template, "{role}") && !strcontains(var.prober.account_template, "'")
    error_message = "prober.account_template must contain {region} and {role} (and no single quote)."
  }
  validation {
    condition     = var.prober.volume_gb >= 1 && var.prober.volume_gb <= 100
    error_message = "prober.volume_gb must be from 1 to 100."
  }
}
