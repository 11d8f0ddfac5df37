//! Replay-state tests: the merge's instance states and tombstones, incarnations, origin state, parking and inbound dead letters,
//! and that all of it survives a restart.

use audrey_federation::change::{Change, Event};
use audrey_federation::store::{InstanceState, Merge, Registered, Slot};

use super::open;

fn remote(origin: &str, origin_seq: u64, instance: &str, instance_seq: u64) -> Change {
    Change {
        origin_site: origin.to_owned(),
        incarnation: "a1a1a1a1a1a1a1a1".into(),
        version_ms: 0,
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
async fn merge_keeps_states_tombstones_and_origin_state_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.instance_state("X1").unwrap(), None);

    let c3 = remote("site-b", 30, "X1", 3);
    let mut state = InstanceState::default();
    state.params.insert(
        "ip".into(),
        Slot {
            version: c3.version(),
            piece: "ip&MTAuMC4wLjU=".into(),
        },
    );
    state.registration = Some(Registered {
        version: remote("site-b", 10, "X1", 1).version(),
        deployment: "D9".into(),
        api_version: 2,
        instance_config: "<instance-config/>".into(),
        secret: "s".into(),
    });
    store
        .merge(Merge {
            states: vec![("X1".into(), Some(state.clone()))],
            tombstone: None,
            applied: Some(c3.clone()),
        })
        .await
        .unwrap();
    assert_eq!(store.instance_state("X1").unwrap().as_ref(), Some(&state));
    // Applying a remote change teaches its deployment.
    assert_eq!(store.deployment_of("X1").unwrap().as_deref(), Some("D9"));
    assert_eq!(store.instances_in("D9").unwrap().len(), 1);
    assert!(store.instances_in("D8").unwrap().is_empty());

    let mut del = remote("site-b", 50, "X1", 0);
    del.instance = None;
    del.event = Event::Deletion;
    store
        .merge(Merge {
            states: vec![("X1".into(), None)],
            tombstone: Some(("D9".into(), del.version())),
            applied: Some(del.clone()),
        })
        .await
        .unwrap();
    assert_eq!(store.instance_state("X1").unwrap(), None);
    assert_eq!(store.tombstone("D9").unwrap(), Some(del.version()));

    let origin = store.origin_state("site-b").unwrap().unwrap();
    assert_eq!(
        (
            origin.max_origin_seq,
            origin.last_captured_at_ms,
            origin.applied,
            origin.incarnation.as_str(),
        ),
        (50, 1_050, 2, "a1a1a1a1a1a1a1a1")
    );
    assert_eq!(origin.newest, del.version());
    assert!(origin.last_applied_at_ms > 0);
    store.close().await.unwrap();

    let store = open(dir.path());
    assert_eq!(store.tombstone("D9").unwrap(), Some(del.version()));
    let origins = store.origins().unwrap();
    assert_eq!(origins.len(), 1);
    assert_eq!(origins[0].0, "site-b");
    assert_eq!(store.origin_state("site-z").unwrap(), None);
}

#[tokio::test]
async fn a_store_keeps_its_incarnation_and_a_new_store_gets_another() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = store.incarnation().to_owned();
    assert_eq!(first.len(), 16);
    store.close().await.unwrap();
    let store = open(dir.path());
    assert_eq!(store.incarnation(), first, "kept across a restart");
    store.close().await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let store = open(other.path());
    assert_ne!(
        store.incarnation(),
        first,
        "a new store is a new incarnation"
    );
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
