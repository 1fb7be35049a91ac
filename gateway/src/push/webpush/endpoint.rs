//! Which push endpoints the gateway posts to. A subscription's endpoint is a
//! URL chosen by whoever registers it, so without a check it would let any
//! device make the gateway send requests into its own network (SSRF). Endpoints
//! are checked when registered ([`check_endpoint`]), again before every send,
//! and every name is resolved through [`GuardedResolver`], which drops
//! addresses that are not public, so a name that later resolves to an internal
//! address (DNS rebinding) still reaches nothing.

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest endpoint accepted, in bytes. Real push services use a few hundred.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// Why an endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndpointError {
    /// Not a usable push endpoint URL at all.
    Invalid(String),
    /// A well-formed URL naming an address the gateway must not reach.
    Forbidden(String),
}

impl std::fmt::Display for EndpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointError::Invalid(m) | EndpointError::Forbidden(m) => f.write_str(m),
        }
    }
}

/// Checks a Web Push subscription endpoint as a device registers it; the error
/// says what is wrong, for the client. `allow_insecure` (local testing) also
/// accepts `http` and loopback or private addresses.
pub fn check_endpoint(endpoint: &str, allow_insecure: bool) -> Result<(), String> {
    parse_endpoint(endpoint, allow_insecure)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// [`check_endpoint`], returning the parsed URL.
pub(crate) fn parse_endpoint(endpoint: &str, allow_insecure: bool) -> Result<Url, EndpointError> {
    let invalid = |m: &str| EndpointError::Invalid(format!("the push endpoint {m}"));
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(invalid(&format!("is longer than {MAX_ENDPOINT_LEN} bytes")));
    }
    let url = Url::parse(endpoint).map_err(|e| invalid(&format!("is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        "http" => return Err(invalid("must use https")),
        _ => return Err(invalid("must be an https URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not contain a user name or password"));
    }
    let forbidden = |what: &str| {
        EndpointError::Forbidden(format!(
            "the push endpoint's host {what} is not a public address"
        ))
    };
    // The URL parser has already normalised IPv4 literals (`127.1`, `0x7f000001`
    // become `127.0.0.1`), so what is not an address literal here is a name.
    let Some(host) = url.host_str() else {
        return Err(invalid("has no host"));
    };
    if !allow_insecure {
        match host_ip(host) {
            Some(ip) if !is_public(ip) => return Err(forbidden(&ip.to_string())),
            Some(_) => {}
            None if is_local_name(host) => return Err(forbidden(host)),
            None => {}
        }
    }
    Ok(url)
}

/// The address of an IP-literal host (`host_str` form: IPv6 in brackets).
fn host_ip(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// `localhost` and its subdomains (RFC 6761 §6.3), which resolve to loopback
/// without asking DNS.
fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether `ip` is a public unicast address: not loopback, private, shared
/// (CGNAT), link-local, unique-local, unspecified, multicast, broadcast,
/// documentation, benchmarking or reserved, nor an IPv6 form embedding such
/// an IPv4 address.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", unspecified
        || a == 10 // private
        || a == 127 // loopback
        || (a == 100 && (b & 0xc0) == 64) // shared address space (CGNAT) 100.64/10
        || (a == 169 && b == 254) // link-local
        || (a == 172 && (b & 0xf0) == 16) // private 172.16/12
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168) // private
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224; // multicast, reserved 240/4, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d, which a DNS64
    // resolver hands out for IPv4-only names) reach the embedded IPv4 address.
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return is_public_v4(v4(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(v4(s[6], s[7]));
    }
    // 6to4 (2002:a.b.c.d::/48) routes to the embedded IPv4 address's network.
    if s[0] == 0x2002 {
        return is_public_v4(v4(s[1], s[2]));
    }
    // Only global unicast (2000::/3) is routed on the Internet; this leaves out
    // ::, ::1, IPv4-compatible forms, unique-local fc00::/7, link-local
    // fe80::/10, site-local and multicast ff00::/8.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    let refused = match s[0] {
        // IETF protocol assignments 2001::/23 (Teredo, ORCHID, benchmarking)
        // and documentation 2001:db8::/32.
        0x2001 => s[1] < 0x0200 || s[1] == 0x0db8,
        // Documentation 3fff::/20.
        0x3fff => s[1] < 0x1000,
        _ => false,
    };
    !refused
}

/// The IPv4 address held in two IPv6 segments.
fn v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

/// A resolution refused because the name has no public address.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to no public address")]
pub(crate) struct ForbiddenAddress(String);

/// The resolver of the Web Push client: the system resolver (through tokio),
/// keeping only public addresses unless insecure endpoints are allowed, and
/// failing when none is left. reqwest does not consult it for IP-literal hosts,
/// which `send` checks itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardedResolver {
    /// Keep every address (local testing).
    pub(crate) allow_insecure: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_insecure = self.allow_insecure;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept: Vec<_> = found
                .filter(|addr| allow_insecure || is_public(addr.ip()))
                .collect();
            if kept.is_empty() {
                return Err(
                    Box::new(ForbiddenAddress(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// Whether a request failed because [`GuardedResolver`] refused the name.
pub(crate) fn is_forbidden(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<ForbiddenAddress>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(endpoint: &str) -> String {
        check_endpoint(endpoint, false).expect_err(endpoint)
    }

    #[test]
    fn public_https_endpoints_are_accepted() {
        for ok in [
            "https://fcm.googleapis.com/fcm/send/x",
            "https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
            "https://web.push.apple.com/QGuQ",
            "https://8.8.8.8/push/1",
            "https://[2606:4700::1111]:8443/push",
            "https://[64:ff9b::808:808]/push",
        ] {
            assert_eq!(check_endpoint(ok, false), Ok(()), "{ok}");
        }
    }

    #[test]
    fn endpoints_the_gateway_must_not_reach_are_refused() {
        assert!(refused("http://fcm.googleapis.com/fcm/send/x").contains("https"));
        assert!(refused("ftp://fcm.googleapis.com/x").contains("https"));
        assert!(refused("not a url").contains("not a URL"));
        assert!(refused("https://user:pw@fcm.googleapis.com/x").contains("user name"));
        assert!(refused("https://user@fcm.googleapis.com/x").contains("user name"));
        let long = format!(
            "https://fcm.googleapis.com/{}",
            "a".repeat(MAX_ENDPOINT_LEN)
        );
        assert!(refused(&long).contains("2048"));
        for host in [
            "localhost",
            "LOCALHOST.",
            "push.localhost",
            "127.0.0.1",
            "127.1",
            "0x7f000001",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "[::1]",
            "[::]",
            "[fc00::1]",
            "[fd12:3456::1]",
            "[fe80::1]",
            "[ff02::1]",
            "[2001:db8::1]",
            "[::ffff:127.0.0.1]",
            "[::ffff:10.0.0.1]",
            "[64:ff9b::a00:1]",
            "[2002:c0a8:101::1]",
        ] {
            let message = refused(&format!("https://{host}/push/1"));
            assert!(
                message.contains("not a public address"),
                "{host}: {message}"
            );
        }
        // Neighbours of refused ranges stay public.
        for host in ["172.32.0.1", "100.128.0.1", "11.0.0.1", "[2a00:1450::1]"] {
            assert_eq!(
                check_endpoint(&format!("https://{host}/p"), false),
                Ok(()),
                "{host}"
            );
        }
    }

    #[test]
    fn insecure_mode_accepts_local_http_endpoints() {
        for ok in [
            "http://127.0.0.1:8080/push/abc",
            "http://localhost:1/push",
            "https://[::1]/push",
            "http://10.0.0.2/push",
        ] {
            assert_eq!(check_endpoint(ok, true), Ok(()), "{ok}");
        }
        // The other rules still hold.
        assert!(check_endpoint("http://u@127.0.0.1/push", true).is_err());
        assert!(check_endpoint("file:///etc/passwd", true).is_err());
    }

    #[tokio::test]
    async fn the_resolver_drops_non_public_addresses() {
        let guarded = GuardedResolver {
            allow_insecure: false,
        };
        let error = match guarded.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(error.is::<ForbiddenAddress>(), "{error}");
        let open = GuardedResolver {
            allow_insecure: true,
        };
        let addrs: Vec<_> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
