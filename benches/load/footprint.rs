//! The footprint section: time from spawning the sidecar to `/readyz` answering 200
//! (capture-only, so no broker connection is involved), its resident memory once idle, and
//! the size of the binary as built and stripped. It measures processes it starts itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::proc_kib;
use crate::support::sidecar::{config, Sidecar};
use crate::support::site::Site;

#[derive(Debug, Clone, Default)]
pub struct Footprint {
    /// Spawn to `/readyz` 200, each start.
    pub ready_ms: Vec<f64>,
    /// VmRSS one second after ready, with no traffic.
    pub idle_rss_kib: u64,
    pub binary: PathBuf,
    pub binary_bytes: u64,
    pub stripped_bytes: u64,
}

pub fn run(rt: &tokio::runtime::Runtime, dir: &Path, starts: usize) -> anyhow::Result<Footprint> {
    let emulator = Site::emulator();
    let mut fp = Footprint::default();
    for i in 0..starts {
        let d = dir.join(format!("start-{i}"));
        let cfg = config(
            "bench-start",
            &format!("http://{}", emulator.addr()),
            &d,
            "",
            "",
        );
        let t0 = Instant::now();
        let s = Sidecar::start(&d, &cfg);
        rt.block_on(wait_ready(s.admin, t0))?;
        fp.ready_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        if i + 1 == starts {
            std::thread::sleep(Duration::from_secs(1));
            fp.idle_rss_kib = proc_kib(s.pid().as_raw() as u32, "VmRSS:").unwrap_or(0);
        }
    }
    fp.binary = crate::support::bin(
        option_env!("CARGO_BIN_EXE_audrey-federation"),
        "audrey-federation",
    );
    fp.binary_bytes = std::fs::metadata(&fp.binary)
        .with_context(|| format!("{}", fp.binary.display()))?
        .len();
    let stripped = dir.join("audrey-federation.stripped");
    let out = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&fp.binary)
        .output()
        .context("running strip (binutils)")?;
    if !out.status.success() {
        bail!("strip: {}", String::from_utf8_lossy(&out.stderr));
    }
    fp.stripped_bytes = std::fs::metadata(&stripped)?.len();
    Ok(fp)
}

/// Polls `GET /readyz` every millisecond until it answers 200 (at most 10 s after `t0`).
async fn wait_ready(admin: SocketAddr, t0: Instant) -> anyhow::Result<()> {
    loop {
        let req = http::Request::get("/readyz").body(String::new())?;
        if let Ok((status, _, _)) = crate::support::client::try_exchange(admin, req).await {
            if status == 200 {
                return Ok(());
            }
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("/readyz not 200 within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
