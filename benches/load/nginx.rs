//! Debian's nginx as the comparison reverse proxy: a child process with a generated config
//! in a temporary folder (`worker_processes auto`, upstream keep-alive, `Host` and
//! `X-Forwarded-For` passed like the sidecar does, no access log), one listener per
//! upstream. It owns only that process and folder, and stops the process on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

pub struct Nginx {
    child: Child,
    /// The listener in front of each upstream, in the order given.
    pub listeners: Vec<SocketAddr>,
    dir: tempfile::TempDir,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Nginx {
    /// Starts nginx with one plain reverse-proxy listener per upstream.
    pub fn start(upstreams: &[SocketAddr]) -> anyhow::Result<Nginx> {
        let dir = tempfile::Builder::new().prefix("audrey-nginx-").tempdir()?;
        let d = dir.path().display().to_string();
        let mut listeners = Vec::new();
        let mut servers = String::new();
        for (i, up) in upstreams.iter().enumerate() {
            let listen = free_addr()?;
            listeners.push(listen);
            servers.push_str(&format!(
                "  upstream up{i} {{ server {up}; keepalive 128; }}\n\
                 server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://up{i};\n\
                 \x20     proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
                 \x20     proxy_set_header Host $http_host;\n\
                 \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}\n"
            ));
        }
        // As root the workers would otherwise switch to `nobody`, who cannot use the temp folder.
        let user = if effective_uid() == Some(0) {
            "user root;\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}worker_processes auto;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
             \x20 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             {servers}}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        // Debian puts it in /usr/sbin, which a non-root PATH may lack.
        let bin = if std::path::Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (apt-get install nginx)")?;
        let mut nginx = Nginx {
            child,
            listeners,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for l in nginx.listeners.clone() {
            while TcpStream::connect(l).is_err() {
                if let Ok(Some(status)) = nginx.child.try_wait() {
                    bail!("nginx exited {status}: {}", nginx.error_log());
                }
                if Instant::now() > deadline {
                    bail!(
                        "nginx not listening on {l} after 10s: {}",
                        nginx.error_log()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(nginx)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT would wait for keep-alive clients; SIGTERM is nginx's fast shutdown.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective saved fs`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}
