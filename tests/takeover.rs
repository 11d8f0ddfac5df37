//! Both port-takeover recipes of docs/install.md, run with the shipped script
//! (`packaging/audrey-federation-takeover`) on loopback, against a real Apache with TLS in
//! front of the emulated server ("thin"), with guests' OAuth signatures checked end to end:
//!
//! (a) behind Apache: the script points the vhost's ProxyPass at the sidecar and reloads
//!     Apache; guests' signed requests still validate and are captured; rollback restores the
//!     vhost byte for byte and traffic bypasses the sidecar again.
//! (b) in place of Apache: Apache is stopped, the script's systemd drop-in gives the sidecar
//!     Apache's port with the server's certificate; signatures validate over the sidecar's
//!     TLS; rollback removes the drop-in and Apache serves again.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::apache::Apache;
use support::broker_layout::free_port;
use support::client::{audrey_data, exchange, Client, Creds, InstanceXml, Placement};
use support::sidecar::{config, Sidecar};
use support::site::{sum_metric, Site};

const LIMIT: Duration = Duration::from_secs(20);

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/audrey-federation-takeover")
}

/// Runs the takeover script; panics with its output unless it succeeds.
fn takeover(args: &[&str]) -> String {
    let out = Command::new("sh")
        .arg(script())
        .args(args)
        .output()
        .expect("run the takeover script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "takeover {args:?} failed: {text}");
    text
}

/// Requests the sidecar has proxied so far.
async fn proxied(sidecar: &Sidecar) -> f64 {
    let req = http::Request::get("/metrics").body(String::new()).unwrap();
    let (_, _, body) = exchange(sidecar.admin, req).await;
    sum_metric(
        &String::from_utf8_lossy(&body),
        "audrey_federation_proxy_requests_total",
        &[],
    )
}

/// Sends `GET /version` through `client` until `done(proxied before, proxied after)`.
async fn until_routed(
    client: &Client,
    sidecar: &Sidecar,
    what: &str,
    done: impl Fn(f64, f64) -> bool,
) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let before = proxied(sidecar).await;
        let r = client.send("GET", "/version", &[], "").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        if done(before, proxied(sidecar).await) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not in effect after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Conductor registers a fresh instance, the guest reports and fetches its configuration,
/// all signed for the public `https://localhost:<port>` URL; a wrong secret is refused.
async fn guest_session(client: &Client, tag: &str) {
    let x = InstanceXml::new(
        &format!("uuid-{tag}"),
        "dep-takeover",
        &format!("secret-{tag}"),
    );
    let r = client
        .register(&Site::conductor(), 1, &x.uuid, &x.to_xml())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{tag}: register: {r:?}");
    let data = audrey_data(&[("ipaddress", "10.0.0.7")]);
    let r = client
        .put_params(2, &x.uuid, &x.secret, &data, Placement::Header)
        .await
        .unwrap();
    assert!(r.status == 200 || r.status == 202, "{tag}: report: {r:?}");
    let creds = Creds::new(&x.uuid, &x.secret);
    let r = client.get_configs(2, &x.uuid, None, &creds).await.unwrap();
    assert_eq!(r.status, 200, "{tag}: configs: {r:?}");
    let forged = Creds::new(&x.uuid, "not-the-secret");
    let r = client.get_configs(2, &x.uuid, None, &forged).await.unwrap();
    assert_eq!(
        r.status, 401,
        "{tag}: a wrong secret must not validate: {r:?}"
    );
}

/// The vhost of docs/install.md (`docs/recipes/apache/configserver.conf`) as it is, but for
/// its addresses: the test's listener, thin's address and the certificate's paths.
fn vhost(thin: SocketAddr, cert: &Path, key: &Path) -> String {
    let recipe = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipes/apache/configserver.conf"),
    )
    .unwrap();
    let mut text = recipe.clone();
    for (from, to) in [
        (
            "<VirtualHost *:443>",
            "<VirtualHost 127.0.0.1:*>".to_owned(),
        ),
        (
            "/etc/ssl/configserver/server.pem",
            cert.display().to_string(),
        ),
        (
            "/etc/ssl/configserver/server.key",
            key.display().to_string(),
        ),
        ("127.0.0.1:4567", thin.to_string()),
    ] {
        assert!(
            text.contains(from),
            "{from} not in the vhost recipe:\n{recipe}"
        );
        text = text.replace(from, &to);
    }
    text
}

#[tokio::test]
async fn behind_apache_then_in_place_of_it_and_back() {
    let pki = support::certs::generate(&["s"]);
    let tmp = tempfile::tempdir().unwrap();
    let thin = Site::emulator();
    let port = free_port();
    let apache_dir = tmp.path().join("apache");
    std::fs::create_dir_all(&apache_dir).unwrap();
    Apache::configure(&apache_dir, port);
    let vhost_file = apache_dir.join("vhost.conf");
    let original = vhost(thin.addr(), &pki.server_cert, &pki.server_key);
    std::fs::write(&vhost_file, &original).unwrap();
    let mut apache = Apache::start(&apache_dir, port);
    let public = Client::new(apache.addr)
        .with_host(&format!("localhost:{port}"))
        .with_tls(&pki.ca);

    // Before: Apache → thin. Signatures validate; no sidecar in the path.
    guest_session(&public, "before").await;

    let state = tmp.path().join("sidecar");
    let sidecar = Sidecar::start(
        &state,
        &config("s", &format!("http://{}", thin.addr()), &state, "", ""),
    );
    let captured = |text: &str| sum_metric(text, "audrey_federation_captured_total", &[]);

    // (a) Behind Apache: only the port in the vhost changes.
    let vhost_arg = vhost_file.display().to_string();
    let configtest = Apache::configtest_cmd(&apache_dir);
    let reload = apache.reload_cmd();
    let sidecar_arg = sidecar.proxy.to_string();
    let thin_arg = thin.addr().to_string();
    let out = takeover(&[
        "behind-apache",
        "--vhost",
        &vhost_arg,
        "--thin",
        &thin_arg,
        "--sidecar",
        &sidecar_arg,
        "--configtest",
        &configtest,
        "--reload",
        &reload,
    ]);
    assert!(out.contains("2 line(s)"), "{out}");
    let taken = std::fs::read_to_string(&vhost_file).unwrap();
    assert_eq!(
        taken,
        original.replace(&thin.addr().to_string(), &sidecar.proxy.to_string()),
        "nothing but the port may change"
    );
    until_routed(&public, &sidecar, "the takeover", |b, a| a > b).await;
    let metrics = |s: &Sidecar| {
        let admin = s.admin;
        async move {
            let req = http::Request::get("/metrics").body(String::new()).unwrap();
            String::from_utf8_lossy(&exchange(admin, req).await.2).into_owned()
        }
    };
    let captured_before = captured(&metrics(&sidecar).await);
    guest_session(&public, "behind").await;
    assert_eq!(
        captured(&metrics(&sidecar).await) - captured_before,
        2.0,
        "the registration and the report went through the sidecar and were captured"
    );

    // A second takeover is refused while the first stands.
    let again = Command::new("sh")
        .arg(script())
        .args(["behind-apache", "--vhost", &vhost_arg, "--thin", &thin_arg])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already taken over"));

    // Rollback (a): the vhost is byte for byte the original and traffic bypasses the sidecar.
    takeover(&[
        "rollback",
        "behind-apache",
        "--vhost",
        &vhost_arg,
        "--configtest",
        &configtest,
        "--reload",
        &reload,
    ]);
    assert_eq!(std::fs::read_to_string(&vhost_file).unwrap(), original);
    until_routed(&public, &sidecar, "the rollback", |b, a| a == b).await;
    let through = proxied(&sidecar).await;
    guest_session(&public, "after-a").await;
    assert_eq!(
        proxied(&sidecar).await,
        through,
        "no request may reach the sidecar"
    );

    // (b) In place of Apache: Apache stops, the sidecar takes its port with its certificate.
    apache.stop();
    let mut sidecar = sidecar;
    let config_path = sidecar.config_path();
    assert!(sidecar.terminate().success());
    let dropin = tmp.path().join("dropin");
    let listen = format!("127.0.0.1:{port}");
    let (cert, key) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
    );
    takeover(&[
        "in-place",
        "--listen",
        &listen,
        "--cert",
        &cert,
        "--key",
        &key,
        "--dropin-dir",
        &dropin.display().to_string(),
        "--no-switch",
    ]);
    let unit = std::fs::read_to_string(dropin.join("takeover.conf")).unwrap();
    // The drop-in docs/install.md shows (`docs/recipes/systemd/takeover.conf`), for the test's paths.
    let shown = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipes/systemd/takeover.conf"),
    )
    .unwrap();
    assert_eq!(
        unit,
        shown
            .replace("0.0.0.0:443", &listen)
            .replace("/etc/audrey-federation/tls/server.pem", &cert)
            .replace("/etc/audrey-federation/tls/server.key", &key),
        "the drop-in differs from the one docs/install.md shows"
    );
    let env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(env.len(), 3, "{unit}");
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let in_place = Sidecar::start_with_env(&state, config_path, &env_refs);
    assert_eq!(in_place.proxy, apache.addr, "the sidecar has Apache's port");
    let captured_before = captured(&metrics(&in_place).await);
    guest_session(&public, "in-place").await;
    assert_eq!(captured(&metrics(&in_place).await) - captured_before, 2.0);

    // Rollback (b): the drop-in is gone; Apache serves on its port again.
    takeover(&[
        "rollback",
        "in-place",
        "--dropin-dir",
        &dropin.display().to_string(),
        "--no-switch",
    ]);
    assert!(!dropin.join("takeover.conf").exists());
    drop(in_place);
    let _apache = Apache::start(&apache_dir, port);
    guest_session(&public, "after-b").await;
}

#[tokio::test]
async fn refuses_a_vhost_that_does_not_proxy_to_thin_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let vhost_file = tmp.path().join("vhost.conf");
    let text = "<VirtualHost *:443>\n    ProxyPass / http://127.0.0.1:9999/\n</VirtualHost>\n";
    std::fs::write(&vhost_file, text).unwrap();
    let out = Command::new("sh")
        .arg(script())
        .args(["behind-apache", "--vhost"])
        .arg(&vhost_file)
        .args(["--thin", "127.0.0.1:4567", "--no-verify"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no ProxyPass/ProxyPassReverse to http://127.0.0.1:4567"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&vhost_file).unwrap(), text);
    assert!(!tmp.path().join("vhost.conf.pre-audrey-federation").exists());

    // A configuration Apache refuses is put back, and nothing is reloaded.
    let text = "ProxyPass / http://127.0.0.1:4567/\n";
    std::fs::write(&vhost_file, text).unwrap();
    let reloaded = tmp.path().join("reloaded");
    let out = Command::new("sh")
        .arg(script())
        .args(["behind-apache", "--vhost"])
        .arg(&vhost_file)
        .args(["--no-verify", "--configtest", "false", "--reload"])
        .arg(format!("touch {}", reloaded.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is restored"));
    assert_eq!(std::fs::read_to_string(&vhost_file).unwrap(), text);
    assert!(!reloaded.exists());
}
