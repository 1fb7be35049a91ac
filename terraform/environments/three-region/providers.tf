# One provider per region. The first region in var.regions is the primary.

provider "aws" {
  alias  = "region_a"
  region = var.regions[0].name
  default_tags {
    tags = local.tags
  }
}

provider "aws" {
  alias  = "region_b"
  region = var.regions[1].name
  default_tags {
    tags = local.tags
  }
}

provider "aws" {
  alias  = "region_c"
  region = var.regions[2].name
  default_tags {
    tags = local.tags
  }
}
