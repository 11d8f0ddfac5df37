//! One federated site: an emulated Config Server with a sidecar in front of it, federating
//! through a real broker over mutual TLS with SASL EXTERNAL (identity = the site's
//! certificate CN). Also the calls a test makes on a site: restart or kill its sidecar,
//! scrape its metrics, read its durable state once it is stopped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use audrey_federation::store::{OriginState, Store};

use super::certs::CertPaths;
use super::client::{audrey_data, exchange, Client, Creds, InstanceXml, Placement};
use super::emulator::Emulator;
use super::sidecar::{config, Sidecar};

pub const CONDUCTOR: (&str, &str) = ("conductor", "c0nduct0r");
/// How long [`Site::sees`] waits for a value to arrive.
pub const SEES_LIMIT: Duration = Duration::from_secs(60);

pub struct Site {
    pub name: String,
    pub emulator: Emulator,
    pub sidecar: Sidecar,
    pub dir: PathBuf,
}

/// The `[amqp]` lines of a site using mutual TLS with its own certificate (SASL EXTERNAL).
pub fn mtls(amqps_url: &str, certs: &CertPaths, site: &str) -> String {
    with_identity(
        amqps_url,
        &certs.ca,
        &certs.site_cert(site),
        &certs.site_key(site),
    )
}

/// The `[amqp]` lines with an explicit CA, client certificate and key (which also signs), and
/// the federation's seal key file beside the CA ([`seal_key_file`]).
pub fn with_identity(amqps_url: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "url = \"{amqps_url}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nseal_key_file = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display(),
        seal_key_file(ca).display()
    )
}

/// The federation's seal key file of the PKI whose CA is `ca` (`federation.seal` beside it),
/// written with a fresh random key on first use: every site of a test shares it.
pub fn seal_key_file(ca: &Path) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = ca.with_file_name("federation.seal");
    // The key is made by the recipe of docs/security.md ("Sealed secrets").
    let out = std::process::Command::new("sh")
        .args(["-c", "printf 'k2026:%s\\n' \"$(openssl rand -base64 32)\""])
        .output()
        .expect("openssl rand");
    assert!(out.status.success(), "openssl rand: {out:?}");
    let line = String::from_utf8(out.stdout).expect("utf-8 key line");
    // create_new: the first site of a test writes it, the others (and reruns) keep it.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        f.write_all(line.as_bytes())
            .expect("write the seal key file");
    }
    path
}

impl Site {
    /// Starts site `name` against the broker at `amqps_url`; its state lives in `dir`.
    pub fn start(name: &str, amqps_url: &str, certs: &CertPaths, dir: &Path) -> Site {
        Site::launch(
            name,
            &mtls(amqps_url, certs, name),
            dir,
            Site::emulator(),
            None,
            "",
        )
    }

    /// A Config Server emulator that knows [`CONDUCTOR`].
    pub fn emulator() -> Emulator {
        Emulator::start(CONDUCTOR.0, CONDUCTOR.1)
    }

    /// Starts a sidecar with the given `[amqp]` lines in front of `emulator`, or of
    /// `upstream` when something (a relay) stands between them; `proxy_extra` lines go into
    /// its `[proxy]` section.
    pub fn launch(
        name: &str,
        amqp: &str,
        dir: &Path,
        emulator: Emulator,
        upstream: Option<SocketAddr>,
        proxy_extra: &str,
    ) -> Site {
        Site::launch_wrapped(name, amqp, dir, emulator, upstream, proxy_extra, &[])
    }

    /// [`Site::launch`] with the sidecar run through `wrapper` (see [`Sidecar::start_wrapped`]).
    pub fn launch_wrapped(
        name: &str,
        amqp: &str,
        dir: &Path,
        emulator: Emulator,
        upstream: Option<SocketAddr>,
        proxy_extra: &str,
        wrapper: &[String],
    ) -> Site {
        std::fs::create_dir_all(dir).unwrap();
        let secret = dir.join("conductor.secret");
        std::fs::write(&secret, CONDUCTOR.1).unwrap();
        let extra = format!(
            "[amqp]\n{amqp}reconnect_initial = 0.1\nreconnect_max = 2\n\
             [oauth]\nconductor_key = \"{ck}\"\nconductor_secret_file = \"{sf}\"\n",
            ck = CONDUCTOR.0,
            sf = secret.display(),
        );
        let target = upstream.unwrap_or(emulator.addr());
        let config_path = dir.join("config.toml");
        std::fs::write(
            &config_path,
            config(name, &format!("http://{target}"), dir, proxy_extra, &extra),
        )
        .unwrap();
        let sidecar = Sidecar::start_wrapped(dir, config_path, wrapper);
        Site {
            name: name.to_string(),
            emulator,
            sidecar,
            dir: dir.to_owned(),
        }
    }

    /// A client aimed at this site's sidecar (what guests and Conductor use).
    pub fn client(&self) -> Client {
        Client::new(self.sidecar.proxy).with_host(&format!("configserver.{}.example", self.name))
    }

    /// A client aimed at the server itself (to observe what it holds).
    pub fn server(&self) -> Client {
        Client::new(self.emulator.addr())
    }

    pub fn conductor() -> Creds {
        Creds::new(CONDUCTOR.0, CONDUCTOR.1)
    }

    /// Conductor registers `x` through this site's sidecar (must answer 200).
    pub async fn register(&self, x: &InstanceXml) {
        let r = self
            .client()
            .register(&Site::conductor(), 1, &x.uuid, &x.to_xml())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "register {} at {}: {r:?}", x.uuid, self.name);
    }

    /// Guest `x` reports `ipaddress = value` through this site's sidecar (200 or 202).
    pub async fn report(&self, x: &InstanceXml, value: &str) {
        let data = audrey_data(&[("ipaddress", value)]);
        let r = self
            .client()
            .put_params(2, &x.uuid, &x.secret, &data, Placement::Header)
            .await;
        let r = r.unwrap_or_else(|e| panic!("{} reports {value} at {}: {e}", x.uuid, self.name));
        assert!(
            r.status == 200 || r.status == 202,
            "{} reports {value} at {}: {r:?}",
            x.uuid,
            self.name
        );
    }

    /// Waits (at most [`SEES_LIMIT`]) until `consumer`'s configuration here resolves its
    /// `peer_ip` reference to `value`.
    pub async fn sees(&self, consumer: &InstanceXml, value: &str) {
        use base64::Engine;
        let want = format!(
            "peer_ip&{}|",
            base64::engine::general_purpose::STANDARD.encode(value)
        );
        let creds = Creds::new(&consumer.uuid, &consumer.secret);
        let c = self.client();
        let deadline = Instant::now() + SEES_LIMIT;
        loop {
            let r = c
                .get_configs(2, &consumer.uuid, None, &creds)
                .await
                .unwrap();
            if r.status == 200 && r.text().contains(&want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} at {} never saw {value}: {} {}",
                consumer.uuid,
                self.name,
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the sidecar and starts it again on the same config and state (new ports).
    pub fn kill_and_restart_sidecar(&mut self) {
        self.sidecar.kill();
        self.sidecar = Sidecar::start_with(&self.dir, self.sidecar.config_path());
    }

    /// The sidecar's Prometheus text.
    pub async fn metrics(&self) -> String {
        let req = http::Request::get("/metrics").body(String::new()).unwrap();
        String::from_utf8(exchange(self.sidecar.admin, req).await.2.to_vec()).unwrap()
    }

    /// Sum of every sample of `metric` whose labels contain all of `labels`.
    /// Waits (at most [`SEES_LIMIT`]) until a metric (summed over series with `labels`)
    /// reaches `at_least`.
    pub async fn metric_reaches(&self, metric: &str, labels: &[&str], at_least: f64) {
        let deadline = Instant::now() + SEES_LIMIT;
        loop {
            let v = self.metric(metric, labels).await;
            if v >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {metric}{labels:?} = {v} < {at_least} after {SEES_LIMIT:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn metric(&self, metric: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics().await, metric, labels)
    }

    /// Stops the sidecar with SIGTERM (it must exit 0) and returns the replay state it kept
    /// for changes from each of `origins` (`None`: nothing from there was applied here).
    pub async fn stop_and_read_origins(&mut self, origins: &[&str]) -> Vec<Option<OriginState>> {
        let status = self.sidecar.terminate();
        assert!(
            status.success(),
            "{}: SIGTERM exit {status:?}\n{}",
            self.name,
            self.sidecar.log()
        );
        let store = Store::open(&self.dir.join("state"), &self.name).unwrap();
        let states = origins
            .iter()
            .map(|o| store.origin_state(o).unwrap())
            .collect();
        store.close().await.unwrap();
        states
    }
}

/// Sum of the samples of `metric` (exact name, no suffix) whose labels contain `labels`.
pub fn sum_metric(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            (name == metric && labels.iter().all(|x| series.contains(x)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
