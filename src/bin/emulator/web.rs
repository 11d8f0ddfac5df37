//! The request and response model of the emulator, and the bits of Rack and Sinatra 1.x
//! behaviour the routes rely on: header lookup as a Rack env, form and multipart parsing,
//! `params` merging, `provides` content negotiation, and Sinatra's stock 404/500 answers.
//!
//! It knows no route and no storage; it must not decide any status itself.
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

pub const HTML: &str = "text/html;charset=utf-8";
pub const TEXT: &str = "text/plain;charset=utf-8";

/// One request, fully read, as the application sees it.
#[derive(Debug, Clone)]
pub struct Req {
    /// The method as received (HEAD is handled as GET by the router).
    pub method: String,
    /// Raw (undecoded) path, Rack's `PATH_INFO`.
    pub path: String,
    /// Raw query string without `?`, empty when absent.
    pub query: String,
    /// Header names lower-cased, values lossily decoded, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// TCP peer, Rack's `REMOTE_ADDR`.
    pub peer: IpAddr,
    /// Local address, for Rack's `SERVER_NAME`/`SERVER_PORT` when `Host` is missing.
    pub local: SocketAddr,
}

impl Req {
    /// Rack env lookup of `HTTP_<NAME>`: a header matches when its name, upper-cased with `-`
    /// turned into `_`, equals `name` the same way (thin folds `X_Forwarded_Proto` and
    /// `X-Forwarded-Proto` together); repeated headers are joined with `, ` as thin does.
    pub fn env(&self, name: &str) -> Option<String> {
        let key = rack_key(name);
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| rack_key(n) == key)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    /// Rack's `media_type`: the Content-Type before any `;`, trimmed and lower-cased.
    pub fn media_type(&self) -> Option<String> {
        let ct = self.env("content-type")?;
        let mt = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        (!mt.is_empty()).then_some(mt)
    }
}

fn rack_key(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// An answer; `Content-Length` and connection headers are added by the server.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Resp {
            status,
            headers: vec![("content-type", content_type.to_string())],
            body: body.into(),
        }
    }

    pub fn html(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Resp::new(status, HTML, body)
    }

    /// Sinatra's answer when no route matches.
    pub fn route_missing() -> Self {
        let mut r = Resp::html(404, "<h1>Not Found</h1>");
        r.headers.push(("x-cascade", "pass".to_string()));
        r
    }

    /// Sinatra's production answer to an exception raised in a route; the content type
    /// already chosen (by `provides`) is kept, as Sinatra keeps it.
    pub fn server_error(content_type: &str) -> Self {
        Resp::new(500, content_type, "<h1>Internal Server Error</h1>")
    }
}

/// A form field: text, or an uploaded multipart file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormValue {
    Text(String),
    File { filename: String, bytes: Vec<u8> },
}

/// Sinatra's `params` (query merged with the parsed body, the body winning, the last
/// duplicate winning) and the body pairs the OAuth gem signs.
#[derive(Debug, Clone, Default)]
pub struct Params {
    query: Vec<(String, String)>,
    body: Vec<(String, FormValue)>,
    /// Decoded urlencoded body fields, only when the Content-Type says urlencoded.
    pub oauth_form: Vec<(String, String)>,
}

impl Params {
    /// Parses as Rack 2.2 does: the query on `&` and `;`; the body when it is urlencoded or
    /// multipart/form-data, or a POST without Content-Type. Nested `a[b]` names are kept
    /// literally (Rack would build nested hashes; no Audrey client sends them).
    pub fn parse(req: &Req) -> Params {
        let query = audrey_federation::oauth::parse_pairs(&req.query, &['&', ';']);
        let media = req.media_type();
        let body_text = String::from_utf8_lossy(&req.body);
        let mut oauth_form = Vec::new();
        let body = match media.as_deref() {
            Some("application/x-www-form-urlencoded") => {
                oauth_form = audrey_federation::oauth::parse_pairs(&body_text, &['&']);
                oauth_form
                    .iter()
                    .map(|(k, v)| (k.clone(), FormValue::Text(v.clone())))
                    .collect()
            }
            None if req.method == "POST" => {
                audrey_federation::oauth::parse_pairs(&body_text, &['&'])
                    .into_iter()
                    .map(|(k, v)| (k, FormValue::Text(v)))
                    .collect()
            }
            Some("multipart/form-data") => {
                let ct = req.env("content-type").unwrap_or_default();
                multipart(&ct, &req.body)
            }
            _ => Vec::new(),
        };
        Params {
            query,
            body,
            oauth_form,
        }
    }

    pub fn get(&self, name: &str) -> Option<FormValue> {
        if let Some((_, v)) = self.body.iter().rev().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| FormValue::Text(v.clone()))
    }

    /// The field as text, as Ruby would see a string parameter.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            FormValue::Text(t) => Some(t),
            FormValue::File { bytes, .. } => Some(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }
}

/// Minimal multipart/form-data parser: parts named by `Content-Disposition`; a part with a
/// `filename` is a file. Malformed input yields the parts parsed so far.
fn multipart(content_type: &str, body: &[u8]) -> Vec<(String, FormValue)> {
    let Some(boundary) = content_type.split(';').find_map(|p| {
        let p = p.trim();
        p.strip_prefix("boundary=")
            .map(|b| b.trim_matches('"').to_string())
    }) else {
        return Vec::new();
    };
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut rest = body;
    let Some(start) = find(rest, delim.as_bytes()) else {
        return out;
    };
    rest = &rest[start + delim.len()..];
    for _ in 0..10_000 {
        if rest.starts_with(b"--") {
            break;
        }
        let rest_after_crlf = rest.strip_prefix(b"\r\n").unwrap_or(rest);
        let Some(head_end) = find(rest_after_crlf, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest_after_crlf[..head_end]).into_owned();
        let content = &rest_after_crlf[head_end + 4..];
        let next_delim = format!("\r\n{delim}");
        let Some(end) = find(content, next_delim.as_bytes()) else {
            break;
        };
        let data = content[..end].to_vec();
        rest = &content[end + next_delim.len()..];
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .unwrap_or("");
        let Some(name) = disposition_param(disposition, "name") else {
            continue;
        };
        let value = match disposition_param(disposition, "filename") {
            Some(filename) if !filename.is_empty() => FormValue::File {
                filename,
                bytes: data,
            },
            Some(_) => continue,
            None => FormValue::Text(String::from_utf8_lossy(&data).into_owned()),
        };
        out.push((name, value));
    }
    out
}

fn disposition_param(header: &str, name: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sinatra's `provides` condition: the Accept entries (a missing or empty header means
/// `*/*`) ordered by quality, then fewer wildcards, then more parameters; the first entry
/// matching one of `types` (glob match, as `File.fnmatch`) picks it. `None`: route skipped.
pub fn preferred_type(accept: Option<&str>, types: &[&'static str]) -> Option<&'static str> {
    let accept = accept
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .unwrap_or("*/*");
    let mut entries: Vec<(String, (u32, usize, i64))> = accept
        .split(',')
        .map(|entry| {
            let compact: String = entry.chars().filter(|c| *c != ' ').collect();
            let mut parts = compact.split(';');
            let media = parts.next().unwrap_or("").to_string();
            let mut quality = 0u32;
            let mut others = 0i64;
            for p in parts {
                match p.strip_prefix("q=") {
                    Some(q) => {
                        let q: f64 = q.parse().unwrap_or(0.0);
                        quality = ((1.0 - q) * 1000.0).round().max(0.0) as u32;
                    }
                    None => others += 1,
                }
            }
            let stars = media.matches('*').count();
            (media, (quality, stars, 1 - others))
        })
        .collect();
    entries.sort_by_key(|(_, rank)| *rank);
    entries
        .iter()
        .find_map(|(pattern, _)| types.iter().find(|t| glob(pattern, t)).copied())
}

/// `File.fnmatch` without flags: `*` matches any run (slashes included), `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Sinatra's `content_type`: `text/*` and `application/xml` get `;charset=utf-8`.
pub fn with_charset(mime: &str) -> String {
    if mime.starts_with("text/") || mime == "application/xml" {
        format!("{mime};charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// Percent-decodes a route capture the way Sinatra does (`+` becomes a space).
pub fn decode_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Ruby's `String#to_i`: leading whitespace, a sign, digits with single underscores.
pub fn ruby_to_i(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut n: i64 = 0;
    let mut prev_underscore = true;
    for c in digits.chars() {
        match c {
            '0'..='9' => {
                n = n
                    .saturating_mul(10)
                    .saturating_add(i64::from(c as u8 - b'0'));
                prev_underscore = false;
            }
            '_' if !prev_underscore => prev_underscore = true,
            _ => break,
        }
    }
    if neg {
        -n
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_sinatra() {
        let version = ["text/plain", "application/xml", "text/xml"];
        assert_eq!(preferred_type(None, &version), Some("text/plain"));
        assert_eq!(
            preferred_type(Some("application/xml"), &version),
            Some("application/xml")
        );
        assert_eq!(preferred_type(Some("text/html"), &version), None);
        assert_eq!(
            preferred_type(Some("text/plain;q=0.5, application/xml"), &version),
            Some("application/xml")
        );
        assert_eq!(preferred_type(Some("text/*"), &version), Some("text/plain"));
    }

    #[test]
    fn to_i_like_ruby() {
        assert_eq!(ruby_to_i("2"), 2);
        assert_eq!(ruby_to_i(" 02abc"), 2);
        assert_eq!(ruby_to_i("1_0"), 10);
        assert_eq!(ruby_to_i("x1"), 0);
        assert_eq!(ruby_to_i("-1"), -1);
    }

    #[test]
    fn multipart_file_and_field() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--XX\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"f.tgz\"\r\n\r\nBIN\r\n--XX--\r\n";
        let parts = multipart("multipart/form-data; boundary=XX", body);
        assert_eq!(
            parts[0],
            ("a".to_string(), FormValue::Text("v".to_string()))
        );
        assert_eq!(
            parts[1],
            (
                "file".to_string(),
                FormValue::File {
                    filename: "f.tgz".into(),
                    bytes: b"BIN".to_vec()
                }
            )
        );
    }
}
