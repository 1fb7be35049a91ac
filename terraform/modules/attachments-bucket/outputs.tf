output "bucket" {
  description = "What the aws-region module's `attachments` variable takes: bucket name, ARN, region, key prefix and KMS key."
  value = {
    name        = aws_s3_bucket.this.id
    arn         = aws_s3_bucket.this.arn
    region      = var.region
    prefix      = var.prefix
    kms_key_arn = var.kms_key_arn
    # The gateways stop keeping a blob a day before the lifecycle rule would
    # delete its objects (max_attachment_age_days).
    max_age_days = var.retention_days + var.margin_days - 1
  }
}
