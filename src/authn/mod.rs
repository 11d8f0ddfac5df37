//! Authenticity of what crosses the broker (docs/security.md, "Authenticity"): signed changes
//! and heartbeats ([`sign`]), sealed registration secrets ([`seal`]), and the clock-skew bound
//! on the times a receiver keeps.
//!
//! Owns [`WireSecurity`], what the publisher and the subscriber load from `[amqp]` at start:
//! the outbound transform (seal, encode, sign) and the inbound checks (signature before
//! anything is kept for an origin, then opening sealed values, then the time bound). It must
//! not decode bodies itself (that is `wire`), nor settle or store anything (that is the
//! subscriber's `refuse`).

pub mod seal;
pub mod sign;

use crate::change::{now_ms, Change};
use crate::config::AmqpConfig;
use crate::metrics;
use crate::wire::{self, WireMessage, WireValue};

pub use seal::{SealError, SealKeys};
pub use sign::{Refusal, Signer, Verifier};

/// `reason` label of a heartbeat or change stamped too far in the future.
pub const FUTURE_TIME: &str = "future_time";
/// `reason` label of a registration whose sealed values do not open.
pub const UNSEALABLE: &str = "unsealable";

/// Why the signing, verification or sealing material cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error("{0}")]
    Sign(#[from] sign::LoadError),
    #[error("{0}")]
    Seal(#[from] SealError),
}

/// This site's signing key, the federation CA, the sealing keys and the policy.
#[derive(Debug)]
pub struct WireSecurity {
    signer: Option<Signer>,
    verifier: Option<Verifier>,
    seal: Option<SealKeys>,
    accept_unsigned: bool,
    max_clock_skew_ms: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

impl WireSecurity {
    /// Loads what `[amqp]` names: the signing identity (`amqp.signing_cert`/`signing_key`, else
    /// `amqp.cert`/`key`; none when `amqp.sign = false`), the CA (`amqp.ca`) and the seal keys.
    pub fn load(cfg: &AmqpConfig) -> Result<WireSecurity, AuthnError> {
        let identity = match (&cfg.signing_cert, &cfg.signing_key, &cfg.cert, &cfg.key) {
            _ if !cfg.sign => None,
            (Some(c), Some(k), _, _) | (None, None, Some(c), Some(k)) => Some((c, k)),
            _ => None,
        };
        Ok(WireSecurity {
            signer: identity
                .map(|(c, k)| Signer::from_files(c, k))
                .transpose()?,
            verifier: cfg
                .ca
                .as_deref()
                .map(|ca| Verifier::from_ca_file(ca, cfg.signer_identity))
                .transpose()?,
            seal: cfg
                .seal_key_file
                .as_deref()
                .map(SealKeys::from_file)
                .transpose()?,
            accept_unsigned: cfg.accept_unsigned,
            max_clock_skew_ms: u64::try_from(cfg.max_clock_skew.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Logs, once at start, every way this site is weaker than the default.
    pub fn warn_at_start(&self) {
        if self.accept_unsigned {
            tracing::warn!("amqp.accept_unsigned = true: UNSIGNED changes are accepted from any identity the broker lets in; only for a rolling upgrade, counted in audrey_federation_unsigned_accepted_total");
        }
        if self.signer.is_none() {
            tracing::warn!("this site does not sign what it publishes (amqp.sign = false, or no amqp.cert/amqp.key): other sites refuse its changes unless they set amqp.accept_unsigned");
        }
        if self.verifier.is_none() {
            tracing::warn!("no amqp.ca: signed changes cannot be verified and are refused");
        }
        match &self.seal {
            None => tracing::warn!("no amqp.seal_key_file: registrations cross the broker with their OAuth secrets in PLAINTEXT, and sealed ones from other sites are refused"),
            Some(k) => tracing::info!(key_id = k.sealing_id(), "registration secrets are sealed"),
        }
    }

    /// The message for `change`: its registration secrets sealed, encoded, signed.
    pub fn encode_change(
        &self,
        change: &Change,
        subject: &str,
        format: u8,
    ) -> Result<WireMessage, SealError> {
        let w = match &self.seal {
            Some(keys) => wire::encode_as(&keys.seal(change.clone())?, subject, format),
            None => wire::encode_as(change, subject, format),
        };
        Ok(self.sign(w))
    }

    /// `w` signed (as it is when this site does not sign).
    pub fn sign(&self, w: WireMessage) -> WireMessage {
        match &self.signer {
            Some(s) => s.sign(w),
            None => w,
        }
    }

    /// The inbound signature check, before anything is kept for the message's origin: the
    /// signature must hold for the `origin_site` property (which the decoder then requires to
    /// agree with the body). An unsigned message passes only with `amqp.accept_unsigned`.
    pub fn verify(&self, w: &WireMessage) -> Result<(), Refusal> {
        let origin = w
            .properties
            .iter()
            .find_map(|(n, v)| match (n.as_str(), v) {
                (wire::prop::ORIGIN_SITE, WireValue::Str(s)) => Some(s.as_str()),
                _ => None,
            });
        let signed = match (&self.verifier, origin) {
            (Some(v), Some(origin)) => v.verify(w, origin)?,
            (Some(v), None) => v.verify(w, "")?,
            (None, _) => {
                let has = |p| w.properties.iter().any(|(n, _)| n == p);
                if has(sign::SIG) || has(sign::SIGNER) {
                    return Err(Refusal::NoCa);
                }
                false
            }
        };
        if signed {
            return Ok(());
        }
        if self.accept_unsigned {
            metrics::unsigned_accepted();
            return Ok(());
        }
        Err(Refusal::Unsigned)
    }

    /// `change` with its sealed values opened.
    pub fn open(&self, change: Change) -> Result<Change, SealError> {
        seal::open(self.seal.as_ref(), change)
    }

    /// `Err(reason)` when `at_ms` is more than `amqp.max_clock_skew` ahead of this clock.
    pub fn check_time(&self, what: &str, at_ms: u64) -> Result<(), String> {
        let now = now_ms();
        if at_ms > now.saturating_add(self.max_clock_skew_ms) {
            return Err(format!(
                "{what} time {at_ms} ms is {} s in the future, beyond amqp.max_clock_skew ({} s)",
                (at_ms - now) / 1000,
                self.max_clock_skew_ms / 1000
            ));
        }
        Ok(())
    }
}
