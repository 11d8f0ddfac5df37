//! The certificate and key file checks of `check`: every certificate in a PEM file is parsed
//! (x509-parser) and its validity dates compared with now; a key file must be readable and
//! hold a private key. It must not log or print key material: paths and dates only.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use x509_parser::pem::Pem;

use super::{line, Line, EXPIRY_WARNING_DAYS};

const DAY: i64 = 86_400;

/// `OK` with the earliest expiry (a warning under [`EXPIRY_WARNING_DAYS`] days left), `FAIL`
/// when unreadable, not PEM certificates, expired, or not yet valid.
pub(super) fn certificate(key: &str, path: &Path) -> Line {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    certificate_at(key, path, now)
}

/// [`certificate`] as of `now` (Unix seconds).
pub(super) fn certificate_at(key: &str, path: &Path, now: i64) -> Line {
    let what = format!("{key} {}", path.display());
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => return line(false, what, format!("cannot read: {e}")),
    };
    let mut earliest: Option<(i64, String, String)> = None;
    let mut count = 0usize;
    for pem in Pem::iter_from_buffer(&data) {
        let pem = match pem {
            Ok(p) => p,
            Err(e) => return line(false, what, format!("not valid PEM: {e}")),
        };
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let cert = match pem.parse_x509() {
            Ok(c) => c,
            Err(e) => {
                return line(
                    false,
                    what,
                    format!("certificate #{} does not parse: {e}", count + 1),
                )
            }
        };
        count += 1;
        let validity = cert.validity();
        let subject = cert.subject().to_string();
        if now < validity.not_before.timestamp() {
            return line(
                false,
                what,
                format!("{subject:?} is not valid before {}", validity.not_before),
            );
        }
        let not_after = validity.not_after.timestamp();
        if now > not_after {
            return line(
                false,
                what,
                format!("{subject:?} expired on {}", validity.not_after),
            );
        }
        if earliest.as_ref().is_none_or(|(t, _, _)| not_after < *t) {
            earliest = Some((not_after, validity.not_after.to_string(), subject));
        }
    }
    let Some((not_after, date, subject)) = earliest else {
        return line(false, what, "holds no PEM certificate");
    };
    let days = (not_after - now) / DAY;
    let plural = if count == 1 { "" } else { "s" };
    let mut detail =
        format!("{count} certificate{plural}, {subject:?} expires {date} (in {days} days)");
    if days < EXPIRY_WARNING_DAYS {
        detail.push_str(&format!(
            " WARNING: under {EXPIRY_WARNING_DAYS} days left, renew it"
        ));
    }
    line(true, what, detail)
}

/// `OK` when the file is readable and holds a private key (PKCS#8, PKCS#1 or SEC1).
pub(super) fn key(key: &str, path: &Path) -> Line {
    let what = format!("{key} {}", path.display());
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => return line(false, what, format!("cannot read: {e}")),
    };
    match PrivateKeyDer::from_pem_slice(&data) {
        Ok(_) => line(true, what, "readable, holds a private key"),
        Err(e) => line(false, what, format!("holds no usable PEM private key: {e}")),
    }
}
