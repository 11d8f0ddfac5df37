//! The convergence checker under fault schedules: three sites (emulated server + sidecar)
//! over the shared real broker (RabbitMQ, mutual TLS), a seeded random workload
//! (`support::workload`), and the checker's verdict (`support::checker`): every
//! acknowledged change applied exactly once at every site, in per-instance order, never
//! echoed to its origin, last values present. Each schedule prints one summary line
//! (issued, acked, applied, lost, duplicated, seed) and asserts lost == duplicated == 0.
//!
//! `AUDREY_CHECK_SEED=<n>` replays a seed, `AUDREY_CHECK_SCALE=<k>` multiplies the workload
//! and the number of faults (`scripts/reliability` runs every schedule at a larger scale).
//! The tests take the shared broker's write lock, one at a time. They generalise the
//! hand-written fault tests of `tests/federation.rs` (broker stopped, sidecars killed, server
//! down at one site), which stay as readable examples.

mod support;

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use support::broker;
use support::checker::{verify, Federation, Knobs, Wiring};
use support::fault_proxy::Mode;
use support::workload::{History, Shape, Workload};

const SITES: usize = 3;

fn shape(knobs: &Knobs, ops: usize) -> Shape {
    Shape {
        seed: knobs.seed,
        sites: SITES,
        ops: ops * knobs.scale,
        deployments: 4 * knobs.scale,
    }
}

/// Runs the workload on its own task while `faults` drives the federation, then verifies,
/// prints the summary and asserts.
async fn schedule<F, Fut>(name: &str, wiring: Wiring, ops: usize, faults: F)
where
    F: FnOnce(Federation, Knobs) -> Fut,
    Fut: std::future::Future<Output = Federation>,
{
    let knobs = Knobs::from_env();
    eprintln!(
        "reliability schedule={name} seed={} (AUDREY_CHECK_SEED={} replays it)",
        knobs.seed, knobs.seed
    );
    let shared = broker::shared();
    let broker = shared.write().await;
    let started = Instant::now();
    let fed = Federation::start(&broker, &shared.certs, SITES, &wiring).await;
    let mut workload = Workload::new(shape(&knobs, ops), fed.targets.clone(), name);
    let running = tokio::spawn(async move {
        workload.run().await;
        workload.history
    });
    // The broker guard stays held (others wait); faults that restart it use `broker::shared`.
    drop(broker);
    let stop = fed.targets.stop.clone();
    let mut fed = faults(fed, knobs).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let history: History = running.await.expect("workload task");
    let verdict = verify(&mut fed, &history).await;
    println!("{}", verdict.summary(name, &knobs, started.elapsed()));
    let kept = if verdict.clean() { None } else { fed.keep() };
    assert!(
        verdict.clean(),
        "schedule {name}, seed {} (AUDREY_CHECK_SEED={} replays it; sites kept in {kept:?}): \
         {:#?}",
        knobs.seed,
        knobs.seed,
        verdict.problems
    );
    assert_eq!((verdict.lost, verdict.duplicated), (0, 0));
}

/// One test at a time in this binary (each runs a federation of its own).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_without_faults() {
    let _turn = TURN.lock().await;
    schedule("none", Wiring::default(), 120, |fed, _| async move { fed }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_under_load() {
    let _turn = TURN.lock().await;
    schedule(
        "broker-sigkill",
        Wiring::default(),
        120,
        |fed, knobs| async move {
            let mut rng = StdRng::seed_from_u64(knobs.seed ^ 1);
            for _ in 0..2 * knobs.scale {
                fed.targets.after(rng.random_range(5..30)).await;
                let mut b = broker::shared().write().await;
                b.kill();
                // Guests keep being served while the broker is away.
                fed.targets.after(rng.random_range(5..20)).await;
                b.start_again();
            }
            fed
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_killed_at_random_points() {
    let _turn = TURN.lock().await;
    schedule(
        "sidecar-sigkill",
        Wiring::default(),
        120,
        |mut fed, knobs| async move {
            let mut rng = StdRng::seed_from_u64(knobs.seed ^ 2);
            for _ in 0..3 * knobs.scale {
                // Random points: mid-capture (guests in flight), mid-publish (outbox not yet
                // drained) and mid-replay (other sites' changes arriving) all happen here.
                fed.targets.after(rng.random_range(1..25)).await;
                let i = rng.random_range(0..SITES);
                fed.kill_and_restart(i);
            }
            fed
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_server_down_slow_and_failing_at_one_site() {
    let _turn = TURN.lock().await;
    let wiring = Wiring {
        server_proxy: Some(1),
        ..Wiring::default()
    };
    schedule("server-faults", wiring, 120, |fed, knobs| async move {
        let proxy = fed.server_proxy.as_ref().expect("fault proxy");
        for _ in 0..knobs.scale {
            for mode in [
                Mode::Down,
                Mode::Slow(Duration::from_secs(2)),
                Mode::Error500,
            ] {
                fed.targets.after(10).await;
                proxy.set(mode);
                fed.targets.after(40).await;
                proxy.set(Mode::Pass);
            }
        }
        fed
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_link_of_one_site_cut_and_restored() {
    let _turn = TURN.lock().await;
    let wiring = Wiring {
        broker_relay: Some(2),
        ..Wiring::default()
    };
    schedule("link-cut", wiring, 120, |fed, knobs| async move {
        let relay = fed.broker_relay.as_ref().expect("broker relay");
        let mut rng = StdRng::seed_from_u64(knobs.seed ^ 4);
        for _ in 0..2 * knobs.scale {
            fed.targets.after(rng.random_range(5..30)).await;
            relay.down().await;
            fed.targets.after(rng.random_range(5..30)).await;
            relay.up();
        }
        fed
    })
    .await;
}
