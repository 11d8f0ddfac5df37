//! The ready-made monitoring checked with `promtool` (Debian's `prometheus` package): the
//! alert rules load and their unit tests pass (each alert fires and stays quiet), a real
//! `/metrics` scrape after mixed traffic passes `promtool check metrics`, and every PromQL
//! expression in the rules and the Grafana dashboard names only metrics `src/metrics.rs`
//! defines (or `up`), so neither can drift silently. It must not skip: without promtool it
//! fails and says to run `scripts/install-deps`.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::client::Client;
use support::sidecar::{config, Sidecar};
use support::upstream;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files() -> PathBuf {
    root().join("charts/audrey-federation/files")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `promtool args…` (with `stdin` piped in when given); fails clearly when it is absent.
fn promtool(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(files())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): run scripts/install-deps (Debian package `prometheus`)"
            )
        });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(input).expect("write to promtool");
    }
    child.wait_with_output().expect("promtool output")
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_check_rules_passes() {
    let out = promtool(&["check", "rules", "prometheus-rules.yaml"], None);
    assert_ok("promtool check rules", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn promtool_rule_unit_tests_fire_and_stay_quiet() {
    let out = promtool(&["test", "rules", "prometheus-rules.test.yaml"], None);
    assert_ok("promtool test rules", &out);
    // Every alert has a unit test where it fires and one where it does not.
    let rules = read(&files().join("prometheus-rules.yaml"));
    let tests = read(&files().join("prometheus-rules.test.yaml"));
    let alerts = yaml_values(&rules, "alert");
    assert!(alerts.len() >= 10, "too few alerts: {alerts:?}");
    for alert in &alerts {
        let fired = tests.contains(&format!(
            "alertname: {alert}\n        exp_alerts:\n          - "
        ));
        let quiet = tests.contains(&format!("alertname: {alert}\n        exp_alerts: []"));
        assert!(
            fired && quiet,
            "{alert}: the unit tests must expect it to fire (fired={fired}) and not (quiet={quiet})"
        );
    }
}

/// Values of `key: value` lines (one per line, any indentation, `- ` allowed).
fn yaml_values(yaml: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}: ");
    yaml.lines()
        .map(|l| l.trim_start().trim_start_matches("- "))
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_passes_on_a_real_scrape() {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), "", ""),
    );
    let client = Client::new(sc.proxy);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let mut statuses = Vec::new();
    for batch in 0..20 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..16u32 {
            let client = client.clone();
            set.spawn(async move {
                let n = batch * 16 + i;
                let (method, path, headers, body): (_, _, &[(&str, &str)], _) = match n % 6 {
                    0 => ("GET", format!("/configs/2/x{n}"), &[], ""),
                    1 => (
                        "PUT",
                        format!("/params/2/x{n}"),
                        &form,
                        "audrey_data=%7C%26%7C",
                    ),
                    2 => ("GET", format!("/files/2/x{n}"), &[], ""),
                    // No audrey_data field: forwarded, counted as a capture skip.
                    3 => ("PUT", format!("/params/2/x{n}"), &form, "other=1"),
                    4 => ("GET", "/ip/2/x".into(), &[("x-echo-status", "404")], ""),
                    _ => ("GET", "/auth".into(), &[], ""),
                };
                let r = client.send(method, &path, headers, body);
                r.await.expect("request through the sidecar").status
            });
        }
        while let Some(status) = set.join_next().await {
            statuses.push(status.expect("request task"));
        }
    }
    assert_eq!(statuses.len(), 320);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 404),
        "{statuses:?}"
    );

    let admin = Client::new(sc.admin);
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let r = admin
            .send("GET", "/metrics", &[], "")
            .await
            .expect("scrape");
        assert_eq!(r.status, 200);
        let text = r.text();
        // The proxy records after answering: wait (bounded) until all 320 are counted.
        if proxied(&text) >= 320.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(proxied(&body), 320.0, "{body}");
    for needle in [
        "audrey_federation_proxy_request_duration_seconds_bucket{route=\"params\"",
        "route=\"configs\"",
        "route=\"files\"",
        "route=\"other\"",
        "status_class=\"4xx\"",
        "audrey_federation_captured_total{kind=\"params\"} 54",
        "audrey_federation_capture_skipped_total{reason=\"missing_audrey_data\"} 53",
        "# TYPE audrey_federation_outbox_pending gauge",
        "audrey_federation_build_info{version=",
    ] {
        assert!(body.contains(needle), "scrape lacks {needle:?}:\n{body}");
    }
    let out = promtool(&["check", "metrics"], Some(body.as_bytes()));
    assert_ok(&format!("promtool check metrics on\n{body}\n"), &out);
}

/// Sum of `audrey_federation_proxy_requests_total` over its series.
fn proxied(scrape: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with("audrey_federation_proxy_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Metric names `src/metrics.rs` defines, with the series names a histogram adds.
fn known_series() -> BTreeSet<String> {
    let src = read(&root().join("src/metrics.rs"));
    let mut consts = Vec::new();
    for line in src.lines() {
        let Some(rest) = line.strip_prefix("pub const ") else {
            continue;
        };
        let Some((ident, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        let value = value.trim_end_matches("\";");
        if value.starts_with("audrey_federation_") {
            consts.push((ident.to_owned(), value.to_owned()));
        }
    }
    assert!(
        consts.len() >= 20,
        "metric names not found in src/metrics.rs"
    );
    let mut names = BTreeSet::new();
    for (ident, name) in consts {
        let histogram = src.contains(&format!("describe_histogram!(\n        {ident},"));
        if histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name);
        }
    }
    assert!(names.contains("audrey_federation_lag_seconds_bucket"));
    names.insert("up".into());
    names
}

/// Metric names a PromQL expression selects: identifiers that are not functions, keywords,
/// aggregation operators, label names (inside `{}` or a `by (…)` list), ranges, strings,
/// numbers or `$variables`.
fn selected_metrics(expr: &str) -> Vec<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        let skip_to = |close: char, from: usize| {
            (from + 1..chars.len())
                .find(|&j| chars[j] == close)
                .map_or(chars.len(), |j| j + 1)
        };
        if c == '{' {
            i = skip_to('}', i);
        } else if c == '[' {
            i = skip_to(']', i);
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_to(c, i);
        } else if c == '(' && GROUPING.contains(&last_word.as_str()) {
            i = skip_to(')', i);
            last_word.clear();
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A variable, a number or a duration: the whole token.
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_.".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let lower = word.to_ascii_lowercase();
            if next != Some(&'(') && !KEYWORDS.contains(&lower.as_str()) {
                out.push(word.clone());
            }
            last_word = lower;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn selected_metrics_sees_only_metric_names() {
    let got = selected_metrics(
        "histogram_quantile(0.99, sum by (origin_site, le) (rate(a_bucket{job=~\"$site\"}\
         [$__rate_interval]))) > 1.5e3 and on (instance) time() - b offset 5m or up == 0",
    );
    assert_eq!(got, ["a_bucket", "b", "up"]);
}

/// PromQL expressions in the rules file: single-line `expr:` values and `expr: |` blocks.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let lines: Vec<&str> = yaml.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value == "|" || value == ">" {
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            exprs.push(block.join(" "));
        } else {
            exprs.push(value.trim_matches('\'').trim_matches('"').to_owned());
        }
    }
    exprs
}

fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn rules_and_dashboard_name_only_metrics_we_export() {
    let known = known_series();
    let rules = read(&files().join("prometheus-rules.yaml"));
    let tests = read(&files().join("prometheus-rules.test.yaml"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&files().join("grafana-dashboard.json")))
            .expect("grafana-dashboard.json is JSON");

    let mut exprs = rule_exprs(&rules);
    assert!(exprs.len() >= 10, "rule expressions not found: {exprs:?}");
    exprs.extend(rule_exprs(&tests));
    let mut dash = Vec::new();
    dashboard_exprs(&dashboard, &mut dash);
    assert!(dash.len() >= 12, "too few dashboard queries: {dash:?}");
    exprs.extend(dash);

    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = selected_metrics(expr);
        assert!(!names.is_empty(), "no metric in {expr:?}");
        for name in names {
            assert!(
                known.contains(&name),
                "{name:?} (in {expr:?}) is not a metric of src/metrics.rs; known: {known:?}"
            );
            used.insert(name);
        }
    }
    // The unit tests' input series must exist too, or they test a rule against nothing.
    for series in yaml_values(&tests, "series") {
        let name = series
            .trim_matches('\'')
            .trim_matches('"')
            .split('{')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(
            known.contains(&name),
            "unit test series {series:?} is unknown"
        );
    }
    assert!(used.contains("up"), "no sidecar-down alert on `up`");
}

#[test]
fn dashboard_has_datasource_and_site_variables() {
    let d: serde_json::Value = serde_json::from_str(&read(&files().join("grafana-dashboard.json")))
        .expect("grafana-dashboard.json is JSON");
    assert!(d["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
    let ds = var("datasource").expect("$datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let site = var("site").expect("$site variable");
    let query = site["query"].to_string();
    assert!(query.contains("audrey_federation_build_info"), "{query}");
    // Every panel queries the chosen data source and narrows to the chosen site.
    let panels = d["panels"].as_array().expect("panels");
    let mut targets = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            let e = t["expr"].as_str().expect("expr");
            assert!(e.contains("instance=~\"$site\""), "{}: {e}", p["title"]);
            targets += 1;
        }
    }
    assert!(targets >= 12);
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses expressions in rule files: wrap each dashboard query in a recording
    // rule, with Grafana's `$__rate_interval` made a plain duration.
    let d: serde_json::Value = serde_json::from_str(&read(&files().join("grafana-dashboard.json")))
        .expect("grafana-dashboard.json is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&d, &mut exprs);
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m");
        let quoted = serde_json::to_string(&e).expect("JSON string");
        yaml.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = promtool(
        &["check", "rules", path.to_str().expect("UTF-8 path")],
        None,
    );
    assert_ok(
        &format!("promtool check rules on the dashboard queries\n{yaml}"),
        &out,
    );
}
