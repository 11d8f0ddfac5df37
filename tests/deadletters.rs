//! `audrey-federation dead-letters list|retry|drop` through the real binary: on a stopped
//! sidecar's state directory (the store opened directly) and on a running capture-only
//! sidecar (redb's lock detected, the admin endpoints used). Dead letters are planted with
//! the store API; each test checks the store afterwards (requeued with the same
//! `origin_seq`, re-parked, gone) and that no secret or instance-config XML is printed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use audrey_federation::change::{Capture, Change, Event};
use audrey_federation::store::Store;
use support::sidecar::{config, Sidecar};

const OUT_SECRET: &str = "0utb0und-S3cret-7731";
const OUT_XML_MARK: &str = "xml-marker-5521";
const IN_SECRET: &str = "1nb0und-S3cret-9904";

struct Planted {
    registration: Change,
    params: Change,
    /// Inbound ids: a params change, a registration (secret in its reason), junk.
    in_params: u64,
    in_registration: u64,
    in_junk: u64,
}

fn registration(instance: &str, deployment: &str, secret: &str) -> Capture {
    Capture {
        api_version: 2,
        instance: Some(instance.into()),
        deployment: Some(deployment.into()),
        client_addr: None,
        captured_at_ms: 1_700_000_000_000,
        event: Event::Registration {
            instance_config: format!(
                "<instance-config id='{instance}' secret='{secret}' note='{OUT_XML_MARK}'/>"
            ),
            secret: secret.into(),
        },
    }
}

fn params(instance: &str) -> Capture {
    Capture {
        api_version: 2,
        instance: Some(instance.into()),
        deployment: None,
        client_addr: Some("10.0.0.5".into()),
        captured_at_ms: 1_700_000_000_500,
        event: Event::Params {
            audrey_data: "|ipaddress&MTAuMC4wLjU=|".into(),
            values: vec![("ipaddress".into(), "10.0.0.5".into())],
            return_codes: false,
        },
    }
}

/// A change from site-b, as replay stores it in an inbound dead letter.
fn from_b(capture: Capture, seq: u64) -> Vec<u8> {
    let change = Change {
        origin_site: "site-b".into(),
        incarnation: "a1a1a1a1a1a1a1a1".into(),
        version_ms: 0,
        origin_seq: seq,
        instance_seq: 1,
        api_version: capture.api_version,
        instance: capture.instance,
        deployment: capture.deployment,
        client_addr: capture.client_addr,
        captured_at_ms: capture.captured_at_ms,
        event: capture.event,
    };
    serde_json::to_vec(&change).unwrap()
}

async fn plant(state: &Path) -> Planted {
    let store = Store::open(state, "site-a").unwrap();
    let reg = store
        .append(registration("I1", "D1", OUT_SECRET))
        .await
        .unwrap();
    let par = store.append(params("I1")).await.unwrap();
    for c in [&reg, &par] {
        assert!(store
            .dead_letter_outbound(c.origin_seq, "broker rejected the message")
            .await
            .unwrap());
    }
    let in_params = store
        .dead_letter_inbound(from_b(params("I9"), 40), "parked for longer than 1h")
        .await
        .unwrap();
    let in_registration = store
        .dead_letter_inbound(
            from_b(registration("I8", "D8", IN_SECRET), 41),
            &format!("local server answered 400 to secret {IN_SECRET}"),
        )
        .await
        .unwrap();
    let in_junk = store
        .dead_letter_inbound(b"\x00not json".to_vec(), "body does not decode")
        .await
        .unwrap();
    assert_eq!(store.dead_letter_count(), 2);
    assert_eq!(store.inbound_dead_letter_count(), 3);
    store.close().await.unwrap();
    Planted {
        registration: reg,
        params: par,
        in_params,
        in_registration,
        in_junk,
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cli(config: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_audrey-federation"))
        .arg("dead-letters")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run audrey-federation");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for secret in [OUT_SECRET, IN_SECRET, OUT_XML_MARK, "instance-config"] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{secret} printed by {args:?}:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
    run
}

/// Waits until a freshly started sidecar holds its store: the admin listener (bound before
/// the store is opened) answers only once `run` has opened it.
async fn holds_store(sidecar: &Sidecar) {
    let req = http::Request::get("/dead-letters")
        .body(String::new())
        .unwrap();
    let (status, _, _) = support::client::exchange(sidecar.admin, req).await;
    assert_eq!(status, 200);
}

fn setup(dir: &Path) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, config("site-a", "http://127.0.0.1:9", dir, "", "")).unwrap();
    path
}

#[tokio::test]
async fn stopped_sidecar_list_retry_drop() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let state = dir.path().join("state");
    let p = plant(&state).await;

    let list = cli(&cfg, &["list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", list.stdout);
    assert!(lines[0].starts_with("DIRECTION"));
    assert!(
        list.stdout.contains(&p.registration.message_id()) && list.stdout.contains("registration")
    );
    assert!(list.stdout.contains("(undecodable)"));
    assert!(list.stdout.contains("answered 400 to secret <redacted>"));

    let json = cli(&cfg, &["list", "--json", "--direction", "outbound"]);
    assert_eq!(json.code, 0);
    let letters: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["message_id"], p.registration.message_id());
    assert_eq!(letters[0]["instance"], "I1");
    assert_eq!(letters[0]["deployment"], "D1");
    assert_eq!(letters[1]["kind"], "params");

    // Usage errors exit 2 and change nothing.
    assert_eq!(cli(&cfg, &["retry", "--id", "1"]).code, 2);
    assert_eq!(cli(&cfg, &["retry", "--all", "--id", "1"]).code, 2);
    assert_eq!(cli(&cfg, &["drop"]).code, 2);
    let missing = cli(&cfg, &["drop", "--id", "99", "--direction", "outbound"]);
    assert_eq!(missing.code, 1);
    assert!(missing
        .stderr
        .contains("no outbound dead letter with id 99"));

    let seq = p.registration.origin_seq.to_string();
    let retry = cli(&cfg, &["retry", "--direction", "outbound", "--id", &seq]);
    assert_eq!(retry.code, 0, "{}", retry.stderr);
    assert!(retry.stdout.contains("requeued"), "{}", retry.stdout);

    let id = p.in_params.to_string();
    let repark = cli(&cfg, &["retry", "--direction", "inbound", "--id", &id]);
    assert_eq!(repark.code, 0, "{}", repark.stderr);
    assert!(repark.stdout.contains("reparked"));

    let id = p.in_junk.to_string();
    let refused = cli(&cfg, &["retry", "--direction", "inbound", "--id", &id]);
    assert_eq!(refused.code, 1);
    assert!(refused
        .stdout
        .contains("refused (the message does not decode"));
    // A registration goes back too: the merge applies what in it is still newer.
    let id = p.in_registration.to_string();
    let reparked = cli(&cfg, &["retry", "--direction", "inbound", "--id", &id]);
    assert_eq!(reparked.code, 0, "{}", reparked.stderr);
    assert!(reparked.stdout.contains("reparked"), "{}", reparked.stdout);

    let id = p.in_junk.to_string();
    let dropped = cli(&cfg, &["drop", "--direction", "inbound", "--id", &id]);
    assert_eq!(dropped.code, 0, "{}", dropped.stderr);
    assert!(dropped.stdout.contains("dropped"), "{}", dropped.stdout);

    let store = Store::open(&state, "site-a").unwrap();
    let pending = store.pending(None, 10).unwrap();
    assert_eq!(pending, vec![p.registration.clone()]);
    let parked: Vec<String> = store
        .parked()
        .unwrap()
        .iter()
        .map(|e| e.change.message_id())
        .collect();
    assert_eq!(
        parked,
        ["site-b:a1a1a1a1a1a1a1a1:41", "site-b:a1a1a1a1a1a1a1a1:40"],
        "by instance: I8, I9"
    );
    assert!(store.parked().unwrap()[0]
        .reason
        .contains("requeued by an operator"));
    let outbound: Vec<u64> = store
        .dead_letters_outbound(10)
        .unwrap()
        .iter()
        .map(|l| l.origin_seq)
        .collect();
    assert_eq!(outbound, vec![p.params.origin_seq]);
    let inbound: Vec<u64> = store
        .dead_letters_inbound(10)
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert!(inbound.is_empty(), "{inbound:?}");
    store.close().await.unwrap();

    let all = cli(&cfg, &["drop", "--all"]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    assert_eq!(all.stdout.matches("dropped").count(), 1, "{}", all.stdout);
    let empty = cli(&cfg, &["list"]);
    assert_eq!(empty.stdout.trim(), "no dead letters");
}

#[tokio::test]
async fn running_sidecar_through_admin_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let state = dir.path().join("state");
    let p = plant(&state).await;
    let mut sidecar = Sidecar::start_with(dir.path(), cfg.clone());
    holds_store(&sidecar).await;
    let admin = sidecar.admin.to_string();

    // Locked, and admin.listen has port 0: say what to pass.
    let unknown = cli(&cfg, &["list"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("--admin-listen"),
        "{}",
        unknown.stderr
    );

    let list = cli(&cfg, &["list", "--admin-listen", &admin]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stderr.contains("running sidecar"));
    assert_eq!(list.stdout.lines().count(), 6, "{}", list.stdout);
    assert!(list.stdout.contains("<redacted>"));

    let seq = p.params.origin_seq.to_string();
    let retry = cli(
        &cfg,
        &[
            "retry",
            "--admin-listen",
            &admin,
            "--direction",
            "outbound",
            "--id",
            &seq,
        ],
    );
    assert_eq!(retry.code, 0, "{}", retry.stderr);
    assert!(retry.stdout.contains("requeued") && retry.stdout.contains(&p.params.message_id()));

    let id = p.in_params.to_string();
    let repark = cli(
        &cfg,
        &[
            "retry",
            "--admin-listen",
            &admin,
            "--direction",
            "inbound",
            "--id",
            &id,
        ],
    );
    assert_eq!(repark.code, 0, "{}", repark.stderr);

    let drop = cli(
        &cfg,
        &[
            "drop",
            "--admin-listen",
            &admin,
            "--direction",
            "inbound",
            "--all",
        ],
    );
    assert_eq!(drop.code, 0, "{}", drop.stderr);
    assert_eq!(drop.stdout.matches("dropped").count(), 2, "{}", drop.stdout);
    let bad = cli(&cfg, &["retry", "--admin-listen", &admin, "--id", "1"]);
    assert_eq!(bad.code, 2);

    let json = cli(&cfg, &["list", "--json", "--admin-listen", &admin]);
    let letters: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1, "{}", json.stdout);
    assert_eq!(letters[0]["message_id"], p.registration.message_id());

    assert!(sidecar.terminate().success());
    let store = Store::open(&state, "site-a").unwrap();
    assert_eq!(store.pending(None, 10).unwrap(), vec![p.params.clone()]);
    assert_eq!(store.dead_letter_count(), 1);
    assert_eq!(store.inbound_dead_letter_count(), 0);
    assert_eq!(
        store.parked().unwrap()[0].change.message_id(),
        "site-b:a1a1a1a1a1a1a1a1:40"
    );
    store.close().await.unwrap();
}

/// A params report of `ipaddress = value` for `instance` (what the proxy captures).
fn report_of(instance: &str, value: &str) -> Capture {
    let mut c = params(instance);
    c.event = Event::Params {
        audrey_data: support::client::audrey_data(&[("ipaddress", value)]),
        values: vec![("ipaddress".into(), value.into())],
        return_codes: false,
    };
    c
}

/// Through a real federation: an outbound letter retried at A is published and applied at
/// B; an inbound letter retried at B is re-parked and applied by B's parked-retry timer.
#[tokio::test]
async fn retried_letters_flow_through_a_live_federation() {
    use support::broker::{Broker, BrokerOptions};
    use support::client::{Placement, Response};
    use support::site::Site;

    let names = ["site-a", "site-b"];
    let certs = support::certs::generate(&names);
    let broker = Broker::start(BrokerOptions {
        sites: &names,
        certs: &certs,
    });
    let dir = tempfile::tempdir().unwrap();
    let mut a = Site::start("site-a", &broker.amqps_url(), &certs, &dir.path().join("a"));
    let mut b = Site::start("site-b", &broker.amqps_url(), &certs, &dir.path().join("b"));
    let (i1, i2) = (support::scenario::i1(), support::scenario::i2());
    for (site, x) in [(&a, &i1), (&b, &i2)] {
        let r: Response = site
            .client()
            .register(&Site::conductor(), 1, &x.uuid, &x.to_xml())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    let data = support::client::audrey_data(&[("ipaddress", "10.0.0.5")]);
    let r = a
        .client()
        .put_params(2, "I1", &i1.secret, &data, Placement::Header)
        .await
        .unwrap();
    assert!(r.status == 200 || r.status == 202, "{r:?}");
    b.sees(&i2, "10.0.0.5").await;

    // Outbound: a change of I1 dead-lettered at A while it was stopped.
    assert!(a.sidecar.terminate().success());
    let store = Store::open(&a.dir.join("state"), "site-a").unwrap();
    let change = store.append(report_of("I1", "10.0.0.99")).await.unwrap();
    store
        .dead_letter_outbound(change.origin_seq, "broker rejected the message")
        .await
        .unwrap();
    store.close().await.unwrap();
    a.sidecar = Sidecar::start_with(&a.dir, a.sidecar.config_path());
    holds_store(&a.sidecar).await;
    let seq = change.origin_seq.to_string();
    let admin = a.sidecar.admin.to_string();
    let cfg = a.sidecar.config_path();
    let args = [
        "retry",
        "--admin-listen",
        &admin,
        "--direction",
        "outbound",
        "--id",
        &seq,
    ];
    let retry = cli(&cfg, &args);
    assert_eq!(retry.code, 0, "{}{}", retry.stdout, retry.stderr);
    b.sees(&i2, "10.0.0.99").await;

    // Inbound: a change from A that B gave up on, retried at a running B.
    assert!(b.sidecar.terminate().success());
    let store = Store::open(&b.dir.join("state"), "site-b").unwrap();
    let mut late = from_b(report_of("I1", "10.0.0.123"), 0);
    let mut parsed: Change = serde_json::from_slice(&late).unwrap();
    parsed.origin_site = "site-a".into();
    parsed.origin_seq = 1000;
    parsed.instance_seq = 1000;
    // Newer than what B holds of I1: a dead letter older than that would be superseded.
    parsed.version_ms = audrey_federation::change::now_ms();
    parsed.deployment = Some("D1".into());
    late = serde_json::to_vec(&parsed).unwrap();
    let id = store
        .dead_letter_inbound(late, "local server answered 503")
        .await
        .unwrap();
    store.close().await.unwrap();
    b.sidecar = Sidecar::start_with(&b.dir, b.sidecar.config_path());
    holds_store(&b.sidecar).await;
    let (id, admin) = (id.to_string(), b.sidecar.admin.to_string());
    let cfg = b.sidecar.config_path();
    let args = [
        "retry",
        "--admin-listen",
        &admin,
        "--direction",
        "inbound",
        "--id",
        &id,
    ];
    let repark = cli(&cfg, &args);
    assert_eq!(repark.code, 0, "{}{}", repark.stdout, repark.stderr);
    b.sees(&i2, "10.0.0.123").await;
    let list = cli(&cfg, &["list", "--admin-listen", &admin]);
    assert_eq!(list.stdout.trim(), "no dead letters", "{}", list.stdout);
    drop(broker);
}
