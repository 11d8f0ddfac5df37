//! Sealed secrets: a registration's OAuth secret and its instance-config XML (which holds the
//! secret too) cross the broker sealed with AES-256-GCM under a federation key, and only a
//! receiving sidecar opens them.
//!
//! Owns the key file (`amqp.seal_key_file`: `id:base64-of-32-bytes` lines, `#` comments; the
//! first key seals, every key opens, so a key is rotated by adding the new one first and
//! dropping the old one once nothing sealed under it is queued), the sealed text form
//! `sealed:v1:<key id>:<base64 of nonce | ciphertext | tag>` and the associated data that binds
//! a sealed value to its message and field (a sealed secret moved to another message or field
//! does not open). A transform on [`Change`] at the wire boundary: the publisher seals before
//! `wire::encode`, the subscriber opens after `wire::decode`. It must not log a key or an
//! opened value, nor know the body's JSON shape.

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::change::{Change, Event};

/// Prefix of a sealed value.
pub const SEALED_PREFIX: &str = "sealed:v1:";
const AAD_DOMAIN: &str = "audrey-federation seal v1";

/// Why a key file is unusable (at start) or a sealed value does not open (at receipt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("amqp.seal_key_file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("a sealed {field} names key {id:?}, which amqp.seal_key_file does not hold")]
    UnknownKey { field: &'static str, id: String },
    #[error("a sealed {field} arrived but this site has no amqp.seal_key_file")]
    NoKeys { field: &'static str },
    #[error(
        "the sealed {field} does not open (tampered, moved from another message, or another key)"
    )]
    Open { field: &'static str },
    #[error("cannot seal: {0}")]
    Seal(String),
}

/// The federation's sealing keys.
pub struct SealKeys {
    keys: Vec<(String, LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SealKeys").field("ids", &ids).finish()
    }
}

impl SealKeys {
    /// Reads `path`: one `id:base64key` per line (32-byte keys), `#` comments, blank lines.
    pub fn from_file(path: &Path) -> Result<SealKeys, SealError> {
        let bad = |reason: String| SealError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&text).map_err(bad)
    }

    /// Parses the key file's text (see [`SealKeys::from_file`]).
    pub fn parse(text: &str) -> Result<SealKeys, String> {
        let mut keys: Vec<(String, LessSafeKey)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, b64) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected id:base64key", n + 1))?;
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "line {}: a key id is ASCII letters, digits, '-' or '_'",
                    n + 1
                ));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(format!("line {}: key id {id:?} appears twice", n + 1));
            }
            let raw = B64
                .decode(b64.trim())
                .map_err(|e| format!("line {}: key {id:?} is not base64: {e}", n + 1))?;
            if raw.len() != 32 {
                return Err(format!(
                    "line {}: key {id:?} must be 32 bytes, is {}",
                    n + 1,
                    raw.len()
                ));
            }
            let unbound = UnboundKey::new(&AES_256_GCM, &raw)
                .map_err(|_| format!("line {}: key {id:?} is refused by AES-256-GCM", n + 1))?;
            keys.push((id.to_owned(), LessSafeKey::new(unbound)));
        }
        if keys.is_empty() {
            return Err("no key in the file".into());
        }
        Ok(SealKeys {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// The id of the key that seals.
    pub fn sealing_id(&self) -> &str {
        &self.keys[0].0
    }

    /// `change` with its registration's secret and instance-config sealed; other kinds as they are.
    pub fn seal(&self, mut change: Change) -> Result<Change, SealError> {
        let aad = |field| aad(&change, field);
        let (cfg_aad, secret_aad) = (aad("instance_config"), aad("secret"));
        if let Event::Registration {
            instance_config,
            secret,
        } = &mut change.event
        {
            if !instance_config.starts_with(SEALED_PREFIX) {
                *instance_config = self.seal_one(instance_config, &cfg_aad)?;
            }
            if !secret.starts_with(SEALED_PREFIX) {
                *secret = self.seal_one(secret, &secret_aad)?;
            }
        }
        Ok(change)
    }

    fn seal_one(&self, plain: &str, aad: &str) -> Result<String, SealError> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SealError::Seal("no random nonce".into()))?;
        let mut data = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut data,
        )
        .map_err(|_| SealError::Seal("AES-256-GCM refused the value".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{SEALED_PREFIX}{id}:{}", B64.encode(out)))
    }

    fn open_one(&self, sealed: &str, aad: &str, field: &'static str) -> Result<String, SealError> {
        let rest = &sealed[SEALED_PREFIX.len()..];
        let (id, b64) = rest.split_once(':').ok_or(SealError::Open { field })?;
        let key = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, k)| k)
            .ok_or_else(|| SealError::UnknownKey {
                field,
                id: id.chars().take(32).collect(),
            })?;
        let raw = B64.decode(b64).map_err(|_| SealError::Open { field })?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open { field });
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open { field })?;
        let mut data = ct.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut data)
            .map_err(|_| SealError::Open { field })?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open { field })
    }
}

/// Opens what [`SealKeys::seal`] sealed; a value not sealed is left as it is (a site of an
/// older build, or one without a key file). `keys: None` refuses a sealed value.
pub fn open(keys: Option<&SealKeys>, mut change: Change) -> Result<Change, SealError> {
    let (cfg_aad, secret_aad) = (aad(&change, "instance_config"), aad(&change, "secret"));
    if let Event::Registration {
        instance_config,
        secret,
    } = &mut change.event
    {
        for (value, aad, field) in [
            (instance_config, cfg_aad, "instance_config"),
            (secret, secret_aad, "secret"),
        ] {
            if value.starts_with(SEALED_PREFIX) {
                let keys = keys.ok_or(SealError::NoKeys { field })?;
                *value = keys.open_one(value, &aad, field)?;
            }
        }
    }
    Ok(change)
}

/// What a sealed value is bound to: its message (origin and sequence), instance and field.
fn aad(change: &Change, field: &str) -> String {
    format!(
        "{AAD_DOMAIN}\0{}:{}\0{}\0{field}",
        change.origin_site,
        change.origin_seq,
        change.instance.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> SealKeys {
        SealKeys::parse(text).expect("keys")
    }

    fn registration() -> Change {
        Change {
            origin_site: "site-a".into(),
            incarnation: "a1a1a1a1a1a1a1a1".into(),
            version_ms: 0,
            origin_seq: 7,
            instance_seq: 1,
            api_version: 1,
            instance: Some("I1".into()),
            deployment: Some("D1".into()),
            client_addr: None,
            captured_at_ms: 0,
            event: Event::Registration {
                instance_config: "<instance-config><secret>s3cret</secret></instance-config>"
                    .into(),
                secret: "s3cret".into(),
            },
        }
    }

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:HxcWFRQTEhEQDw4NDAsKCQgHBgUEAwIBAB8eHRwbGhk=";

    #[test]
    fn a_registration_seals_and_opens_and_holds_no_plaintext() {
        let k = keys(K1);
        let sealed = k.seal(registration()).expect("seal");
        let Event::Registration {
            instance_config,
            secret,
        } = &sealed.event
        else {
            panic!()
        };
        assert!(secret.starts_with("sealed:v1:k1:"), "{secret}");
        assert!(!instance_config.contains("s3cret") && !secret.contains("s3cret"));
        assert_eq!(open(Some(&k), sealed).expect("open"), registration());
    }

    #[test]
    fn rotation_opens_with_any_key_and_seals_with_the_first() {
        let old = keys(K1);
        let sealed_old = old.seal(registration()).expect("seal");
        let both = keys(&format!("{K2}\n# rotated\n{K1}\n"));
        assert_eq!(both.sealing_id(), "k2");
        assert_eq!(
            open(Some(&both), sealed_old).expect("old key opens"),
            registration()
        );
        let only_new = keys(K2);
        let sealed_old = old.seal(registration()).expect("seal");
        assert!(matches!(
            open(Some(&only_new), sealed_old),
            Err(SealError::UnknownKey { .. })
        ));
    }

    #[test]
    fn a_sealed_value_moved_to_another_message_or_without_keys_does_not_open() {
        let k = keys(K1);
        let mut moved = k.seal(registration()).expect("seal");
        moved.origin_seq = 8;
        assert!(matches!(
            open(Some(&k), moved),
            Err(SealError::Open {
                field: "instance_config"
            })
        ));
        let sealed = k.seal(registration()).expect("seal");
        assert!(matches!(open(None, sealed), Err(SealError::NoKeys { .. })));
        assert_eq!(
            open(None, registration()).expect("plaintext passes"),
            registration()
        );
    }

    #[test]
    fn bad_key_files_name_the_line() {
        for (text, says) in [
            ("", "no key"),
            ("k1", "line 1"),
            ("k1:AAAA", "32 bytes"),
            (&format!("{K1}\n{K1}"), "twice"),
            ("bad id:AAAA", "key id"),
        ] {
            let err = SealKeys::parse(text).expect_err(text);
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
