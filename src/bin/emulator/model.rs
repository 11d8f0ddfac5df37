//! The instance model, as `ConfigServer::Model::{Instance,Service,Deployable}` behave:
//! provided parameters and their reported values, per-service state (return code,
//! configuration timestamps, stored parameters), contact timestamps, and lazy reference
//! resolution against the other instances on this server.
//!
//! It decides values and statuses, never HTTP answers; file access goes through `Store`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::formats::{InstanceConfig, Source, Values};
use crate::store::Store;

/// Something the real server would raise on (it answers 500).
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("state file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Raised(String),
}

/// What `state.json` holds for one instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// `provided-parameters.xml`: each declared name and its reported value.
    pub provided: Vec<(String, Option<String>)>,
    /// Seconds since the epoch.
    pub registered: u64,
    pub first_contacted: Option<u64>,
    pub last_contacted: Option<u64>,
    /// Every service directory ever created for this uuid (a re-POST keeps them).
    pub services: BTreeMap<String, ServiceState>,
}

/// One service's `meta.yaml` and `params.yaml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceState {
    pub return_code: Option<String>,
    pub config_started: Option<u64>,
    pub config_ended: Option<u64>,
    /// Stored parameters; a reference carries a value once frozen.
    pub params: Vec<StoredParam>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredParam {
    pub name: String,
    pub source: Source,
    /// `Some(v)`: the value is fixed (a static, or a reference frozen by a per-service
    /// `GET /configs` answering 200); `None`: resolve on each read.
    pub value: Option<Option<String>>,
}

impl State {
    /// State after a (re-)registration: reported values and contact times wiped, service
    /// metadata kept, service parameters replaced unless the new set is empty (the server
    /// only rewrites `params.yaml` when it has parameters to write).
    pub fn registered(config: &InstanceConfig, previous: Option<State>, registered: u64) -> State {
        let mut services = previous.map(|p| p.services).unwrap_or_default();
        let params: Vec<StoredParam> = config
            .params
            .iter()
            .map(|(name, source)| StoredParam {
                name: name.clone(),
                source: source.clone(),
                value: match source {
                    Source::Static(v) => Some(Some(v.clone())),
                    _ => None,
                },
            })
            .collect();
        for name in &config.services {
            let svc = services.entry(name.clone()).or_default();
            if !params.is_empty() {
                svc.params = params.clone();
            }
        }
        State {
            provided: config.provided.iter().map(|n| (n.clone(), None)).collect(),
            registered,
            first_contacted: None,
            last_contacted: None,
            services,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub uuid: String,
    pub config: InstanceConfig,
    pub state: State,
}

impl Instance {
    /// `instance.contacted = DateTime.now`.
    pub fn contacted(&mut self, now: u64) {
        if self.state.first_contacted.is_none() {
            self.state.first_contacted = Some(now);
        }
        self.state.last_contacted = Some(now);
    }

    /// Provided parameters still without a value, declaration order.
    pub fn missing_provided(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for (name, value) in &self.state.provided {
            if value.is_none() {
                seen.push(name.clone());
            }
        }
        seen
    }

    /// The value reported for `name`: `None` if undeclared or not reported yet.
    pub fn provided_value(&self, name: &str) -> Option<String> {
        self.state
            .provided
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    }

    /// Records reported values; unknown names are ignored. A name containing `'` breaks the
    /// server's XPath (`[@name='…']`) and raises before anything is written.
    pub fn set_provided(&mut self, pairs: &[(String, String)]) -> Result<(), Fault> {
        if let Some((bad, _)) = pairs.iter().find(|(k, _)| k.contains('\'')) {
            return Err(Fault::Raised(format!("XPath syntax error for {bad:?}")));
        }
        for (k, v) in pairs {
            if let Some(slot) = self.state.provided.iter_mut().find(|(n, _)| n == k) {
                slot.1 = Some(v.clone());
            }
        }
        Ok(())
    }

    pub fn service(&self, name: &str) -> Option<&ServiceState> {
        self.config
            .services
            .iter()
            .any(|s| s == name)
            .then(|| self.state.services.get(name))
            .flatten()
    }

    /// `Service#status`: success when the return code is `0`, error for another code,
    /// incomplete without one.
    pub fn service_status(&self, name: &str) -> &'static str {
        match self.service(name).and_then(|s| s.return_code.as_deref()) {
            Some("0") => "success",
            Some(_) => "error",
            None => "incomplete",
        }
    }

    /// `Instance#status`: the alphabetically least (worst) service status; `None` without
    /// services.
    pub fn status(&self) -> Option<&'static str> {
        self.config
            .services
            .iter()
            .map(|s| self.service_status(s))
            .min()
    }

    /// `Instance#completed_timestamp`: the latest `config_ended` once every service has one.
    pub fn completed(&self) -> Option<u64> {
        let ends: Option<Vec<u64>> = self
            .config
            .services
            .iter()
            .map(|s| self.service(s).and_then(|svc| svc.config_ended))
            .collect();
        ends?.into_iter().max()
    }

    /// `Service#params`: each parameter's value, resolving references not yet fixed and
    /// keeping the result in memory (a later save freezes it). A provided-parameter
    /// reference to an instance this server does not know raises (500); a service reference
    /// to an unknown instance stays unresolved, one to an unknown service raises.
    pub fn resolve(&mut self, store: &Store, service: &str) -> Result<Values, Fault> {
        let Some(svc) = self.state.services.get_mut(service) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(svc.params.len());
        for param in &mut svc.params {
            if param.value.is_none() {
                param.value = Some(match &param.source {
                    Source::Static(v) => Some(v.clone()),
                    Source::Provided {
                        assembly,
                        parameter,
                    } => match store.load(assembly)? {
                        Some(peer) => peer.provided_value(parameter),
                        None => {
                            return Err(Fault::Raised(format!(
                                "undefined method `values' for nil ({assembly})"
                            )))
                        }
                    },
                    Source::Service { assembly, service } => match store.load(assembly)? {
                        Some(peer) if peer.config.services.contains(service) => {
                            peer.service(service).and_then(|s| s.return_code.clone())
                        }
                        Some(_) => {
                            return Err(Fault::Raised(format!(
                                "undefined method `return_code' for nil ({service})"
                            )))
                        }
                        None => None,
                    },
                });
            }
            out.push((param.name.clone(), param.value.clone().flatten()));
        }
        Ok(out)
    }
}
