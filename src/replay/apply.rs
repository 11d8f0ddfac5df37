//! The per-kind replay rules: what a registration, a params change and a deletion become at
//! the local server, and what each answer means.
//!
//! Owns validation of an inbound change, the duplicate check against the store's marks, the
//! "is it known?" check before a registration (never re-POST), the choice of credentials for
//! a params change, parking on 404, and dead-lettering what can never apply. It must not
//! build HTTP requests (`http.rs`) or walk the parked table (`parked.rs`).

use std::net::{IpAddr, SocketAddr};

use http::StatusCode;

use super::http::Signer;
use super::{Outcome, ReplayError, Replayer};
use crate::capture::instance_config;
use crate::change::{Change, Event};

/// A valid change, with what its replay needs.
enum Target<'a> {
    Registration {
        uuid: &'a str,
        xml: &'a str,
        secret: &'a str,
    },
    Params {
        uuid: &'a str,
        audrey_data: &'a str,
    },
    Deletion {
        deployment: &'a str,
    },
}

impl Replayer {
    /// Everything after the own-origin and recent-id checks.
    pub(super) async fn apply_new(&self, change: &Change) -> Result<Outcome, ReplayError> {
        let target = match validate(change) {
            Ok(t) => t,
            Err(reason) => return self.dead_letter(change, &reason, false).await,
        };
        match target {
            Target::Deletion { deployment } => self.deletion(change, deployment).await,
            Target::Params { uuid, audrey_data } => {
                let _lane = self.lane(uuid).lock().await;
                self.params(change, uuid, audrey_data, false).await
            }
            Target::Registration { uuid, xml, secret } => {
                let _lane = self.lane(uuid).lock().await;
                let outcome = self.registration(change, uuid, xml, secret).await?;
                if outcome == Outcome::Applied {
                    self.after_registration(uuid).await;
                }
                Ok(outcome)
            }
        }
    }

    /// A registration: POSTed only when the local server does not know the instance.
    async fn registration(
        &self,
        change: &Change,
        uuid: &str,
        xml: &str,
        secret: &str,
    ) -> Result<Outcome, ReplayError> {
        if self.store.is_applied(change)? {
            return Ok(Outcome::Duplicate);
        }
        // Fill what the change lacks from the document itself (deployment, secret).
        let mut change = change.clone();
        if change.deployment.is_none() || secret.is_empty() {
            if let Ok(parsed) = instance_config::parse(xml) {
                change.deployment.get_or_insert(parsed.deployment);
                if let Event::Registration { secret, .. } = &mut change.event {
                    if secret.is_empty() {
                        *secret = parsed.secret;
                    }
                }
            }
        }
        let v = change.api_version;
        if self.server.knows(v, uuid).await? {
            tracing::info!(
                message_id = %change.message_id(),
                instance = uuid,
                "registration not re-POSTed: the local server knows the instance already"
            );
        } else {
            let status = self
                .server
                .register(v, uuid, xml, self.conductor_signer())
                .await?;
            match status {
                StatusCode::OK => {}
                StatusCode::UNAUTHORIZED => {
                    return Err(ReplayError::Unauthorized {
                        method: "POST",
                        path: format!("/configs/{v}/{uuid}"),
                    })
                }
                other => {
                    let reason = format!("local server answered {other} to the registration");
                    return self.dead_letter(&change, &reason, false).await;
                }
            }
        }
        self.mark_applied(&change).await
    }

    /// A params change: PUT when nothing of the instance waits, parked on 404.
    /// `from_parked`: the change is the head of its instance's parked list (a retry).
    pub(super) async fn params(
        &self,
        change: &Change,
        uuid: &str,
        audrey_data: &str,
        from_parked: bool,
    ) -> Result<Outcome, ReplayError> {
        let id = change.message_id();
        if self.store.is_applied(change)? {
            if from_parked {
                self.store.unpark(&id).await?;
            }
            self.remember(change);
            return Ok(Outcome::Duplicate);
        }
        if !from_parked {
            let waiting = self.store.parked_for(uuid)?;
            if waiting.iter().any(|p| p.change.message_id() == id) {
                // A redelivery of a change parked already: it stays where it is.
                return Ok(Outcome::Parked);
            }
            if let Some(first) = waiting.first() {
                let reason = format!("behind parked change {}", first.change.message_id());
                return self.park(change, &reason, true).await;
            }
        }
        let guest = guest_addr(change);
        let status = self.put(change, uuid, audrey_data, guest).await?;
        match status {
            StatusCode::OK | StatusCode::ACCEPTED => self.mark_applied(change).await,
            StatusCode::NOT_FOUND => {
                self.park(change, "instance not registered here (404)", !from_parked)
                    .await
            }
            other => {
                let reason = format!("local server answered {other} to the params change");
                self.dead_letter(change, &reason, from_parked).await
            }
        }
    }

    /// PUT signed as the instance when its secret is known here, else (or when the server
    /// refuses the instance's signature) as Conductor.
    async fn put(
        &self,
        change: &Change,
        uuid: &str,
        audrey_data: &str,
        guest: Option<IpAddr>,
    ) -> Result<StatusCode, ReplayError> {
        let v = change.api_version;
        if let Some(secret) = self.store.instance_secret(uuid)? {
            let own = Signer {
                key: uuid,
                secret: &secret,
            };
            let status = self
                .server
                .put_params(v, uuid, audrey_data, guest, own)
                .await?;
            if status != StatusCode::UNAUTHORIZED {
                return Ok(status);
            }
            tracing::info!(
                message_id = %change.message_id(),
                instance = uuid,
                "local server refused the instance's own signature; signing as Conductor"
            );
        }
        let status = self
            .server
            .put_params(v, uuid, audrey_data, guest, self.conductor_signer())
            .await?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(ReplayError::Unauthorized {
                method: "PUT",
                path: format!("/params/{v}/{uuid}"),
            });
        }
        Ok(status)
    }

    /// A deletion: 200 or 404 (gone already) both mean applied.
    async fn deletion(&self, change: &Change, deployment: &str) -> Result<Outcome, ReplayError> {
        if self.store.is_applied(change)? {
            return Ok(Outcome::Duplicate);
        }
        match self
            .server
            .delete_deployment(change.api_version, deployment)
            .await?
        {
            StatusCode::OK | StatusCode::NOT_FOUND => self.mark_applied(change).await,
            other => {
                let reason = format!("local server answered {other} to the deletion");
                self.dead_letter(change, &reason, false).await
            }
        }
    }

    /// Park `change` durably. `fresh`: first time (counted), not a failed retry.
    async fn park(
        &self,
        change: &Change,
        reason: &str,
        fresh: bool,
    ) -> Result<Outcome, ReplayError> {
        let attempts = self.store.park(change.clone(), reason).await?;
        if fresh {
            crate::metrics::replay_parked(change.event.kind());
        }
        tracing::info!(
            message_id = %change.message_id(),
            kind = change.event.kind(),
            instance = change.instance.as_deref().unwrap_or(""),
            attempts,
            reason,
            "change parked"
        );
        Ok(Outcome::Parked)
    }

    /// Dead-letter `change` durably (moving it out of the parked table when `parked`).
    pub(super) async fn dead_letter(
        &self,
        change: &Change,
        reason: &str,
        parked: bool,
    ) -> Result<Outcome, ReplayError> {
        let moved = parked
            && self
                .store
                .dead_letter_parked(&change.message_id(), reason)
                .await?;
        if !moved {
            let raw = serde_json::to_vec(change).unwrap_or_default();
            self.store.dead_letter_inbound(raw, reason).await?;
        }
        crate::metrics::dead_lettered_inbound(change.event.kind());
        self.remember(change);
        tracing::warn!(
            message_id = %change.message_id(),
            kind = change.event.kind(),
            instance = change.instance.as_deref().unwrap_or(""),
            reason,
            "change dead-lettered"
        );
        Ok(Outcome::DeadLettered)
    }

    fn conductor_signer(&self) -> Signer<'_> {
        Signer {
            key: &self.conductor.key,
            secret: &self.conductor.secret,
        }
    }
}

/// Check what the change must carry to be replayable; the reason names what is wrong.
fn validate(change: &Change) -> Result<Target<'_>, String> {
    if !matches!(change.api_version, 1 | 2) {
        return Err(format!("api_version {} is not 1 or 2", change.api_version));
    }
    if let Some(addr) = change.client_addr.as_deref() {
        if parse_addr(addr).is_none() {
            return Err(format!("client_addr {addr:?} is not an IP address"));
        }
    }
    let instance = || match change.instance.as_deref() {
        Some(i) if safe_id(i) => Ok(i),
        Some(i) => Err(format!("instance {i:?} is not a usable path segment")),
        None => Err(format!(
            "{} change without an instance",
            change.event.kind()
        )),
    };
    match &change.event {
        Event::Deletion => match change.deployment.as_deref() {
            Some(d) if safe_id(d) => Ok(Target::Deletion { deployment: d }),
            Some(d) => Err(format!("deployment {d:?} is not a usable path segment")),
            None => Err("deletion without a deployment".into()),
        },
        Event::Params { audrey_data, .. } => Ok(Target::Params {
            uuid: instance()?,
            audrey_data,
        }),
        Event::Registration {
            instance_config,
            secret,
        } => Ok(Target::Registration {
            uuid: instance()?,
            xml: instance_config,
            secret,
        }),
    }
}

/// Non-empty, and nothing the server would turn into a path outside its folders.
fn safe_id(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains(['/', '\\', '\0'])
}

fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The guest's address to put in `X-Forwarded-For` (validated already).
fn guest_addr(change: &Change) -> Option<IpAddr> {
    change.client_addr.as_deref().and_then(parse_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(event: Event, instance: Option<&str>, deployment: Option<&str>) -> Change {
        Change {
            origin_site: "b".into(),
            origin_seq: 1,
            instance_seq: 1,
            api_version: 2,
            instance: instance.map(str::to_owned),
            deployment: deployment.map(str::to_owned),
            client_addr: Some("10.0.0.5".into()),
            captured_at_ms: 0,
            event,
        }
    }

    fn params() -> Event {
        Event::Params {
            audrey_data: "|&|".into(),
            values: vec![],
            return_codes: false,
        }
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(validate(&change(params(), Some("U1"), None)).is_ok());
        let e = validate(&change(params(), None, None)).err().unwrap();
        assert_eq!(e, "params change without an instance");
        let e = validate(&change(Event::Deletion, None, None))
            .err()
            .unwrap();
        assert_eq!(e, "deletion without a deployment");
        assert!(validate(&change(params(), Some(".."), None)).is_err());
        assert!(validate(&change(params(), Some("a/b"), None)).is_err());
        let mut c = change(params(), Some("U1"), None);
        c.api_version = 3;
        assert!(validate(&c).err().unwrap().contains("api_version 3"));
        c.api_version = 1;
        c.client_addr = Some("not-an-ip".into());
        assert!(validate(&c).err().unwrap().contains("client_addr"));
    }

    #[test]
    fn guest_address_forms() {
        assert_eq!(parse_addr("10.0.0.5"), Some([10, 0, 0, 5].into()));
        assert_eq!(parse_addr(" 10.0.0.5:4321 "), Some([10, 0, 0, 5].into()));
        assert_eq!(parse_addr("::1").map(|a| a.is_loopback()), Some(true));
        assert_eq!(parse_addr("x"), None);
    }
}
