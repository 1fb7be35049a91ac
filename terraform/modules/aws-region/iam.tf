# Instance roles. Every node is managed through SSM (no SSH keys, no open SSH
# port). Gateways read their secrets; TiKV stores write BR backups.

# Only metadata (the ARN of this region's replica) is read, never a value: secret
# values reach the instances directly from Secrets Manager and stay out of state.
data "aws_secretsmanager_secret" "this" {
  for_each = { for k, v in var.secret_names : k => v if v != null }
  name     = each.value
}

data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

locals {
  roles = toset(concat(["gateway", "pd", "tikv"], var.prober.enabled ? ["prober"] : []))
  artifact_read = length(var.artifact_bucket_arns) == 0 ? [] : [{
    Sid      = "ReadArtifacts"
    Effect   = "Allow"
    Action   = ["s3:GetObject"]
    Resource = [for b in var.artifact_bucket_arns : "${b}/*"]
  }]
  attachment_keys = var.attachments == null ? "" : (var.attachments.prefix == "" ? "*" : "${var.attachments.prefix}/*")
  attachment_access = var.attachments == null ? [] : concat([
    {
      Sid      = "AttachmentObjects"
      Effect   = "Allow"
      Action   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]
      Resource = ["${var.attachments.arn}/${local.attachment_keys}"]
    },
    {
      # Deleting a blob lists its objects; only the prefix may be listed.
      Sid       = "AttachmentListing"
      Effect    = "Allow"
      Action    = ["s3:ListBucket"]
      Resource  = [var.attachments.arn]
      Condition = { StringLike = { "s3:prefix" = [local.attachment_keys] } }
    },
    ], var.attachments.kms_key_arn == null ? [] : [{
      Sid      = "AttachmentEncryption"
      Effect   = "Allow"
      Action   = ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"]
      Resource = [var.attachments.kms_key_arn]
  }])
  role_statements = {
    gateway = concat(local.artifact_read, local.attachment_access, [
      {
        Sid      = "ReadGatewaySecrets"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
        Resource = [for s in data.aws_secretsmanager_secret.this : s.arn]
      },
      {
        # The drain watcher lets its own instance's termination proceed.
        Sid      = "CompleteDrainHook"
        Effect   = "Allow"
        Action   = ["autoscaling:CompleteLifecycleAction"]
        Resource = ["arn:${data.aws_partition.current.partition}:autoscaling:${local.aws_region}:${data.aws_caller_identity.current.account_id}:autoScalingGroup:*:autoScalingGroupName/${local.asg_name}"]
      },
      ], length(var.secrets_kms_key_arns) == 0 ? [] : [{
        Sid      = "DecryptGatewaySecrets"
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
        Resource = var.secrets_kms_key_arns
    }])
    pd = local.artifact_read
    # The prober only needs the release; its accounts' codes come from the
    # operator.
    prober = local.artifact_read
    tikv = concat(local.artifact_read, var.backup_bucket_arn == null ? [] : [
      {
        Sid      = "BackupObjects"
        Effect   = "Allow"
        Action   = ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
        Resource = ["${var.backup_bucket_arn}/*"]
      },
      {
        Sid      = "BackupBucket"
        Effect   = "Allow"
        Action   = ["s3:ListBucket", "s3:GetBucketLocation"]
        Resource = [var.backup_bucket_arn]
      },
    ])
  }
}

resource "aws_iam_role" "node" {
  for_each = local.roles
  # IAM is global: the region is part of the name.
  name = "${local.prefix}-${each.key}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "ssm" {
  for_each   = local.roles
  role       = aws_iam_role.node[each.key].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_role_policy" "node" {
  for_each = { for r in local.roles : r => local.role_statements[r] if length(local.role_statements[r]) > 0 }
  name     = "rossby-${each.key}"
  role     = aws_iam_role.node[each.key].id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = each.value
  })
}

resource "aws_iam_instance_profile" "node" {
  for_each = local.roles
  name     = "${local.prefix}-${each.key}"
  role     = aws_iam_role.node[each.key].name
  tags     = local.tags
}
