# Provider-free: everything here is computed from the inputs, so `terraform
# init -backend=false`, `validate` and `test` run offline. Validation blocks that
# look at two variables need Terraform 1.9.
terraform {
  required_version = ">= 1.9.0"
}
