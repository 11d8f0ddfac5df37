//! Replay-state tests: high-water marks, origin state, parking and inbound dead letters,
//! and that all of it survives a restart.

use audrey_federation::change::{Change, Event};

use super::open;

fn remote(origin: &str, origin_seq: u64, instance: &str, instance_seq: u64) -> Change {
    Change {
        origin_site: origin.to_owned(),
        origin_seq,
        instance_seq,
        api_version: 2,
        instance: Some(instance.to_owned()),
        deployment: Some("D9".into()),
        client_addr: Some("10.1.0.7".into()),
        captured_at_ms: 1_000 + origin_seq,
        event: Event::Params {
            audrey_data: "|&|".into(),
            values: vec![],
            return_codes: false,
        },
    }
}

#[tokio::test]
async fn record_applied_raises_marks_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.applied_seq("site-b", "X1").unwrap(), 0);

    let c3 = remote("site-b", 30, "X1", 3);
    store.record_applied(&c3).await.unwrap();
    // An older change applied late never lowers the mark.
    store
        .record_applied(&remote("site-b", 20, "X1", 2))
        .await
        .unwrap();
    assert_eq!(store.applied_seq("site-b", "X1").unwrap(), 3);
    assert_eq!(
        store.applied_seq("site-c", "X1").unwrap(),
        0,
        "marks are per origin"
    );
    assert!(store.is_applied(&remote("site-b", 20, "X1", 2)).unwrap());
    assert!(store.is_applied(&c3).unwrap());
    assert!(!store.is_applied(&remote("site-b", 40, "X1", 4)).unwrap());
    // Applying a remote change teaches its deployment.
    assert_eq!(store.deployment_of("X1").unwrap().as_deref(), Some("D9"));

    let mut del = remote("site-b", 50, "X1", 0);
    del.instance = None;
    del.event = Event::Deletion;
    assert!(!store.is_applied(&del).unwrap());
    store.record_applied(&del).await.unwrap();
    assert!(store.is_applied(&del).unwrap());
    assert_eq!(store.applied_deletion_seq("site-b", "D9").unwrap(), 50);

    let state = store.origin_state("site-b").unwrap().unwrap();
    assert_eq!(
        (
            state.max_origin_seq,
            state.last_captured_at_ms,
            state.applied
        ),
        (50, 1_050, 3)
    );
    assert!(state.last_applied_at_ms > 0);
    store.close().await.unwrap();

    let store = open(dir.path());
    assert_eq!(store.applied_seq("site-b", "X1").unwrap(), 3);
    assert_eq!(store.applied_deletion_seq("site-b", "D9").unwrap(), 50);
    let origins = store.origins().unwrap();
    assert_eq!(origins.len(), 1);
    assert_eq!(origins[0].0, "site-b");
    assert_eq!(store.origin_state("site-z").unwrap(), None);
}

#[tokio::test]
async fn parked_changes_count_attempts_and_leave_when_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a2 = remote("site-b", 12, "X1", 2);
    let a1 = remote("site-b", 11, "X1", 1);
    let other = remote("site-c", 5, "X2", 1);
    assert_eq!(store.park(a2.clone(), "instance unknown").await.unwrap(), 1);
    assert_eq!(store.park(a1.clone(), "instance unknown").await.unwrap(), 1);
    assert_eq!(
        store.park(other.clone(), "instance unknown").await.unwrap(),
        1
    );
    assert_eq!(
        store.park(a1.clone(), "still unknown").await.unwrap(),
        2,
        "re-park counts"
    );
    assert_eq!(store.parked_count(), 3);

    let mine = store.parked_for("X1").unwrap();
    assert_eq!(
        mine.iter()
            .map(|e| e.change.instance_seq)
            .collect::<Vec<_>>(),
        vec![1, 2],
        "in instance order"
    );
    assert_eq!(
        (mine[0].attempts, mine[0].reason.as_str()),
        (2, "still unknown")
    );
    assert_eq!(store.parked().unwrap().len(), 3);

    // Applying a parked change unparks it in the same transaction.
    store.record_applied(&a1).await.unwrap();
    assert_eq!(store.parked_count(), 2);
    assert!(store.unpark(&a2.message_id()).await.unwrap());
    assert!(!store.unpark(&a2.message_id()).await.unwrap());
    assert_eq!(store.parked_count(), 1);
    store.close().await.unwrap();

    let store = open(dir.path());
    assert_eq!(store.parked_count(), 1, "count reloaded at open");
    assert_eq!(store.parked().unwrap()[0].change, other);
}

#[tokio::test]
async fn inbound_dead_letters_are_kept_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let raw = vec![0xff, 0x00, b'x'];
    assert_eq!(
        store
            .dead_letter_inbound(raw.clone(), "not a change")
            .await
            .unwrap(),
        1
    );

    let parked = remote("site-b", 3, "X1", 1);
    store
        .park(parked.clone(), "instance unknown")
        .await
        .unwrap();
    assert!(store
        .dead_letter_parked(&parked.message_id(), "parked too long")
        .await
        .unwrap());
    assert!(!store
        .dead_letter_parked(&parked.message_id(), "again")
        .await
        .unwrap());
    assert_eq!(
        (store.inbound_dead_letter_count(), store.parked_count()),
        (2, 0)
    );

    let letters = store.dead_letters_inbound(10).unwrap();
    assert_eq!(letters.iter().map(|l| l.id).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        (letters[0].raw.as_slice(), letters[0].reason.as_str()),
        (raw.as_slice(), "not a change")
    );
    let change: Change = serde_json::from_slice(&letters[1].raw).unwrap();
    assert_eq!(change, parked);
    let stats = store.stats();
    assert_eq!(
        (stats.inbound_dead, stats.parked, stats.outbound_dead),
        (2, 0, 0)
    );
}
