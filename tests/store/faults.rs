//! Fault tests: write failures carry the OS reason, a read-only file or directory is
//! detected, a full disk is reported, and the store recovers when the disk does.
//!
//! Root ignores file modes, so faults are made with `chattr +i` (the kernel refuses writes,
//! even through descriptors opened earlier) and, for a full and a read-only disk, with a
//! small tmpfs mounted in a private mount namespace (`unshare --mount`) of a re-executed
//! child, so no mount outlives the test. Each test prints SKIP and passes when the machine
//! does not allow the fault (no CAP_LINUX_IMMUTABLE, no CAP_SYS_ADMIN).

use std::path::{Path, PathBuf};
use std::process::Command;

use audrey_federation::change::{Capture, Event};
use audrey_federation::store::{Store, StoreError};

use super::{open, params};

/// `chattr +i` on a path for the guard's lifetime (the guard always clears it, so the
/// temporary directory can be removed).
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Immutable> {
        let ok = Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIP: chattr +i not permitted here");
            return None;
        }
        Some(Immutable(path.to_owned()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

fn assert_write_error(result: Result<impl std::fmt::Debug, StoreError>, os_reason: &str) {
    match result {
        Err(StoreError::Write { reason }) => {
            assert!(reason.contains(os_reason), "reason: {reason}")
        }
        other => panic!("expected a write error ({os_reason}), got {other:?}"),
    }
}

#[tokio::test]
async fn write_failure_reports_os_reason_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = store.append(params("I1", 1)).await.unwrap();
    let Some(guard) = Immutable::set(store.path()) else {
        return;
    };

    assert_write_error(
        store.append(params("I1", 2)).await,
        "Operation not permitted",
    );
    // The reopen fails too while the file stays read-only: still a clear reason.
    assert_write_error(
        store.append(params("I1", 3)).await,
        "Operation not permitted",
    );
    assert_write_error(store.probe_writable().await, "Operation not permitted");
    let shown = store.append(params("I1", 4)).await.unwrap_err().to_string();
    assert_eq!(
        shown,
        "cannot write store: Operation not permitted (os error 1)"
    );

    drop(guard);
    let next = store.append(params("I1", 5)).await.unwrap();
    assert!(next.origin_seq > first.origin_seq);
    assert_eq!(
        next.instance_seq,
        first.instance_seq + 1,
        "failed appends consumed nothing"
    );
    store.probe_writable().await.unwrap();
    let seqs: Vec<u64> = store
        .pending(None, 10)
        .unwrap()
        .iter()
        .map(|c| c.origin_seq)
        .collect();
    assert_eq!(seqs, vec![first.origin_seq, next.origin_seq]);
    assert_eq!(store.depth(), 2);
}

#[tokio::test]
async fn read_only_file_fails_open_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.append(params("I1", 1)).await.unwrap();
    store.close().await.unwrap();
    let Some(_guard) = Immutable::set(&dir.path().join("state.redb")) else {
        return;
    };
    match Store::open(dir.path(), "site-a") {
        Err(StoreError::Open { reason, path }) => {
            assert!(reason.contains("Operation not permitted"), "{reason}");
            assert!(path.ends_with("state.redb"), "{path}");
        }
        other => panic!("expected an open error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn read_only_directory_fails_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let Some(guard) = Immutable::set(dir.path()) else {
        return;
    };
    assert_write_error(store.probe_writable().await, "Operation not permitted");
    drop(guard);
    store.probe_writable().await.unwrap();
}

const CHILD_ENV: &str = "STORE_FAULT_CHILD_DIR";

/// Runs the child half in a private mount namespace.
#[test]
fn full_and_read_only_disk_are_reported_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(exe)
        .args([
            "--exact",
            "faults::disk_fault_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .output();
    let Ok(output) = output else {
        eprintln!("SKIP: unshare not available");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stdout.contains("running 1 test") {
        eprintln!("SKIP: cannot create a mount namespace: {stderr}");
        return;
    }
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("DISK-FAULTS-OK") || stdout.contains("SKIP"),
        "{stdout}"
    );
    eprintln!(
        "{}",
        stdout
            .lines()
            .filter(|l| l.contains("DISK") || l.contains("SKIP"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The child half: idle unless re-executed by the test above.
#[test]
fn disk_fault_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    if !mount(&["-t", "tmpfs", "-o", "size=4m", "tmpfs"], &dir) {
        println!("SKIP: cannot mount a tmpfs");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(disk_faults(&dir));
    println!("DISK-FAULTS-OK");
}

fn mount(args: &[&str], dir: &Path) -> bool {
    Command::new("mount")
        .args(args)
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

fn big(i: u64) -> Capture {
    let mut capture = params("I1", i);
    capture.event = Event::Params {
        audrey_data: "x".repeat(256 * 1024),
        values: vec![],
        return_codes: false,
    };
    capture
}

async fn disk_faults(dir: &Path) {
    let state = dir.join("state");
    let store = open(&state);
    let mut acked = vec![store.append(params("I1", 0)).await.unwrap().origin_seq];

    // Fill the file system, then append until the store has to grow its file.
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..1_000 {
        if std::io::Write::write_all(&mut file, &chunk).is_err() {
            break;
        }
    }
    drop(file);
    let mut failure = None;
    for i in 1..=50 {
        match store.append(big(i)).await {
            Ok(change) => acked.push(change.origin_seq),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("a full disk must fail an append");
    assert_write_error(Err::<(), _>(failure.clone()), "No space left on device");
    println!("DISK full: {failure}");
    assert_write_error(store.probe_writable().await, "No space left on device");

    // The disk recovers: writes succeed again and nothing acknowledged was lost.
    std::fs::remove_file(&filler).unwrap();
    acked.push(store.append(big(99)).await.unwrap().origin_seq);
    store.probe_writable().await.unwrap();
    let stored: Vec<u64> = store
        .pending(None, 1_000)
        .unwrap()
        .iter()
        .map(|c| c.origin_seq)
        .collect();
    // A failed commit may or may not have reached the disk; an acknowledged one always has.
    assert!(
        acked.iter().all(|seq| stored.contains(seq)),
        "acked {acked:?}, stored {stored:?}"
    );
    store.close().await.unwrap();

    // A read-only file system is refused at open, with the OS reason.
    assert!(mount(&["-o", "remount,ro"], dir), "remount read-only");
    match Store::open(&state, "site-a") {
        Err(StoreError::Open { reason, .. }) => {
            assert!(reason.contains("Read-only file system"), "{reason}");
            println!("DISK read-only: {reason}");
        }
        other => panic!("expected an open error, got {:?}", other.map(|_| ())),
    }
}
