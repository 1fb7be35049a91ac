variable "bucket_name" {
  description = "Name of the bucket (globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be 3 to 63 lower case letters, digits, '.' or '-'."
  }
}

variable "region" {
  description = "The AWS region the aws provider passed in is configured for, where the bucket is created (for example \"us-east-1\"); the gateways' ROSSBY_BLOB_S3_REGION. Passed in rather than read from the aws_region data source, whose attribute for it differs between provider majors (5.x: name; 6.x: region)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+$", var.region))
    error_message = "region must be an AWS region name such as us-east-1; got \"${var.region}\"."
  }
}

variable "prefix" {
  description = "Key prefix of the attachment objects inside the bucket (no leading or trailing '/'; \"\" for none)."
  type        = string
  default     = "attachments"

  validation {
    condition     = !startswith(var.prefix, "/") && !endswith(var.prefix, "/")
    error_message = "prefix must not start or end with '/'."
  }
}

variable "retention_days" {
  description = "The gateways' message retention (retention_days, docs/configuration.md): a sent attachment is kept at least this long after its last send."
  type        = number
  default     = 30

  validation {
    condition     = var.retention_days >= 1 && var.retention_days <= 3650
    error_message = "retention_days must be between 1 and 3650."
  }
}

variable "margin_days" {
  description = "Days beyond the retention before the lifecycle rule deletes an object the gateways did not (it must cover the time to complete an upload and to send it: upload_ttl_secs and unsent_attachment_ttl_secs, 1 day each by default)."
  type        = number
  default     = 7

  validation {
    condition     = var.margin_days >= 2
    error_message = "margin_days must be at least 2 (an upload's deadline plus an unsent attachment's life)."
  }
}

variable "kms_key_arn" {
  description = "KMS key for server-side encryption; null: SSE-S3 (AES-256). The content is end-to-end encrypted either way."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
