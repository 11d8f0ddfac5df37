//! Params changes that arrive before their registration: parked, applied once the
//! registration arrives (each only for what in it is still newer, so their order does not
//! matter), dead-lettered past the TTL.

use std::time::Duration;

use audrey_federation::config::ReplayConfig;
use audrey_federation::replay::{Outcome, RetryReport};

use super::{eventually, params, provider, reader, registration, Site, PEER};

#[tokio::test]
async fn params_before_registration_park_then_apply_in_order() {
    let site = Site::start().await;
    let (x, y) = (provider("X1"), reader("Y1", "X1"));

    let early = params(PEER, 2, 2, "X1", "192.0.2.1", "10.0.0.1");
    let later = params(PEER, 3, 3, "X1", "192.0.2.2", "10.0.0.2");
    assert_eq!(
        site.replayer.apply(early.clone()).await,
        Ok(Outcome::Parked)
    );
    assert_eq!(site.replayer.apply(later).await, Ok(Outcome::Parked));
    // A redelivery of a parked change stays parked, once.
    assert_eq!(site.replayer.apply(early).await, Ok(Outcome::Parked));
    let parked = site.store.parked_for("X1").unwrap();
    let seqs: Vec<u64> = parked.iter().map(|p| p.change.instance_seq).collect();
    assert_eq!(seqs, [2, 3]);
    assert!(parked[1]
        .reason
        .contains("instance not registered here (404)"));

    // A timer pass while the instance is still unknown changes nothing.
    let report = site.replayer.retry_parked().await.unwrap();
    assert_eq!(
        report,
        RetryReport {
            still_parked: 2,
            ..RetryReport::default()
        }
    );

    // The registration arrives: applied, then the parked changes; the newest value wins.
    let reg = registration(PEER, 1, 1, &x);
    assert_eq!(site.replayer.apply(reg).await, Ok(Outcome::Applied));
    assert!(site.store.parked().unwrap().is_empty());
    assert_eq!(site.held_seq("X1", "ipaddress"), Some(3));
    site.register_locally(&y).await;
    assert_eq!(site.peer_ip(&y).await.as_deref(), Some("192.0.2.2"));
    assert_eq!(site.ip("X1").await, (200, "10.0.0.2".to_owned()));
}

#[tokio::test]
async fn parked_changes_apply_on_retry_after_a_local_registration() {
    let site = Site::start().await;
    let (x, y) = (provider("X1"), reader("Y1", "X1"));
    let c = params(PEER, 5, 2, "X1", "192.0.2.5", "10.0.0.5");
    assert_eq!(site.replayer.apply(c).await, Ok(Outcome::Parked));
    // Conductor registers the instance here directly (no replayed registration).
    site.register_locally(&x).await;
    site.register_locally(&y).await;
    // The instance is known now: a later change goes straight through, overtaking the
    // parked one, which then finds nothing newer in itself to apply.
    let later = params(PEER, 6, 3, "X1", "192.0.2.6", "10.0.0.6");
    assert_eq!(site.replayer.apply(later).await, Ok(Outcome::Applied));
    assert_eq!(site.ip("X1").await, (200, "10.0.0.6".to_owned()));

    let report = site.replayer.retry_parked().await.unwrap();
    assert_eq!(
        report,
        RetryReport {
            duplicates: 1,
            ..RetryReport::default()
        }
    );
    assert_eq!(site.peer_ip(&y).await.as_deref(), Some("192.0.2.6"));
    assert_eq!(site.ip("X1").await, (200, "10.0.0.6".to_owned()));
    let next = params(PEER, 7, 4, "X1", "192.0.2.7", "10.0.0.7");
    assert_eq!(site.replayer.apply(next).await, Ok(Outcome::Applied));
    assert_eq!(site.held_seq("X1", "ipaddress"), Some(7));
}

#[tokio::test]
async fn parked_past_ttl_is_dead_lettered() {
    let site = Site::start_with(ReplayConfig {
        park_ttl: Duration::from_millis(1),
        ..ReplayConfig::default()
    })
    .await;
    let c = params(PEER, 2, 2, "X1", "192.0.2.1", "10.0.0.1");
    assert_eq!(site.replayer.apply(c).await, Ok(Outcome::Parked));

    let dead = std::cell::Cell::new(0);
    let expired = eventually(Duration::from_secs(5), || {
        let (replayer, dead) = (&site.replayer, &dead);
        async move {
            dead.set(dead.get() + replayer.retry_parked().await.unwrap().dead_lettered);
            dead.get() == 1
        }
    })
    .await;
    assert!(expired, "the parked change was never dead-lettered");
    assert!(site.store.parked().unwrap().is_empty());
    let letters = site.store.dead_letters_inbound(10).unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.starts_with("parked for longer than"),
        "{}",
        letters[0].reason
    );
    assert!(letters[0]
        .reason
        .contains("instance not registered here (404)"));

    // The registration arriving afterwards does not resurrect it.
    let reg = registration(PEER, 1, 1, &provider("X1"));
    assert_eq!(site.replayer.apply(reg).await, Ok(Outcome::Applied));
    assert_eq!(site.ip("X1").await, (200, String::new()));
    assert_eq!(site.registered_seq("X1"), Some(1));
    assert_eq!(site.held_seq("X1", "ipaddress"), None);
}

#[tokio::test]
async fn parked_within_ttl_stays_parked() {
    let site = Site::start().await;
    let c = params(PEER, 2, 2, "X1", "192.0.2.1", "10.0.0.1");
    assert_eq!(site.replayer.apply(c).await, Ok(Outcome::Parked));
    for _ in 0..2 {
        let report = site.replayer.retry_parked().await.unwrap();
        assert_eq!((report.dead_lettered, report.still_parked), (0, 1));
    }
    let parked = site.store.parked_for("X1").unwrap();
    assert_eq!(
        parked[0].attempts, 3,
        "parked once, re-parked by each retry"
    );
    assert_eq!(site.store.inbound_dead_letter_count(), 0);
}
