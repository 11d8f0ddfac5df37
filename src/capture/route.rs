//! Which route a request is, as the Config Server would route it.
//!
//! Owns the mapping from method and path to [`Route`] (the three changes capture cares about)
//! and to [`RouteClass`] (a coarse metric label). Pure: it must not read bodies or headers,
//! and it knows nothing about whether the upstream will accept the request.
//!
//! Matching follows the real server (Sinatra), not a stricter reading of the API:
//! - The query string is ignored (`?` and everything after it).
//! - Every segment is percent-decoded before it is compared or captured, because Sinatra
//!   matches literal words in either form and decodes path parameters: `/params/2/%41` is
//!   instance `A`. A segment that does not decode to UTF-8 makes the route `Other`.
//! - The API version is read the way the server's `version.to_i` reads it (leading blanks,
//!   a sign, digits with single `_` between them, then anything): `2`, `02` and `2x` are all
//!   version 2; only versions 1 and 2 capture, everything else is `Other` (the server answers 404).
//! - The id segment must be non-empty, and the segment count exact: `/params/2/U` only,
//!   `/params/2/U/x` and `/params/2/U/` are `Other`.
//! - An id that decodes to something the server would turn into a file-system path outside
//!   its instance folder (containing `/`, `\`, NUL, or equal to `.` or `..`) is `Other`: the
//!   request is still forwarded untouched, but such a change is never federated.

use http::Method;
use percent_encoding::percent_decode_str;

/// A request the sidecar captures as a change, or `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `PUT /params/:v/:uuid`: a guest reports its provided parameters.
    PutParams { version: u8, instance: String },
    /// `POST /configs/:v/:uuid`: Conductor registers an instance-config.
    PostConfigs { version: u8, instance: String },
    /// `DELETE /deployment/:v/:deployment`: Conductor deletes a deployment.
    DeleteDeployment { version: u8, deployment: String },
    /// Anything else: forwarded, never captured.
    Other,
}

impl Route {
    /// True for the routes that produce a change.
    pub fn is_capturing(&self) -> bool {
        !matches!(self, Route::Other)
    }
}

/// Coarse route family, for metric labels (bounded cardinality).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Params,
    Configs,
    Files,
    Other,
}

impl RouteClass {
    /// Stable label value: `params`, `configs`, `files` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Params => "params",
            RouteClass::Configs => "configs",
            RouteClass::Files => "files",
            RouteClass::Other => "other",
        }
    }
}

/// Classifies a request. `path` may carry a query string; it is ignored.
pub fn classify(method: &Method, path: &str) -> Route {
    let Some([word, version, id]) = three_segments(path) else {
        return Route::Other;
    };
    let (Some(word), Some(version), Some(id)) = (decode(word), decode(version), decode(id)) else {
        return Route::Other;
    };
    let Some(version) = api_version(&version) else {
        return Route::Other;
    };
    if !safe_id(&id) {
        return Route::Other;
    }
    match (method, word.as_str()) {
        (&Method::PUT, "params") => Route::PutParams {
            version,
            instance: id,
        },
        (&Method::POST, "configs") => Route::PostConfigs {
            version,
            instance: id,
        },
        (&Method::DELETE, "deployment") => Route::DeleteDeployment {
            version,
            deployment: id,
        },
        _ => Route::Other,
    }
}

/// The family of a path, from its first segment (decoded), whatever the method.
pub fn route_class(path: &str) -> RouteClass {
    let path = strip_query(path);
    let Some(rest) = path.strip_prefix('/') else {
        return RouteClass::Other;
    };
    let first = rest.split('/').next().unwrap_or_default();
    match decode(first).as_deref() {
        Some("params") => RouteClass::Params,
        Some("configs") => RouteClass::Configs,
        Some("files") => RouteClass::Files,
        _ => RouteClass::Other,
    }
}

fn strip_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// Exactly three non-empty raw segments after a leading `/`, none holding a `#`.
fn three_segments(path: &str) -> Option<[&str; 3]> {
    let rest = strip_query(path).strip_prefix('/')?;
    let mut it = rest.split('/');
    let segs = [it.next()?, it.next()?, it.next()?];
    if it.next().is_some() || segs.iter().any(|s| s.is_empty() || s.contains('#')) {
        return None;
    }
    Some(segs)
}

fn decode(segment: &str) -> Option<String> {
    percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

fn safe_id(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains(['/', '\\', '\0'])
}

/// The API version as Ruby's `String#to_i` reads it, when it is 1 or 2.
fn api_version(segment: &str) -> Option<u8> {
    let s = segment.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut value: u64 = 0;
    let mut after_digit = false;
    for b in digits.bytes() {
        match b {
            b'0'..=b'9' => {
                value = value.saturating_mul(10).saturating_add(u64::from(b - b'0'));
                after_digit = true;
            }
            b'_' if after_digit => after_digit = false,
            _ => break,
        }
    }
    match (negative, value) {
        (false, 1) => Some(1),
        (false, 2) => Some(2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: u8, id: &str) -> Route {
        Route::PutParams {
            version: v,
            instance: id.into(),
        }
    }
    fn post(v: u8, id: &str) -> Route {
        Route::PostConfigs {
            version: v,
            instance: id.into(),
        }
    }
    fn del(v: u8, id: &str) -> Route {
        Route::DeleteDeployment {
            version: v,
            deployment: id.into(),
        }
    }

    #[test]
    fn classify_table() {
        let long = format!("/params/2/{}", "u".repeat(100_000));
        let many = "/params/2/U".to_string() + &"/".repeat(10_000);
        let cases: Vec<(Method, &str, Route)> = vec![
            (Method::PUT, "/params/2/U", put(2, "U")),
            (Method::PUT, "/params/1/U", put(1, "U")),
            (Method::PUT, "/params/2/U?oauth_nonce=1&x=/a/b", put(2, "U")),
            (Method::PUT, "/params/2/U?", put(2, "U")),
            (Method::POST, "/configs/1/I1", post(1, "I1")),
            (Method::DELETE, "/deployment/1/D", del(1, "D")),
            (Method::DELETE, "/deployment/2/D?x", del(2, "D")),
            // Versions as the server's `to_i` reads them.
            (Method::PUT, "/params/02/U", put(2, "U")),
            (Method::PUT, "/params/2x/U", put(2, "U")),
            (Method::PUT, "/params/+1/U", put(1, "U")),
            (Method::PUT, "/params/%202/U", put(2, "U")),
            (Method::PUT, "/params/0_2/U", put(2, "U")),
            (Method::PUT, "/params/0/U", Route::Other),
            (Method::PUT, "/params/3/U", Route::Other),
            (Method::PUT, "/params/-1/U", Route::Other),
            (Method::PUT, "/params/12/U", Route::Other),
            (Method::PUT, "/params/1__2/U", put(1, "U")),
            (Method::PUT, "/params/_2/U", Route::Other),
            (Method::PUT, "/params/v2/U", Route::Other),
            (
                Method::PUT,
                "/params/99999999999999999999999/U",
                Route::Other,
            ),
            // Exact segment counts and non-empty segments.
            (Method::PUT, "/params/2/U/x", Route::Other),
            (Method::PUT, "/params/2/U/", Route::Other),
            (Method::PUT, "/params/2/", Route::Other),
            (Method::PUT, "/params/2", Route::Other),
            (Method::PUT, "/params//U", Route::Other),
            (Method::PUT, "//params/2/U", Route::Other),
            (Method::PUT, "params/2/U", Route::Other),
            (Method::PUT, "", Route::Other),
            (Method::PUT, "/", Route::Other),
            (Method::PUT, "?/params/2/U", Route::Other),
            (Method::PUT, &many, Route::Other),
            // Wrong method for the word.
            (Method::GET, "/params/2/U", Route::Other),
            (Method::POST, "/params/2/U", Route::Other),
            (Method::PUT, "/configs/2/U", Route::Other),
            (Method::GET, "/configs/2/U", Route::Other),
            (Method::DELETE, "/params/2/U", Route::Other),
            (Method::PUT, "/files/2/U", Route::Other),
            (Method::PUT, "/Params/2/U", Route::Other),
            // Percent-encoding: decoded like Sinatra does.
            (Method::PUT, "/%70arams/2/U", put(2, "U")),
            (Method::PUT, "/params/%32/U", put(2, "U")),
            (Method::PUT, "/params/2/%41b%20c", put(2, "Ab c")),
            (Method::PUT, "/params/2/a+b", put(2, "a+b")),
            (Method::PUT, "/params/2/%zz", put(2, "%zz")),
            (Method::PUT, "/params/2/%", put(2, "%")),
            (Method::PUT, "/params/2/%C3%A9", put(2, "é")),
            (Method::PUT, "/params/2/é", put(2, "é")),
            (Method::PUT, "/params/2/%FF", Route::Other),
            (Method::PUT, "/params/2/%2F", Route::Other),
            (Method::PUT, "/params/2/a%2Fb", Route::Other),
            (Method::PUT, "/params/2/%2E%2E", Route::Other),
            (Method::PUT, "/params/2/..", Route::Other),
            (Method::PUT, "/params/2/.", Route::Other),
            (Method::PUT, "/params/2/a%00", Route::Other),
            (Method::PUT, "/params/2/a%5Cb", Route::Other),
            (Method::PUT, "/params/2/a#b", Route::Other),
        ];
        for (method, path, want) in cases {
            assert_eq!(classify(&method, path), want, "{method} {path:.80}");
        }
        assert_eq!(classify(&Method::PUT, &long), put(2, &"u".repeat(100_000)));
    }

    #[test]
    fn route_class_table() {
        let cases = [
            ("/params/2/U", RouteClass::Params),
            ("/params", RouteClass::Params),
            ("/params?x=1", RouteClass::Params),
            ("/configs/1/U/svc", RouteClass::Configs),
            ("/files/2/U", RouteClass::Files),
            ("/%66iles/2/U", RouteClass::Files),
            ("/deployment/1/D", RouteClass::Other),
            ("/version", RouteClass::Other),
            ("/", RouteClass::Other),
            ("", RouteClass::Other),
            ("params/2/U", RouteClass::Other),
            ("/%FF/x", RouteClass::Other),
        ];
        for (path, want) in cases {
            assert_eq!(route_class(path), want, "{path}");
        }
        let labels: Vec<_> = [
            RouteClass::Params,
            RouteClass::Configs,
            RouteClass::Files,
            RouteClass::Other,
        ]
        .iter()
        .map(|c| c.as_str())
        .collect();
        assert_eq!(labels, ["params", "configs", "files", "other"]);
    }

    #[test]
    fn is_capturing() {
        assert!(put(2, "U").is_capturing());
        assert!(!Route::Other.is_capturing());
    }
}
