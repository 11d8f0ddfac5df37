//! A guest that goes away right after sending (FIN, RST, an HTTP/2 stream reset) while the
//! server is busy with its `PUT /params`: the server keeps the value, so the sidecar must
//! record it (it is in the outbox) and carry it (the other site's server holds it). The
//! server is the emulator behind a fault proxy that holds its answers (`Mode::Hold`: the
//! server has applied the request, its caller still waits), and the guest leaves once the
//! server has the request.

mod support;

use std::time::{Duration, Instant};

use audrey_federation::change::Event;
use audrey_federation::store::Store;
use support::abort::{put_params_and_leave, Abort};
use support::broker::{self, Broker};
use support::client::{audrey_data, Client, Creds, InstanceXml, ServiceXml};
use support::emulator::Emulator;
use support::fault_proxy::{FaultProxy, Mode};
use support::sidecar::{config, Sidecar};
use support::site::{self, Site};

/// How long the server holds each answer: far longer than the guest takes to leave.
const HOLD: Duration = Duration::from_millis(1500);
const LIMIT: Duration = Duration::from_secs(60);

/// One test at a time in this binary.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `ipaddress` an instance's server state holds (its storage), `None` if unknown there.
fn stored_ip(emulator: &Emulator, uuid: &str) -> Option<String> {
    let path = emulator
        .storage_dir()
        .join("instances")
        .join(uuid)
        .join("state.json");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    state["provided"]
        .as_array()?
        .iter()
        .find(|p| p[0] == "ipaddress")
        .and_then(|p| p[1].as_str())
        .map(str::to_owned)
}

/// Waits (bounded) until `emulator` holds `value` as `uuid`'s `ipaddress`; panics with
/// `what` and `logs()` past [`LIMIT`].
async fn server_holds(
    emulator: &Emulator,
    uuid: &str,
    value: &str,
    what: &str,
    logs: impl Fn() -> String,
) {
    let deadline = Instant::now() + LIMIT;
    while stored_ip(emulator, uuid).as_deref() != Some(value) {
        assert!(
            Instant::now() < deadline,
            "{what}: the server never held {value} (holds {:?})\n{}",
            stored_ip(emulator, uuid),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The guest reports `value` through `via` and leaves as `how` says once the server (behind
/// `proxy`) has the request.
async fn report_and_leave(
    via: Client,
    proxy: &FaultProxy,
    x: &InstanceXml,
    value: &str,
    how: Abort,
) -> support::abort::Left {
    let n = proxy.received() + 1;
    let data = audrey_data(&[("ipaddress", value)]);
    put_params_and_leave(
        &via,
        2,
        &x.uuid,
        &x.secret,
        &data,
        how,
        proxy.until_received(n, LIMIT),
    )
    .await
    .unwrap_or_else(|e| panic!("{how:?}: sending {value}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_leaves_while_the_server_is_busy_still_has_its_change_captured() {
    let _turn = TURN.lock().await;
    let emulator = Site::emulator();
    let proxy = FaultProxy::start(emulator.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{}", proxy.addr()), dir.path(), "", ""),
    );
    let host = "configserver.a.example";
    let x = InstanceXml::new("leaver", "D-leave", "s3cret").provides("ipaddress");
    let client = Client::new(sc.proxy).with_host(host);
    let r = client
        .register(&Site::conductor(), 1, &x.uuid, &x.to_xml())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    proxy.set(Mode::Hold(HOLD));
    let mut kept = Vec::new();
    let mut values = Vec::new();
    for (i, how) in Abort::ALL.into_iter().enumerate() {
        let value = format!("10.7.0.{i}");
        kept.push(report_and_leave(client.clone(), &proxy, &x, &value, how).await);
        server_holds(&emulator, &x.uuid, &value, &format!("{how:?}"), || sc.log()).await;
        values.push(value);
    }
    // SIGTERM while the last answer may still be held: the drain waits for that capture.
    let status = tokio::task::block_in_place(|| sc.terminate());
    assert!(status.success(), "SIGTERM exit: {status:?}\n{}", sc.log());
    drop(kept);
    let store = Store::open(&dir.path().join("state"), "a").unwrap();
    let got: Vec<String> = store
        .pending(None, 100)
        .unwrap()
        .into_iter()
        .filter_map(|c| match c.event {
            Event::Params { values, .. } => values
                .into_iter()
                .find(|(n, _)| n == "ipaddress")
                .map(|(_, v)| v),
            _ => None,
        })
        .collect();
    store.close().await.unwrap();
    assert_eq!(
        got,
        values,
        "{}\nthe outbox must hold each report the server kept (FIN, RST, HTTP/2 reset, in order)",
        sc.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_kept_by_the_origin_server_reaches_the_other_site_whatever_the_guest_does() {
    let _turn = TURN.lock().await;
    let shared = broker::shared();
    let broker = shared.read().await;
    let names = ["site-a", "site-b"];
    for n in names {
        broker.purge_queue(&Broker::queue_name(n));
    }
    let dir = tempfile::tempdir().unwrap();
    let a_server = Site::emulator();
    let proxy = FaultProxy::start(a_server.addr()).await;
    let a = Site::launch(
        names[0],
        &site::mtls(&broker.amqps_url(), &shared.certs, names[0]),
        &dir.path().join("a"),
        a_server,
        Some(proxy.addr()),
        "",
    );
    let b = Site::start(
        names[1],
        &broker.amqps_url(),
        &shared.certs,
        &dir.path().join("b"),
    );
    let provider = InstanceXml::new("leaver-P", "D-leave2", "sP").provides("ipaddress");
    let consumer = InstanceXml::new("leaver-C", "D-leave2", "sC")
        .service(ServiceXml::new("web").reference("peer_ip", &provider.uuid, "ipaddress"));
    a.register(&provider).await;
    b.register(&consumer).await;
    proxy.set(Mode::Hold(HOLD));
    let mut kept = Vec::new();
    for (i, how) in Abort::ALL.into_iter().enumerate() {
        let value = format!("10.8.0.{i}");
        kept.push(report_and_leave(a.client(), &proxy, &provider, &value, how).await);
        let logs = || format!("A:\n{}\nB:\n{}", a.sidecar.log(), b.sidecar.log());
        server_holds(
            &a.emulator,
            &provider.uuid,
            &value,
            &format!("{how:?} at A"),
            logs,
        )
        .await;
        // The truth from B's server: its own storage, and the consumer's configuration.
        server_holds(
            &b.emulator,
            &provider.uuid,
            &value,
            &format!("{how:?} at B"),
            logs,
        )
        .await;
        let creds = Creds::new(&consumer.uuid, &consumer.secret);
        let r = b
            .server()
            .get_configs(2, &consumer.uuid, None, &creds)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{how:?}: B's server: {r:?}");
        assert!(
            r.text().contains(&format!("peer_ip&{}|", b64(&value))),
            "{how:?}: {}",
            r.text()
        );
    }
    drop(kept);
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
