//! Signed messages: every change and heartbeat a site publishes carries a signature by the key
//! of a certificate from the federation CA, and the certificate (chain) itself; a receiver
//! checks the chain, that the certificate names the message's `origin_site`, and the signature.
//!
//! Owns the two application properties ([`SIG`], [`SIGNER`]), the canonical bytes a signature
//! covers ([`signed_bytes`]: the message id, the content type, every other application
//! property sorted by name with its type, and the body exactly as sent), [`Signer`] and
//! [`Verifier`] (with its cache of verified chains by DER hash). The signature covers the
//! encoded body's bytes, not its fields, so a change of the body's shape needs nothing here.
//! All cryptography is aws-lc-rs: signing through rustls' key loading, verification and chain
//! checks through rustls-webpki. It must not decode a body nor know what a change means.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::SignatureScheme;

use crate::config::SignerIdentity;
use crate::wire::{WireMessage, WireValue};

/// Application property: `<algorithm>:<base64 signature>` over [`signed_bytes`].
pub const SIG: &str = "audrey_sig";
/// Application property: the signer's certificate chain, leaf first, each DER certificate in
/// base64, joined by `.`.
pub const SIGNER: &str = "audrey_signer";
/// The first bytes of what is signed: a signature over these bytes means nothing elsewhere.
const DOMAIN: &[u8] = b"audrey-federation signed message v1\n";
/// Most certificates accepted in a signer chain, and the longest [`SIGNER`] value read.
const MAX_CHAIN: usize = 4;
const MAX_SIGNER_LEN: usize = 32 * 1024;
/// Verified chains kept (by DER hash), and for how long at most.
const CACHE_ENTRIES: u64 = 1024;
const CACHE_TTL: Duration = Duration::from_secs(600);

/// Why a message's signature is refused. [`Refusal::label`] is the `reason` label of
/// `audrey_federation_rejected_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the message is unsigned (no {SIG}/{SIGNER} properties) and amqp.accept_unsigned is false"
    )]
    Unsigned,
    #[error("malformed signature properties: {0}")]
    Malformed(String),
    #[error("the signature does not match the message (tampered, or signed by another key)")]
    BadSignature,
    #[error("the signer's certificate names {names:?}, not origin_site {origin:?}")]
    WrongIdentity { names: Vec<String>, origin: String },
    #[error("the signer's certificate is not issued by the federation CA (amqp.ca): {0}")]
    UnknownCa(String),
    #[error("the signer's certificate has expired or is not valid yet: {0}")]
    Expired(String),
    #[error("the signer's certificate is refused: {0}")]
    BadCertificate(String),
    #[error("no federation CA to verify signatures with (amqp.ca is not set)")]
    NoCa,
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Malformed(_) => "bad_signature_format",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongIdentity { .. } => "wrong_identity",
            Refusal::UnknownCa(_) | Refusal::NoCa => "unknown_ca",
            Refusal::Expired(_) => "expired_certificate",
            Refusal::BadCertificate(_) => "bad_certificate",
        }
    }
}

/// A problem with this site's own signing or verification material, found at start.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {reason}")]
pub struct LoadError {
    pub key: &'static str,
    pub path: String,
    pub reason: String,
}

fn load_error(key: &'static str, path: &Path, reason: impl ToString) -> LoadError {
    LoadError {
        key,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The bytes a signature covers: [`DOMAIN`], then, each as a 4-byte big-endian length and its
/// bytes, the message id, the content type, the number of properties, each application
/// property but [`SIG`] and [`SIGNER`] in name order (name, type, value), and the body.
pub fn signed_bytes(w: &WireMessage) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut props: Vec<&(String, WireValue)> = w
        .properties
        .iter()
        .filter(|(n, _)| n != SIG && n != SIGNER)
        .collect();
    props.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(w.body.len() + 256);
    out.extend_from_slice(DOMAIN);
    field(&mut out, w.message_id.as_bytes());
    field(&mut out, w.content_type.as_bytes());
    field(&mut out, &(props.len() as u64).to_be_bytes());
    for (name, value) in props {
        field(&mut out, name.as_bytes());
        match value {
            WireValue::Str(s) => {
                field(&mut out, b"string");
                field(&mut out, s.as_bytes());
            }
            WireValue::U64(v) => {
                field(&mut out, b"ulong");
                field(&mut out, &v.to_be_bytes());
            }
            WireValue::U8(v) => {
                field(&mut out, b"ubyte");
                field(&mut out, &[*v]);
            }
            WireValue::Unsupported(t) => {
                field(&mut out, b"unsupported");
                field(&mut out, t.as_bytes());
            }
        }
    }
    field(&mut out, &w.body);
    out
}

/// Signature algorithms on the wire, by name.
const ALGORITHMS: [(&str, SignatureScheme); 4] = [
    ("ecdsa-p256-sha256", SignatureScheme::ECDSA_NISTP256_SHA256),
    ("ecdsa-p384-sha384", SignatureScheme::ECDSA_NISTP384_SHA384),
    ("ed25519", SignatureScheme::ED25519),
    ("rsa-pss-sha256", SignatureScheme::RSA_PSS_SHA256),
];

fn verification_algorithm(
    name: &str,
) -> Option<&'static dyn rustls::pki_types::SignatureVerificationAlgorithm> {
    use webpki::aws_lc_rs as alg;
    Some(match name {
        "ecdsa-p256-sha256" => alg::ECDSA_P256_SHA256,
        "ecdsa-p384-sha384" => alg::ECDSA_P384_SHA384,
        "ed25519" => alg::ED25519,
        "rsa-pss-sha256" => alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        _ => return None,
    })
}

/// This site's signing key and the chain it sends.
pub struct Signer {
    key: Arc<dyn rustls::sign::SigningKey>,
    algorithm: &'static str,
    scheme: SignatureScheme,
    chain: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Signer, LoadError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| load_error("amqp.signing_cert", cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| load_error("amqp.signing_cert", cert, e))?;
        if certs.is_empty() {
            return Err(load_error(
                "amqp.signing_cert",
                cert,
                "no certificate in the file",
            ));
        }
        let der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| load_error("amqp.signing_key", key, e))?;
        let key_obj = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
            .map_err(|e| load_error("amqp.signing_key", key, e))?;
        let schemes: Vec<SignatureScheme> = ALGORITHMS.iter().map(|(_, s)| *s).collect();
        let chosen = key_obj.choose_scheme(&schemes).ok_or_else(|| {
            load_error(
                "amqp.signing_key",
                key,
                "no supported signature algorithm for this key (P-256, P-384, Ed25519 or RSA)",
            )
        })?;
        let scheme = chosen.scheme();
        let algorithm = ALGORITHMS
            .iter()
            .find(|(_, s)| *s == scheme)
            .map(|(n, _)| *n)
            .unwrap_or("unknown");
        let chain = certs
            .iter()
            .map(|c| B64.encode(c.as_ref()))
            .collect::<Vec<_>>()
            .join(".");
        Ok(Signer {
            key: key_obj,
            algorithm,
            scheme,
            chain,
        })
    }

    /// Adds [`SIG`] and [`SIGNER`] to `w` (replacing any). Signing with a loaded key fails
    /// only on a broken crypto library: then the message goes unsigned (and is refused).
    pub fn sign(&self, mut w: WireMessage) -> WireMessage {
        w.properties.retain(|(n, _)| n != SIG && n != SIGNER);
        let signature = self
            .key
            .choose_scheme(&[self.scheme])
            .map(|s| s.sign(&signed_bytes(&w)));
        match signature {
            Some(Ok(sig)) => {
                w.properties.push((
                    SIG.to_owned(),
                    WireValue::Str(format!("{}:{}", self.algorithm, B64.encode(sig))),
                ));
                w.properties
                    .push((SIGNER.to_owned(), WireValue::Str(self.chain.clone())));
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot sign an outbound message; it goes unsigned")
            }
            None => {
                tracing::error!("the signing key lost its algorithm; the message goes unsigned")
            }
        }
        w
    }
}

/// What a verified chain proves: the leaf's names, and until when.
struct Verified {
    names: Vec<String>,
    not_before: i64,
    not_after: i64,
}

/// Checks signatures against the federation CA. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    anchors: Arc<Vec<CertificateDer<'static>>>,
    identity: SignerIdentity,
    cache: moka::sync::Cache<[u8; 32], Arc<Verified>>,
}

impl Verifier {
    /// Trusts the CA certificates in the PEM file `ca`.
    pub fn from_ca_file(ca: &Path, identity: SignerIdentity) -> Result<Verifier, LoadError> {
        let anchors: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| load_error("amqp.ca", ca, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| load_error("amqp.ca", ca, e))?;
        for a in &anchors {
            webpki::anchor_from_trusted_cert(a)
                .map_err(|e| load_error("amqp.ca", ca, format!("{e:?}")))?;
        }
        if anchors.is_empty() {
            return Err(load_error("amqp.ca", ca, "no certificate in the file"));
        }
        Ok(Verifier {
            anchors: Arc::new(anchors),
            identity,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(CACHE_TTL)
                .build(),
        })
    }

    /// `Ok(true)`: signed, and the signature holds for `origin_site`; `Ok(false)`: unsigned
    /// (the caller decides); `Err`: refused.
    pub fn verify(&self, w: &WireMessage, origin_site: &str) -> Result<bool, Refusal> {
        let find = |name: &str| w.properties.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let (sig, signer) = match (find(SIG), find(SIGNER)) {
            (None, None) => return Ok(false),
            (Some(WireValue::Str(s)), Some(WireValue::Str(c))) => (s, c),
            (Some(_), Some(_)) => {
                return Err(Refusal::Malformed(format!(
                    "{SIG} and {SIGNER} must be strings"
                )))
            }
            _ => {
                return Err(Refusal::Malformed(format!(
                    "{SIG} and {SIGNER} go together"
                )))
            }
        };
        if signer.len() > MAX_SIGNER_LEN {
            return Err(Refusal::Malformed(format!(
                "{SIGNER} is over {MAX_SIGNER_LEN} bytes"
            )));
        }
        let (algorithm, sig_b64) = sig
            .split_once(':')
            .ok_or_else(|| Refusal::Malformed(format!("{SIG} is not <algorithm>:<base64>")))?;
        let alg = verification_algorithm(algorithm).ok_or_else(|| {
            Refusal::Malformed(format!(
                "unknown signature algorithm {:?}",
                short(algorithm)
            ))
        })?;
        let signature = B64
            .decode(sig_b64)
            .map_err(|e| Refusal::Malformed(format!("{SIG}: {e}")))?;
        let chain: Vec<CertificateDer<'static>> = signer
            .split('.')
            .take(MAX_CHAIN + 1)
            .map(|c| B64.decode(c).map(CertificateDer::from))
            .collect::<Result<_, _>>()
            .map_err(|e| Refusal::Malformed(format!("{SIGNER}: {e}")))?;
        if chain.is_empty() || chain.len() > MAX_CHAIN {
            return Err(Refusal::Malformed(format!(
                "{SIGNER} must hold 1 to {MAX_CHAIN} certificates"
            )));
        }
        let verified = self.chain(&chain, signer)?;
        if !verified.names.iter().any(|n| n == origin_site) {
            return Err(Refusal::WrongIdentity {
                names: verified.names.iter().map(|n| short(n)).collect(),
                origin: short(origin_site),
            });
        }
        let leaf = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| Refusal::BadCertificate(format!("{e:?}")))?;
        leaf.verify_signature(alg, &signed_bytes(w), &signature)
            .map_err(|_| Refusal::BadSignature)?;
        Ok(true)
    }

    /// The chain's verification, from the cache when this exact chain was verified before
    /// (its validity dates are checked again each time).
    fn chain(
        &self,
        chain: &[CertificateDer<'static>],
        encoded: &str,
    ) -> Result<Arc<Verified>, Refusal> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, encoded.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        let now = UnixTime::now().as_secs() as i64;
        if let Some(v) = self.cache.get(&key) {
            if now < v.not_before || now > v.not_after {
                self.cache.invalidate(&key);
                return Err(Refusal::Expired("outside its validity period".into()));
            }
            return Ok(v);
        }
        let leaf = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| Refusal::BadCertificate(format!("{e:?}")))?;
        let anchors: Vec<_> = self
            .anchors
            .iter()
            .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
            .collect();
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer => Refusal::UnknownCa(format!("{e}")),
            webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                Refusal::Expired(format!("{e}"))
            }
            other => Refusal::BadCertificate(format!("{other}")),
        })?;
        let verified = Arc::new(names(&chain[0], self.identity)?);
        self.cache.insert(key, verified.clone());
        Ok(verified)
    }
}

/// The leaf's identity names of the configured kind and its validity period.
fn names(leaf: &CertificateDer<'_>, identity: SignerIdentity) -> Result<Verified, Refusal> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| Refusal::BadCertificate(e.to_string()))?;
    let names = match identity {
        SignerIdentity::Cn => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect(),
        SignerIdentity::San => cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some((*d).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok(Verified {
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// At most 64 characters of hostile text.
fn short(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}
