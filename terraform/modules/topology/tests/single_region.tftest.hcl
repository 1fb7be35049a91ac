# One region: no round trips, PD across its zones, explicit gateway addresses.

variables {
  primary       = "eu-central-1"
  service_name  = "rossby.example.org:443"
  public_domain = "example.org"
  ports         = { quic = 443 }
  regions = [{
    code                 = 7
    name                 = "eu-central-1"
    zones                = ["eu-central-1a", "eu-central-1b", "eu-central-1c"]
    cidr                 = "10.20.0.0/18"
    gateway_count        = 1
    tikv_stores_per_zone = 3
    gateway_addresses = [
      { quic = "gw1.example.org:443", admin = "10.20.16.11:7401" },
      { quic = "gw2.example.org:443", admin = "10.20.18.11:7401" },
    ]
  }]
}

run "single_region" {
  command = apply

  assert {
    condition     = jsondecode(output.topology_json).rtt_ms == {} && strcontains(output.topology_json, "\"rtt_ms\":{}")
    error_message = "A single region has an empty rtt_ms object."
  }
  assert {
    condition     = jsondecode(output.topology_json).regions[0].gateways[1] == { quic = "gw2.example.org:443", admin = "10.20.18.11:7401" }
    error_message = "Explicit gateway addresses are used as given."
  }
  assert {
    condition     = [for m in values(output.pd_members) : m.zone] == ["eu-central-1a", "eu-central-1b", "eu-central-1c"]
    error_message = "Three PD members, one per zone."
  }
  assert {
    condition     = length(output.tikv_stores) == 9 && output.tikv_stores["tikv-eu-central-1b-2"].private_ip == "10.20.2.22"
    error_message = "Three stores per zone at .20, .21, .22 of the zone's data subnet (/23 out of a /18)."
  }
  assert {
    condition     = contains(split("\n", output.gateway_config_toml["eu-central-1"]), "listen = \"0.0.0.0:443\"") && contains(split("\n", output.gateway_config_toml["eu-central-1"]), "region = 7")
    error_message = "The QUIC port follows ports.quic."
  }
  assert {
    condition     = output.regions["eu-central-1"].gateway.quic_host == "eu-central-1.example.org" && output.regions["eu-central-1"].is_primary
    error_message = "The public name defaults to <region>.<public_domain>."
  }
}
