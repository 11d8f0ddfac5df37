//! Integration tests of the durable store: sequencing, ordering, group commit, restart,
//! outbox bookkeeping. Crash, fault and replay-state tests live in the `store/` modules.
//!
//! These tests only use the public `Store` API (and redb directly to plant a corrupt
//! record); they must not sleep for synchronisation.

#[path = "store/crash.rs"]
mod crash;
#[path = "store/faults.rs"]
mod faults;
#[path = "store/replay.rs"]
mod replay;

use std::path::Path;

use audrey_federation::change::{Capture, Event};
use audrey_federation::store::{Store, StoreError};

pub fn params(instance: &str, at: u64) -> Capture {
    Capture {
        api_version: 2,
        instance: Some(instance.to_owned()),
        deployment: None,
        client_addr: Some("10.0.0.5".into()),
        captured_at_ms: at,
        event: Event::Params {
            audrey_data: "|ipaddress&MTAuMC4wLjU=|".into(),
            values: vec![("ipaddress".into(), "10.0.0.5".into())],
            return_codes: false,
        },
    }
}

pub fn registration(instance: &str, deployment: &str, at: u64) -> Capture {
    Capture {
        api_version: 2,
        instance: Some(instance.to_owned()),
        deployment: Some(deployment.to_owned()),
        client_addr: None,
        captured_at_ms: at,
        event: Event::Registration {
            instance_config: format!("<instance-config id='{instance}'/>"),
            secret: "S3cr3t".into(),
        },
    }
}

pub fn deletion(deployment: &str, at: u64) -> Capture {
    Capture {
        api_version: 1,
        instance: None,
        deployment: Some(deployment.to_owned()),
        client_addr: None,
        captured_at_ms: at,
        event: Event::Deletion,
    }
}

pub fn open(dir: &Path) -> Store {
    Store::open(dir, "site-a").expect("open store")
}

#[tokio::test]
async fn append_assigns_sequences_and_fills_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());

    let p0 = store.append(params("I1", 10)).await.unwrap();
    let r1 = store.append(registration("I1", "D1", 11)).await.unwrap();
    let p1 = store.append(params("I1", 12)).await.unwrap();
    let p2 = store.append(params("I2", 13)).await.unwrap();
    let del = store.append(deletion("D1", 14)).await.unwrap();

    let seqs: Vec<u64> = [&p0, &r1, &p1, &p2, &del]
        .iter()
        .map(|c| c.origin_seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        (p0.instance_seq, r1.instance_seq, p1.instance_seq),
        (1, 2, 3)
    );
    assert_eq!(p2.instance_seq, 1, "instance_seq is per instance");
    assert_eq!(del.instance_seq, 0, "a deletion has no instance_seq");
    assert_eq!(p0.deployment, None, "unknown before the registration");
    assert_eq!(
        p1.deployment.as_deref(),
        Some("D1"),
        "learnt from the registration"
    );
    assert_eq!(p0.origin_site, "site-a");
    assert_eq!(
        p1.message_id(),
        format!("site-a:{}:3", store.incarnation()),
        "the message id names the store's incarnation"
    );
    assert!(r1.version() < p1.version() && p1.version() < del.version());
    assert_eq!(store.deployment_of("I1").unwrap().as_deref(), Some("D1"));
    // A deletion forgets nothing: the mapping stays for late params changes.
    let late = store.append(params("I1", 15)).await.unwrap();
    assert_eq!(
        (late.deployment.as_deref(), late.instance_seq),
        (Some("D1"), 4)
    );
    // The clock steps back: the version's time does not.
    let back = store.append(params("I1", 5)).await.unwrap();
    assert_eq!((back.captured_at_ms, back.version_ms), (5, 15));
    assert!(
        back.version() > late.version(),
        "versions follow the outbox"
    );
}

#[tokio::test]
async fn pending_is_ordered_and_delivery_removes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!((store.depth(), store.oldest_captured_ms()), (0, None));
    for i in 0..10 {
        store
            .append(params(&format!("I{}", i % 3), 100 + i))
            .await
            .unwrap();
    }
    let all = store.pending(None, 100).unwrap();
    assert_eq!(
        all.iter().map(|c| c.origin_seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let page = store.pending(Some(4), 3).unwrap();
    assert_eq!(
        page.iter().map(|c| c.origin_seq).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    assert!(store.pending(Some(u64::MAX), 10).unwrap().is_empty());
    assert_eq!((store.depth(), store.oldest_captured_ms()), (10, Some(100)));

    assert!(store.mark_delivered(1).await.unwrap());
    assert!(
        !store.mark_delivered(1).await.unwrap(),
        "second delivery is a no-op"
    );
    assert!(store.mark_delivered(2).await.unwrap());
    assert_eq!((store.depth(), store.oldest_captured_ms()), (8, Some(102)));
    assert_eq!(store.pending(None, 1).unwrap()[0].origin_seq, 3);
}

#[tokio::test]
async fn sequences_continue_after_restart_and_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(registration("I1", "D1", 1)).await.unwrap();
    store.append(params("I1", 2)).await.unwrap();
    store.append(params("I1", 3)).await.unwrap();
    for seq in 1..=3 {
        store.mark_delivered(seq).await.unwrap();
    }
    store.close().await.unwrap();
    assert_eq!(store.append(params("I1", 4)).await, Err(StoreError::Closed));
    assert_eq!(store.pending(None, 1), Err(StoreError::Closed));

    let store = open(dir.path());
    assert_eq!(store.depth(), 0);
    let next = store.append(params("I1", 4)).await.unwrap();
    assert_eq!(
        (next.origin_seq, next.instance_seq),
        (4, 4),
        "no reuse after delivery + restart"
    );
    assert_eq!(
        next.deployment.as_deref(),
        Some("D1"),
        "mapping survives restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = store.stats();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        let store = store.clone();
        tasks.spawn(async move { store.append(params(&format!("I{}", i % 7), i)).await });
    }
    let mut seqs = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        seqs.push(joined.unwrap().unwrap().origin_seq);
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<_>>(),
        "every append got a distinct seq"
    );

    let stats = store.stats();
    let commits = stats.commits - before.commits;
    assert_eq!(stats.ops - before.ops, 200);
    eprintln!("200 concurrent appends: {commits} commits");
    assert!(
        commits * 4 <= 200,
        "200 appends took {commits} commits: not grouped"
    );
    assert_eq!(stats.depth, 200);

    // Per-instance sequences are dense and ordered like origin_seq.
    let pending = store.pending(None, 1000).unwrap();
    for i in 0..7 {
        let instance = format!("I{i}");
        let mine: Vec<u64> = pending
            .iter()
            .filter(|c| c.instance.as_deref() == Some(instance.as_str()))
            .map(|c| c.instance_seq)
            .collect();
        assert_eq!(
            mine,
            (1..=mine.len() as u64).collect::<Vec<_>>(),
            "{instance}"
        );
    }
}

#[tokio::test]
async fn learn_deployment_never_overwrites_but_registration_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.learn_deployment("I1", "D1").await.unwrap());
    assert!(!store.learn_deployment("I1", "D2").await.unwrap());
    assert_eq!(store.deployment_of("I1").unwrap().as_deref(), Some("D1"));
    assert_eq!(
        store
            .append(params("I1", 1))
            .await
            .unwrap()
            .deployment
            .as_deref(),
        Some("D1")
    );
    // The registration XML is authoritative.
    store.append(registration("I1", "D3", 2)).await.unwrap();
    assert_eq!(store.deployment_of("I1").unwrap().as_deref(), Some("D3"));
    assert_eq!(store.deployment_of("nobody").unwrap(), None);
}

#[tokio::test]
async fn outbound_dead_letters_are_kept_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let c = store.append(params("I1", 7)).await.unwrap();
    store.append(params("I1", 8)).await.unwrap();
    assert!(store
        .dead_letter_outbound(c.origin_seq, "rejected by broker")
        .await
        .unwrap());
    assert!(!store
        .dead_letter_outbound(c.origin_seq, "again")
        .await
        .unwrap());
    assert_eq!((store.dead_letter_count(), store.depth()), (1, 1));
    assert_eq!(store.pending(None, 10).unwrap()[0].origin_seq, 2);
    store.close().await.unwrap();

    let store = open(dir.path());
    assert_eq!(
        (store.dead_letter_count(), store.depth()),
        (1, 1),
        "counts reloaded at open"
    );
    let letters = store.dead_letters_outbound(10).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "rejected by broker");
    assert_eq!(letters[0].change(), Some(c));
}

#[tokio::test]
async fn corrupt_outbox_record_is_named_and_can_be_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(params("I1", 1)).await.unwrap();
    store.append(params("I1", 2)).await.unwrap();
    store.close().await.unwrap();
    {
        let db = redb::Database::open(dir.path().join("state.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<u64, &[u8]>::new("outbox"))
            .unwrap()
            .insert(1, b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = open(dir.path());
    let err = store.pending(None, 10).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(err.corrupt_outbox_seq(), Some(1));
    assert!(store
        .dead_letter_outbound(1, &err.to_string())
        .await
        .unwrap());
    assert_eq!(store.pending(None, 10).unwrap()[0].origin_seq, 2);
    assert_eq!(
        store.dead_letters_outbound(1).unwrap()[0].record,
        "{not json"
    );
}

#[tokio::test]
async fn probe_writable_succeeds_on_a_healthy_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path().join("nested/state").as_path());
    store.probe_writable().await.unwrap();
    assert!(dir.path().join("nested/state/state.redb").exists());
    assert!(!dir.path().join("nested/state/.write-probe").exists());
}
