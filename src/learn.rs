//! Learning uuid → deployment for instances registered before the sidecar was installed,
//! from the server's storage directory (`proxy.upstream_storage_dir`, mounted read-only):
//! each `deployables/<deployment>/<uuid>` entry is one mapping.
//!
//! Owns reading that directory. It must never write there, and never overrides a mapping
//! the store already has (a captured registration is the authority).

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// All `(uuid, deployment)` pairs found under `<dir>/deployables/`. Unreadable entries
/// are skipped with a log line; a missing `deployables/` yields nothing.
pub fn scan(dir: &Path) -> Vec<(String, String)> {
    let root = dir.join("deployables");
    let Ok(deployments) = std::fs::read_dir(&root) else {
        tracing::debug!(dir = %root.display(), "no deployables directory to learn from");
        return Vec::new();
    };
    let mut pairs = Vec::new();
    for dep in deployments.flatten() {
        let Some(deployment) = dep.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        match std::fs::read_dir(dep.path()) {
            Ok(instances) => {
                for inst in instances.flatten() {
                    if let Some(uuid) = inst.file_name().to_str() {
                        pairs.push((uuid.to_owned(), deployment.clone()));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(path = %dep.path().display(), error = %e, "cannot read deployable entry")
            }
        }
    }
    pairs
}

/// Scans now and then every `every`, feeding new mappings to the store and waking the
/// publisher when any was learnt.
pub async fn run(
    dir: std::path::PathBuf,
    store: Store,
    wake: std::sync::Arc<tokio::sync::Notify>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let d = dir.clone();
        let pairs = tokio::task::spawn_blocking(move || scan(&d))
            .await
            .unwrap_or_default();
        if !pairs.is_empty() {
            match store.learn_deployments(pairs).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(learnt = n, dir = %dir.display(), "learnt instance deployments from the server's storage");
                    wake.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "cannot record learnt deployments"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_deployables_entries() {
        let dir = tempfile::tempdir().unwrap();
        for (d, u) in [("D1", "I1"), ("D1", "I2"), ("D2", "I3")] {
            let p = dir.path().join("deployables").join(d);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join(u), "").unwrap();
        }
        let mut got = scan(dir.path());
        got.sort();
        let want: Vec<(String, String)> = [("I1", "D1"), ("I2", "D1"), ("I3", "D2")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        assert!(scan(&dir.path().join("missing")).is_empty());
    }
}
