//! The upstream Config Server's address.

/// Parses `http://host:port` into `(authority)`; only plain http is supported towards
/// the local server (it sits on loopback or in the same pod).
pub fn parse_upstream(url: &str) -> Result<http::uri::Authority, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("must be http://host:port (the local Config Server)".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must not carry a path or query".into());
    }
    uri.authority()
        .cloned()
        .ok_or_else(|| "missing host".into())
}
