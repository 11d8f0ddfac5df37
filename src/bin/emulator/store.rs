//! Plain-file storage laid out like the real server's `STORAGE_DIR`:
//! `instances/<uuid>/{instance-config.xml,state.json,ip,<uuid>.tgz}`,
//! `deployables/<deployment>/<uuid>` (symlinks to the instance directories) and
//! `oauth/<key>` (the consumer secret). The sidecar reads `deployables/` from it.
//!
//! It owns paths and file formats only; what a request means is decided in `routes`/`model`.
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::formats::{parse_instance_config, InstanceConfig};
use crate::model::{Fault, Instance, State};

const CONFIG_FILE: &str = "instance-config.xml";
const STATE_FILE: &str = "state.json";
const IP_FILE: &str = "ip";

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A uuid or key usable as one path component. The real server joins whatever it is given
/// (so `..` would reach outside its tree); the emulator treats such names as unknown.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

impl Store {
    /// Opens (creating) the storage tree; `root` is made absolute so symlinks resolve.
    pub fn open(root: &Path) -> io::Result<Store> {
        fs::create_dir_all(root)?;
        let root = fs::canonicalize(root)?;
        for sub in ["instances", "deployables", "oauth"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Store { root })
    }

    fn instance_dir(&self, uuid: &str) -> PathBuf {
        self.root.join("instances").join(uuid)
    }

    pub fn deployment_dir(&self, deployment: &str) -> PathBuf {
        self.root.join("deployables").join(deployment)
    }

    // ---- OAuth consumers ----

    /// The consumer's secret, trailing newline removed (Ruby's `chomp`); `None` if unknown.
    pub fn consumer_secret(&self, key: &str) -> Option<String> {
        if !safe_name(key) {
            return None;
        }
        let mut s = fs::read_to_string(self.root.join("oauth").join(key)).ok()?;
        if s.ends_with('\n') {
            s.pop();
            if s.ends_with('\r') {
                s.pop();
            }
        } else if s.ends_with('\r') {
            s.pop();
        }
        Some(s)
    }

    /// Writes `oauth/<key>` readable by the owner only, as the server does (mode 0600).
    pub fn store_consumer(&self, key: &str, secret: &str) -> io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.root.join("oauth").join(key))?;
        file.write_all(secret.as_bytes())
    }

    // ---- instances ----

    pub fn instance_exists(&self, uuid: &str) -> bool {
        safe_name(uuid) && self.instance_dir(uuid).exists()
    }

    /// Loads an instance as `Instance.find` does (which also recreates its deployment
    /// directory if it went missing); `Ok(None)` when unknown.
    pub fn load(&self, uuid: &str) -> Result<Option<Instance>, Fault> {
        if !self.instance_exists(uuid) {
            return Ok(None);
        }
        let dir = self.instance_dir(uuid);
        let xml = fs::read_to_string(dir.join(CONFIG_FILE))?;
        let config = parse_instance_config(&xml).map_err(|e| Fault::Raised(e.to_string()))?;
        let state: State = serde_json::from_slice(&fs::read(dir.join(STATE_FILE))?)?;
        if safe_name(&config.deployable_id) {
            fs::create_dir_all(self.deployment_dir(&config.deployable_id))?;
        }
        Ok(Some(Instance {
            uuid: uuid.to_string(),
            config,
            state,
        }))
    }

    pub fn save(&self, inst: &Instance) -> Result<(), Fault> {
        let path = self.instance_dir(&inst.uuid).join(STATE_FILE);
        fs::write(path, serde_json::to_vec_pretty(&inst.state)?)?;
        Ok(())
    }

    /// The stored state of an instance directory, if any (a re-POST keeps service metadata).
    pub fn previous_state(&self, uuid: &str) -> Option<State> {
        let bytes = fs::read(self.instance_dir(uuid).join(STATE_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// `POST /configs`: writes the instance like `Instance.new(uuid, xml)`, then links it into
    /// its deployment as `FileUtils.ln_s` does — into the existing link's directory when the
    /// link already exists, which fails on the third registration (`Errno::EEXIST`, a 500)
    /// after everything else was rewritten. The consumer entry is written last.
    pub fn register(&self, uuid: &str, xml: &str, config: &InstanceConfig) -> Result<(), Fault> {
        if !safe_name(uuid) || !safe_name(&config.deployable_id) {
            return Err(Fault::Raised(format!("refusing to store {uuid:?}")));
        }
        let dir = self.instance_dir(uuid);
        let previous = self.previous_state(uuid);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(CONFIG_FILE), xml)?;
        let registered = fs::metadata(&dir)?.ctime().max(0) as u64;
        let inst = Instance {
            uuid: uuid.to_string(),
            config: config.clone(),
            state: State::registered(config, previous, registered),
        };
        self.save(&inst)?;
        fs::write(
            dir.join(format!("{uuid}.tgz")),
            crate::tarball::build(&config.files),
        )?;
        let deployment = self.deployment_dir(&config.deployable_id);
        fs::create_dir_all(&deployment)?;
        let mut link = deployment.join(uuid);
        if link.is_dir() {
            link = link.join(uuid);
        }
        std::os::unix::fs::symlink(&dir, &link)?;
        if let Some(secret) = &config.secret {
            self.store_consumer(uuid, secret)?;
        }
        Ok(())
    }

    pub fn set_ip(&self, uuid: &str, ip: &str) -> io::Result<()> {
        fs::write(self.instance_dir(uuid).join(IP_FILE), ip)
    }

    /// The last recorded address; `None` before the first `PUT /params`.
    pub fn ip(&self, uuid: &str) -> Option<String> {
        fs::read_to_string(self.instance_dir(uuid).join(IP_FILE)).ok()
    }

    pub fn tarball(&self, uuid: &str) -> Option<(Vec<u8>, std::time::SystemTime)> {
        let path = self.instance_dir(uuid).join(format!("{uuid}.tgz"));
        let modified = fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        Some((fs::read(path).ok()?, modified))
    }

    pub fn save_tarball(&self, uuid: &str, bytes: &[u8]) -> io::Result<()> {
        fs::write(self.instance_dir(uuid).join(format!("{uuid}.tgz")), bytes)
    }

    // ---- deployments ----

    pub fn deployment_exists(&self, deployment: &str) -> bool {
        safe_name(deployment) && self.deployment_dir(deployment).exists()
    }

    /// Instance uuids linked into a deployment, sorted.
    pub fn deployment_members(&self, deployment: &str) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = fs::read_dir(self.deployment_dir(deployment))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Seconds since the epoch of the deployment directory's ctime (its "registered" time).
    pub fn deployment_registered(&self, deployment: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.deployment_dir(deployment))?
            .ctime()
            .max(0) as u64)
    }

    /// `DELETE /deployment`: removes each member instance, its link and its OAuth consumer
    /// entry, then the deployment directory. Returns the removed path (the answer's body).
    pub fn delete_deployment(&self, deployment: &str) -> Result<String, Fault> {
        let dir = self.deployment_dir(deployment);
        for uuid in self.deployment_members(deployment)? {
            if safe_name(&uuid) {
                remove_dir_all_if_present(&self.instance_dir(&uuid))?;
                remove_file_if_present(&dir.join(&uuid))?;
                remove_file_if_present(&self.root.join("oauth").join(&uuid))?;
            }
        }
        remove_dir_all_if_present(&dir)?;
        Ok(dir.to_string_lossy().into_owned())
    }
}

fn remove_dir_all_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn remove_file_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
