# The object store of attachment ciphertext: one S3 bucket for the whole
# deployment (any gateway in any region serves any download, and a region's
# gateways delete its expired blobs). Gateways reach it through their instance
# role (aws-region's `attachments` variable); nothing else may.
#
# Objects are deleted by the gateways' expiry sweep (docs/protocol.md §10). The
# lifecycle rule is the backstop for what a sweep could miss (an account purged
# while the object store was failing): objects older than the message retention
# plus a margin go. A blob sent again and again is therefore kept at most that
# long after its upload on S3: the gateways stop extending it a day earlier
# (max_attachment_age_days, from the `bucket` output), and clients upload it
# again after that.

locals {
  tags = merge(var.tags, { "rossby:role" = "attachments" })
}

resource "aws_s3_bucket" "this" {
  bucket        = var.bucket_name
  force_destroy = false
  tags          = local.tags
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

# Objects are written once and deleted; old versions would only keep deleted
# ciphertext around.
resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id
  versioning_configuration {
    status = "Suspended"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "expire-attachments"
    status = "Enabled"
    filter {
      prefix = var.prefix == "" ? "" : "${var.prefix}/"
    }
    expiration {
      days = var.retention_days + var.margin_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  # Gateways store each part with one PUT and never start multipart uploads;
  # anything started by other tools is cleaned up.
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this.arn,
      "${aws_s3_bucket.this.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.tls_only.json
  # The public access block must exist first, or S3 may refuse the policy.
  depends_on = [aws_s3_bucket_public_access_block.this]
}
