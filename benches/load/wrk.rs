//! Runs Debian's `wrk` (closed loop, keep-alive) with a generated Lua script that cycles
//! through pre-built raw requests and prints requests, duration, errors and the latency
//! percentiles from `done`. It owns the script and the parsing of that one line; it starts
//! no server.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::guest::Req;

/// One wrk run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub requests: u64,
    /// Socket errors plus non-2xx/3xx answers.
    pub errors: u64,
}

/// Writes the Lua script for `reqs` into `dir` and returns its path.
pub fn script(dir: &Path, name: &str, reqs: &[Req]) -> anyhow::Result<std::path::PathBuf> {
    let mut lua = String::from("local reqs = {\n");
    for r in reqs {
        lua.push_str("  \"");
        for c in r.raw().chars() {
            match c {
                '\\' => lua.push_str("\\\\"),
                '"' => lua.push_str("\\\""),
                '\r' => lua.push_str("\\r"),
                '\n' => lua.push_str("\\n"),
                c => lua.push(c),
            }
        }
        lua.push_str("\",\n");
    }
    lua.push_str(
        r#"}
local n = #reqs
local i = 0
local counter = 0
function setup(thread)
  thread:set("start", counter * 7)
  counter = counter + 1
end
function init(args)
  i = (start or 0) % n
end
function request()
  i = i % n + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("AUDREY requests=%d duration_us=%d errors=%d p50=%d p99=%d p999=%d\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#,
    );
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, lua).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `wrk -t T -c conns -d secs -s script http://addr/` and its parsed `AUDREY` line.
pub fn run(
    script: &Path,
    addr: SocketAddr,
    conns: usize,
    secs: Duration,
) -> anyhow::Result<Sample> {
    let threads = conns.clamp(1, 2);
    let out = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{}s", secs.as_secs().max(1)))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}/"))
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk exited {}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&stdout).with_context(|| format!("wrk output without a result line:\n{stdout}"))
}

fn parse(stdout: &str) -> anyhow::Result<Sample> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("AUDREY "))
        .context("no AUDREY line")?;
    let field = |name: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .context(name.to_string())?
            .parse::<f64>()
            .with_context(|| name.to_string())
    };
    let requests = field("requests")?;
    let duration_s = field("duration_us")? / 1e6;
    Ok(Sample {
        rps: if duration_s > 0.0 {
            requests / duration_s
        } else {
            0.0
        },
        p50_us: field("p50")?,
        p99_us: field("p99")?,
        p999_us: field("p999")?,
        requests: requests as u64,
        errors: field("errors")? as u64,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_result_line() {
        let s = super::parse(
            "Running 1s test\nAUDREY requests=1000 duration_us=500000 errors=2 p50=40 p99=90 p999=200\n",
        )
        .unwrap();
        assert_eq!(s.requests, 1000);
        assert_eq!(s.errors, 2);
        assert!((s.rps - 2000.0).abs() < 1e-9);
        assert_eq!(s.p999_us, 200.0);
    }
}
