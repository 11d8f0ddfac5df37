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
use support::checker::{verify, Federation, Knobs, Sampler, Wiring};
use support::fault_proxy::Mode;
use support::workload::{History, Shape, Workload};

const SITES: usize = 3;

fn shape(knobs: &Knobs, ops: usize) -> Shape {
    Shape {
        seed: knobs.seed,
        sites: SITES,
        ops: ops * knobs.scale,
        deployments: 4 * knobs.scale,
        names: false,
        leave_one_in: 0,
    }
}

/// Runs the workload on its own task while `faults` drives the federation, then verifies,
/// prints the summary and asserts.
async fn schedule<F, Fut>(name: &str, wiring: Wiring, ops: usize, faults: F)
where
    F: FnOnce(Federation, Knobs) -> Fut,
    Fut: std::future::Future<Output = Federation>,
{
    schedule_shaped(name, wiring, ops, |s| s, faults).await
}

/// [`schedule`] with the workload's shape changed by `reshape`.
async fn schedule_shaped<F, Fut>(
    name: &str,
    wiring: Wiring,
    ops: usize,
    reshape: fn(Shape) -> Shape,
    faults: F,
) where
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
    let mut workload = Workload::new(reshape(shape(&knobs, ops)), fed.targets.clone(), name);
    let sampler = Sampler::start(&fed);
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
    let verdict = verify(&mut fed, &history, sampler).await;
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
    assert_eq!(
        (
            verdict.lost,
            verdict.duplicated,
            verdict.backwards,
            verdict.phantom
        ),
        (0, 0, 0, 0)
    );
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
            for _ in 0..knobs.scale {
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

/// Is a private mount namespace (for a tmpfs only one sidecar sees) available here?
fn can_unshare() -> bool {
    std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `script` (sh) inside the mount namespace of process `pid`.
fn in_namespace_of(pid: i32, script: &str) -> std::process::Output {
    std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "sh", "-c", script])
        .output()
        .expect("run nsenter")
}

/// Sends big reports of `probe` through `site` until one is refused with 503 (bounded);
/// returns the refusal's body.
async fn until_refused(site: &support::site::Site, probe: &support::client::InstanceXml) -> String {
    let blob = "x".repeat(256 * 1024);
    for i in 0..60 {
        let data =
            support::client::audrey_data(&[("ipaddress", &format!("10.9.9.{i}")), ("blob", &blob)]);
        let r = site
            .client()
            .put_params(
                2,
                &probe.uuid,
                &probe.secret,
                &data,
                support::client::Placement::Header,
            )
            .await
            .expect("probe report");
        if r.status == 503 {
            return r.text();
        }
        assert!(r.status == 200 || r.status == 202, "probe: {r:?}");
    }
    panic!("{}: the store never refused a write", site.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_directory_full_or_read_only() {
    let _turn = TURN.lock().await;
    // Site 0's state directory is a 16 MiB tmpfs mounted in a mount namespace of its own
    // sidecar only (nothing outlives the sidecar); site 1's store file is made immutable.
    let full = can_unshare();
    if !full {
        eprintln!("SKIP (disk full part): cannot create a mount namespace here");
    }
    let wrapper: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mkdir -p \"$0\" && mount -t tmpfs -o size=16m tmpfs \"$0\" && exec \"$@\"",
        "{dir}/state",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let wiring = Wiring {
        wrapper: full.then_some((0, wrapper)),
        ..Wiring::default()
    };
    schedule(
        "disk-full-read-only",
        wiring,
        120,
        |fed, knobs| async move {
            let probes: Vec<_> = (0..2)
                .map(|i| {
                    support::client::InstanceXml::new(&format!("probe-{i}"), "probe-D", "probe-s")
                        .provides("ipaddress")
                })
                .collect();
            for (i, p) in probes.iter().enumerate() {
                fed.sites[i].register(p).await;
            }
            for _ in 0..knobs.scale {
                if full {
                    fed.targets.after(20).await;
                    let state = fed.sites[0].dir.join("state");
                    let pid = fed.sites[0].sidecar.pid().as_raw();
                    let fill = format!(
                        "dd if=/dev/zero of={}/filler bs=64k count=1000 2>/dev/null; true",
                        state.display()
                    );
                    in_namespace_of(pid, &fill);
                    let reason = until_refused(&fed.sites[0], &probes[0]).await;
                    assert!(
                        reason.contains("No space left on device"),
                        "503 reason: {reason}"
                    );
                    fed.targets.after(30).await;
                    in_namespace_of(pid, &format!("rm -f {}/filler", state.display()));
                }
                fed.targets.after(20).await;
                let file = fed.sites[1].dir.join("state").join("state.redb");
                let set = |flag: &str| {
                    std::process::Command::new("chattr")
                        .arg(flag)
                        .arg(&file)
                        .status()
                        .is_ok_and(|s| s.success())
                };
                if set("+i") {
                    let reason = until_refused(&fed.sites[1], &probes[1]).await;
                    let cleared = set("-i");
                    assert!(
                        reason.contains("Operation not permitted"),
                        "503 reason: {reason}"
                    );
                    assert!(cleared, "chattr -i");
                } else {
                    eprintln!("SKIP (read-only part): chattr +i not permitted here");
                }
            }
            fed
        },
    )
    .await;
}

/// Clock offsets of the sites in the skew schedule (seconds, `FAKETIME` syntax).
const SKEW: [(usize, i64); 2] = [(1, -30), (2, 30)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_between_sites() {
    const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    let _turn = TURN.lock().await;
    assert!(
        std::path::Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} missing: scripts/install-deps installs faketime"
    );
    // One site's clock 30 s behind, one 30 s ahead (wall clock only: timers and timeouts
    // use the monotonic clock, left alone); each sidecar is run through `env` with
    // libfaketime preloaded.
    let skewed = |offset: i64| -> Vec<String> {
        vec![
            "env".into(),
            format!("LD_PRELOAD={LIBFAKETIME}"),
            format!("FAKETIME={offset:+}s"),
            "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
            "FAKETIME_NO_CACHE=1".into(),
        ]
    };
    let wiring = Wiring {
        wrapper: Some((SKEW[0].0, skewed(SKEW[0].1))),
        wrapper2: Some((SKEW[1].0, skewed(SKEW[1].1))),
        ..Wiring::default()
    };
    schedule("clock-skew", wiring, 120, |fed, _| async move {
        fed.targets.after(80).await;
        // Every site has applied something from every other (a site whose clock is behind
        // may first see the broker's fresh certificate as not yet valid, and retry).
        let deadline = Instant::now() + Duration::from_secs(90);
        for site in &fed.sites {
            for origin in fed.names.iter().filter(|o| **o != site.name) {
                let label = format!("origin_site=\"{origin}\"");
                while site.metric("audrey_federation_lag_seconds_count", &[&label]).await < 1.0 {
                    assert!(Instant::now() < deadline, "{}: nothing applied from {origin}", site.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let offset = |site: usize| SKEW.iter().find(|(s, _)| *s == site).map_or(0, |(_, o)| *o);
        for (s, site) in fed.sites.iter().enumerate() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            for (o, origin) in fed.names.iter().enumerate() {
                if o == s {
                    continue;
                }
                let label = format!("origin_site=\"{origin}\"");
                let text = site.metrics().await;
                let sum = support::site::sum_metric(&text, "audrey_federation_lag_seconds_sum", &[&label]);
                let count = support::site::sum_metric(&text, "audrey_federation_lag_seconds_count", &[&label]);
                let newest = support::site::sum_metric(
                    &text,
                    "audrey_federation_last_applied_timestamp_seconds",
                    &[&label],
                );
                // The histogram never goes negative (an origin ahead of us counts as 0).
                assert!(sum >= 0.0 && count > 0.0, "{}: lag from {origin}: sum {sum}, count {count}", site.name);
                // time() - the gauge is the dashboards' lag: it carries the clock
                // difference (negative for an origin whose clock is ahead): documented.
                let lag = now - newest;
                let skew = offset(o) as f64;
                println!(
                    "clock-skew: at {} from {origin}: mean histogram lag {:.3}s over {count} changes, time()-last_applied {lag:.1}s (origin clock {:+}s vs real)",
                    site.name,
                    sum / count,
                    offset(o)
                );
                // Never below what the clock difference explains; bounded above by the real
                // delay (a site behind may have waited for the certificate to become valid).
                assert!(
                    lag >= -skew - 2.0 && lag <= -skew + 90.0,
                    "{}: time()-last_applied from {origin} = {lag}",
                    site.name
                );
            }
        }
        fed
    })
    .await;
}

/// Guests that leave right after sending (FIN or RST, one report in four) while one site's
/// server holds its answers 100 ms (so the guest is gone while the server is busy): every
/// value an origin server kept must reach every site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_leaving_right_after_sending_lose_nothing() {
    let _turn = TURN.lock().await;
    let wiring = Wiring {
        server_proxy: Some(0),
        ..Wiring::default()
    };
    schedule_shaped(
        "guests-leave",
        wiring,
        120,
        |s| Shape {
            names: true,
            leave_one_in: 4,
            ..s
        },
        |fed, knobs| async move {
            let proxy = fed.server_proxy.as_ref().expect("fault proxy");
            proxy.set(Mode::Hold(Duration::from_millis(100)));
            fed.targets.after(120 * knobs.scale as u64).await;
            proxy.set(Mode::Pass);
            fed
        },
    )
    .await;
}

/// Successive reports of an instance set different names, while sidecars are killed: a lost
/// or overtaken older report shows as a name missing or stale at another site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successive_changes_with_different_names_while_sidecars_are_killed() {
    let _turn = TURN.lock().await;
    schedule_shaped(
        "names-sidecar-sigkill",
        Wiring::default(),
        120,
        |s| Shape { names: true, ..s },
        |mut fed, knobs| async move {
            let mut rng = StdRng::seed_from_u64(knobs.seed ^ 5);
            for _ in 0..3 * knobs.scale {
                fed.targets.after(rng.random_range(1..25)).await;
                let i = rng.random_range(0..SITES);
                fed.kill_and_restart(i);
            }
            fed
        },
    )
    .await;
}

/// An origin whose state directory is wiped (its server keeps its data) and whose sidecar
/// starts again: its new changes must still reach the other sites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_state_directory_wiped_and_restarted() {
    let _turn = TURN.lock().await;
    let wiring = Wiring {
        learn: true,
        ..Wiring::default()
    };
    schedule_shaped(
        "state-wiped",
        wiring,
        120,
        |s| Shape { names: true, ..s },
        |mut fed, knobs| async move {
            let mut rng = StdRng::seed_from_u64(knobs.seed ^ 6);
            for _ in 0..knobs.scale {
                fed.targets.after(rng.random_range(20..40)).await;
                fed.wipe_and_restart(0);
            }
            fed
        },
    )
    .await;
}

/// The link between the busiest publisher and the broker is cut again and again while
/// windows of changes are in flight, so the publisher resends entries after later ones of
/// the same instance may have been taken; successive reports set different names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_after_the_link_is_cut_mid_window() {
    let _turn = TURN.lock().await;
    let wiring = Wiring {
        broker_relay: Some(0),
        ..Wiring::default()
    };
    schedule_shaped(
        "resend-mid-window",
        wiring,
        120,
        |s| Shape { names: true, ..s },
        |fed, knobs| async move {
            let relay = fed.broker_relay.as_ref().expect("broker relay");
            let mut rng = StdRng::seed_from_u64(knobs.seed ^ 7);
            for _ in 0..6 * knobs.scale {
                fed.targets.after(rng.random_range(2..10)).await;
                relay.down().await;
                fed.targets.after(rng.random_range(1..5)).await;
                relay.up();
            }
            fed
        },
    )
    .await;
}

/// Two sidecar processes consume one site's queue (an overlap during a rolling update, or a
/// replica started by mistake): the broker hands them that site's deliveries in turn, so
/// changes of one instance are applied out of order; successive reports set different names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_reordered_by_two_consumers_of_one_queue() {
    let _turn = TURN.lock().await;
    let wiring = Wiring {
        second_consumer: Some(1),
        ..Wiring::default()
    };
    schedule_shaped(
        "reordered",
        wiring,
        120,
        |s| Shape { names: true, ..s },
        |fed, _| async move { fed },
    )
    .await;
}
