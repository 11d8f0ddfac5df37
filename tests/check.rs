//! `audrey-federation check` against good and broken setups: the real binary, the emulated
//! Config Server, a real RabbitMQ 3.10 (shared per test binary) and certificates made by the
//! shipped `certs/gen-certs.sh` (an expired one by `openssl ca` with explicit dates). Each
//! test asserts the precise reason on the failing line and the exit status.

mod support;

use std::path::Path;
use std::process::Command;

use support::certs::issue_with_validity;
use support::emulator::Emulator;
use support::{broker, upstream};

/// Runs `check --config <file>`; returns (exit code, stdout).
fn check(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_audrey-federation"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .env_remove("AUDREY_FEDERATION_CONFIG")
        .output()
        .expect("run audrey-federation check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), stdout)
}

/// The one line about `what` (starts with `OK what` or `FAIL what`).
fn line<'a>(stdout: &'a str, tag: &str, what: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{tag} {what}")))
        .unwrap_or_else(|| panic!("no `{tag} {what}` line in:\n{stdout}"))
}

/// A config file in `dir`: `upstream`, a state dir, and the `[amqp]` lines if any.
fn write_config(dir: &Path, site: &str, upstream: &str, amqp: Option<&str>) -> std::path::PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let secret = dir.join("conductor.secret");
    std::fs::write(&secret, "c0nduct0r").unwrap();
    let mut text = format!(
        "site = \"{site}\"\n[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n",
        state.display()
    );
    if let Some(amqp) = amqp {
        text.push_str(&format!(
            "[oauth]\nconductor_key = \"conductor\"\nconductor_secret_file = \"{}\"\n[amqp]\n{amqp}",
            secret.display()
        ));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn amqp_lines(url: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "url = \"{url}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// An `amqps://` URL nobody listens on.
fn closed_amqps() -> String {
    format!("amqps://localhost:{}", upstream::closed_port().port())
}

#[tokio::test(flavor = "multi_thread")]
async fn good_setup_is_all_ok() {
    let shared = broker::shared();
    let b = shared.read().await;
    let emu = Emulator::start("conductor", "c0nduct0r");
    let dir = tempfile::tempdir().unwrap();
    let certs = &shared.certs;
    let amqp = amqp_lines(
        &b.amqps_url(),
        &certs.ca,
        &certs.site_cert("site-a"),
        &certs.site_key("site-a"),
    );
    let cfg = write_config(
        dir.path(),
        "site-a",
        &format!("http://{}", emu.addr()),
        Some(&amqp),
    );
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        line(&out, "OK", "upstream").contains("api-version 2"),
        "{out}"
    );
    line(&out, "OK", "state dir");
    assert!(line(&out, "OK", "amqp.ca").contains("expires"), "{out}");
    assert!(
        line(&out, "OK", "amqp.cert").contains("\"CN=site-a\""),
        "{out}"
    );
    line(&out, "OK", "amqp.key");
    assert!(line(&out, "OK", "broker").contains("connected"), "{out}");
    assert!(
        line(
            &out,
            "OK",
            "subscribe source /amq/queue/audrey.federation.site-a"
        )
        .contains("present"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_queue_is_named() {
    let shared = broker::shared();
    let b = shared.read().await;
    let emu = Emulator::start("conductor", "c0nduct0r");
    let dir = tempfile::tempdir().unwrap();
    let certs = &shared.certs;
    // site-a's identity (a broker user), but a site name with no queue in the broker.
    let amqp = amqp_lines(
        &b.amqps_url(),
        &certs.ca,
        &certs.site_cert("site-a"),
        &certs.site_key("site-a"),
    );
    let cfg = write_config(
        dir.path(),
        "site-nowhere",
        &format!("http://{}", emu.addr()),
        Some(&amqp),
    );
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    line(&out, "OK", "broker");
    let fail = line(
        &out,
        "FAIL",
        "subscribe source /amq/queue/audrey.federation.site-nowhere",
    );
    assert!(fail.contains("is not there"), "{out}");
    assert!(
        fail.contains("NOT_FOUND - no queue 'audrey.federation.site-nowhere'"),
        "{out}"
    );
}

#[test]
fn closed_upstream_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = format!("http://{}", upstream::closed_port());
    let cfg = write_config(dir.path(), "site-a", &up, None);
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "FAIL", "upstream").contains("connection refused"),
        "{out}"
    );
    line(&out, "OK", "state dir");
    assert!(line(&out, "OK", "broker").contains("capture only"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn non_audrey_upstream_is_named() {
    let echo = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "site-a", &format!("http://{echo}"), None);
    let (code, out) = tokio::task::spawn_blocking(move || check(&cfg))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}");
    let fail = line(&out, "FAIL", "upstream");
    assert!(fail.contains("not an Audrey Config Server"), "{out}");
    assert!(fail.contains("\"echo\""), "{out}");
}

#[test]
fn unreadable_and_bogus_keys_are_named() {
    let certs = support::certs::generate(&["site-a"]);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.key");
    let amqp = amqp_lines(
        &closed_amqps(),
        &certs.ca,
        &certs.site_cert("site-a"),
        &missing,
    );
    let cfg = write_config(dir.path(), "site-a", "http://127.0.0.1:1", Some(&amqp));
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "FAIL", "amqp.key").contains("cannot read: No such file"),
        "{out}"
    );
    line(&out, "OK", "amqp.cert");

    // A key file holding a certificate instead of a key (tests run as root: mode 000 would
    // not stop reading, so "unreadable" is proven with a missing path and a wrong content).
    let bogus = dir.path().join("bogus.key");
    std::fs::copy(certs.site_cert("site-a"), &bogus).unwrap();
    let amqp = amqp_lines(
        &closed_amqps(),
        &certs.ca,
        &certs.site_cert("site-a"),
        &bogus,
    );
    let cfg = write_config(dir.path(), "site-a", "http://127.0.0.1:1", Some(&amqp));
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "FAIL", "amqp.key").contains("no usable PEM private key"),
        "{out}"
    );
    assert!(
        line(&out, "FAIL", "broker").contains("amqps://localhost"),
        "{out}"
    );
}

#[test]
fn expired_certificate_is_named() {
    let certs = support::certs::generate(&["site-a"]);
    let dir = tempfile::tempdir().unwrap();
    // A certificate for site-a's key, signed by the test CA, valid only in January 2020.
    let expired = issue_with_validity(
        &certs,
        dir.path(),
        "expired",
        &certs.site_key("site-a"),
        "/CN=site-a",
        None,
        ("20200101000000Z", "20200201000000Z"),
    );
    let amqp = amqp_lines(
        &closed_amqps(),
        &certs.ca,
        &expired,
        &certs.site_key("site-a"),
    );
    let cfg = write_config(dir.path(), "site-a", "http://127.0.0.1:1", Some(&amqp));
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    let fail = line(&out, "FAIL", "amqp.cert");
    assert!(
        fail.contains("\"CN=site-a\" expired on Feb  1 00:00:00 2020"),
        "{out}"
    );
    line(&out, "OK", "amqp.ca");
}

#[tokio::test(flavor = "multi_thread")]
async fn store_held_by_a_running_sidecar_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "site-a", "http://127.0.0.1:1", None);
    // This process holds the store as a running sidecar would.
    let store = audrey_federation::store::Store::open(&dir.path().join("state"), "site-a").unwrap();
    let cfg2 = cfg.clone();
    let (_, out) = tokio::task::spawn_blocking(move || check(&cfg2))
        .await
        .unwrap();
    assert!(
        line(&out, "OK", "state dir")
            .contains("in use by a running sidecar; the directory is writable"),
        "{out}"
    );
    store
        .probe_writable()
        .await
        .expect("the holder's store still works");
    store.close().await.unwrap();
    // Stopped: the store itself is opened and written.
    let (_, out) = tokio::task::spawn_blocking(move || check(&cfg))
        .await
        .unwrap();
    assert!(
        line(&out, "OK", "state dir").contains("takes a durable write"),
        "{out}"
    );
}

#[test]
fn certificate_near_expiry_is_ok_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let out = Command::new("bash")
        .arg(support::certs::script())
        .arg(&pki)
        .arg("site-a")
        .env("CERT_DAYS", "10")
        .output()
        .expect("gen-certs.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let amqp = amqp_lines(
        &closed_amqps(),
        &pki.join("ca.pem"),
        &pki.join("site-a.pem"),
        &pki.join("site-a.key"),
    );
    let cfg = write_config(dir.path(), "site-a", "http://127.0.0.1:1", Some(&amqp));
    let (_, out) = check(&cfg);
    let ok = line(&out, "OK", "amqp.cert");
    assert!(
        ok.contains("days) WARNING: under 30 days left") && ok.contains("\"CN=site-a\""),
        "{out}"
    );
}

/// A state directory that is not there yet is what `run` creates (`Store::open` makes it and
/// its parents): OK, saying so. One `run` could not create (its parent is a file) is a FAIL
/// naming why.
#[test]
fn missing_state_dir_is_reported_as_run_would_act() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "site-a", "http://127.0.0.1:1", None);
    let state = dir.path().join("state");
    std::fs::remove_dir(&state).unwrap();
    let nested = dir.path().join("var/lib/audrey-federation");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("dir = \"{}\"", state.display()),
        &format!("dir = \"{}\"", nested.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let (_, out) = check(&cfg);
    let ok = line(&out, "OK", "state dir");
    assert!(
        ok.contains("does not exist yet: the sidecar creates it at start")
            && ok.contains(&format!("({} is writable)", dir.path().display())),
        "{out}"
    );
    assert!(!dir.path().join("var").exists(), "check created something");
    // `run` on the same file creates it, as `check` said.
    let site_dir = dir.path().join("sidecar");
    std::fs::create_dir_all(&site_dir).unwrap();
    let mut sidecar = support::sidecar::Sidecar::start_with(&site_dir, cfg.clone());
    // It prints its listening line before opening the store: wait (bounded) for the store.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !nested.join(audrey_federation::store::FILE_NAME).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "run did not create {}",
            nested.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sidecar.terminate();

    // Under a regular file, nobody can create it.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("dir = \"{}\"", nested.display()),
        &format!("dir = \"{}\"", blocker.join("state").display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    let fail = line(&out, "FAIL", "state dir");
    assert!(
        fail.contains("does not exist, and the sidecar cannot create it")
            && fail.contains(&format!("{} is not a directory", blocker.display())),
        "{out}"
    );
}
