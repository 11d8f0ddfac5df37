//! The bar format of `PUT /params` bodies: `|name&BASE64(value)|name2&BASE64(value2)|`.
//!
//! Owns parsing (and, for tests and benches, encoding) of the `audrey_data` form value.
//! Pure: no I/O, and it never decides what a change means beyond the pairs it carries.
//!
//! What the server stores from a body (config_handler.rb, `parse_audrey_data`) is mirrored
//! exactly, so `values` is what the server applied:
//! - `data.split("|")`, empty pieces skipped; each piece `k, v = piece.split("&")`, so the
//!   value is the text between the first and second `&` (Ruby drops trailing empty fields:
//!   `name&` and `&` carry no value and are skipped, `name&&x` is `name` = empty);
//! - values are decoded with Ruby's lenient `Base64.decode64`: characters outside the
//!   alphabet are skipped, decoding stops at a `=` in the third or fourth place of a group, a
//!   trailing partial group yields what it can, and nothing is ever an error;
//! - a name repeated keeps its first position and its last value (Ruby `Hash#merge`);
//! - a body starting with `||` reports service return codes instead of parameters.
//!
//! Decoded values that are not UTF-8 are kept lossily (U+FFFD), as the change model says; the
//! replay sends the raw `audrey_data` verbatim, so nothing is lost on the wire.
//!
//! Exactly as lenient as the server: a body that does not start with `|` still splits on
//! bars, and a piece without `&` carries no value and is skipped. The server answers 200/202
//! to such bodies (and records the caller's IP), so the sidecar captures them too: a change a
//! guest was told succeeded must reach every site. Parsing therefore never fails.

use std::collections::HashMap;

use base64::Engine;

/// A parsed `audrey_data` value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AudreyData {
    /// The body started with `||`: the pairs are service return codes.
    pub return_codes: bool,
    /// Decoded `name -> value` pairs, first-seen order, last value wins.
    pub values: Vec<(String, String)>,
}

/// Parses an `audrey_data` form value. The empty string is valid and reports nothing.
pub fn parse(data: &str) -> AudreyData {
    let mut out = AudreyData {
        return_codes: data.starts_with("||"),
        values: Vec::new(),
    };
    let mut position: HashMap<&str, usize> = HashMap::new();
    for piece in data.split('|').filter(|p| !p.is_empty()) {
        let Some((name, value)) = ruby_pair(piece) else {
            continue;
        };
        let value = String::from_utf8_lossy(&ruby_decode64(value.as_bytes())).into_owned();
        match position.get(name) {
            Some(&at) => out.values[at].1 = value,
            None => {
                position.insert(name, out.values.len());
                out.values.push((name.to_owned(), value));
            }
        }
    }
    out
}

/// The raw `name&value` piece the server stores for each name of `data`, in first-seen order,
/// the last piece of a repeated name winning (as [`parse`] decides). Replaying a subset of
/// these pieces with [`join`] makes the server store exactly those names, with the same bytes.
pub fn pieces(data: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for piece in data.split('|').filter(|p| !p.is_empty()) {
        let Some((name, _)) = ruby_pair(piece) else {
            continue;
        };
        let kept = piece.to_owned();
        match position.get(name) {
            Some(&at) => out[at].1 = kept,
            None => {
                position.insert(name, out.len());
                out.push((name.to_owned(), kept));
            }
        }
    }
    out
}

/// An `audrey_data` value made of raw pieces (see [`pieces`]): `|a&..|b&..|`, or
/// `||a&..|` for service return codes. No pieces give the first empty report `|&|`
/// (a return-code report needs at least one: the server answers 500 to an empty one).
pub fn join<'a>(pieces: impl IntoIterator<Item = &'a str>, return_codes: bool) -> String {
    let joined: Vec<&str> = pieces.into_iter().collect();
    match (return_codes, joined.is_empty()) {
        (_, true) => "|&|".to_owned(),
        (false, false) => format!("|{}|", joined.join("|")),
        (true, false) => format!("||{}|", joined.join("|")),
    }
}

/// Encodes pairs in the bar format (standard base64, padded), as the guest agent does.
/// No pairs encode as the first empty report `|&|` (or `||` for return codes).
/// Names must not contain `|` or `&`: the format has no escaping.
pub fn encode(values: &[(String, String)], return_codes: bool) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let pairs: Vec<String> = values
        .iter()
        .map(|(n, v)| format!("{n}&{}", b64.encode(v.as_bytes())))
        .collect();
    match (return_codes, pairs.is_empty()) {
        (false, true) => "|&|".to_owned(),
        (false, false) => format!("|{}|", pairs.join("|")),
        (true, true) => "||".to_owned(),
        (true, false) => format!("||{}|", pairs.join("|")),
    }
}

/// `k, v = piece.split("&")` in Ruby: `None` when `v` would be `nil`, i.e. when every
/// field after the first `&` is empty (Ruby's `split` drops trailing empty fields).
fn ruby_pair(piece: &str) -> Option<(&str, &str)> {
    let (name, rest) = piece.split_once('&')?;
    if rest.bytes().all(|b| b == b'&') {
        return None;
    }
    Some((name, rest.split('&').next().unwrap_or_default()))
}

/// Ruby's `Base64.decode64` (`unpack("m")`): lenient, never fails.
pub fn ruby_decode64(input: &[u8]) -> Vec<u8> {
    fn sextet(b: u8) -> Option<u32> {
        match b {
            b'A'..=b'Z' => Some(u32::from(b - b'A')),
            b'a'..=b'z' => Some(u32::from(b - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(b - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    let mut group = [0u32; 4];
    let mut have = 0usize;
    for &b in input {
        match sextet(b) {
            Some(v) => {
                group[have] = v;
                have += 1;
                if have == 4 {
                    let n = group[0] << 18 | group[1] << 12 | group[2] << 6 | group[3];
                    out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                    have = 0;
                }
            }
            // A `=` ends decoding only in the third or fourth place of a group.
            None if b == b'=' && have >= 2 => break,
            None => {}
        }
    }
    if have >= 2 {
        out.push((group[0] << 2 | group[1] >> 4) as u8);
    }
    if have == 3 {
        out.push((group[1] << 4 | group[2] >> 2) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_rejoined_store_what_the_server_would() {
        let data = "|a&QQ==|b&Qg==x&y|a&Qw==|skip&|c&&x|";
        let p = pieces(data);
        let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(p[0].1, "a&Qw==");
        // The subset, parsed again, is exactly those names with the values of the whole.
        let whole = parse(data).values;
        let sub = parse(&join(p.iter().skip(1).map(|(_, x)| x.as_str()), false)).values;
        assert_eq!(sub, whole[1..].to_vec());
        let codes = "||svc&MA==|";
        let p = pieces(codes);
        assert_eq!(join(p.iter().map(|(_, x)| x.as_str()), true), codes);
        assert_eq!(join([], true), "|&|");
        assert_eq!(join([], false), "|&|");
    }

    type Pairs = Vec<(String, String)>;
    /// `(data, return_codes, expected pairs)`.
    type Case = (&'static str, bool, &'static [(&'static str, &'static str)]);

    fn pairs(p: &[(&str, &str)]) -> Pairs {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn parse_table() {
        let cases: Vec<Case> = vec![
            ("", false, &[]),
            ("|&|", false, &[]),
            ("||", true, &[]),
            ("|", false, &[]),
            (
                "|ipaddress&MTAuMC4wLjU=|",
                false,
                &[("ipaddress", "10.0.0.5")],
            ),
            (
                "|ipaddress&MTAuMC4wLjU=|virtual&eGVu|",
                false,
                &[("ipaddress", "10.0.0.5"), ("virtual", "xen")],
            ),
            ("||db_svc&MA==|", true, &[("db_svc", "0")]),
            (
                "||db_svc&MA==|web_svc&MQ==|",
                true,
                &[("db_svc", "0"), ("web_svc", "1")],
            ),
            // No trailing bar (truncated): the server stores what it got.
            (
                "|ipaddress&MTAuMC4wLjU=",
                false,
                &[("ipaddress", "10.0.0.5")],
            ),
            ("|ipaddress&MTAuMC4w", false, &[("ipaddress", "10.0.0")]),
            // Empty values carry nothing; `name&&x` is an empty value.
            ("|ipaddress&|", false, &[]),
            ("|ipaddress&&|", false, &[]),
            ("|a&&eA==|", false, &[("a", "")]),
            ("|a&eA==&junk|", false, &[("a", "x")]),
            ("|&eA==|", false, &[("", "x")]),
            ("|&&&|", false, &[]),
            ("|a&eA==||b&eQ==|", false, &[("a", "x"), ("b", "y")]),
            // Repeats: first position, last value.
            ("|a&eA==|b&eQ==|a&eg==|", false, &[("a", "z"), ("b", "y")]),
            // Lenient base64.
            ("|a&MTAuMC4wLjU|", false, &[("a", "10.0.0.5")]),
            ("|a&MT Au\nMC4w*LjU=|", false, &[("a", "10.0.0.5")]),
            ("|a&!!!|", false, &[("a", "")]),
            ("|a&Q|", false, &[("a", "")]),
            ("|a&=QQ==|", false, &[("a", "A")]),
            ("|a&QQ==QUJD|", false, &[("a", "A")]),
            ("|a&/w==|", false, &[("a", "\u{FFFD}")]),
            ("|na\u{e9}me&w6k=|", false, &[("na\u{e9}me", "\u{e9}")]),
        ];
        for (data, codes, want) in cases {
            let got = parse(data);
            assert_eq!(
                got,
                AudreyData {
                    return_codes: codes,
                    values: pairs(want)
                },
                "{data:?}"
            );
        }
    }

    #[test]
    fn lenient_like_the_server() {
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            parse("ipaddress&MTAu|").values,
            pairs(&[("ipaddress", "10.")])
        );
        assert_eq!(parse("|ipaddress|").values, pairs(&[]));
        assert_eq!(parse("|a&MA==|oops|").values, pairs(&[("a", "0")]));
        assert!(parse("||db_svc|").return_codes);
        assert!(parse(&"x".repeat(1_000_000)).values.is_empty());
    }

    #[test]
    fn ruby_decode64_matches_ruby() {
        // Expected values worked out by hand from the lenient branch of Ruby's pack.c.
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"MA==", b"0"),
            (b"YWJj", b"abc"),
            (b"YWJjZA", b"abcd"),
            (b"YWJjZGU", b"abcde"),
            (b"YWJjZA=", b"abcd"),
            (b"Y", b""),
            (b"YW=Jj", b"a"),
            (b"YWJ=j", b"ab"),
            (b"==YWJj", b"abc"),
            (b"Y\xffW\x00Jj", b"abc"),
            (b"YW Jj\r\n", b"abc"),
            (b"-_-_", b""),
        ];
        for (input, want) in cases {
            assert_eq!(
                ruby_decode64(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// A line-by-line port of the lenient branch of `unpack("m")` in Ruby's pack.c
    /// (reading past the end sees the string's NUL terminator).
    #[allow(unused_assignments)] // kept literal: the C resets all four each round
    fn pack_c_port(input: &[u8]) -> Vec<u8> {
        let send = input.len();
        let at = |i: usize| input.get(i).copied().unwrap_or(0);
        let tab = |i: usize| -> i32 {
            let c = at(i);
            match c {
                b'A'..=b'Z' => i32::from(c - b'A'),
                b'a'..=b'z' => i32::from(c - b'a') + 26,
                b'0'..=b'9' => i32::from(c - b'0') + 52,
                b'+' => 62,
                b'/' => 63,
                _ => -1,
            }
        };
        let mut out = Vec::new();
        let (mut a, mut b, mut c, mut d);
        (a, b, c) = (-1, -1, -1);
        let mut s = 0usize;
        while s < send {
            (a, b, c, d) = (-1, -1, -1, -1);
            loop {
                a = tab(s);
                if !(a == -1 && s < send) {
                    break;
                }
                s += 1;
            }
            if s >= send {
                break;
            }
            s += 1;
            loop {
                b = tab(s);
                if !(b == -1 && s < send) {
                    break;
                }
                s += 1;
            }
            if s >= send {
                break;
            }
            s += 1;
            loop {
                c = tab(s);
                if !(c == -1 && s < send) || at(s) == b'=' {
                    break;
                }
                s += 1;
            }
            if at(s) == b'=' || s >= send {
                break;
            }
            s += 1;
            loop {
                d = tab(s);
                if !(d == -1 && s < send) || at(s) == b'=' {
                    break;
                }
                s += 1;
            }
            if at(s) == b'=' || s >= send {
                break;
            }
            s += 1;
            out.extend_from_slice(&[
                (a << 2 | b >> 4) as u8,
                (b << 4 | c >> 2) as u8,
                (c << 6 | d) as u8,
            ]);
            a = -1;
        }
        if a != -1 && b != -1 {
            out.push((a << 2 | b >> 4) as u8);
            if c != -1 {
                out.push((b << 4 | c >> 2) as u8);
            }
        }
        out
    }

    #[test]
    fn ruby_decode64_agrees_with_a_port_of_pack_c() {
        use rand::{Rng, SeedableRng};
        let alphabet = b"AQgw/+9z= \n\xff-";
        let mut rng = rand::rngs::StdRng::seed_from_u64(64);
        for _ in 0..20_000 {
            let len = rng.random_range(0..14);
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            assert_eq!(
                ruby_decode64(&input),
                pack_c_port(&input),
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn encode_round_trips() {
        let cases: Vec<(Pairs, bool, &str)> = vec![
            (vec![], false, "|&|"),
            (vec![], true, "||"),
            (
                pairs(&[("ipaddress", "10.0.0.5")]),
                false,
                "|ipaddress&MTAuMC4wLjU=|",
            ),
            (pairs(&[("db_svc", "0")]), true, "||db_svc&MA==|"),
            (
                pairs(&[("a", "x"), ("b", "\u{1F600} ok")]),
                false,
                "|a&eA==|b&8J+YgCBvaw==|",
            ),
        ];
        for (values, codes, want) in cases {
            let text = encode(&values, codes);
            assert_eq!(text, want);
            let back = parse(&text);
            assert_eq!(
                back,
                AudreyData {
                    return_codes: codes,
                    values: values.clone()
                }
            );
        }
    }

    #[test]
    fn huge_input_is_linear() {
        let pair = ("ipaddress".to_string(), "10.0.0.5".to_string());
        let many: Vec<_> = (0..50_000)
            .map(|i| (format!("p{i}"), pair.1.clone()))
            .collect();
        let text = encode(&many, false);
        let parsed = parse(&text);
        assert_eq!(parsed.values.len(), 50_000);
        let big_value = "A".repeat(4_000_000);
        let parsed = parse(&format!("|x&{big_value}|"));
        assert_eq!(parsed.values[0].1.len(), 3_000_000);
    }
}
