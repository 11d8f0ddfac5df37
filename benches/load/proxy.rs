//! The proxy sections of the load run: requests/s and latency of the guest mix sent by the
//! same `wrk` directly to an upstream, through the sidecar and through nginx (A/B
//! interleaved, repeated), against the emulator and against the fixed-response upstream;
//! and `PUT /params` latency through the sidecar with capture on (durable outbox) and off.
//! It starts and stops its own processes; it judges nothing (see `report`).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;

use super::fixed::Fixed;
use super::guest::{self, Req};
use super::nginx::Nginx;
use super::wrk::{self, Sample};
use super::{proc_kib, Options};
use crate::support::client::InstanceXml;
use crate::support::emulator::Emulator;
use crate::support::sidecar::{config, Sidecar};
use crate::support::site::Site;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Emulator,
    Fixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Direct,
    Sidecar,
    Nginx,
}

impl Upstream {
    pub fn name(self) -> &'static str {
        match self {
            Upstream::Emulator => "emulator",
            Upstream::Fixed => "fixed 200",
        }
    }
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Sidecar => "sidecar",
            Target::Nginx => "nginx",
        }
    }
}

/// Every round's sample of one (upstream, connections, target).
#[derive(Debug, Clone)]
pub struct Cell {
    pub upstream: Upstream,
    pub target: Target,
    pub conns: usize,
    pub samples: Vec<Sample>,
}

/// Every round's sample of `PUT /params` through the sidecar at `conns` guests.
#[derive(Debug, Clone)]
pub struct CaptureCell {
    pub capture: bool,
    pub conns: usize,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Default)]
pub struct ProxyResults {
    pub cells: Vec<Cell>,
    pub capture: Vec<CaptureCell>,
    /// Highest VmHWM of the sidecars that carried the proxy-overhead load (guest mix, at
    /// most the largest of `Options::conns` connections).
    pub peak_rss_kib: u64,
    /// Highest VmHWM of the sidecars of the capture-cost cells (up to 256 guests).
    pub capture_peak_rss_kib: u64,
    /// Changes the capturing sidecar recorded, and the non-capturing one (must be 0).
    pub captured_on: f64,
    pub captured_off: f64,
}

/// Rotates `items` by `round` so no target always runs first.
fn rotated<T: Copy>(items: &[T], round: usize) -> Vec<T> {
    let n = items.len();
    (0..n).map(|i| items[(i + round) % n]).collect()
}

fn cell<T, F: Fn(&T) -> bool>(cells: &mut [T], f: F) -> Option<&mut T> {
    cells.iter_mut().find(|c| f(c))
}

pub fn run(
    opts: &Options,
    rt: &tokio::runtime::Runtime,
    dir: &Path,
) -> anyhow::Result<ProxyResults> {
    let emulator = Site::emulator();
    let fixed = Fixed::start()?;
    let emu_addr = emulator.addr();
    let side_emu = sidecar(dir, "emu", emu_addr, "")?;
    let side_fixed = sidecar(dir, "fixed", fixed.addr, "")?;
    // The capture cells get their own sidecars, so their 256 guests do not count in the
    // proxy-overhead rows' memory.
    let side_cap = sidecar(dir, "cap", fixed.addr, "")?;
    let side_nocap = sidecar(dir, "nocap", fixed.addr, "capture = false\n")?;
    let nginx = Nginx::start(&[emu_addr, fixed.addr])?;

    let guests: Vec<InstanceXml> = (0..opts.proxy_guests)
        .map(|i| guest::instance("guest", i, &format!("deployment-{}", i % 8)))
        .collect();
    let capturing = [side_emu.proxy, side_fixed.proxy, side_cap.proxy];
    prepare(rt, &guests, &capturing, &emulator)?;
    let mix: Vec<Req> = guests.iter().flat_map(guest::mix).collect();
    let puts: Vec<Req> = guests
        .iter()
        .map(|x| guest::put_params(x, "10.0.0.7"))
        .collect();
    let mix_lua = wrk::script(dir, "mix", &mix)?;
    let put_lua = wrk::script(dir, "put", &puts)?;

    let addr = |u: Upstream, t: Target| -> SocketAddr {
        match (u, t) {
            (Upstream::Emulator, Target::Direct) => emu_addr,
            (Upstream::Emulator, Target::Sidecar) => side_emu.proxy,
            (Upstream::Emulator, Target::Nginx) => nginx.listeners[0],
            (Upstream::Fixed, Target::Direct) => fixed.addr,
            (Upstream::Fixed, Target::Sidecar) => side_fixed.proxy,
            (Upstream::Fixed, Target::Nginx) => nginx.listeners[1],
        }
    };
    let mut res = ProxyResults::default();
    let targets = [Target::Direct, Target::Sidecar, Target::Nginx];
    for round in 0..opts.rounds {
        for upstream in [Upstream::Emulator, Upstream::Fixed] {
            for &conns in &opts.conns {
                for target in rotated(&targets, round) {
                    let s = wrk::run(&mix_lua, addr(upstream, target), conns, opts.cell)
                        .with_context(|| {
                            format!("{} via {} at {conns}", upstream.name(), target.name())
                        })?;
                    eprintln!(
                        "  round {round} {:>9} {:>7} c={conns:<3} {:>9.0} req/s p50 {:>6} us p99 {:>6} us",
                        upstream.name(),
                        target.name(),
                        s.rps,
                        s.p50_us,
                        s.p99_us
                    );
                    match cell(&mut res.cells, |c: &Cell| {
                        c.upstream == upstream && c.target == target && c.conns == conns
                    }) {
                        Some(c) => c.samples.push(s),
                        None => res.cells.push(Cell {
                            upstream,
                            target,
                            conns,
                            samples: vec![s],
                        }),
                    }
                }
            }
        }
        for &conns in &opts.capture_conns {
            for capture in rotated(&[true, false], round) {
                let to = if capture {
                    side_cap.proxy
                } else {
                    side_nocap.proxy
                };
                let s = wrk::run(&put_lua, to, conns, opts.cell)
                    .with_context(|| format!("PUT /params capture={capture} at {conns}"))?;
                eprintln!(
                    "  round {round} PUT /params capture={capture:<5} c={conns:<3} {:>9.0} req/s p50 {:>6} us p99 {:>6} us",
                    s.rps, s.p50_us, s.p99_us
                );
                match cell(&mut res.capture, |c: &CaptureCell| {
                    c.capture == capture && c.conns == conns
                }) {
                    Some(c) => c.samples.push(s),
                    None => res.capture.push(CaptureCell {
                        capture,
                        conns,
                        samples: vec![s],
                    }),
                }
            }
        }
    }
    let hwm = |s: &Sidecar| proc_kib(s.pid().as_raw() as u32, "VmHWM:").unwrap_or(0);
    res.peak_rss_kib = hwm(&side_emu).max(hwm(&side_fixed));
    res.capture_peak_rss_kib = hwm(&side_cap).max(hwm(&side_nocap));
    rt.block_on(async {
        let captured = |s: &Sidecar| {
            let admin = s.admin;
            async move { super::metric(admin, "audrey_federation_captured_total", &[]).await }
        };
        res.captured_on = captured(&side_cap).await?;
        res.captured_off = captured(&side_nocap).await?;
        anyhow::Ok(())
    })?;
    Ok(res)
}

/// A capture-only sidecar (no `[amqp]`) named `name` in front of `upstream`.
fn sidecar(
    dir: &Path,
    name: &str,
    upstream: SocketAddr,
    proxy_extra: &str,
) -> anyhow::Result<Sidecar> {
    let d = dir.join(name);
    let cfg = config(
        &format!("bench-{name}"),
        &format!("http://{upstream}"),
        &d,
        proxy_extra,
        "",
    );
    Ok(Sidecar::start(&d, &cfg))
}

/// Registers the guests through the capturing sidecars (so they learn the deployments, as
/// in production) and uploads each one's tarball straight to the emulator.
fn prepare(
    rt: &tokio::runtime::Runtime,
    guests: &[InstanceXml],
    sidecars: &[SocketAddr],
    emulator: &Emulator,
) -> anyhow::Result<()> {
    let pool = guest::pool();
    rt.block_on(async {
        for &sidecar in sidecars {
            let regs = guests.iter().map(guest::register).collect();
            guest::send_all(&pool, sidecar, regs, 8).await?;
        }
        let files = guests.iter().map(guest::put_files).collect();
        guest::send_all(&pool, emulator.addr(), files, 8).await
    })
}
