//! The load harness: `scripts/bench` (= `cargo bench --bench load`), or
//! `cargo bench --bench load -- --smoke` for CI's short run. Prints the BENCHMARKS table
//! and writes it to `target/bench/report.md` (`report-smoke.md` for `--smoke`; or
//! `--out FILE`). Run without `--bench` (as `cargo test --all-targets` does) it does
//! nothing: CI's smoke run is `tests/bench_smoke.rs`.
//! The harness itself lives in `benches/load/`; this file owns only the command line.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "load/mod.rs"]
mod load;

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("load harness: skipped (run it with `cargo bench --bench load` or scripts/bench)");
        return Ok(());
    }
    let mut opts = if args.iter().any(|a| a == "--smoke") {
        load::Options::smoke()
    } else {
        load::Options::full()
    };
    // `--only footprint|proxy|federation`: one section (for working on it).
    if let Some(i) = args.iter().position(|a| a == "--only") {
        opts.only = args.get(i + 1).cloned();
    }
    let out = match args.iter().position(|a| a == "--out") {
        Some(i) => PathBuf::from(
            args.get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("--out needs a file"))?,
        ),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("bench")
            .join(if opts.smoke {
                "report-smoke.md"
            } else {
                "report.md"
            }),
    };
    let results = load::run(opts)?;
    let report = load::report::render(&results, &utc_now());
    println!("{report}");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, &report)?;
    eprintln!("written to {}", out.display());
    Ok(())
}

/// `date -u`, for the report's heading.
fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
