//! One broker per site, federated between sites by RabbitMQ's own exchange federation (no
//! code of ours in a broker): a pair, a hub with two spokes, a full mesh of three and a ring of
//! three, then a wide-area link cut. Each sidecar knows only its local broker. Three brokers
//! serve the whole binary (`support::federation_links`: every topology has its own exchange,
//! queues and links, all from definitions at boot) and the tests take turns. Convergence is
//! asserted on every site's durable replay state: each change applied once, in per-instance
//! order, none echoed to its origin.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::client::{Creds, InstanceXml};
use support::federation_links::{self as links, Federation, Topology, SITES};
use support::lag::{lag_once, lag_since, Histogram};
use support::scenario;
use support::site::Site;

/// One topology test at a time: they share the brokers and each runs several processes.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LIMIT: Duration = Duration::from_secs(60);
/// Seconds between two heartbeats of each sidecar: how fast a link proves itself alive.
const HEARTBEAT: f64 = 0.5;

/// The member sites of `topo`, started once every site hears every other one's heartbeat
/// (every federation path is up and bound, so no change published later can miss one).
async fn start(fed: &Federation, topo: &Topology, dir: &std::path::Path) -> Vec<Site> {
    let sites: Vec<Site> = topo
        .members
        .iter()
        .map(|&i| fed.start_site(topo, i, &dir.join(SITES[i]), HEARTBEAT))
        .collect();
    for s in &sites {
        for o in sites.iter().filter(|o| o.name != s.name) {
            let label = format!("origin_site=\"{}\"", o.name);
            s.metric_reaches(
                "audrey_federation_heartbeats_received_total",
                &[&label],
                1.0,
            )
            .await;
        }
    }
    sites
}

/// I1 registered at `first` and I2 at `last` resolve each other's address at both.
async fn i1_and_i2(first: &Site, last: &Site) {
    let (i1, i2) = (scenario::i1(), scenario::i2());
    first.register(&i1).await;
    last.register(&i2).await;
    first.report(&i1, "10.0.0.5").await;
    last.report(&i2, "10.1.0.7").await;
    last.sees(&i2, "10.0.0.5").await;
    first.sees(&i1, "10.1.0.7").await;
}

/// No change travelled twice: each site got its own changes back once (from its local
/// binding, skipped by the own-origin rule) and no duplicate (no loop, no second path).
async fn no_echo_no_duplicate(sites: &[Site], captured: &[u64]) {
    for (s, site) in sites.iter().enumerate() {
        let own = "audrey_federation_own_origin_total";
        site.metric_reaches(own, &[], captured[s] as f64).await;
        assert_eq!(
            site.metric(own, &[]).await,
            captured[s] as f64,
            "{}",
            site.name
        );
        assert_eq!(
            site.metric("audrey_federation_duplicate_total", &[]).await,
            0.0,
            "{}: a change arrived twice",
            site.name
        );
    }
}

/// The I1/I2 scenario between the first and last member, then a stream across many
/// deployments at every member: all converge, exactly once, no echo.
async fn converges(topo: Topology, deployments: usize, reports: usize) {
    let _turn = TURN.lock().await;
    let fed = links::shared();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut sites = start(fed, &topo, dir.path()).await;
    let last = sites.len() - 1;
    i1_and_i2(&sites[0], &sites[last]).await;
    let mut captured = scenario::stream(&sites, deployments, reports).await;
    captured[0] += 2;
    captured[last] += 2;
    no_echo_no_duplicate(&sites, &captured).await;
    scenario::applied_exactly_once(&mut sites, &captured).await;
    eprintln!(
        "{}: {} changes converged at {} sites in {:?}",
        topo.name,
        captured.iter().sum::<u64>(),
        sites.len(),
        t0.elapsed()
    );
}

#[tokio::test]
async fn pair_converges() {
    converges(links::pair(), 8, 4).await;
}

#[tokio::test]
async fn hub_with_two_spokes_converges() {
    converges(links::hub(), 9, 4).await;
}

#[tokio::test]
async fn full_mesh_of_three_converges() {
    converges(links::mesh(), 9, 4).await;
}

#[tokio::test]
async fn ring_of_three_with_two_hops_converges() {
    converges(links::ring(), 9, 4).await;
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

const LAST_APPLIED: &str = "audrey_federation_last_applied_timestamp_seconds";
/// How long the wide-area link stays cut while guests report.
const OUTAGE: Duration = Duration::from_secs(4);
/// Pace of each side's guest while the link is cut and after.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Both sides' guests report `rounds` times, one per [`REPORT_EVERY`], from `from`; returns
/// the next value and the time the last report started.
async fn report_both(
    a: &Site,
    b: &Site,
    (i1, i2): (&InstanceXml, &InstanceXml),
    from: u32,
    until: impl Fn(u32) -> bool,
) -> (u32, f64) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let (mut v, mut last) = (from, 0.0);
    for _ in 0..10_000 {
        if until(v) {
            break;
        }
        tick.tick().await;
        last = unix_now();
        a.report(i1, &value(v, 0)).await;
        b.report(i2, &value(v, 1)).await;
        v += 1;
    }
    (v, last)
}

/// The address side `side` (0: I1 at A, 1: I2 at B) reports the `v`-th time.
fn value(v: u32, side: u8) -> String {
    format!("10.{side}.{}.{}", v / 250, v % 250)
}

#[tokio::test]
async fn wide_area_link_cut_then_restored() {
    let _turn = TURN.lock().await;
    let fed = links::shared();
    let topo = links::cut();
    let dir = tempfile::tempdir().unwrap();
    let mut sites = start(fed, &topo, dir.path()).await;
    let (a, b) = (&sites[0], &sites[1]);
    let (i1, i2) = (scenario::i1(), scenario::i2());
    a.register(&i1).await;
    b.register(&i2).await;
    let (next, _) = report_both(a, b, (&i1, &i2), 1, |v| v > 3).await;
    b.sees(&i2, &value(next - 1, 0)).await;
    a.sees(&i1, &value(next - 1, 1)).await;
    // Each side applied the other's registration and reports 1..next.
    let before_b = lag_once(b, "site-a", next).await;
    let before_a = lag_once(a, "site-b", next).await;

    // Cut both directions of the wide-area link; guests keep reporting on both sides.
    fed.relay(1, 0).down().await;
    fed.relay(0, 1).down().await;
    let cut_at = unix_now();
    let t_cut = Instant::now();
    let first_in_outage = next;
    let (next, last_report) =
        report_both(a, b, (&i1, &i2), next, |_| t_cut.elapsed() >= OUTAGE).await;
    let in_outage = u64::from(next - first_in_outage);
    // Each sidecar handed its changes to its own broker; nothing crossed.
    for s in [a, b] {
        let deadline = Instant::now() + LIMIT;
        while s.metric("audrey_federation_outbox_pending", &[]).await > 0.0 {
            assert!(Instant::now() < deadline, "{}: outbox not drained", s.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let stale_b = b.metric(LAST_APPLIED, &["origin_site=\"site-a\""]).await;
    let stale_a = a.metric(LAST_APPLIED, &["origin_site=\"site-b\""]).await;
    assert!(
        stale_b < cut_at && stale_a < cut_at,
        "last applied moved during the cut: {stale_b} {stale_a} >= {cut_at}"
    );
    let stale_for = unix_now() - stale_b;
    assert!(
        stale_for >= OUTAGE.as_secs_f64(),
        "lag during the cut {stale_for}"
    );
    let creds = Creds::new(&i2.uuid, &i2.secret);
    let r = b
        .client()
        .get_configs(2, &i2.uuid, None, &creds)
        .await
        .unwrap();
    assert!(
        !r.text().contains(&base64_of(&value(next - 1, 0))),
        "a change crossed the cut link"
    );

    // Restore: everything arrives, and the lag shows the outage and its recovery.
    fed.relay(1, 0).up();
    fed.relay(0, 1).up();
    let t_up = Instant::now();
    b.sees(&i2, &value(next - 1, 0)).await;
    a.sees(&i1, &value(next - 1, 1)).await;
    let recovered_in = t_up.elapsed();
    let caught_up = b.metric(LAST_APPLIED, &["origin_site=\"site-a\""]).await;
    assert!(caught_up >= last_report, "{caught_up} < {last_report}");
    let (after_b, during_b) = lag_since(b, "site-a", next, &before_b).await;
    let (after_a, during_a) = lag_since(a, "site-b", next, &before_a).await;
    for lag in [&during_b, &during_a] {
        assert!(
            lag.count == in_outage as f64 && lag.p50 >= 1.0,
            "lag of the changes made during the outage: {lag}"
        );
    }

    // After recovery: the same traffic, normal lag.
    let (end, _) = report_both(a, b, (&i1, &i2), next, |v| v >= next + 20).await;
    b.sees(&i2, &value(end - 1, 0)).await;
    a.sees(&i1, &value(end - 1, 1)).await;
    let (_, normal_b) = lag_since(b, "site-a", end, &after_b).await;
    let (_, normal_a) = lag_since(a, "site-b", end, &after_a).await;
    assert!(
        normal_b.p50 < during_b.p50 && normal_a.p50 < during_a.p50,
        "lag after recovery: {normal_b}; {normal_a}"
    );

    let captured = [1 + u64::from(end - 1), 1 + u64::from(end - 1)];
    eprintln!(
        "link cut: {in_outage} changes per side during a {OUTAGE:?} outage, {} in all; \
         last_applied stale {stale_for:.1} s; recovered in {recovered_in:?}\n\
         made during the outage: b<-a {during_b}; a<-b {during_a}\n\
         after recovery: b<-a {normal_b}; a<-b {normal_a}",
        captured[0] + captured[1]
    );
    scenario::applied_exactly_once(&mut sites, &captured).await;
}

#[tokio::test]
async fn upstream_broker_stopped_then_restarted() {
    let _turn = TURN.lock().await;
    let fed = links::shared();
    let topo = links::stop();
    let dir = tempfile::tempdir().unwrap();
    let mut sites = start(fed, &topo, dir.path()).await;
    let (b, c) = (&sites[0], &sites[1]);
    let (i1, i2) = (scenario::i1(), scenario::i2());
    b.register(&i1).await;
    c.register(&i2).await;
    let (next, _) = report_both(b, c, (&i1, &i2), 1, |v| v > 3).await;
    c.sees(&i2, &value(next - 1, 0)).await;
    b.sees(&i1, &value(next - 1, 1)).await;

    // Broker c stops: c's changes wait in its sidecar's outbox, b's in the upstream queue
    // that c's link left on broker b. Guests keep reporting on both sides.
    fed.broker(2).await.stop();
    let t_stop = Instant::now();
    let first_down = next;
    let (next, _) = report_both(b, c, (&i1, &i2), next, |_| {
        t_stop.elapsed() >= Duration::from_secs(2)
    })
    .await;
    assert_eq!(
        c.metric("audrey_federation_broker_link_up", &["link=\"publish\""])
            .await,
        0.0
    );
    assert!(c.metric("audrey_federation_outbox_pending", &[]).await > 0.0);
    fed.broker(2).await.start_again();
    let t_up = Instant::now();
    c.sees(&i2, &value(next - 1, 0)).await;
    b.sees(&i1, &value(next - 1, 1)).await;
    eprintln!(
        "broker stopped: {} changes per side while it was down {:?}; converged {:?} after restart",
        next - first_down,
        t_up - t_stop,
        t_up.elapsed()
    );
    let captured = [u64::from(next), u64::from(next)];
    scenario::applied_exactly_once(&mut sites, &captured).await;
}

fn base64_of(v: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v)
}

#[test]
fn lag_quantiles_interpolate_within_buckets() {
    let text = "# TYPE x histogram\n\
        audrey_federation_lag_seconds_bucket{origin_site=\"site-a\",le=\"1\"} 2\n\
        audrey_federation_lag_seconds_bucket{origin_site=\"site-a\",le=\"2\"} 4\n\
        audrey_federation_lag_seconds_bucket{origin_site=\"site-a\",le=\"+Inf\"} 4\n\
        audrey_federation_lag_seconds_bucket{origin_site=\"site-b\",le=\"1\"} 9\n\
        audrey_federation_lag_seconds_sum{origin_site=\"site-a\"} 5\n";
    let h = Histogram::lag(text, "site-a");
    assert_eq!(h.count(), 4.0);
    assert_eq!(h.quantile(0.5), Some(1.0));
    assert_eq!(h.quantile(0.75), Some(1.5));
    assert_eq!(h.mean(), Some(1.25));
    let later = Histogram {
        buckets: vec![(1.0, 2.0), (2.0, 8.0), (f64::INFINITY, 8.0)],
        sum: 10.0,
    };
    assert_eq!(later.since(&h).buckets[1], (2.0, 4.0));
    assert_eq!(later.since(&h).mean(), Some(1.25));
    assert_eq!(Histogram::default().quantile(0.5), None);
}
