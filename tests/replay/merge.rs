//! The state-based merge against the real emulator: what the server holds is the truth.
//! Each case here failed with the high-water-mark replay this merge replaced (see
//! docs/reliability.md): a late older change carrying names the newer one lacks, a new
//! incarnation of an origin, a re-registration, a registration overtaking an older deletion,
//! a change older than a deletion, a server that keeps refusing, and a dead letter retried.

use std::collections::BTreeMap;
use std::time::Duration;

use audrey_federation::change::{Change, Event};
use audrey_federation::config::ReplayConfig;
use audrey_federation::replay::{Outcome, ReplayError};
use base64::Engine as _;

use super::support::client::{audrey_data, Creds, InstanceXml, ServiceXml};
use super::{registration, Site, DEPLOYMENT, PEER};

/// `X1` provides `a` and `b`; `Y1` reads them as `pa` and `pb`.
fn pair() -> (InstanceXml, InstanceXml) {
    let x = InstanceXml::new("X1", DEPLOYMENT, "secret-X1")
        .provides("a")
        .provides("b");
    let y = InstanceXml::new("Y1", DEPLOYMENT, "secret-Y1").service(
        ServiceXml::new("web_svc")
            .reference("pa", "X1", "a")
            .reference("pb", "X1", "b"),
    );
    (x, y)
}

/// A report of `pairs` for `uuid` from `PEER`'s incarnation `inc`, at origin position `seq`.
fn report(inc: &str, seq: u64, uuid: &str, pairs: &[(&str, &str)]) -> Change {
    Change {
        origin_site: PEER.into(),
        incarnation: inc.into(),
        version_ms: 1_000 + seq,
        origin_seq: seq,
        instance_seq: seq,
        api_version: 2,
        instance: Some(uuid.into()),
        deployment: Some(DEPLOYMENT.into()),
        client_addr: Some(format!("10.0.0.{seq}")),
        captured_at_ms: audrey_federation::change::now_ms(),
        event: Event::Params {
            audrey_data: audrey_data(pairs),
            values: pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            return_codes: false,
        },
    }
}

const INC: &str = "a1a1a1a1a1a1a1a1";

/// What `reader`'s configuration resolves, name -> value (empty: unresolved).
async fn resolved(site: &Site, reader: &InstanceXml) -> BTreeMap<String, String> {
    let creds = Creds::new(&reader.uuid, &reader.secret);
    let r = site
        .client
        .get_configs(2, &reader.uuid, None, &creds)
        .await
        .unwrap();
    assert!(
        r.status == 200 || r.status == 202,
        "{} {}",
        r.status,
        r.text()
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    r.text()
        .split('|')
        .filter_map(|piece| piece.split_once('&'))
        .map(|(n, v)| {
            let value = String::from_utf8(b64.decode(v).unwrap()).unwrap();
            (n.to_owned(), value)
        })
        .collect()
}

fn want(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

async fn registered(site: &Site, x: &InstanceXml, y: &InstanceXml) {
    let reg = registration(PEER, 1, 1, x);
    assert_eq!(site.replayer.apply(reg).await, Ok(Outcome::Applied));
    site.register_locally(y).await;
}

#[tokio::test]
async fn an_older_change_arriving_late_still_sets_the_names_the_newer_one_lacks() {
    let site = Site::start().await;
    let (x, y) = pair();
    registered(&site, &x, &y).await;
    let older = report(INC, 2, "X1", &[("a", "A2"), ("b", "B2")]);
    let newer = report(INC, 3, "X1", &[("b", "B3")]);
    assert_eq!(site.replayer.apply(newer).await, Ok(Outcome::Applied));
    // Resent by the origin after a released window, or redelivered out of order.
    assert_eq!(site.replayer.apply(older).await, Ok(Outcome::Applied));
    let got = resolved(&site, &y).await;
    assert_eq!(
        got,
        want(&[("pa", "A2"), ("pb", "B3")]),
        "b never goes back"
    );
    // The guest address of the newest report stays.
    assert_eq!(site.ip("X1").await, (200, "10.0.0.3".to_owned()));
}

#[tokio::test]
async fn a_new_incarnation_of_the_origin_is_applied_not_dropped() {
    let site = Site::start().await;
    let (x, y) = pair();
    registered(&site, &x, &y).await;
    let before = report(INC, 50, "X1", &[("a", "old")]);
    assert_eq!(site.replayer.apply(before).await, Ok(Outcome::Applied));
    // The origin lost its state: a new store, sequences from 1 again, later in time.
    let mut after = report("b2b2b2b2b2b2b2b2", 1, "X1", &[("a", "new")]);
    after.version_ms = 5_000;
    assert_eq!(site.replayer.apply(after).await, Ok(Outcome::Applied));
    assert_eq!(resolved(&site, &y).await["pa"], "new");
    let origin = site.store.origin_state(PEER).unwrap().unwrap();
    assert_eq!(origin.incarnation, "b2b2b2b2b2b2b2b2");
}

#[tokio::test]
async fn a_re_registration_reaches_the_server_and_newer_values_come_back() {
    let site = Site::start().await;
    let (x, y) = pair();
    registered(&site, &x, &y).await;
    let a2 = report(INC, 2, "X1", &[("a", "A2")]);
    assert_eq!(site.replayer.apply(a2).await, Ok(Outcome::Applied));
    // Conductor registers X1 again at the origin with a new secret (seq 3); the guest
    // reports b after it (seq 4), and that report arrives here first.
    let mut x2 = x.clone();
    x2.secret = "secret-X1-rotated".into();
    let b4 = report(INC, 4, "X1", &[("b", "B4")]);
    assert_eq!(site.replayer.apply(b4).await, Ok(Outcome::Applied));
    let mut again = registration(PEER, 3, 3, &x2);
    again.version_ms = 1_003;
    assert_eq!(site.replayer.apply(again).await, Ok(Outcome::Applied));
    // The server holds the new registration: the new secret signs, the old one does not.
    assert_eq!(site.missing(&x2).await, "|a||");
    let old = site
        .client
        .get_params(2, "X1", &Creds::new("X1", "secret-X1"))
        .await
        .unwrap();
    assert_eq!(
        old.status, 401,
        "the stale secret must not be the registered one"
    );
    // a was wiped by the POST, as at the origin; b, newer than the registration, is back.
    assert_eq!(resolved(&site, &y).await, want(&[("pa", ""), ("pb", "B4")]));
    let state = site.store.instance_state("X1").unwrap().unwrap();
    assert!(!state.reapply && !state.repost);
    assert_eq!(
        site.store.instance_secret("X1").unwrap().as_deref(),
        Some("secret-X1-rotated")
    );
}

#[tokio::test]
async fn a_registration_newer_than_a_deletion_survives_it_whatever_the_order() {
    let site = Site::start().await;
    let (x, y) = pair();
    site.register_locally(&y).await;
    // At the origin: D1 deleted (seq 3), then X1 registered in it again (seq 5) and
    // reported (seq 6). Here the registration and report arrive before the deletion.
    let mut reg = registration(PEER, 5, 1, &x);
    reg.version_ms = 1_005;
    assert_eq!(site.replayer.apply(reg).await, Ok(Outcome::Applied));
    let a6 = report(INC, 6, "X1", &[("a", "A6")]);
    assert_eq!(site.replayer.apply(a6).await, Ok(Outcome::Applied));
    let mut del = super::deletion(PEER, 3, DEPLOYMENT);
    del.version_ms = 1_003;
    assert_eq!(site.replayer.apply(del).await, Ok(Outcome::Applied));
    // Y1 (in D1 too, registered here) is gone with the deployment; X1 is registered again
    // with its value.
    assert_eq!(site.ip("X1").await.0, 200, "X1 survives the older deletion");
    site.register_locally(&y).await;
    assert_eq!(resolved(&site, &y).await["pa"], "A6");
    // A report older than the deletion, arriving now, changes nothing.
    let late = report(INC, 2, "X1", &[("b", "B2")]);
    assert_eq!(site.replayer.apply(late).await, Ok(Outcome::Duplicate));
    assert_eq!(resolved(&site, &y).await["pb"], "");
}

#[tokio::test]
async fn a_change_older_than_a_deletion_is_superseded_not_parked() {
    let site = Site::start().await;
    let (x, _) = pair();
    let reg = registration(PEER, 1, 1, &x);
    assert_eq!(site.replayer.apply(reg).await, Ok(Outcome::Applied));
    let mut del = super::deletion(PEER, 5, DEPLOYMENT);
    del.version_ms = 1_005;
    assert_eq!(site.replayer.apply(del).await, Ok(Outcome::Applied));
    let late = report(INC, 4, "X1", &[("a", "A4")]);
    assert_eq!(site.replayer.apply(late).await, Ok(Outcome::Duplicate));
    assert!(site.store.parked().unwrap().is_empty());
    assert_eq!(site.ip("X1").await.0, 404);
}

#[tokio::test]
async fn a_change_the_server_keeps_refusing_is_dead_lettered_after_the_limit() {
    let site = Site::start_with(ReplayConfig {
        max_attempts: 3,
        give_up_after: Duration::from_secs(3600),
        ..ReplayConfig::default()
    })
    .await;
    let (x, y) = pair();
    registered(&site, &x, &y).await;
    // A return code for a service X1 does not have: the server answers 500, every time.
    let mut bad = report(INC, 2, "X1", &[("no_svc", "0")]);
    if let Event::Params {
        audrey_data,
        return_codes,
        ..
    } = &mut bad.event
    {
        *audrey_data = format!("|{}", audrey_data);
        *return_codes = true;
    }
    for attempt in 1..3 {
        match site.replayer.apply(bad.clone()).await {
            Err(ReplayError::Server { status: 500, .. }) => {}
            other => panic!("attempt {attempt}: expected a 500, got {other:?}"),
        }
    }
    assert_eq!(
        site.replayer.apply(bad.clone()).await,
        Ok(Outcome::DeadLettered)
    );
    let letters = site.store.dead_letters_inbound(10).unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.contains("kept refusing") && letters[0].reason.contains("3 attempts"),
        "{}",
        letters[0].reason
    );
    // Other changes of the instance are not held by it.
    let a3 = report(INC, 3, "X1", &[("a", "A3")]);
    assert_eq!(site.replayer.apply(a3).await, Ok(Outcome::Applied));
}

#[tokio::test]
async fn a_dead_letter_retried_applies_what_in_it_is_still_newer() {
    let site = Site::start().await;
    let (x, y) = pair();
    registered(&site, &x, &y).await;
    let old = report(INC, 2, "X1", &[("a", "A2"), ("b", "B2")]);
    let newer = report(INC, 3, "X1", &[("b", "B3")]);
    assert_eq!(site.replayer.apply(newer).await, Ok(Outcome::Applied));
    // The older change had been given up on (say the server refused it for a while).
    let raw = serde_json::to_vec(&old).unwrap();
    let id = site
        .store
        .dead_letter_inbound(raw, "local server answered 503")
        .await
        .unwrap();
    let requeued = site.store.requeue_inbound(id).await.unwrap();
    assert_eq!(requeued, audrey_federation::store::Requeue::Done);
    let report = site.replayer.retry_parked().await.unwrap();
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(
        resolved(&site, &y).await,
        want(&[("pa", "A2"), ("pb", "B3")])
    );
    // Retried again: nothing in it is newer any more.
    let raw = serde_json::to_vec(&old).unwrap();
    let id = site.store.dead_letter_inbound(raw, "again").await.unwrap();
    site.store.requeue_inbound(id).await.unwrap();
    let report = site.replayer.retry_parked().await.unwrap();
    assert_eq!((report.applied, report.duplicates), (0, 1), "{report:?}");
}
