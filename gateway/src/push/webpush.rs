//! Web Push (RFC 8030, 8291, 8292).

/// Checks a subscription endpoint a device registers.
pub fn check_endpoint(endpoint: &str, allow_insecure: bool) -> Result<(), String> {
    if endpoint.starts_with("https://") || (allow_insecure && endpoint.starts_with("http://")) {
        Ok(())
    } else {
        Err("a Web Push endpoint must be an https:// URL".into())
    }
}
