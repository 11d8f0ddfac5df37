//! Integration tests of the replay engine against the real Config Server emulator binary:
//! registrations (never re-POSTed), params with the guest's address, own origin, duplicates,
//! deletions and invalid changes here; parking and TTL in `replay/parking.rs`; an unreachable
//! or hung server and credential fallbacks in `replay/faults.rs`.
//!
//! Each test starts its own emulator on a loopback port and its own store in a temporary
//! directory. No sleeps as synchronisation: every outcome is awaited from `apply`.

mod support;

#[path = "replay/faults.rs"]
mod faults;
#[path = "replay/merge.rs"]
mod merge;
#[path = "replay/parking.rs"]
mod parking;

use std::net::SocketAddr;
use std::time::Duration;

use audrey_federation::change::{Change, Event};
use audrey_federation::config::ReplayConfig;
use audrey_federation::replay::{Conductor, Outcome, Replayer};
use audrey_federation::store::Store;
use base64::Engine as _;
use support::client::{audrey_data, Client, Creds, InstanceXml, ServiceXml};
use support::emulator::Emulator;

/// This site.
pub const SITE: &str = "site-a";
/// Where the changes come from.
pub const PEER: &str = "site-b";
pub const DEPLOYMENT: &str = "D1";

pub fn conductor() -> Creds {
    Creds::new("conductor", "c0nduct0r")
}

/// This site: its Config Server (the emulator), a client to it, the store and the replayer.
pub struct Site {
    pub emu: Emulator,
    pub client: Client,
    pub store: Store,
    pub replayer: Replayer,
    pub dir: tempfile::TempDir,
}

impl Site {
    pub async fn start() -> Site {
        Site::start_with(ReplayConfig::default()).await
    }

    pub async fn start_with(config: ReplayConfig) -> Site {
        let emu = Emulator::start(&conductor().key, &conductor().secret);
        let client = Client::new(emu.addr());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state"), SITE).unwrap();
        let replayer = replayer(emu.addr(), store.clone(), &config);
        Site {
            emu,
            client,
            store,
            replayer,
            dir,
        }
    }

    /// Conductor registers `x` here directly (not a replay).
    pub async fn register_locally(&self, x: &InstanceXml) {
        let r = self
            .client
            .register(&conductor(), 1, &x.uuid, &x.to_xml())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "registering {} locally", x.uuid);
    }

    /// `GET /ip/1/<uuid>`: (status, body).
    pub async fn ip(&self, uuid: &str) -> (u16, String) {
        let r = self.client.get_ip(1, uuid).await.unwrap();
        (r.status, r.text())
    }

    /// The value `reader` sees for its `peer_ip` parameter in `GET /configs` (None: empty).
    pub async fn peer_ip(&self, reader: &InstanceXml) -> Option<String> {
        let creds = Creds::new(&reader.uuid, &reader.secret);
        let r = self
            .client
            .get_configs(2, &reader.uuid, None, &creds)
            .await
            .unwrap();
        assert!(
            r.status == 200 || r.status == 202,
            "GET /configs {}: {} {}",
            reader.uuid,
            r.status,
            r.text()
        );
        let body = r.text();
        let start = body.find("|peer_ip&")? + "|peer_ip&".len();
        let encoded = body[start..].split('|').next().unwrap_or("");
        if encoded.is_empty() {
            return None;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        Some(String::from_utf8(bytes).unwrap())
    }

    /// `origin_seq` of the newest `name` (a provided parameter) this site holds for `uuid`.
    pub fn held_seq(&self, uuid: &str, name: &str) -> Option<u64> {
        let state = self.store.instance_state(uuid).unwrap()?;
        state.params.get(name).map(|s| s.version.seq)
    }

    /// `origin_seq` of the registration of `uuid` this site holds.
    pub fn registered_seq(&self, uuid: &str) -> Option<u64> {
        let state = self.store.instance_state(uuid).unwrap()?;
        state.registration.map(|r| r.version.seq)
    }

    /// The names `GET /params/2/<uuid>` still asks for (signed as the instance): v2 lists
    /// the missing parameters, then the services (`|ipaddress||`; `|||` once reported).
    pub async fn missing(&self, x: &InstanceXml) -> String {
        let creds = Creds::new(&x.uuid, &x.secret);
        let r = self.client.get_params(2, &x.uuid, &creds).await.unwrap();
        assert_eq!(r.status, 200, "GET /params {}", x.uuid);
        r.text()
    }
}

pub fn replayer(server: SocketAddr, store: Store, config: &ReplayConfig) -> Replayer {
    let c = conductor();
    Replayer::new(
        SITE,
        server.to_string().parse().unwrap(),
        Conductor {
            key: c.key,
            secret: c.secret,
        },
        store,
        config,
    )
}

/// An instance that provides `ipaddress`.
pub fn provider(uuid: &str) -> InstanceXml {
    InstanceXml::new(uuid, DEPLOYMENT, &format!("secret-{uuid}")).provides("ipaddress")
}

/// An instance whose service reads `provider`'s `ipaddress` as `peer_ip`.
pub fn reader(uuid: &str, provider: &str) -> InstanceXml {
    InstanceXml::new(uuid, DEPLOYMENT, &format!("secret-{uuid}"))
        .service(ServiceXml::new("web_svc").reference("peer_ip", provider, "ipaddress"))
}

pub fn registration(origin: &str, origin_seq: u64, instance_seq: u64, x: &InstanceXml) -> Change {
    Change {
        origin_site: origin.into(),
        incarnation: "a1a1a1a1a1a1a1a1".into(),
        // Versions follow the origin's order, whatever the test's clock does.
        version_ms: origin_seq,
        origin_seq,
        instance_seq,
        api_version: 1,
        instance: Some(x.uuid.clone()),
        deployment: Some(x.deployment.clone()),
        client_addr: Some("10.0.0.250".into()),
        captured_at_ms: audrey_federation::change::now_ms(),
        event: Event::Registration {
            instance_config: x.to_xml(),
            secret: x.secret.clone(),
        },
    }
}

/// A guest of `uuid` at `client_addr` reporting `ipaddress = value`.
pub fn params(
    origin: &str,
    origin_seq: u64,
    instance_seq: u64,
    uuid: &str,
    value: &str,
    client_addr: &str,
) -> Change {
    Change {
        origin_site: origin.into(),
        incarnation: "a1a1a1a1a1a1a1a1".into(),
        // Versions follow the origin's order, whatever the test's clock does.
        version_ms: origin_seq,
        origin_seq,
        instance_seq,
        api_version: 2,
        instance: Some(uuid.into()),
        deployment: Some(DEPLOYMENT.into()),
        client_addr: Some(client_addr.into()),
        captured_at_ms: audrey_federation::change::now_ms(),
        event: Event::Params {
            audrey_data: audrey_data(&[("ipaddress", value)]),
            values: vec![("ipaddress".into(), value.into())],
            return_codes: false,
        },
    }
}

pub fn deletion(origin: &str, origin_seq: u64, deployment: &str) -> Change {
    Change {
        origin_site: origin.into(),
        incarnation: "a1a1a1a1a1a1a1a1".into(),
        // Versions follow the origin's order, whatever the test's clock does.
        version_ms: origin_seq,
        origin_seq,
        instance_seq: 0,
        api_version: 1,
        instance: None,
        deployment: Some(deployment.into()),
        client_addr: None,
        captured_at_ms: audrey_federation::change::now_ms(),
        event: Event::Deletion,
    }
}

#[tokio::test]
async fn registration_replayed_when_unknown() {
    let site = Site::start().await;
    let x = provider("X1");
    assert_eq!(site.ip("X1").await.0, 404);

    let outcome = site.replayer.apply(registration(PEER, 1, 1, &x)).await;
    assert_eq!(outcome, Ok(Outcome::Applied));
    assert_eq!(site.ip("X1").await, (200, String::new()));
    assert_eq!(site.registered_seq("X1"), Some(1));
    assert_eq!(
        site.store.instance_secret("X1").unwrap().as_deref(),
        Some("secret-X1")
    );
    // The instance's own credentials work here now: the registration really happened.
    assert_eq!(site.missing(&x).await, "|ipaddress||");
}

#[tokio::test]
async fn registration_not_reposted_when_known() {
    let site = Site::start().await;
    let x = provider("X1");
    site.register_locally(&x).await;
    let r = site
        .client
        .put_params(
            2,
            "X1",
            &x.secret,
            &audrey_data(&[("ipaddress", "10.0.0.9")]),
            support::client::Placement::Header,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(site.missing(&x).await, "|||");

    // The same instance registered at the peer arrives: recorded, but never re-POSTed
    // (a re-POST would wipe the value reported above).
    let outcome = site.replayer.apply(registration(PEER, 7, 1, &x)).await;
    assert_eq!(outcome, Ok(Outcome::Applied));
    assert_eq!(site.missing(&x).await, "|||");
    assert_eq!(site.ip("X1").await, (200, "127.0.0.1".to_owned()));
    assert_eq!(site.registered_seq("X1"), Some(7));
}

#[tokio::test]
async fn params_replayed_with_the_guests_address() {
    let site = Site::start().await;
    let (x, y) = (provider("X1"), reader("Y1", "X1"));
    site.register_locally(&x).await;
    site.register_locally(&y).await;
    assert_eq!(site.peer_ip(&y).await, None);

    // A public guest address: the last untrusted X-Forwarded-For hop.
    let c = params(PEER, 3, 2, "X1", "192.0.2.10", "203.0.113.7");
    assert_eq!(site.replayer.apply(c).await, Ok(Outcome::Applied));
    assert_eq!(site.peer_ip(&y).await.as_deref(), Some("192.0.2.10"));
    assert_eq!(site.ip("X1").await, (200, "203.0.113.7".to_owned()));

    // A private one: every hop is trusted, the first is recorded.
    let c = params(PEER, 4, 3, "X1", "192.0.2.11", "10.1.2.3");
    assert_eq!(site.replayer.apply(c).await, Ok(Outcome::Applied));
    assert_eq!(site.peer_ip(&y).await.as_deref(), Some("192.0.2.11"));
    assert_eq!(site.ip("X1").await, (200, "10.1.2.3".to_owned()));
    assert_eq!(site.held_seq("X1", "ipaddress"), Some(4));
    let origin = site.store.origin_state(PEER).unwrap().unwrap();
    assert_eq!((origin.max_origin_seq, origin.applied), (4, 2));
}

#[tokio::test]
async fn own_origin_is_skipped() {
    let site = Site::start().await;
    let x = provider("X1");
    let outcome = site.replayer.apply(registration(SITE, 1, 1, &x)).await;
    assert_eq!(outcome, Ok(Outcome::OwnOrigin));
    assert_eq!(site.ip("X1").await.0, 404, "no echo to the local server");
    assert_eq!(site.store.instance_state("X1").unwrap(), None);
}

#[tokio::test]
async fn duplicates_have_no_second_effect() {
    let site = Site::start().await;
    let (x, y) = (provider("X1"), reader("Y1", "X1"));
    site.register_locally(&x).await;
    site.register_locally(&y).await;
    let first = params(PEER, 10, 5, "X1", "192.0.2.1", "198.51.100.1");
    assert_eq!(
        site.replayer.apply(first.clone()).await,
        Ok(Outcome::Applied)
    );

    // The guest reports again locally (from loopback); a redelivered or older change
    // must not overwrite that.
    let r = site
        .client
        .put_params(
            2,
            "X1",
            &x.secret,
            &audrey_data(&[("ipaddress", "192.0.2.2")]),
            support::client::Placement::Header,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    assert_eq!(
        site.replayer.apply(first.clone()).await,
        Ok(Outcome::Duplicate)
    );
    let older = params(PEER, 9, 4, "X1", "192.0.2.3", "198.51.100.3");
    assert_eq!(site.replayer.apply(older).await, Ok(Outcome::Duplicate));
    // A fresh replayer (empty id cache, as after a restart) decides from the store.
    let fresh = replayer(
        site.emu.addr(),
        site.store.clone(),
        &ReplayConfig::default(),
    );
    assert_eq!(fresh.apply(first).await, Ok(Outcome::Duplicate));

    assert_eq!(site.peer_ip(&y).await.as_deref(), Some("192.0.2.2"));
    assert_eq!(site.ip("X1").await, (200, "127.0.0.1".to_owned()));
    assert_eq!(site.held_seq("X1", "ipaddress"), Some(10));
}

#[tokio::test]
async fn deletion_applied_and_repeat_harmless() {
    let site = Site::start().await;
    site.register_locally(&provider("X1")).await;
    assert_eq!(site.ip("X1").await.0, 200);

    let d = deletion(PEER, 20, DEPLOYMENT);
    assert_eq!(site.replayer.apply(d.clone()).await, Ok(Outcome::Applied));
    assert_eq!(site.ip("X1").await.0, 404);
    assert_eq!(
        site.store.tombstone(DEPLOYMENT).unwrap().map(|v| v.seq),
        Some(20)
    );

    // Redelivered: a duplicate, even without the id cache.
    assert_eq!(site.replayer.apply(d.clone()).await, Ok(Outcome::Duplicate));
    let fresh = replayer(
        site.emu.addr(),
        site.store.clone(),
        &ReplayConfig::default(),
    );
    assert_eq!(fresh.apply(d).await, Ok(Outcome::Duplicate));
    // The same deployment deleted at a third site too: older than the tombstone, superseded;
    // newer, applied (the server answers 404: gone already).
    let older = deletion("site-c", 3, DEPLOYMENT);
    assert_eq!(site.replayer.apply(older).await, Ok(Outcome::Duplicate));
    let newer = deletion("site-c", 30, DEPLOYMENT);
    assert_eq!(site.replayer.apply(newer).await, Ok(Outcome::Applied));
    assert_eq!(
        site.store.tombstone(DEPLOYMENT).unwrap().map(|v| v.seq),
        Some(30)
    );
    assert_eq!(site.store.inbound_dead_letter_count(), 0);
}

#[tokio::test]
async fn invalid_changes_are_dead_lettered() {
    let site = Site::start().await;
    let mut no_instance = params(PEER, 1, 1, "X1", "192.0.2.1", "10.0.0.1");
    no_instance.instance = None;
    let mut bad_version = params(PEER, 2, 1, "X2", "192.0.2.1", "10.0.0.1");
    bad_version.api_version = 7;
    let mut bad_addr = params(PEER, 3, 1, "X3", "192.0.2.1", "10.0.0.1");
    bad_addr.client_addr = Some("somewhere".into());
    let mut no_deployment = deletion(PEER, 4, DEPLOYMENT);
    no_deployment.deployment = None;
    // Well-formed as a change, refused by the server (400): never retried.
    let mut bad_xml = registration(PEER, 5, 1, &provider("X5"));
    bad_xml.event = Event::Registration {
        instance_config: "<instance-config".into(),
        secret: "s".into(),
    };

    for c in [no_instance, bad_version, bad_addr, no_deployment, bad_xml] {
        assert_eq!(
            site.replayer.apply(c.clone()).await,
            Ok(Outcome::DeadLettered),
            "{c:?}"
        );
    }
    let letters = site.store.dead_letters_inbound(10).unwrap();
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "params change without an instance",
            "api_version 7 is not 1 or 2",
            "client_addr \"somewhere\" is not an IP address",
            "deletion without a deployment",
            "local server answered 400 Bad Request to the registration",
        ]
    );
    assert_eq!(site.ip("X5").await.0, 404);
    // The change itself is kept.
    let kept: Change = serde_json::from_slice(&letters[1].raw).unwrap();
    assert_eq!(kept.instance.as_deref(), Some("X2"));
}

#[tokio::test]
async fn instance_secrets_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), SITE).unwrap();
    assert_eq!(store.instance_secret("X1").unwrap(), None);
    // A recorded registration remembers its secret, in the same transaction.
    store
        .record_applied(&registration(PEER, 1, 1, &provider("X1")))
        .await
        .unwrap();
    assert_eq!(
        store.instance_secret("X1").unwrap().as_deref(),
        Some("secret-X1")
    );
    store.remember_secret("X2", "s2").await.unwrap();
    store.remember_secret("X2", "s2b").await.unwrap();
    store.close().await.unwrap();
    let store = Store::open(dir.path(), SITE).unwrap();
    assert_eq!(
        store.instance_secret("X1").unwrap().as_deref(),
        Some("secret-X1")
    );
    assert_eq!(store.instance_secret("X2").unwrap().as_deref(), Some("s2b"));
}

#[tokio::test]
async fn metrics_are_recorded() {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    let handle = HANDLE.get_or_init(|| audrey_federation::metrics::install().unwrap());
    let site = Site::start().await;
    site.register_locally(&provider("X1")).await;
    let c = params(PEER, 1, 1, "X1", "192.0.2.1", "10.0.0.1");
    assert_eq!(site.replayer.apply(c.clone()).await, Ok(Outcome::Applied));
    assert_eq!(site.replayer.apply(c).await, Ok(Outcome::Duplicate));
    let own = params(SITE, 1, 1, "X1", "192.0.2.1", "10.0.0.1");
    assert_eq!(site.replayer.apply(own).await, Ok(Outcome::OwnOrigin));

    let text = handle.render();
    for needle in [
        "audrey_federation_applied_total{kind=\"params\"}",
        "audrey_federation_duplicate_total{kind=\"params\"}",
        "audrey_federation_own_origin_total{kind=\"params\"}",
        "audrey_federation_lag_seconds_bucket{origin_site=\"site-b\",le=\"0.01\"}",
        "audrey_federation_lag_seconds_bucket{origin_site=\"site-b\",le=\"3600\"}",
        "audrey_federation_last_applied_timestamp_seconds{origin_site=\"site-b\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains("X1"), "no instance ids in labels");
}

/// Poll `check` every few milliseconds until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    for _ in 0..10_000 {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}
