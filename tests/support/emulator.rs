//! Starts the real `audrey-config-server-emulator` binary on `127.0.0.1:0` in a temporary
//! storage directory, learns its address from the `listening on <addr>` line (bounded
//! wait), and kills it on drop. It never picks a port itself.
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};

use super::client::Creds;

/// How long the binary may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Options for [`Emulator::launch`].
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    pub conductor: Creds,
    /// `--idle-timeout-secs`; the binary's default when `None`.
    pub idle_timeout_secs: Option<u64>,
    /// Reuse a storage directory (e.g. to restart over the same state); a fresh temporary
    /// directory when `None`.
    pub storage_dir: Option<PathBuf>,
}

/// A running emulator; the process is killed and the temporary storage removed on drop.
pub struct Emulator {
    child: Child,
    addr: SocketAddr,
    storage: PathBuf,
    conductor: Creds,
    _tmp: Option<tempfile::TempDir>,
}

impl Emulator {
    /// Starts an emulator that knows Conductor as `conductor_key`/`conductor_secret`.
    /// Panics if it does not come up (test helper).
    pub fn start(conductor_key: &str, conductor_secret: &str) -> Emulator {
        let conductor = Creds::new(conductor_key, conductor_secret);
        Emulator::launch(EmulatorOptions {
            conductor,
            idle_timeout_secs: None,
            storage_dir: None,
        })
        .expect("emulator starts")
    }

    pub fn launch(opts: EmulatorOptions) -> anyhow::Result<Emulator> {
        Emulator::launch_logged(opts, None)
    }

    /// [`Emulator::launch`], with `--request-log <request_log>` when given (one JSON line per
    /// change the server accepted, in order).
    pub fn launch_logged(
        opts: EmulatorOptions,
        request_log: Option<&Path>,
    ) -> anyhow::Result<Emulator> {
        let (tmp, storage) = match opts.storage_dir {
            Some(dir) => (None, dir),
            None => {
                let tmp = tempfile::tempdir()?;
                let storage = tmp.path().join("configs");
                (Some(tmp), storage)
            }
        };
        std::fs::create_dir_all(&storage)?;
        let secret_file = storage.with_file_name(format!(
            "{}-conductor-secret",
            storage
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("storage")
        ));
        std::fs::write(&secret_file, &opts.conductor.secret)?;
        let mut cmd = Command::new(super::bin(
            option_env!("CARGO_BIN_EXE_audrey-config-server-emulator"),
            "audrey-config-server-emulator",
        ));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--storage-dir")
            .arg(&storage)
            .arg("--conductor-key")
            .arg(&opts.conductor.key)
            .arg("--conductor-secret-file")
            .arg(&secret_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            // Expected 500s would otherwise log a warning each.
            cmd.env("RUST_LOG", "error");
        }
        if let Some(log) = request_log {
            cmd.arg("--request-log").arg(log);
        }
        if let Some(idle) = opts.idle_timeout_secs {
            cmd.arg("--idle-timeout-secs").arg(idle.to_string());
        }
        let mut child = cmd.spawn().context("spawning the emulator")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(anyhow!("emulator did not announce its address: {other:?}"));
            }
        };
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?
            .parse()?;
        Ok(Emulator {
            child,
            addr,
            storage,
            conductor: opts.conductor,
            _tmp: tmp,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `STORAGE_DIR`: `instances/`, `deployables/<deployment>/<uuid>`, `oauth/<key>`.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    pub fn conductor(&self) -> Creds {
        self.conductor.clone()
    }

    /// OS process id, e.g. to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
