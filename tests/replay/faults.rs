//! The local server unreachable or hung (a transient `ReplayError`, nothing settled, success
//! once it is back), and credentials the server refuses.

use std::time::Duration;

use audrey_federation::config::ReplayConfig;
use audrey_federation::replay::{Outcome, ReplayError};

use super::support::relay::Relay;
use super::{params, provider, registration, replayer, Site, PEER};

#[tokio::test]
async fn server_down_is_transient_then_applies() {
    let site = Site::start().await;
    site.register_locally(&provider("X1")).await;
    let relay = Relay::start(site.emu.addr()).await;
    let replayer = replayer(relay.addr(), site.store.clone(), &ReplayConfig::default());

    // Warm the keep-alive pool, then take the server away.
    let first = params(PEER, 1, 1, "X1", "192.0.2.1", "10.0.0.1");
    assert_eq!(replayer.apply(first).await, Ok(Outcome::Applied));
    relay.down().await;
    let c = params(PEER, 2, 2, "X1", "192.0.2.2", "10.0.0.2");
    for _ in 0..2 {
        match replayer.apply(c.clone()).await {
            Err(ReplayError::Unreachable(_)) => {}
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
    assert_eq!(site.held_seq("X1", "ipaddress"), Some(1), "nothing settled");
    assert!(site.store.parked().unwrap().is_empty());
    assert_eq!(site.ip("X1").await, (200, "10.0.0.1".to_owned()));

    relay.up();
    assert_eq!(replayer.apply(c).await, Ok(Outcome::Applied));
    assert_eq!(site.held_seq("X1", "ipaddress"), Some(2));
    assert_eq!(site.ip("X1").await, (200, "10.0.0.2".to_owned()));
}

#[tokio::test]
async fn registration_with_server_down_is_retried_not_lost() {
    let site = Site::start().await;
    let relay = Relay::start(site.emu.addr()).await;
    let replayer = replayer(relay.addr(), site.store.clone(), &ReplayConfig::default());
    relay.down().await;
    let reg = registration(PEER, 1, 1, &provider("X1"));
    assert!(matches!(
        replayer.apply(reg.clone()).await,
        Err(ReplayError::Unreachable(_))
    ));
    relay.up();
    assert_eq!(replayer.apply(reg).await, Ok(Outcome::Applied));
    assert_eq!(site.ip("X1").await.0, 200);
}

#[tokio::test]
async fn hung_server_times_out() {
    let site = Site::start().await;
    let silent = super::support::upstream::silent().await;
    let replayer = replayer(silent, site.store.clone(), &ReplayConfig::default())
        .with_timeout(Duration::from_millis(200));
    let c = params(PEER, 1, 1, "X1", "192.0.2.1", "10.0.0.1");
    match replayer.apply(c).await {
        Err(e @ ReplayError::Timeout { .. }) => assert_eq!(e.reason(), "timeout"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(site.store.parked().unwrap().is_empty());
    assert_eq!(site.store.inbound_dead_letter_count(), 0);
}

#[tokio::test]
async fn stale_instance_secret_falls_back_to_conductor() {
    let site = Site::start().await;
    site.register_locally(&provider("X1")).await;
    site.store
        .remember_secret("X1", "not-the-secret")
        .await
        .unwrap();
    let c = params(PEER, 1, 1, "X1", "192.0.2.1", "10.0.0.1");
    assert_eq!(site.replayer.apply(c).await, Ok(Outcome::Applied));
    assert_eq!(site.ip("X1").await, (200, "10.0.0.1".to_owned()));
}

#[tokio::test]
async fn wrong_conductor_secret_is_transient() {
    let site = Site::start().await;
    let bad = audrey_federation::replay::Replayer::new(
        super::SITE,
        site.emu.addr().to_string().parse().unwrap(),
        audrey_federation::replay::Conductor {
            key: "conductor".into(),
            secret: "wrong".into(),
        },
        site.store.clone(),
        &ReplayConfig::default(),
    );
    let reg = registration(PEER, 1, 1, &provider("X1"));
    assert!(matches!(
        bad.apply(reg.clone()).await,
        Err(ReplayError::Unauthorized { .. })
    ));
    assert_eq!(site.ip("X1").await.0, 404);
    assert_eq!(site.store.inbound_dead_letter_count(), 0, "nothing dropped");
    // Fixed credentials: the same change applies.
    assert_eq!(site.replayer.apply(reg).await, Ok(Outcome::Applied));
}

#[tokio::test]
async fn params_signed_with_the_instances_own_secret() {
    let site = Site::start().await;
    let reg = registration(PEER, 1, 1, &provider("X1"));
    assert_eq!(site.replayer.apply(reg).await, Ok(Outcome::Applied));
    // Conductor's secret is wrong here, so only the instance's own signature can pass.
    let own_only = audrey_federation::replay::Replayer::new(
        super::SITE,
        site.emu.addr().to_string().parse().unwrap(),
        audrey_federation::replay::Conductor {
            key: "conductor".into(),
            secret: "wrong".into(),
        },
        site.store.clone(),
        &ReplayConfig::default(),
    );
    let c = params(PEER, 2, 2, "X1", "192.0.2.1", "10.0.0.1");
    assert_eq!(own_only.apply(c).await, Ok(Outcome::Applied));
    assert_eq!(site.ip("X1").await, (200, "10.0.0.1".to_owned()));
}
