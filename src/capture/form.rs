//! One field of an `application/x-www-form-urlencoded` body, read the way the server reads it.
//!
//! Owns form-field lookup for capture. Pure: no I/O, no knowledge of what the field means.
//!
//! The server is Sinatra on Rack 2.2, so this follows Rack's form parser rather than the
//! WHATWG one where they differ, because what matters is the value the server acted on:
//! - pairs are split on `&`, and spaces right after a `&` are skipped; one trailing NUL
//!   byte of the body is dropped;
//! - key and value split at the first `=`; a pair without `=` has no value (Rack: `nil`);
//! - `+` is a space and `%XX` a byte; an invalid `%` sequence is kept literally (Rack
//!   answers 400 to those, so no change is captured from them anyway);
//! - Rack's bracket rules for names: `[name]` and `name]` are `name`; `name[x]` or
//!   `name[]` make the field structured, which the server cannot use as text (500), so the
//!   field is reported absent;
//! - **the last occurrence wins** (Rack assigns each pair in turn), not the first.
//!
//! Known limits: a field sent in the query string or a `multipart/form-data` body is also
//! seen by the server, but not by this function.

use std::borrow::Cow;

use percent_encoding::percent_decode;

/// The value of field `name`, decoded lossily as UTF-8; `None` when absent or without `=`.
pub fn field(body: &[u8], name: &str) -> Option<String> {
    field_bytes(body, name).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The value of field `name` as raw decoded bytes; `None` when absent or without `=`.
pub fn field_bytes(body: &[u8], name: &str) -> Option<Vec<u8>> {
    let body = body.strip_suffix(b"\0").unwrap_or(body);
    let mut found: Option<Vec<u8>> = None;
    for (i, pair) in body.split(|&b| b == b'&').enumerate() {
        let pair = if i == 0 {
            pair
        } else {
            trim_leading_spaces(pair)
        };
        let (raw_key, raw_value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], Some(&pair[eq + 1..])),
            None => (pair, None),
        };
        let key = unescape(raw_key);
        match rack_key(&key) {
            Some((k, scalar)) if k == name.as_bytes() => {
                found = if scalar {
                    raw_value.map(|v| unescape(v).into_owned())
                } else {
                    None
                };
            }
            _ => {}
        }
    }
    found
}

fn trim_leading_spaces(pair: &[u8]) -> &[u8] {
    let start = pair.iter().position(|&b| b != b' ').unwrap_or(pair.len());
    &pair[start..]
}

fn unescape(raw: &[u8]) -> Cow<'_, [u8]> {
    if raw.contains(&b'+') {
        let plus: Vec<u8> = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        Cow::Owned(percent_decode(&plus).collect())
    } else {
        percent_decode(raw).into()
    }
}

/// Rack's `\A[\[\]]*([^\[\]]+)\]*`: the name a key assigns to, and whether it is a plain
/// (scalar) assignment. `None` when the key names nothing.
fn rack_key(key: &[u8]) -> Option<(&[u8], bool)> {
    let is_bracket = |b: &u8| *b == b'[' || *b == b']';
    let start = key.iter().position(|b| !is_bracket(b))?;
    let rest = &key[start..];
    let len = rest.iter().position(is_bracket).unwrap_or(rest.len());
    let after = &rest[len..];
    let after = &after[after.iter().position(|&b| b != b']').unwrap_or(after.len())..];
    Some((&rest[..len], after.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_table() {
        let huge = format!("a=1&audrey_data={}", "x".repeat(2_000_000));
        let cases: Vec<(&[u8], &str, Option<&str>)> = vec![
            (
                b"audrey_data=%7Cipaddress%26MTAuMC4wLjU%3D%7C",
                "audrey_data",
                Some("|ipaddress&MTAuMC4wLjU=|"),
            ),
            (
                b"oauth_nonce=1&audrey_data=%7C%26%7C&oauth_signature=x",
                "audrey_data",
                Some("|&|"),
            ),
            (b"audrey_data=", "audrey_data", Some("")),
            (b"audrey_data", "audrey_data", None),
            (b"", "audrey_data", None),
            (b"other=1", "audrey_data", None),
            (b"audrey_datax=1", "audrey_data", None),
            (b"Audrey_data=1", "audrey_data", None),
            (b"a+b=c+d", "a b", Some("c d")),
            (b"x=a%2Bb", "x", Some("a+b")),
            (b"x=%zz%", "x", Some("%zz%")),
            (b"x=1=2", "x", Some("1=2")),
            (b"x=%C3%A9", "x", Some("é")),
            (b"x=\xC3\xA9", "x", Some("é")),
            (b"x=%FF", "x", Some("\u{FFFD}")),
            (b"%78=1", "x", Some("1")),
            // Last occurrence wins, like Rack; a later bare key clears the value.
            (b"x=1&x=2", "x", Some("2")),
            (b"x=1&x", "x", None),
            (b"x&x=3", "x", Some("3")),
            // Rack separators and brackets.
            (b"a=1&  x=2", "x", Some("2")),
            (b"  x=2", "x", None),
            (b"a=1;x=2", "x", None),
            (b"x=2\0", "x", Some("2")),
            (b"[x]=5", "x", Some("5")),
            (b"x]]=5", "x", Some("5")),
            (b"x[]=5", "x", None),
            (b"x[a]=5", "x", None),
            (b"x=1&x[a]=5", "x", None),
            (b"[]=5&&&=&", "x", None),
            (huge.as_bytes(), "audrey_data", Some(&huge[16..])),
        ];
        for (body, name, want) in cases {
            let got = field(body, name);
            assert_eq!(
                got.as_deref(),
                want,
                "{:.60}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn field_bytes_keeps_invalid_utf8() {
        assert_eq!(
            field_bytes(b"data=%FF%00a", "data"),
            Some(vec![0xFF, 0, b'a'])
        );
        assert_eq!(field_bytes(b"data=", "data"), Some(vec![]));
    }
}
