//! OAuth 1.0a, two-legged, HMAC-SHA1: signing requests (the replay path) and verifying them
//! exactly the way the legacy Config Server does (the emulator).
//!
//! It owns the signature base string, the `Authorization: OAuth …` header format and the
//! server's verification quirks; it knows nothing of HTTP libraries, storage or routes, and
//! must not grow any: callers hand it strings.
//!
//! Why not a crate such as `oauth1-request`: signing alone would fit, but verification must
//! rebuild the base string the way the server's Ruby `oauth` gem does — parameters merged
//! from body, query and header with the last value winning, the header parsed by splitting on
//! `,`, `=` and `&`, a second pass that leaves the body fields `data`/`audrey_data` out, and
//! signatures compared after lenient Base64 decoding. That needs full control of the base
//! string, so both directions are built here on `hmac`, `sha1`, `percent-encoding` and `base64`.
use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::Rng as _;
use sha1::Sha1;

/// RFC 5849 §3.6: everything but ALPHA, DIGIT, `-`, `.`, `_`, `~` is percent-encoded.
const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Body fields the server's second ("legacy") verification pass leaves out of the base string.
pub const LEGACY_UNSIGNED: [&str; 2] = ["data", "audrey_data"];

/// Outcome of [`verify`], as the server acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// One of the two passes matched.
    Ok,
    /// A signature was present and checked, and neither pass matched: the server answers 401.
    BadSignature,
    /// No usable OAuth parameters (no or unknown `oauth_signature_method`, no signature or
    /// consumer key, malformed header): the server raises, i.e. answers 500.
    NoOAuth,
}

/// An `Authorization: OAuth …` header whose fields do not pair up (the gem raises).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed OAuth Authorization header")]
pub struct MalformedHeader;

/// A request as the server sees it, for [`verify`].
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Request method, any case.
    pub method: &'a str,
    /// `scheme://authority/path[?query]`, as the server rebuilds it; the query is parsed here.
    pub url: &'a str,
    /// The raw `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// Decoded form-body parameters in body order; empty unless the body is urlencoded.
    pub form: &'a [(String, String)],
}

/// RFC 3986 percent-encoding of the unreserved set, as OAuth requires.
pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, RESERVED).to_string()
}

/// `Authorization: OAuth …` value for a two-legged HMAC-SHA1 request with a fresh nonce and
/// timestamp. `url` is the full URL the server will rebuild (its query is signed); `form`
/// holds the urlencoded body fields, which are signed too.
pub fn authorization_header(
    method: &str,
    url: &str,
    form: &[(String, String)],
    consumer_key: &str,
    consumer_secret: &str,
) -> String {
    header_from_params(&fresh_params(
        method,
        url,
        form,
        consumer_key,
        consumer_secret,
    ))
}

/// The `oauth_*` parameters (signature included) for a request, with caller-chosen nonce and
/// timestamp; put them in a header ([`header_from_params`]), the query string or the body.
pub fn sign(
    method: &str,
    url: &str,
    form: &[(String, String)],
    consumer_key: &str,
    consumer_secret: &str,
    nonce: &str,
    timestamp: u64,
) -> Vec<(String, String)> {
    let mut oauth = vec![
        ("oauth_consumer_key".to_string(), consumer_key.to_string()),
        ("oauth_nonce".to_string(), nonce.to_string()),
        (
            "oauth_signature_method".to_string(),
            "HMAC-SHA1".to_string(),
        ),
        ("oauth_timestamp".to_string(), timestamp.to_string()),
        ("oauth_version".to_string(), "1.0".to_string()),
    ];
    let (base_url, query) = split_url(url);
    let mut all: Vec<(String, String)> = parse_pairs(query, &['&']);
    all.extend(form.iter().cloned());
    all.extend(oauth.iter().cloned());
    let base = signature_base_string(method, &base_url, &all);
    oauth.push((
        "oauth_signature".to_string(),
        hmac_sha1(&base, consumer_secret, ""),
    ));
    oauth
}

/// Fresh oauth params for query or body placement (fresh nonce and timestamp).
pub fn fresh_params(
    method: &str,
    url: &str,
    form: &[(String, String)],
    consumer_key: &str,
    consumer_secret: &str,
) -> Vec<(String, String)> {
    sign(
        method,
        url,
        form,
        consumer_key,
        consumer_secret,
        &fresh_nonce(),
        now(),
    )
}

/// Formats `oauth_*` pairs as an `Authorization` header value.
pub fn header_from_params(params: &[(String, String)]) -> String {
    let fields: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", percent_encode(k), percent_encode(v)))
        .collect();
    format!("OAuth {}", fields.join(", "))
}

/// RFC 5849 §3.4.1: `METHOD&enc(base_url)&enc(sorted enc(k)=enc(v) joined by &)`, where
/// `base_url` is already normalised (see [`normalized_url`]) and `params` are decoded pairs
/// (duplicates allowed; sorted by encoded name, then encoded value).
pub fn signature_base_string(method: &str, base_url: &str, params: &[(String, String)]) -> String {
    let mut enc: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "oauth_signature")
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    enc.sort();
    let joined: Vec<String> = enc.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}&{}&{}",
        percent_encode(&method.to_ascii_uppercase()),
        percent_encode(base_url),
        percent_encode(&joined.join("&"))
    )
}

/// `base64(HMAC-SHA1(enc(consumer_secret)&enc(token_secret), base))`.
pub fn hmac_sha1(base: &str, consumer_secret: &str, token_secret: &str) -> String {
    let key = format!(
        "{}&{}",
        percent_encode(consumer_secret),
        percent_encode(token_secret)
    );
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha1>::new_from_slice(key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(base.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Normalised base URL of `url` (RFC 5849 §3.4.1.2): lower-case scheme and host, the port
/// only when not the scheme's default, the path (`/` when empty), no query or fragment.
pub fn normalized_url(url: &str) -> String {
    split_url(url).0
}

/// Parses an `Authorization` header the way the server's `oauth` gem does: `Ok(None)` unless it
/// starts with `OAuth ` (case-sensitive); otherwise split on `,`, `=` and `&`, each piece
/// trimmed, percent-decoded (a `+` stays a `+`) and stripped of surrounding quotes, paired up
/// (last duplicate wins) and all but `oauth_*` names dropped. An odd piece count is malformed.
pub fn parse_authorization_header(
    value: &str,
) -> Result<Option<Vec<(String, String)>>, MalformedHeader> {
    let Some(rest) = value.strip_prefix("OAuth ") else {
        return Ok(None);
    };
    let pieces: Vec<String> = rest
        .split([',', '=', '&'])
        .map(|p| {
            let decoded = percent_decode_str(p.trim())
                .decode_utf8_lossy()
                .into_owned();
            match decoded.strip_prefix('"').and_then(|d| d.strip_suffix('"')) {
                Some(inner) => inner.to_string(),
                None => decoded,
            }
        })
        .collect();
    if !pieces.len().is_multiple_of(2) {
        return Err(MalformedHeader);
    }
    let mut map: Vec<(String, String)> = Vec::new();
    for pair in pieces.chunks(2) {
        let (k, v) = (pair[0].clone(), pair[1].clone());
        if !k.starts_with("oauth_") {
            continue;
        }
        map.retain(|(existing, _)| existing != &k);
        map.push((k, v));
    }
    Ok(Some(map))
}

/// Verifies a request as the server does: parameters merged body ← query ← header (a later
/// source and a later duplicate win), secret from `lookup` (an unknown consumer key gets the
/// empty secret, as on the real server), checked once with every parameter and once without
/// [`LEGACY_UNSIGNED`]. No nonce or timestamp check is made (the server makes none).
pub fn verify(req: &Incoming<'_>, lookup: impl Fn(&str) -> Option<String>) -> Verdict {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.form {
        params.insert(k.clone(), v.clone());
    }
    let (base_url, query) = split_url(req.url);
    for (k, v) in parse_pairs(query, &['&', ';']) {
        params.insert(k, v);
    }
    if let Some(header) = req.authorization {
        match parse_authorization_header(header) {
            Ok(Some(pairs)) => params.extend(pairs),
            Ok(None) => {}
            Err(MalformedHeader) => return Verdict::NoOAuth,
        }
    }
    let method = params
        .get("oauth_signature_method")
        .map(|m| m.to_ascii_lowercase());
    let (Some(method), Some(signature), Some(key)) = (
        method,
        params.get("oauth_signature"),
        params.get("oauth_consumer_key"),
    ) else {
        return Verdict::NoOAuth;
    };
    let secret = lookup(key).unwrap_or_default();
    let ok = match method.as_str() {
        "hmac-sha1" => {
            let expected = ruby_decode64(signature);
            let pass = |skip: &[&str]| -> bool {
                let kept: Vec<(String, String)> = params
                    .iter()
                    .filter(|(k, _)| k.as_str() != "oauth_signature" && !skip.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let base = ruby_base_string(req.method, &base_url, &kept);
                ruby_decode64(&hmac_sha1(&base, &secret, "")) == expected
            };
            pass(&[]) || pass(&LEGACY_UNSIGNED)
        }
        // The gem's PLAINTEXT signature is the escaped consumer and token secrets joined by `&`.
        "plaintext" => *signature == format!("{}&", percent_encode(&secret)),
        _ => return Verdict::NoOAuth,
    };
    if ok {
        Verdict::Ok
    } else {
        Verdict::BadSignature
    }
}

/// The gem's base string: keys are already unique and sorted by their raw bytes.
fn ruby_base_string(method: &str, base_url: &str, sorted: &[(String, String)]) -> String {
    let joined: Vec<String> = sorted
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    format!(
        "{}&{}&{}",
        percent_encode(&method.to_ascii_uppercase()),
        percent_encode(base_url),
        percent_encode(&joined.join("&"))
    )
}

/// Ruby's lenient `Base64.decode64`, as the server's oauth gem compares signatures with it.
pub fn ruby_decode64(s: &str) -> Vec<u8> {
    crate::capture::audrey_data::ruby_decode64(s.as_bytes())
}

/// Splits `scheme://authority/path?query#frag` into (normalised base URL, raw query).
fn split_url(url: &str) -> (String, &str) {
    let url = url.split('#').next().unwrap_or("");
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("http".to_string(), url),
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let authority = authority.to_ascii_lowercase();
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority.as_str(), None),
    };
    let default = match scheme.as_str() {
        "https" => "443",
        _ => "80",
    };
    let port = match port {
        Some(p) if !p.is_empty() && p != default => format!(":{p}"),
        _ => String::new(),
    };
    let path = if path.is_empty() { "/" } else { path };
    (format!("{scheme}://{host}{port}{path}"), query)
}

/// Splits a query or urlencoded body on `seps` and decodes `+` and `%XX` (invalid escapes are
/// kept literally); a name without `=` gets the empty value, empty pieces are skipped.
pub fn parse_pairs(s: &str, seps: &[char]) -> Vec<(String, String)> {
    s.split(seps)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn fresh_nonce() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

fn now() -> u64 {
    crate::change::now_ms() / 1000
}

#[cfg(test)]
mod tests;
