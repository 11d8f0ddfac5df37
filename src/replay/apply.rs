//! The per-kind replay rules: the state-based merge of an inbound change into what this
//! site's server holds, and what each answer of the server means.
//!
//! A change is applied only for the parts whose [`Version`] is newer than the one held here
//! (each provided parameter, service return code and the guest address on its own; the
//! registration; a deployment's deletion), and the server is sent exactly those parts. So
//! delivery order, duplicates, resends, replays and retries can neither lose nor roll back a
//! value. A registration newer than the one held is POSTed even to a server that knows the
//! instance (the POST wipes the server's provided values, as it did at the origin), and the
//! values newer than it are PUT back at once; a deletion is a tombstone that supersedes what
//! is older than it, while a registration newer than it survives it.
//!
//! Owns validation of an inbound change, those rules, the choice of credentials for a params
//! change, parking on 404, and dead-lettering what can never apply. It must not build HTTP
//! requests (`http.rs`) or walk the parked table (`parked.rs`).

use std::net::{IpAddr, SocketAddr};

use http::StatusCode;

use super::http::Signer;
use super::{Outcome, ReplayError, Replayer};
use crate::capture::{audrey_data, instance_config};
use crate::change::{Change, Event, Version};
use crate::store::{InstanceState, Merge, Registered, Slot};

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
        self.note_incarnation(change);
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

    /// Nothing in `change` is newer than what this site holds: drop it (from the parked table
    /// too when it came from there) and say which version superseded it.
    async fn superseded(
        &self,
        change: &Change,
        by: &Version,
        from_parked: bool,
    ) -> Result<Outcome, ReplayError> {
        if from_parked {
            self.store.unpark(&change.message_id()).await?;
        }
        self.remember(change);
        tracing::debug!(
            message_id = %change.message_id(),
            kind = change.event.kind(),
            version = %change.version(),
            superseded_by = %by,
            "nothing in the change is newer than what this site holds"
        );
        Ok(Outcome::Duplicate)
    }

    /// What supersedes all of an instance's change of `version`: a newer registration held
    /// here (its POST wiped what came before), or, with none held, a newer deletion of the
    /// instance's deployment.
    fn wiped_by(
        &self,
        state: &InstanceState,
        deployment: Option<&str>,
        version: &Version,
    ) -> Result<Option<Version>, ReplayError> {
        if let Some(reg) = &state.registration {
            return Ok((reg.version > *version).then(|| reg.version.clone()));
        }
        let Some(deployment) = deployment else {
            return Ok(None);
        };
        Ok(self.store.tombstone(deployment)?.filter(|t| t > version))
    }

    /// A registration: applied when newer than the one held here (and than its deployment's
    /// deletion). POSTed when the server does not know the instance, or when it is a
    /// re-registration of one registered here; then the values newer than it are PUT back.
    pub(super) async fn registration(
        &self,
        change: &Change,
        uuid: &str,
        xml: &str,
        secret: &str,
    ) -> Result<Outcome, ReplayError> {
        let version = change.version();
        let mut state = self.store.instance_state(uuid)?.unwrap_or_default();
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
        let secret = match &change.event {
            Event::Registration { secret, .. } => secret.clone(),
            _ => String::new(),
        };
        let deployment = change.deployment.clone().unwrap_or_default();
        if let Some(held) = &state.registration {
            if held.version > version {
                return self.superseded(&change, &held.version.clone(), false).await;
            }
            if held.version == version {
                // A redelivery: finish what a failure left undone, if anything.
                if state.repost || state.reapply {
                    self.repair(uuid, &mut state).await?;
                }
                return self.superseded(&change, &version, false).await;
            }
        }
        if let Some(t) = self.store.tombstone(&deployment)?.filter(|t| *t > version) {
            return self.superseded(&change, &t, false).await;
        }
        let v = change.api_version;
        let re_registration = state.registration.is_some();
        let known = self.server.knows(v, uuid).await?;
        let post = !known || re_registration;
        if post {
            let status = self
                .server
                .register(v, uuid, xml, self.conductor_signer())
                .await?;
            match status {
                StatusCode::OK => {}
                // The real server answers 500 to a third POST of one uuid, having rewritten
                // the registration all the same (docs: config-server.md).
                StatusCode::INTERNAL_SERVER_ERROR if known => {
                    tracing::info!(
                        message_id = %change.message_id(),
                        instance = uuid,
                        "the local server answered 500 to a re-registration it keeps (its known quirk)"
                    );
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(ReplayError::Unauthorized {
                        method: "POST",
                        path: format!("/configs/{v}/{uuid}"),
                    })
                }
                s if s.is_server_error() => {
                    return Err(ReplayError::Server {
                        status: s.as_u16(),
                        method: "POST",
                        path: format!("/configs/{v}/{uuid}"),
                    })
                }
                other => {
                    let reason = format!("local server answered {other} to the registration");
                    return self.dead_letter(&change, &reason, false).await;
                }
            }
        } else {
            tracing::info!(
                message_id = %change.message_id(),
                instance = uuid,
                "registration not re-POSTed: the local server knows the instance and this site never registered it"
            );
        }
        if re_registration {
            tracing::info!(
                message_id = %change.message_id(),
                instance = uuid,
                version = %version,
                "re-registration applied"
            );
        }
        // The POST wiped the server's provided values, as the origin's did: only those newer
        // than the registration stay, and they go back to the server now.
        state.params.retain(|_, slot| slot.version > version);
        state.reapply = post && !state.params.is_empty();
        state.repost = false;
        state.registration = Some(Registered {
            version,
            deployment,
            api_version: v,
            instance_config: xml.to_owned(),
            secret,
        });
        self.save(uuid, &state, Some(&change)).await?;
        if state.reapply {
            self.repair(uuid, &mut state).await?;
        }
        self.applied(&change)
    }

    /// A params change: the names (and guest address) newer than what is held are PUT,
    /// exactly those; parked on 404.
    /// `from_parked`: the change comes from the parked table (a retry).
    pub(super) async fn params(
        &self,
        change: &Change,
        uuid: &str,
        data: &str,
        from_parked: bool,
    ) -> Result<Outcome, ReplayError> {
        let version = change.version();
        let mut state = self.store.instance_state(uuid)?.unwrap_or_default();
        let deployment = change
            .deployment
            .clone()
            .or_else(|| state.registration.as_ref().map(|r| r.deployment.clone()));
        if let Some(by) = self.wiped_by(&state, deployment.as_deref(), &version)? {
            return self.superseded(change, &by, from_parked).await;
        }
        let return_codes = data.starts_with("||");
        let slots = if return_codes {
            &state.codes
        } else {
            &state.params
        };
        let reported = audrey_data::pieces(data);
        let total = reported.len();
        let newer: Vec<(String, String)> = reported
            .into_iter()
            .filter(|(name, _)| slots.get(name).is_none_or(|s| s.version < version))
            .collect();
        let ip_newer = state.ip.as_ref().is_none_or(|s| s.version < version);
        if newer.is_empty() && !ip_newer {
            let by = slots
                .values()
                .chain(state.ip.as_ref())
                .map(|s| &s.version)
                .max()
                .cloned()
                .unwrap_or_default();
            return self.superseded(change, &by, from_parked).await;
        }
        // A scan of the parked table: only when anything is parked (not on every change).
        if !from_parked && self.store.parked_count() > 0 {
            let id = change.message_id();
            if self
                .store
                .parked_for(uuid)?
                .iter()
                .any(|p| p.change.message_id() == id)
            {
                // A redelivery of a change parked already: it stays where it is.
                return Ok(Outcome::Parked);
            }
        }
        let guest = if ip_newer {
            guest_addr(change)
        } else {
            state.ip.as_ref().and_then(|s| parse_addr(&s.piece))
        };
        let body = if newer.len() == total {
            data.to_owned()
        } else {
            audrey_data::join(newer.iter().map(|(_, p)| p.as_str()), return_codes)
        };
        let status = self.put(change.api_version, uuid, &body, guest).await?;
        match status {
            StatusCode::OK | StatusCode::ACCEPTED => {
                let slots = if return_codes {
                    &mut state.codes
                } else {
                    &mut state.params
                };
                for (name, piece) in newer {
                    slots.insert(
                        name,
                        Slot {
                            version: version.clone(),
                            piece,
                        },
                    );
                }
                if ip_newer {
                    state.ip = Some(Slot {
                        version: version.clone(),
                        piece: change.client_addr.clone().unwrap_or_default(),
                    });
                }
                self.save(uuid, &state, Some(change)).await?;
                self.applied(change)
            }
            StatusCode::NOT_FOUND => {
                self.park(change, "instance not registered here (404)", !from_parked)
                    .await
            }
            s if s.is_server_error() => Err(ReplayError::Server {
                status: s.as_u16(),
                method: "PUT",
                path: format!("/params/{}/{uuid}", change.api_version),
            }),
            other => {
                let reason = format!("local server answered {other} to the params change");
                self.dead_letter(change, &reason, from_parked).await
            }
        }
    }

    /// Finish what a registration or deletion left for an instance: POST its registration
    /// again (`repost`: a deletion newer than nothing of it removed it from the server), then
    /// PUT back the provided values and return codes newer than the registration (`reapply`).
    /// Durable at each step; a failure leaves the flags for the next try.
    pub(super) async fn repair(
        &self,
        uuid: &str,
        state: &mut InstanceState,
    ) -> Result<(), ReplayError> {
        let Some(reg) = state.registration.clone() else {
            state.repost = false;
            state.reapply = false;
            return self.save(uuid, state, None).await;
        };
        let v = reg.api_version;
        if state.repost {
            let status = self
                .server
                .register(v, uuid, &reg.instance_config, self.conductor_signer())
                .await?;
            if status != StatusCode::OK {
                return Err(ReplayError::Server {
                    status: status.as_u16(),
                    method: "POST",
                    path: format!("/configs/{v}/{uuid}"),
                });
            }
            state.repost = false;
            state.reapply = true;
            self.save(uuid, state, None).await?;
        }
        if state.reapply {
            let guest = state.ip.as_ref().and_then(|s| parse_addr(&s.piece));
            for (slots, codes) in [(&state.params, false), (&state.codes, true)] {
                if slots.is_empty() {
                    continue;
                }
                let body = audrey_data::join(slots.values().map(|s| s.piece.as_str()), codes);
                let status = self.put(v, uuid, &body, guest).await?;
                if !matches!(status, StatusCode::OK | StatusCode::ACCEPTED) {
                    return Err(ReplayError::Server {
                        status: status.as_u16(),
                        method: "PUT",
                        path: format!("/params/{v}/{uuid}"),
                    });
                }
            }
            state.reapply = false;
            self.save(uuid, state, None).await?;
            crate::metrics::replay_reapplied();
            tracing::info!(
                instance = uuid,
                params = state.params.len(),
                codes = state.codes.len(),
                "values newer than the registration PUT back after its POST"
            );
        }
        Ok(())
    }

    /// Keep `state` of `uuid` (and the change applied, if any) durably.
    async fn save(
        &self,
        uuid: &str,
        state: &InstanceState,
        change: Option<&Change>,
    ) -> Result<(), ReplayError> {
        self.store
            .merge(Merge {
                states: vec![(uuid.to_owned(), Some(state.clone()))],
                tombstone: None,
                applied: change.cloned(),
            })
            .await?;
        Ok(())
    }

    /// PUT signed as the instance when its secret is known here, else (or when the server
    /// refuses the instance's signature) as Conductor.
    async fn put(
        &self,
        v: u8,
        uuid: &str,
        audrey_data: &str,
        guest: Option<IpAddr>,
    ) -> Result<StatusCode, ReplayError> {
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

    /// A deletion: applied when newer than the deployment's tombstone here; 200 or 404 (gone
    /// already) both mean applied. The instances registered here before it are forgotten
    /// (their older changes are superseded by the tombstone); one registered after it (its
    /// registration arrived first) is registered again, with its values.
    pub(super) async fn deletion(
        &self,
        change: &Change,
        deployment: &str,
    ) -> Result<Outcome, ReplayError> {
        let version = change.version();
        if let Some(t) = self.store.tombstone(deployment)?.filter(|t| *t >= version) {
            return self.superseded(change, &t, false).await;
        }
        let v = change.api_version;
        match self.server.delete_deployment(v, deployment).await? {
            StatusCode::OK | StatusCode::NOT_FOUND => {}
            s if s.is_server_error() => {
                return Err(ReplayError::Server {
                    status: s.as_u16(),
                    method: "DELETE",
                    path: format!("/deployment/{v}/{deployment}"),
                })
            }
            other => {
                let reason = format!("local server answered {other} to the deletion");
                return self.dead_letter(change, &reason, false).await;
            }
        }
        let members = self.store.instances_in(deployment)?;
        let uuids: Vec<&str> = members.iter().map(|(u, _)| u.as_str()).collect();
        let _lanes = self.lanes_of(&uuids).await;
        let mut states = Vec::with_capacity(members.len());
        let mut survivors = Vec::new();
        for (uuid, mut state) in members {
            let newer = state
                .registration
                .as_ref()
                .is_some_and(|r| r.version > version);
            if newer {
                state.repost = true;
                states.push((uuid.clone(), Some(state.clone())));
                survivors.push((uuid, state));
            } else {
                states.push((uuid, None));
            }
        }
        self.store
            .merge(Merge {
                states,
                tombstone: Some((deployment.to_owned(), version)),
                applied: Some(change.clone()),
            })
            .await?;
        for (uuid, mut state) in survivors {
            if let Err(e) = self.repair(&uuid, &mut state).await {
                self.repairs_pending();
                tracing::warn!(
                    instance = %uuid,
                    reason = e.reason(),
                    error = %e,
                    "re-registering an instance newer than its deployment's deletion failed; it will be retried"
                );
            }
        }
        self.applied(change)
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
            incarnation: "a1a1a1a1a1a1a1a1".into(),
            version_ms: 0,
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
