//! Spawns the real `audrey-federation` binary with a config written to a temp folder,
//! learns its ports from the one `listening` line it prints, and stops it on Drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running sidecar process.
pub struct Sidecar {
    child: Option<Child>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    config: PathBuf,
}

/// Minimal config for a site in front of `upstream`, with its state in `dir/state`;
/// `proxy_extra` lines go into `[proxy]`, `extra` after everything (whole sections).
pub fn config(site: &str, upstream: &str, dir: &Path, proxy_extra: &str, extra: &str) -> String {
    format!(
        "site = \"{site}\"\n\
         [proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{proxy_extra}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [state]\ndir = \"{state}\"\n{extra}\n",
        state = dir.join("state").display(),
    )
}

impl Sidecar {
    /// Writes `config_toml` into `dir/config.toml` and starts the binary on it.
    pub fn start(dir: &Path, config_toml: &str) -> Sidecar {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml).unwrap();
        Self::start_with(dir, config)
    }

    /// Starts the binary on an existing config file (a restart keeps the state folder).
    pub fn start_with(dir: &Path, config: PathBuf) -> Sidecar {
        Sidecar::launch(dir, config, &[], &[])
    }

    /// As [`Sidecar::start_with`], with extra environment variables for the process.
    pub fn start_with_env(dir: &Path, config: PathBuf, env: &[(&str, &str)]) -> Sidecar {
        Sidecar::launch(dir, config, &[], env)
    }

    /// [`Sidecar::start_with`], run through `wrapper` (a command and its arguments that
    /// execs the rest, e.g. `faketime -f +30s`) when it is not empty.
    pub fn start_wrapped(dir: &Path, config: PathBuf, wrapper: &[String]) -> Sidecar {
        Sidecar::launch(dir, config, wrapper, &[])
    }

    fn launch(dir: &Path, config: PathBuf, wrapper: &[String], env: &[(&str, &str)]) -> Sidecar {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("sidecar.log"))
            .unwrap();
        let bin = super::bin(
            option_env!("CARGO_BIN_EXE_audrey-federation"),
            "audrey-federation",
        );
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .arg("run")
            .arg("--config")
            .arg(&config)
            // `AUDREY_FEDERATION_TEST_LOG` in the test's environment chooses another level.
            .env(
                "AUDREY_FEDERATION_LOG",
                std::env::var("AUDREY_FEDERATION_TEST_LOG")
                    .unwrap_or_else(|_| "info,audrey_federation=debug".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn audrey-federation");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Every stdout line is also kept in `sidecar.stdout` (see `Sidecar::stdout`).
        let mut copy = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("sidecar.stdout"))
            .unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(copy, "{line}");
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "sidecar printed no listening line; log:\n{}",
                    std::fs::read_to_string(dir.join("sidecar.log")).unwrap_or_default()
                )
            });
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("bad listening line {line:?}"))
        };
        Sidecar {
            proxy: field("proxy="),
            admin: field("admin="),
            child: Some(child),
            dir: dir.to_owned(),
            config,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar did not exit within 30s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Everything the sidecar printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("sidecar.stdout")).unwrap_or_default()
    }

    /// Everything the sidecar logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sidecar.log")).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}
