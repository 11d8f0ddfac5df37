//! Crash safety: a child process (this test binary re-executed) appends and prints each
//! acknowledged change; the parent SIGKILLs it mid-stream, reopens the store and checks
//! every acknowledged change is there and that sequences continue without reuse.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{open, params};

const CHILD_ENV: &str = "STORE_CRASH_CHILD_DIR";
/// Acknowledgements the parent reads before it kills the child.
const KILL_AFTER: usize = 300;
/// The child never appends more than this (it is killed long before).
const CHILD_MAX: u64 = 1_000_000;
const DEADLINE: Duration = Duration::from_secs(120);

/// The child half: idle unless re-executed by `acknowledged_appends_survive_sigkill`.
#[test]
fn append_child_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = open(std::path::Path::new(&dir));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CHILD_MAX {
            // Keep 16 appends in flight so commits group and the kill lands mid-batch.
            if tasks.len() >= 16 {
                report(tasks.join_next().await);
            }
            let store = store.clone();
            tasks.spawn(async move { store.append(params(&format!("I{}", i % 5), i)).await });
        }
        while let Some(joined) = tasks.join_next().await {
            report(Some(joined));
        }
    });
}

type Joined = Result<
    Result<audrey_federation::change::Change, audrey_federation::store::StoreError>,
    tokio::task::JoinError,
>;

fn report(joined: Option<Joined>) {
    if let Some(Ok(Ok(change))) = joined {
        // stdout is line-buffered: the line is out before the next append is awaited.
        println!(
            "ACK {} {} {}",
            change.origin_seq,
            change.instance.unwrap_or_default(),
            change.instance_seq
        );
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::append_child_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // (origin_seq, instance, instance_seq) of every acknowledged append.
    let mut acked: Vec<(u64, String, u64)> = Vec::new();
    let mut killed = false;
    let started = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("child did not acknowledge {KILL_AFTER} appends within {DEADLINE:?}");
            }
        };
        if let Some(ack) = parse_ack(&line) {
            acked.push(ack);
        }
        if !killed && acked.len() >= KILL_AFTER {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
            killed = true;
        }
    }
    reader.join().unwrap();
    let status = child.wait().unwrap();
    assert!(killed, "child ended before {KILL_AFTER} acks: {status}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );

    let store = open(dir.path());
    let stored = store.pending(None, usize::MAX).unwrap();
    let by_seq: BTreeMap<u64, (String, u64)> = stored
        .iter()
        .map(|c| {
            (
                c.origin_seq,
                (c.instance.clone().unwrap_or_default(), c.instance_seq),
            )
        })
        .collect();
    for (seq, instance, instance_seq) in &acked {
        assert_eq!(
            by_seq.get(seq),
            Some(&(instance.clone(), *instance_seq)),
            "acknowledged seq {seq} lost"
        );
    }
    let distinct: BTreeSet<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "an origin_seq was acknowledged twice"
    );

    // Sequences continue after everything that reached the disk.
    let max_seq = *by_seq.keys().last().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let next = rt.block_on(store.append(params("I0", 0))).unwrap();
    assert_eq!(next.origin_seq, max_seq + 1);
    let max_i0 = stored
        .iter()
        .filter(|c| c.instance.as_deref() == Some("I0"))
        .map(|c| c.instance_seq)
        .max();
    assert_eq!(next.instance_seq, max_i0.unwrap_or(0) + 1);
    eprintln!(
        "crash test: {} acknowledged, {} on disk after SIGKILL",
        acked.len(),
        stored.len()
    );
}

fn parse_ack(line: &str) -> Option<(u64, String, u64)> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let seq = parts.next()?.parse().ok()?;
    let instance = parts.next()?.to_owned();
    let instance_seq = parts.next()?.parse().ok()?;
    Some((seq, instance, instance_seq))
}
