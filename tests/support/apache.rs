//! A real Apache httpd (Debian's `apache2`) as the TLS front proxy of a Config Server host,
//! on a loopback port, with its whole configuration in a temp folder: the server-wide part is
//! ours, the vhost file is the operator's and is what the takeover script edits.
//!
//! Owns the process (stopped on Drop) and reload (SIGUSR1, Apache's graceful restart). It must
//! not touch the system's Apache configuration or service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const HTTPD: &str = "/usr/sbin/apache2";
const MODULES: &str = "/usr/lib/apache2/modules";

/// A running Apache.
pub struct Apache {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Apache {
    /// The main configuration for `port`; it includes `vhost.conf`, which the caller writes.
    pub fn configure(dir: &Path, port: u16) -> PathBuf {
        let modules = [
            ("mpm_event_module", "mod_mpm_event.so"),
            ("authz_core_module", "mod_authz_core.so"),
            ("proxy_module", "mod_proxy.so"),
            ("proxy_http_module", "mod_proxy_http.so"),
            ("headers_module", "mod_headers.so"),
            ("ssl_module", "mod_ssl.so"),
        ]
        .iter()
        .map(|(name, file)| format!("LoadModule {name} {MODULES}/{file}\n"))
        .collect::<String>();
        let conf = dir.join("httpd.conf");
        std::fs::write(
            &conf,
            format!(
                "ServerRoot {d}\nListen 127.0.0.1:{port}\nPidFile {d}/httpd.pid\n\
                 ErrorLog {d}/error.log\n{modules}User nobody\nGroup nogroup\n\
                 ServerName localhost\nInclude {d}/vhost.conf\n",
                d = dir.display()
            ),
        )
        .unwrap();
        conf
    }

    /// `apache2 -t` on the configuration, as the takeover script's `--configtest`.
    pub fn configtest_cmd(dir: &Path) -> String {
        format!("{HTTPD} -f {}/httpd.conf -t", dir.display())
    }

    /// Starts Apache in the foreground on `dir/httpd.conf` and waits until it accepts.
    pub fn start(dir: &Path, port: u16) -> Apache {
        let child = Command::new(HTTPD)
            .arg("-f")
            .arg(dir.join("httpd.conf"))
            .arg("-DFOREGROUND")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start apache2 (scripts/install-deps installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut apache = Apache {
            child: Some(child),
            addr,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = apache.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("apache2 exited ({status}):\n{}", apache.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "apache2 not listening on {addr}:\n{}",
                apache.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        apache
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Graceful restart: re-reads the configuration, finishes requests in flight.
    pub fn reload_cmd(&self) -> String {
        format!("kill -USR1 {}", self.pid())
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// SIGTERM and wait until it has exited and its port is free.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "apache2 did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        while std::net::TcpStream::connect(self.addr).is_ok() {
            assert!(Instant::now() < deadline, "{} still accepting", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}
