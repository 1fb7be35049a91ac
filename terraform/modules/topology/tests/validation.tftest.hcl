# Every rule a topology must follow is refused at plan time, naming the variable.
# Each run changes one thing of a valid two-region topology.

variables {
  primary      = "us-east-1"
  service_name = "chat.example.net:7400"
  regions = [
    { code = 1, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 2, quic_host = "use1.chat.example.net" },
    { code = 2, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], cidr = "10.2.0.0/16", gateway_count = 2, quic_host = "euw1.chat.example.net" },
  ]
  rtt_ms = { "us-east-1:eu-west-1" = 68 }
}

run "the_base_topology_is_valid" {
  command = plan

  assert {
    condition     = length(output.topology.regions) == 2 && output.topology.rtt_ms == { "us-east-1:eu-west-1" = 68 }
    error_message = "The base topology plans."
  }
  assert {
    condition     = length(output.pd_members) == 3 && length([for m in values(output.pd_members) : m if m.region == "us-east-1"]) == 2
    error_message = "Two regions: three PD members, two in the primary."
  }
}

run "duplicate_codes" {
  command = plan
  variables {
    regions = [
      { code = 1, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 2, quic_host = "a.example.net" },
      { code = 1, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], cidr = "10.2.0.0/16", gateway_count = 2, quic_host = "b.example.net" },
    ]
  }
  expect_failures = [var.regions]
}

run "code_zero_is_reserved" {
  command = plan
  variables {
    regions = [
      { code = 0, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 2, quic_host = "a.example.net" },
      { code = 2, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], cidr = "10.2.0.0/16", gateway_count = 2, quic_host = "b.example.net" },
    ]
  }
  expect_failures = [var.regions]
}

run "code_above_16_bits" {
  command = plan
  variables {
    regions = [
      { code = 65536, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 2, quic_host = "a.example.net" },
      { code = 2, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], cidr = "10.2.0.0/16", gateway_count = 2, quic_host = "b.example.net" },
    ]
  }
  expect_failures = [var.regions]
}

run "duplicate_names" {
  command = plan
  variables {
    regions = [
      { code = 1, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 2, quic_host = "a.example.net" },
      { code = 2, name = "us-east-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], cidr = "10.2.0.0/16", gateway_count = 2, quic_host = "b.example.net" },
    ]
    rtt_ms = {}
  }
  expect_failures = [var.regions]
}

run "name_with_a_colon" {
  command = plan
  variables {
    regions = [
      { code = 1, name = "us:east", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 2, quic_host = "a.example.net" },
    ]
    primary = "us:east"
    rtt_ms  = {}
  }
  expect_failures = [var.regions]
}

run "overlapping_networks" {
  command = plan
  variables {
    regions = [
      { code = 1, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.0.0.0/16", gateway_count = 2, quic_host = "a.example.net" },
      { code = 2, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], cidr = "10.0.128.0/17", gateway_count = 2, quic_host = "b.example.net" },
    ]
  }
  expect_failures = [var.regions]
}

run "network_too_small" {
  command = plan
  variables {
    regions = [
      { code = 1, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/24", gateway_count = 2, quic_host = "a.example.net" },
      { code = 2, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], cidr = "10.2.0.0/16", gateway_count = 2, quic_host = "b.example.net" },
    ]
  }
  expect_failures = [var.regions]
}

run "zone_in_two_regions" {
  command = plan
  variables {
    regions = [
      { code = 1, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 2, quic_host = "a.example.net" },
      { code = 2, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "us-east-1c"], cidr = "10.2.0.0/16", gateway_count = 2, quic_host = "b.example.net" },
    ]
  }
  expect_failures = [var.regions]
}

run "no_public_name" {
  command = plan
  variables {
    regions = [
      { code = 1, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 2 },
      { code = 2, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], cidr = "10.2.0.0/16", gateway_count = 2, quic_host = "b.example.net" },
    ]
  }
  expect_failures = [var.regions]
}

run "bad_gateway_address" {
  command = plan
  variables {
    regions = [
      { code = 1, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 2, gateway_addresses = [{ quic = "gw1.example.net", admin = "10.1.72.5:7401" }] },
      { code = 2, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], cidr = "10.2.0.0/16", gateway_count = 2, quic_host = "b.example.net" },
    ]
  }
  expect_failures = [var.regions]
}

run "primary_not_a_region" {
  command = plan
  variables {
    primary = "us-west-2"
  }
  expect_failures = [var.primary]
}

run "unknown_survival_goal" {
  command = plan
  variables {
    survival = "planet"
  }
  expect_failures = [var.survival]
}

run "region_survival_needs_three_regions" {
  command = plan
  variables {
    survival = "region"
  }
  expect_failures = [var.survival]
}

run "zone_survival_needs_three_zones" {
  command = plan
  variables {
    regions = [
      { code = 1, name = "us-east-1", zones = ["us-east-1a", "us-east-1b", "us-east-1c"], cidr = "10.1.0.0/16", gateway_count = 2, quic_host = "a.example.net" },
      { code = 2, name = "eu-west-1", zones = ["eu-west-1a", "eu-west-1b"], cidr = "10.2.0.0/16", gateway_count = 2, quic_host = "b.example.net" },
    ]
  }
  expect_failures = [var.survival]
}

run "missing_round_trip" {
  command = plan
  variables {
    rtt_ms = {}
  }
  expect_failures = [var.rtt_ms]
}

run "round_trip_given_twice" {
  command = plan
  variables {
    rtt_ms = { "us-east-1:eu-west-1" = 68, "eu-west-1:us-east-1" = 70 }
  }
  expect_failures = [var.rtt_ms]
}

run "round_trip_to_an_unknown_region" {
  command = plan
  variables {
    rtt_ms = { "us-east-1:eu-west-1" = 68, "us-east-1:us-west-2" = 60 }
  }
  expect_failures = [var.rtt_ms]
}

run "round_trip_not_whole_milliseconds" {
  command = plan
  variables {
    rtt_ms = { "us-east-1:eu-west-1" = 68.5 }
  }
  expect_failures = [var.rtt_ms]
}

run "service_name_without_port" {
  command = plan
  variables {
    service_name = "chat.example.net"
  }
  expect_failures = [var.service_name]
}

run "even_pd_member_count" {
  command = plan
  variables {
    pd_member_count = 4
  }
  expect_failures = [var.pd_member_count]
}

run "derived_gateway_keys_cannot_be_overridden" {
  command = plan
  variables {
    gateway_settings = { region = 7, verifier = "log" }
  }
  expect_failures = [var.gateway_settings]
}

run "health_check_timeout_below_interval" {
  command = plan
  variables {
    health_check = { interval_secs = 10, timeout_secs = 10 }
  }
  expect_failures = [var.health_check]
}

run "health_check_timeout_above_the_load_balancer_limit" {
  command = plan
  variables {
    health_check = { interval_secs = 300, timeout_secs = 121 }
  }
  expect_failures = [var.health_check]
}

run "health_check_timeout_at_the_load_balancer_limit" {
  command = plan
  variables {
    health_check = { interval_secs = 300, timeout_secs = 120 }
  }

  assert {
    condition     = output.health_check.timeout_secs == 120 && output.health_check.interval_secs == 300
    error_message = "A 120 s timeout (the most a target group accepts) plans when the interval is longer."
  }
}

run "health_check_timeout_at_the_limit_but_not_below_interval" {
  command = plan
  variables {
    health_check = { interval_secs = 120, timeout_secs = 120 }
  }
  expect_failures = [var.health_check]
}

run "tcp_ports_must_differ" {
  command = plan
  variables {
    ports = { admin = 2379 }
  }
  expect_failures = [var.ports]
}

run "udp_ports_must_differ" {
  command = plan
  variables {
    ports = { peer = 7400 }
  }
  expect_failures = [var.ports]
}
