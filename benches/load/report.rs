//! Renders one run's results as the Markdown that goes into BENCHMARKS.md: the machine,
//! the command, one table per section, and each target with its measured value and
//! met/missed. Medians over rounds, with the range of requests/s so noise shows. It only
//! formats and compares numbers; it measures nothing.

use std::fmt::Write as _;

use super::federation::FedRow;
use super::proxy::{Cell, Target, Upstream};
use super::wrk::Sample;
use super::Results;

/// Median of `f` over the samples.
fn median(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn range(samples: &[Sample]) -> (f64, f64) {
    let it = samples.iter().map(|s| s.rps);
    (
        it.clone().fold(f64::INFINITY, f64::min),
        it.fold(0.0, f64::max),
    )
}

/// One line of the machine description: `nproc`, CPU model, kernel.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("nproc {nproc}, {cpu}, Linux {kernel}")
}

fn find(cells: &[Cell], u: Upstream, t: Target, conns: usize) -> Option<&Cell> {
    cells
        .iter()
        .find(|c| c.upstream == u && c.target == t && c.conns == conns)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The whole section, ready to paste.
pub fn render(r: &Results, date: &str) -> String {
    let o = &r.opts;
    let mut s = String::new();
    let kind = if o.smoke {
        "smoke run (1 s cells, one round: the figures mean nothing)"
    } else {
        "full run"
    };
    let _ = writeln!(s, "## Results {date}: {kind}\n");
    let _ = writeln!(s, "- Machine: {}", machine());
    let _ = writeln!(
        s,
        "- Binary: `{}` ({} profile)",
        r.footprint.binary.display(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let _ = writeln!(
        s,
        "- Run took {:.0} s; proxy cells {} s x {} round(s), A/B interleaved (order rotated each round)\n",
        r.elapsed.as_secs_f64(),
        o.cell.as_secs(),
        o.rounds
    );

    let _ = writeln!(s, "### Proxy overhead\n");
    let _ = writeln!(
        s,
        "Same `wrk` client, guest mix per instance: 50 % `GET /configs`, 20 % `GET /params`, \
         20 % `PUT /params` (captured by the sidecar: durable outbox), 10 % `GET /files` over {} \
         instances. `emulator` = the Config Server emulator (one request at a time, like thin); \
         `fixed 200` = a tiny hyper server answering `||` to everything, so the upstream is not \
         the bottleneck (the pure-overhead rows). req/s: median (min-max) of the rounds; \
         latencies: medians of the rounds' percentiles, µs.\n",
        o.proxy_guests
    );
    s.push_str(
        "| upstream | conns | via | req/s | p50 µs | p99 µs | p99.9 µs | errors / requests |\n",
    );
    s.push_str("|---|---:|---|---:|---:|---:|---:|---:|\n");
    for u in [Upstream::Emulator, Upstream::Fixed] {
        for &c in &o.conns {
            for t in [Target::Direct, Target::Sidecar, Target::Nginx] {
                if let Some(cell) = find(&r.proxy.cells, u, t, c) {
                    let (lo, hi) = range(&cell.samples);
                    let _ = writeln!(
                        s,
                        "| {} | {c} | {} | {:.0} ({:.0}-{:.0}) | {:.0} | {:.0} | {:.0} | {} / {} |",
                        u.name(),
                        t.name(),
                        median(&cell.samples, |x| x.rps),
                        lo,
                        hi,
                        median(&cell.samples, |x| x.p50_us),
                        median(&cell.samples, |x| x.p99_us),
                        median(&cell.samples, |x| x.p999_us),
                        cell.samples.iter().map(|x| x.errors).sum::<u64>(),
                        cell.samples.iter().map(|x| x.requests).sum::<u64>()
                    );
                }
            }
        }
    }
    s.push_str("\n| upstream | conns | sidecar/direct req/s | nginx/direct req/s | sidecar/nginx req/s | added p50 µs sidecar / nginx | added p99 µs sidecar / nginx |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for u in [Upstream::Emulator, Upstream::Fixed] {
        for &c in &o.conns {
            let (Some(d), Some(sc), Some(n)) = (
                find(&r.proxy.cells, u, Target::Direct, c),
                find(&r.proxy.cells, u, Target::Sidecar, c),
                find(&r.proxy.cells, u, Target::Nginx, c),
            ) else {
                continue;
            };
            let m = |c: &Cell, f: fn(&Sample) -> f64| median(&c.samples, f);
            let rps = |x: &Sample| x.rps;
            let p50 = |x: &Sample| x.p50_us;
            let p99 = |x: &Sample| x.p99_us;
            let _ = writeln!(
                s,
                "| {} | {c} | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} |",
                u.name(),
                m(sc, rps) / m(d, rps).max(1e-9),
                m(n, rps) / m(d, rps).max(1e-9),
                m(sc, rps) / m(n, rps).max(1e-9),
                m(sc, p50) - m(d, p50),
                m(n, p50) - m(d, p50),
                m(sc, p99) - m(d, p99),
                m(n, p99) - m(d, p99),
            );
        }
    }

    let _ = writeln!(s, "\n### Capture cost\n");
    s.push_str(
        "`PUT /params` only, through the sidecar in front of the fixed upstream: `on` = the durable \
         outbox (append, group-committed fsync, before the answer), `off` = `proxy.capture = false` \
         (plain proxy). Medians of the rounds.\n\n",
    );
    s.push_str(
        "| guests | capture | req/s | p50 µs | p99 µs | p99.9 µs | p99 added by capture µs (median of paired rounds) |\n",
    );
    s.push_str("|---:|---|---:|---:|---:|---:|---:|\n");
    for &c in &o.capture_conns {
        let get = |on: bool| {
            r.proxy
                .capture
                .iter()
                .find(|x| x.capture == on && x.conns == c)
        };
        for on in [true, false] {
            if let Some(x) = get(on) {
                let p99 = median(&x.samples, |y| y.p99_us);
                let added = match on.then(|| capture_added_p99(r, c)).flatten() {
                    Some(d) => format!("{d:.0}"),
                    None => String::new(),
                };
                let _ = writeln!(
                    s,
                    "| {c} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {added} |",
                    if on { "on" } else { "off" },
                    median(&x.samples, |y| y.rps),
                    median(&x.samples, |y| y.p50_us),
                    p99,
                    median(&x.samples, |y| y.p999_us),
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nChanges recorded: {:.0} with capture on, {:.0} with capture off.",
        r.proxy.captured_on.abs(),
        r.proxy.captured_off.abs()
    );

    let _ = writeln!(s, "\n### Federation\n");
    let _ = writeln!(
        s,
        "Guests' `PUT /params` sent to site A's sidecar; each site has its own emulator and sidecar; \
         one RabbitMQ 3.10 node (AMQP 1.0, mutual TLS, SASL EXTERNAL). `max`: 32 guests back to \
         back for {} s; other rows: open loop at that share of the two-site maximum. applied/s: \
         changes applied at the slowest other site, from the first send to its last application. \
         Lag: from A acknowledging the guest's PUT to the other site's emulator answering the \
         replayed PUT, observed by a relay between that sidecar and its emulator (same clock), \
         every change at every other site.\n",
        o.fed_cell.as_secs()
    );
    s.push_str("| sites | deployments | instances | load | offered/s | applied/s | changes | lag p50 ms | lag p99 ms | lag max ms |\n");
    s.push_str("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for row in &r.federation.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {:.1} |",
            row.sites,
            row.deployments,
            row.instances,
            row.load,
            row.offered,
            row.applied,
            row.changes,
            row.p50_ms,
            row.p99_ms,
            row.max_ms
        );
    }

    let fp = &r.footprint;
    let mut ready = fp.ready_ms.clone();
    ready.sort_by(f64::total_cmp);
    let ready_med = ready.get(ready.len() / 2).copied().unwrap_or(0.0);
    let ready_max = ready.last().copied().unwrap_or(0.0);
    let peak_proxy = r.proxy.peak_rss_kib;
    let _ = writeln!(s, "\n### Footprint\n");
    s.push_str("| RSS idle | peak RSS, proxy load (mix, ≤ 64 conns) | peak RSS, capture cells (≤ 256 guests) | peak RSS, federation | spawn to /readyz 200 (median / max) | binary | stripped |\n");
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    let _ = writeln!(
        s,
        "| {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {ready_med:.0} / {ready_max:.0} ms ({} starts) | {:.1} MiB | {:.1} MiB |",
        mib(fp.idle_rss_kib),
        mib(peak_proxy),
        mib(r.proxy.capture_peak_rss_kib),
        mib(r.federation.peak_rss_kib),
        ready.len(),
        fp.binary_bytes as f64 / 1048576.0,
        fp.stripped_bytes as f64 / 1048576.0,
    );

    let _ = writeln!(s, "\n### Targets\n");
    s.push_str("| target | measured | |\n|---|---|---|\n");
    for (name, measured, ok) in targets(r, ready_max) {
        let _ = writeln!(s, "| {name} | {measured} | {} |", verdict(ok));
    }
    s
}

/// p99 with capture on minus off at `conns` guests: the median over rounds of the paired
/// differences (each round runs the two back to back), steadier than a difference of medians.
fn capture_added_p99(r: &Results, conns: usize) -> Option<f64> {
    let cell = |on: bool| {
        r.proxy
            .capture
            .iter()
            .find(|x| x.capture == on && x.conns == conns)
    };
    let (on, off) = (cell(true)?, cell(false)?);
    let diffs: Vec<Sample> = on
        .samples
        .iter()
        .zip(&off.samples)
        .map(|(a, b)| Sample {
            p99_us: a.p99_us - b.p99_us,
            ..Sample::default()
        })
        .collect();
    Some(median(&diffs, |x| x.p99_us))
}

/// Each target: its statement, what was measured, met or not.
fn targets(r: &Results, ready_max: f64) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let cells = &r.proxy.cells;
    let m = |c: &Cell, f: fn(&Sample) -> f64| median(&c.samples, f);
    if let (Some(sc), Some(n)) = (
        find(cells, Upstream::Fixed, Target::Sidecar, 64),
        find(cells, Upstream::Fixed, Target::Nginx, 64),
    ) {
        let ratio = m(sc, |x| x.rps) / m(n, |x| x.rps).max(1e-9);
        let (p, pn) = (m(sc, |x| x.p99_us), m(n, |x| x.p99_us));
        out.push((
            "sidecar req/s ≥ 1.2× nginx's at 64 connections, p99 ≤ nginx's (fixed upstream)".into(),
            format!("{ratio:.2}×, p99 {p:.0} µs vs {pn:.0} µs"),
            ratio >= 1.2 && p <= pn,
        ));
    }
    if let (Some(d), Some(sc), Some(n)) = (
        find(cells, Upstream::Fixed, Target::Direct, 1),
        find(cells, Upstream::Fixed, Target::Sidecar, 1),
        find(cells, Upstream::Fixed, Target::Nginx, 1),
    ) {
        let add = |c: &Cell, f: fn(&Sample) -> f64| m(c, f) - m(d, f);
        let (s50, n50) = (add(sc, |x| x.p50_us), add(n, |x| x.p50_us));
        let (s99, n99) = (add(sc, |x| x.p99_us), add(n, |x| x.p99_us));
        out.push((
            "added latency at 1 connection ≤ nginx's (p50 and p99, fixed upstream)".into(),
            format!("p50 +{s50:.0} µs vs +{n50:.0} µs; p99 +{s99:.0} µs vs +{n99:.0} µs"),
            s50 <= n50 && s99 <= n99,
        ));
    }
    if let Some(added) = capture_added_p99(r, 16) {
        out.push((
            "durable capture adds ≤ 1 ms to PUT /params p99 at 16 guests".into(),
            if added < 0.0 {
                format!("{added:.0} µs: capture on was faster, i.e. noise exceeds its cost")
            } else {
                format!("+{added:.0} µs")
            },
            added <= 1000.0,
        ));
    }
    // Each target is judged only when its section ran (`--only` runs one).
    let fed = &r.federation;
    if !fed.rows.is_empty() {
        out.push((
            "federation ≥ 5,000 changes/s between two sites".into(),
            format!("{:.0} changes/s", fed.max_rate),
            fed.max_rate >= 5000.0,
        ));
    }
    let two: Vec<&FedRow> = fed.rows.iter().filter(|x| x.sites == 2).collect();
    if let Some(half) = two.iter().find(|x| x.load == "50%") {
        out.push((
            "p99 lag ≤ 50 ms at half the maximum (two sites)".into(),
            format!(
                "{:.1} ms at {:.0}/s offered (half of what was measured, not of 5,000/s)",
                half.p99_ms, half.offered
            ),
            half.p99_ms <= 50.0,
        ));
    }
    let mut by_d: Vec<&&FedRow> = two.iter().filter(|x| x.load == "50%").collect();
    by_d.sort_by_key(|x| x.deployments);
    if let (Some(lo), Some(hi)) = (by_d.first(), by_d.last()) {
        // "Not growing": the most deployments' p99 within 1.5× (+5 ms) of the fewest's.
        let ok = hi.p99_ms <= lo.p99_ms * 1.5 + 5.0;
        out.push((
            "lag not growing with deployments (p99 at most ≤ 1.5× fewest + 5 ms)".into(),
            format!(
                "p99 {:.1} ms at {} vs {:.1} ms at {}",
                hi.p99_ms, hi.deployments, lo.p99_ms, lo.deployments
            ),
            ok,
        ));
    }
    let peak = r.proxy.peak_rss_kib;
    if peak > 0 {
        out.push((
            "RSS ≤ 32 MiB under proxy load (guest mix, 64 connections)".into(),
            format!("{:.1} MiB peak", mib(peak)),
            peak <= 32 * 1024,
        ));
    }
    if r.footprint.idle_rss_kib > 0 {
        out.push((
            "RSS ≤ 16 MiB idle".into(),
            format!("{:.1} MiB", mib(r.footprint.idle_rss_kib)),
            r.footprint.idle_rss_kib <= 16 * 1024,
        ));
        out.push((
            "ready ≤ 100 ms after start".into(),
            format!("{ready_max:.0} ms (slowest start)"),
            ready_max <= 100.0,
        ));
    }
    out
}
