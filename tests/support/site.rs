//! One federated site: an emulated Config Server with a sidecar in front of it, federating
//! through a real broker over mutual TLS with SASL EXTERNAL (identity = the site's
//! certificate CN).

use std::path::Path;

use super::certs::CertPaths;
use super::client::{Client, Creds};
use super::emulator::Emulator;
use super::sidecar::{config, Sidecar};

pub const CONDUCTOR: (&str, &str) = ("conductor", "c0nduct0r");

pub struct Site {
    pub name: String,
    pub emulator: Emulator,
    pub sidecar: Sidecar,
}

impl Site {
    /// Starts site `name` against the broker at `amqps_url`; its state lives in `dir`.
    pub fn start(name: &str, amqps_url: &str, certs: &CertPaths, dir: &Path) -> Site {
        let emulator = Emulator::start(CONDUCTOR.0, CONDUCTOR.1);
        std::fs::create_dir_all(dir).unwrap();
        let secret = dir.join("conductor.secret");
        std::fs::write(&secret, CONDUCTOR.1).unwrap();
        let extra = format!(
            "[amqp]\nurl = \"{amqps_url}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             reconnect_initial = 0.1\nreconnect_max = 2\n\
             [oauth]\nconductor_key = \"{ck}\"\nconductor_secret_file = \"{sf}\"\n",
            ca = certs.ca.display(),
            cert = certs.site_cert(name).display(),
            key = certs.site_key(name).display(),
            ck = CONDUCTOR.0,
            sf = secret.display(),
        );
        let sidecar = Sidecar::start(
            dir,
            &config(
                name,
                &format!("http://{}", emulator.addr()),
                dir,
                "",
                &extra,
            ),
        );
        Site {
            name: name.to_string(),
            emulator,
            sidecar,
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
}
