# VPC with three subnets per zone (data, app, public; see the topology module),
# an internet gateway, NAT for outbound traffic from the private subnets, and
# routes to the other regions through VPC peering.

resource "aws_vpc" "this" {
  cidr_block           = local.region.cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = local.prefix })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = local.prefix })
}

resource "aws_subnet" "data" {
  for_each          = local.region.subnets
  vpc_id            = aws_vpc.this.id
  availability_zone = each.key
  cidr_block        = each.value.data
  tags              = merge(local.tags, { Name = "${local.prefix}-data-${each.key}", "rossby:tier" = "data" })
}

resource "aws_subnet" "app" {
  for_each          = local.region.subnets
  vpc_id            = aws_vpc.this.id
  availability_zone = each.key
  cidr_block        = each.value.app
  tags              = merge(local.tags, { Name = "${local.prefix}-app-${each.key}", "rossby:tier" = "app" })
}

resource "aws_subnet" "public" {
  for_each          = local.region.subnets
  vpc_id            = aws_vpc.this.id
  availability_zone = each.key
  cidr_block        = each.value.public
  tags              = merge(local.tags, { Name = "${local.prefix}-public-${each.key}", "rossby:tier" = "public" })
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = "${local.prefix}-public" })
}

resource "aws_route" "public_internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "public" {
  for_each       = aws_subnet.public
  subnet_id      = each.value.id
  route_table_id = aws_route_table.public.id
}

# One NAT gateway per zone by default, so losing a zone does not cut the others
# off from Secrets Manager, SSM and artifact downloads.
locals {
  nat_zones = var.single_nat_gateway ? [local.zones[0]] : local.zones
}

resource "aws_eip" "nat" {
  for_each = toset(local.nat_zones)
  domain   = "vpc"
  tags     = merge(local.tags, { Name = "${local.prefix}-nat-${each.key}" })
}

resource "aws_nat_gateway" "this" {
  for_each      = toset(local.nat_zones)
  allocation_id = aws_eip.nat[each.key].id
  subnet_id     = aws_subnet.public[each.key].id
  tags          = merge(local.tags, { Name = "${local.prefix}-nat-${each.key}" })

  depends_on = [aws_internet_gateway.this]
}

# One private route table per zone, shared by its data and app subnets.
resource "aws_route_table" "private" {
  for_each = local.region.subnets
  vpc_id   = aws_vpc.this.id
  tags     = merge(local.tags, { Name = "${local.prefix}-private-${each.key}" })
}

resource "aws_route" "private_nat" {
  for_each               = aws_route_table.private
  route_table_id         = each.value.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[var.single_nat_gateway ? local.zones[0] : each.key].id
}

resource "aws_route" "private_peers" {
  for_each = {
    for pair in setproduct(keys(var.peers), local.zones) : "${pair[0]}/${pair[1]}" => {
      peer = pair[0]
      zone = pair[1]
    }
  }
  route_table_id            = aws_route_table.private[each.value.zone].id
  destination_cidr_block    = var.peers[each.value.peer].cidr
  vpc_peering_connection_id = var.peers[each.value.peer].peering_connection_id
}

resource "aws_route_table_association" "data" {
  for_each       = aws_subnet.data
  subnet_id      = each.value.id
  route_table_id = aws_route_table.private[each.key].id
}

resource "aws_route_table_association" "app" {
  for_each       = aws_subnet.app
  subnet_id      = each.value.id
  route_table_id = aws_route_table.private[each.key].id
}
