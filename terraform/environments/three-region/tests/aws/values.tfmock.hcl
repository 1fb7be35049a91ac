# Values of the data sources that reach the provider's own checks at plan time
# (ARNs, policy documents, the AMI id); the mocked provider would otherwise fill
# them with random strings. Resources need none: with `command = plan` their
# computed attributes stay unknown.

mock_data "aws_partition" {
  defaults = {
    partition  = "aws"
    dns_suffix = "amazonaws.com"
  }
}

mock_data "aws_caller_identity" {
  defaults = {
    account_id = "123456789012"
    arn        = "arn:aws:iam::123456789012:user/plan"
    user_id    = "AIDAEXAMPLEPLANUSER"
  }
}

mock_data "aws_ssm_parameter" {
  defaults = {
    insecure_value = "ami-0123456789abcdef0"
    type           = "String"
  }
}

mock_data "aws_secretsmanager_secret" {
  defaults = {
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rossby/secret-AbCdEf"
  }
}

mock_data "aws_iam_policy_document" {
  defaults = {
    json = "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Deny\",\"Action\":\"s3:*\",\"Resource\":\"*\",\"Principal\":\"*\"}]}"
  }
}
