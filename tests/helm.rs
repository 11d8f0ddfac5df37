//! The Helm chart (`charts/audrey-federation`) checked with real tools, run as processes: Helm
//! 3.18 (`helm lint --strict`, `helm template`), `kubernetes-validate --strict` against the
//! Kubernetes 1.33 schemas, and `yamllint`, all installed pinned under `target/tools/` by
//! `scripts/install-deps`. Assertions read the rendered manifests (converted to JSON by the
//! tools' own Python) and feed the rendered `config.toml` to the sidecar's own config parser.
//! It must not skip: without the tools it fails and says to run `scripts/install-deps`. Helm's
//! cache, config and data folders live in a temporary directory per call.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use audrey_federation::config::Config;
use serde_json::Value;

const CI_VALUES: [&str; 4] = [
    "full-values.yaml",
    "sidecar-only-values.yaml",
    "all-options-values.yaml",
    "minimal-values.yaml",
];
/// The CRD APIs the optional resources are guarded by, as a cluster with the operators has them.
const CRD_APIS: [&str; 3] = [
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "cert-manager.io/v1",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/audrey-federation")
}

fn tool(rel: &str) -> PathBuf {
    let path = root().join("target/tools").join(rel);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-deps (pinned helm, kubernetes-validate, yamllint)",
        path.display()
    );
    path
}

/// Runs a program with `stdin` piped in when given, inside `dir`, Helm's state in a temp dir.
fn run(program: &Path, args: &[&str], stdin: Option<&[u8]>, dir: &Path) -> Output {
    let home = tempfile::tempdir().expect("temp dir for helm state");
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("process output")
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what} failed: {}", text(out));
}

/// `helm template` of the chart with a values file from `ci/` plus `--set` pairs.
fn template_in(chart_dir: &Path, values: &str, sets: &[&str], apis: &[&str]) -> Output {
    let mut args = vec!["template", "rel", ".", "--namespace", "fed"];
    if !values.is_empty() {
        args.extend(["-f", values]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    for a in apis {
        args.extend(["--api-versions", a]);
    }
    run(&tool("bin/helm"), &args, None, chart_dir)
}

fn render(values: &str, sets: &[&str]) -> String {
    let out = template_in(&chart(), &format!("ci/{values}"), sets, &CRD_APIS);
    assert_ok(&format!("helm template -f ci/{values} {sets:?}"), &out);
    String::from_utf8(out.stdout).expect("utf-8 manifests")
}

/// The rendered documents as JSON values (PyYAML from the tools' virtualenv does the YAML).
fn parse_docs(manifests: &str) -> Vec<Value> {
    let script = "import sys, json, yaml\n\
                  print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))";
    let out = run(
        &tool("py/bin/python"),
        &["-c", script],
        Some(manifests.as_bytes()),
        &root(),
    );
    assert_ok("yaml to json", &out);
    serde_json::from_slice(&out.stdout).expect("json documents")
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The workload's pod spec (StatefulSet in full mode, Deployment in sidecar mode).
fn pod(docs: &[Value]) -> &Value {
    let w = find(docs, "StatefulSet")
        .or_else(|| find(docs, "Deployment"))
        .expect("a workload");
    &w["spec"]["template"]
}

fn containers(pod: &Value) -> Vec<&Value> {
    let spec = &pod["spec"];
    let mut all: Vec<&Value> = Vec::new();
    for list in ["initContainers", "containers"] {
        if let Some(items) = spec[list].as_array() {
            all.extend(items.iter());
        }
    }
    all
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    containers(pod)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn config_toml(docs: &[Value]) -> String {
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["config.toml"].is_string())
        .expect("the config ConfigMap");
    cm["data"]["config.toml"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn ci_values_lint_render_and_validate_against_kubernetes_1_33() {
    for values in CI_VALUES {
        let file = format!("ci/{values}");
        let lint = run(
            &tool("bin/helm"),
            &["lint", "--strict", ".", "-f", &file],
            None,
            &chart(),
        );
        assert_ok(&format!("helm lint --strict -f {file}"), &lint);
        let manifests = render(values, &[]);
        let out = run(
            &tool("py/bin/kubernetes-validate"),
            &["--strict", "-k", "1.33.0", "--quiet", "-"],
            Some(manifests.as_bytes()),
            &root(),
        );
        assert_ok(&format!("kubernetes-validate --strict ({file})"), &out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("ERROR"), "{file}: {stdout}");
    }
}

#[test]
fn yamllint_passes_on_the_chart_yaml() {
    let out = run(&tool("py/bin/yamllint"), &["--strict", "."], None, &chart());
    assert_ok("yamllint --strict charts/audrey-federation", &out);
}

#[test]
fn rendered_config_is_accepted_by_the_sidecar_parser() {
    for values in CI_VALUES {
        let docs = parse_docs(&render(values, &[]));
        let toml = config_toml(&docs);
        let cfg = Config::parse(&toml, Path::new(values))
            .unwrap_or_else(|e| panic!("{values}: {e}\n{toml}"));
        cfg.validate()
            .unwrap_or_else(|e| panic!("{values}: {e}\n{toml}"));
        assert!(
            cfg.admin.listen.ip().is_unspecified(),
            "{values}: the kubelet probes the admin port on the pod IP"
        );
    }
    let docs = parse_docs(&render("sidecar-only-values.yaml", &[]));
    let cfg = Config::parse(&config_toml(&docs), Path::new("sidecar")).expect("parse");
    assert_eq!(cfg.proxy.upstream, "http://configserver.aeolus.svc:4567");
    assert_eq!(cfg.site, "site-b");
    let amqp = cfg.amqp.expect("federation on");
    assert_eq!(amqp.routing_key("d1"), "audrey.federation.d1");
}

#[test]
fn schema_and_checks_reject_bad_values_with_clear_messages() {
    let cases: [(&str, &[&str], &str); 9] = [
        (
            "full-values.yaml",
            &["proxy.port=abc"],
            "proxy.port: Invalid type",
        ),
        (
            "full-values.yaml",
            &["amqp.enabled=yes"],
            "amqp.enabled: Invalid type",
        ),
        (
            "full-values.yaml",
            &["bogus=1"],
            "Additional property bogus is not allowed",
        ),
        (
            "full-values.yaml",
            &["amqp.tls.bogus=1"],
            "Additional property bogus is not allowed",
        ),
        (
            "full-values.yaml",
            &["oauth.existingSecret="],
            "oauth.existingSecret",
        ),
        (
            "full-values.yaml",
            &["amqp.tls.existingSecret="],
            "amqp.tls.existingSecret",
        ),
        ("full-values.yaml", &["mode=other"], "mode"),
        ("full-values.yaml", &["site=a b"], "site"),
        (
            "full-values.yaml",
            &[
                "shutdown.drainTimeout=30",
                "terminationGracePeriodSeconds=30",
            ],
            "shutdown.drainTimeout (30) must be below terminationGracePeriodSeconds (30)",
        ),
    ];
    for (values, sets, message) in cases {
        let out = template_in(&chart(), &format!("ci/{values}"), sets, &[]);
        assert!(!out.status.success(), "{sets:?} rendered: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(message),
            "{sets:?}: expected {message:?} in {stderr}"
        );
    }
    // What only the templates check (`required`): no site, and (schema first) no server image.
    let out = template_in(&chart(), "", &["server.image.repository=r"], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("site is required"), "{stderr}");
    let out = template_in(&chart(), "", &["site=x"], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.image.repository"), "{stderr}");
}

#[test]
fn pods_have_probes_on_the_admin_port_and_a_hardened_security_context() {
    for values in CI_VALUES {
        let docs = parse_docs(&render(values, &[]));
        let pod = pod(&docs);
        let psc = &pod["spec"]["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{values}");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{values}");
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        for c in containers(pod) {
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{values} {}", c["name"]);
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{values} {}", c["name"]);
            assert_eq!(
                sc["allowPrivilegeEscalation"], false,
                "{values} {}",
                c["name"]
            );
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        }
        let sidecar = container(pod, "audrey-federation");
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
        ] {
            assert_eq!(sidecar[probe]["httpGet"]["path"], path, "{values} {probe}");
            assert_eq!(
                sidecar[probe]["httpGet"]["port"], "admin",
                "{values} {probe}"
            );
        }
        let ports = sidecar["ports"].as_array().expect("ports");
        assert!(ports
            .iter()
            .any(|p| p["name"] == "admin" && p["containerPort"] == 9464));
    }
}

#[test]
fn config_checksum_changes_when_a_config_value_changes() {
    let checksum = |sets: &[&str]| {
        let docs = parse_docs(&render("full-values.yaml", sets));
        pod(&docs)["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("checksum annotation")
            .to_owned()
    };
    let base = checksum(&[]);
    assert_eq!(base.len(), 64, "a sha256: {base}");
    assert_eq!(base, checksum(&[]), "rendering is deterministic");
    assert_ne!(base, checksum(&["amqp.routingKeyTemplate=x.{deployment}"]));
    assert_ne!(base, checksum(&["shutdown.drainTimeout=10"]));
    // Not a config value: the pod must not roll for it.
    assert_eq!(base, checksum(&["service.port=8443"]));
}

#[test]
fn service_targets_the_sidecar_and_the_server_listens_on_loopback_only() {
    for values in [
        "full-values.yaml",
        "all-options-values.yaml",
        "minimal-values.yaml",
    ] {
        let docs = parse_docs(&render(values, &[]));
        let svc = find(&docs, "Service").expect("service");
        let ports = svc["spec"]["ports"].as_array().expect("service ports");
        assert_eq!(ports[0]["targetPort"], "proxy", "{values}");
        let pod = pod(&docs);
        let sidecar = container(pod, "audrey-federation");
        assert!(sidecar["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == "proxy" && p["containerPort"] == 8443));
        let server = container(pod, "config-server");
        assert!(
            server["ports"].is_null(),
            "{values}: the server exposes no port"
        );
        let args: Vec<&str> = server["args"]
            .as_array()
            .expect("server args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let at = args
            .iter()
            .position(|a| *a == "--address")
            .expect("--address");
        assert_eq!(args.get(at + 1), Some(&"127.0.0.1"), "{values}: {args:?}");
        let cfg = Config::parse(&config_toml(&docs), Path::new(values)).expect("parse");
        assert_eq!(cfg.proxy.upstream, "http://127.0.0.1:4567");
        assert_eq!(cfg.proxy.listen.port(), 8443);
        assert_eq!(
            kinds(&docs).iter().filter(|k| *k == "StatefulSet").count(),
            1
        );
    }
    let docs = parse_docs(&render("sidecar-only-values.yaml", &[]));
    let svc = find(&docs, "Service").expect("service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "proxy");
    assert!(find(&docs, "Deployment").is_some() && find(&docs, "StatefulSet").is_none());
    assert!(
        find(&docs, "PersistentVolumeClaim").is_some(),
        "state claim"
    );
}

#[test]
fn drain_timeout_stays_below_the_termination_grace_period() {
    for values in CI_VALUES {
        let docs = parse_docs(&render(values, &[]));
        let grace = pod(&docs)["spec"]["terminationGracePeriodSeconds"]
            .as_f64()
            .expect("grace period");
        let cfg = Config::parse(&config_toml(&docs), Path::new(values)).expect("parse");
        assert!(
            cfg.shutdown.drain_timeout.as_secs_f64() < grace,
            "{values}: drain {:?} vs grace {grace}",
            cfg.shutdown.drain_timeout
        );
    }
}

#[test]
fn native_sidecar_is_an_init_container_that_restarts_always() {
    let docs = parse_docs(&render("all-options-values.yaml", &[]));
    let spec = &pod(&docs)["spec"];
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "audrey-federation");
    assert_eq!(init["restartPolicy"], "Always");
    let names: Vec<&Value> = spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(names, ["config-server"]);
    let docs = parse_docs(&render("full-values.yaml", &[]));
    assert!(pod(&docs)["spec"]["initContainers"].is_null());
}

#[test]
fn optional_resources_are_off_by_default_and_guarded_by_capabilities() {
    let optional = [
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Certificate",
    ];
    for values in [
        "full-values.yaml",
        "minimal-values.yaml",
        "sidecar-only-values.yaml",
    ] {
        let docs = parse_docs(&render(values, &[]));
        let k = kinds(&docs);
        for kind in optional {
            assert!(!k.iter().any(|x| x == kind), "{values} renders {kind}");
        }
        assert_eq!(
            k.iter().filter(|x| *x == "ConfigMap").count(),
            1,
            "{values}"
        );
    }
    let all = parse_docs(&render("all-options-values.yaml", &[]));
    for kind in optional {
        assert!(find(&all, kind).is_some(), "all options: no {kind}");
    }
    let rule = find(&all, "PrometheusRule").expect("rule");
    let rules = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    assert!(rules
        .iter()
        .any(|r| r["alert"] == "AudreyFederationSidecarDown"));
    let sm = find(&all, "ServiceMonitor").expect("service monitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(sm["spec"]["jobLabel"], "app.kubernetes.io/name");
    assert!(all
        .iter()
        .any(|d| d["kind"] == "ConfigMap" && d["data"]["audrey-federation.json"].is_string()));
    // Without the CRD APIs (a cluster without the operators), the CRs are skipped.
    let out = template_in(&chart(), "ci/all-options-values.yaml", &[], &[]);
    assert_ok("template without CRD APIs", &out);
    let bare = parse_docs(&String::from_utf8_lossy(&out.stdout));
    for kind in ["ServiceMonitor", "PrometheusRule", "Certificate"] {
        assert!(find(&bare, kind).is_none(), "{kind} without its API");
    }
    let np = find(&all, "NetworkPolicy").expect("network policy");
    let egress_ports: Vec<&Value> = np["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .flat_map(|e| e["ports"].as_array().into_iter().flatten())
        .map(|p| &p["port"])
        .collect();
    assert!(
        egress_ports.contains(&&serde_json::json!(5671)),
        "{egress_ports:?}"
    );
}

#[test]
fn the_admin_port_stays_off_the_client_service_and_only_the_scrape_reaches_it() {
    let all = parse_docs(&render("all-options-values.yaml", &[]));
    let services: Vec<&Value> = all.iter().filter(|d| d["kind"] == "Service").collect();
    assert_eq!(
        services.len(),
        2,
        "the client Service and the metrics Service"
    );
    let port_names = |svc: &Value| -> Vec<String> {
        svc["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let client = services
        .iter()
        .find(|s| s["metadata"]["labels"]["app.kubernetes.io/component"].is_null())
        .expect("client service");
    assert!(
        !port_names(client).contains(&"admin".to_owned()),
        "the client Service (maybe a LoadBalancer) exposes the admin port"
    );
    let metrics = services
        .iter()
        .find(|s| s["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics")
        .expect("metrics service");
    assert_eq!(metrics["spec"]["clusterIP"], "None", "headless");
    assert_eq!(port_names(metrics), vec!["admin".to_owned()]);
    // The ServiceMonitor scrapes the metrics Service only.
    let sm = find(&all, "ServiceMonitor").expect("service monitor");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "metrics"
    );
    // The NetworkPolicy lets only the configured scrapers (and the helm test pod) reach it.
    let np = find(&all, "NetworkPolicy").expect("network policy");
    let admin_rules: Vec<&Value> = np["spec"]["ingress"]
        .as_array()
        .expect("ingress")
        .iter()
        .filter(|r| r["ports"][0]["port"] == "admin")
        .collect();
    assert_eq!(admin_rules.len(), 1);
    let from = admin_rules[0]["from"].as_array().expect("admin peers");
    assert!(!from.is_empty(), "the admin port open to everyone");
    for peer in from {
        let is_test_pod =
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "test";
        assert!(
            is_test_pod || peer["namespaceSelector"].is_object() || peer["ipBlock"].is_object(),
            "unexpected admin peer {peer}"
        );
    }
    let no_tests = parse_docs(&render("all-options-values.yaml", &["tests.enabled=false"]));
    let np = find(&no_tests, "NetworkPolicy").expect("network policy");
    let text = serde_json::to_string(&np["spec"]["ingress"]).expect("json");
    assert!(
        !text.contains("\"test\""),
        "test pod allowed without tests: {text}"
    );
}

#[test]
fn helm_test_calls_readyz_through_the_service() {
    let docs = parse_docs(&render("full-values.yaml", &[]));
    let test = docs
        .iter()
        .find(|d| d["kind"] == "Pod" && d["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .expect("helm test pod");
    let cmd: Vec<&str> = test["spec"]["containers"][0]["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        cmd.last(),
        Some(&"http://rel-audrey-federation-metrics.fed.svc:9464/readyz")
    );
}

#[test]
fn embedded_mode_named_templates_render_in_a_parent_pod_spec() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parent = dir.path().join("parent");
    std::fs::create_dir_all(parent.join("templates")).expect("parent dirs");
    std::fs::create_dir_all(parent.join("charts")).expect("parent charts dir");
    let copy = run(
        Path::new("cp"),
        &[
            "-r",
            &chart().display().to_string(),
            &parent.join("charts").display().to_string(),
        ],
        None,
        &root(),
    );
    assert_ok("copy chart", &copy);
    let write = |rel: &str, body: &str| {
        std::fs::write(parent.join(rel), body).expect("write parent file");
    };
    write(
        "Chart.yaml",
        "apiVersion: v2\nname: parent\nversion: 0.1.0\ndependencies:\n  - name: audrey-federation\n    version: 0.1.0\n",
    );
    write(
        "values.yaml",
        "audrey-federation:\n  mode: embedded\n  site: site-e\n  state:\n    persistence:\n      existingClaim: fed-state\n",
    );
    write(
        "templates/deployment.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: own
spec:
  replicas: 1
  selector:
    matchLabels: {app: own}
  template:
    metadata:
      labels: {app: own}
    spec:
      containers:
        - name: configserver
          image: registry.example.com/configserver:1
        {{- include "audrey-federation.sidecarContainer" (index .Subcharts "audrey-federation") | nindent 8 }}
      volumes:
        {{- include "audrey-federation.sidecarVolumes" (index .Subcharts "audrey-federation") | nindent 8 }}
"#,
    );
    let out = template_in(&parent, "", &[], &[]);
    assert_ok("helm template parent", &out);
    let manifests = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = run(
        &tool("py/bin/kubernetes-validate"),
        &["--strict", "-k", "1.33.0", "--quiet", "-"],
        Some(manifests.as_bytes()),
        &root(),
    );
    assert_ok("kubernetes-validate parent", &v);
    let docs = parse_docs(&manifests);
    let k = kinds(&docs);
    assert!(
        !k.iter().any(|x| x == "StatefulSet" || x == "Service"),
        "{k:?}"
    );
    let dep = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "own")
        .expect("parent deployment");
    let pod = &dep["spec"]["template"];
    let sidecar = container(pod, "audrey-federation");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    let vols = pod["spec"]["volumes"].as_array().expect("volumes");
    assert!(vols
        .iter()
        .any(|v| v["persistentVolumeClaim"]["claimName"] == "fed-state"));
    let cfg = Config::parse(&config_toml(&docs), Path::new("embedded")).expect("parse");
    assert_eq!(cfg.site, "site-e");
}

#[test]
fn dockerfile_builds_the_release_binary_the_chart_runs_as_its_user() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked --bin audrey-federation"));
    assert!(dockerfile.contains("target/release/audrey-federation"));
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage");
    let docs = parse_docs(&render("full-values.yaml", &[]));
    let pod = pod(&docs);
    let uid = pod["spec"]["securityContext"]["runAsUser"]
        .as_i64()
        .expect("uid");
    assert!(
        dockerfile.contains(&format!("USER {uid}:{uid}")),
        "image user = chart uid {uid}"
    );
    let image = container(pod, "audrey-federation")["image"]
        .as_str()
        .expect("image")
        .to_owned();
    let repo = image.split(':').next().unwrap_or_default();
    assert!(
        dockerfile.contains(repo),
        "the Dockerfile names the chart's image {repo}"
    );
    // The chart passes `run --config`, which the binary's CLI accepts.
    let args = &container(pod, "audrey-federation")["args"];
    assert_eq!(args[0], "run");
    assert_eq!(args[1], "--config");
}
