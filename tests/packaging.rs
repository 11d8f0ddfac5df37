//! The packages: the `.deb` built by `cargo deb` from the test build's binary is listed,
//! extracted into a throwaway root, its unit checked by `systemd-analyze verify`, and its
//! postinst run against that root (creating the system user there, never on this host).
//! The `.rpm` (cargo generate-rpm) is built and its file list read back when the tool is
//! installed (`scripts/install-packaging-tools`).

use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = "usr/lib/systemd/system/audrey-federation.service";

const TAKEOVER: &str = "usr/sbin/audrey-federation-takeover";
const MAN: &str = "usr/share/man/man1/audrey-federation.1";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A cargo subcommand binary: `target/tools/cargo/bin/<name>` (install-packaging-tools),
/// else the one on PATH.
fn tool(name: &str) -> Option<PathBuf> {
    let local = root().join("target/tools/cargo/bin").join(name);
    if local.exists() {
        return Some(local);
    }
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo deb --no-build --profile dev` over the binary this test run built.
fn build_deb(out: &Path) -> PathBuf {
    let cargo_deb = tool("cargo-deb").expect("cargo-deb not found: run scripts/install-deps");
    // Cargo builds the binary for integration tests; cargo-deb only packs it.
    assert!(Path::new(env!("CARGO_BIN_EXE_audrey-federation")).exists());
    run(Command::new(cargo_deb)
        .current_dir(root())
        .args(["--no-build", "--profile", "dev", "--fast", "-o"])
        .arg(out));
    std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb was written")
}

/// The committed manual page is what the binary prints; `man` renders it without warnings.
#[test]
fn manual_page_is_current_and_renders() {
    let committed = std::fs::read_to_string(root().join("packaging/audrey-federation.1")).unwrap();
    let printed = run(Command::new(env!("CARGO_BIN_EXE_audrey-federation")).arg("man"));
    assert!(
        committed == printed,
        "packaging/audrey-federation.1 is stale: run `cargo run -- man > packaging/audrey-federation.1`"
    );
    for section in [
        "AUDREY-FEDERATION RUN",
        "AUDREY-FEDERATION CHECK",
        "FILES",
        "SIGNALS",
        "ENVIRONMENT",
    ] {
        assert!(
            printed.contains(&format!(".SH \"{section}\""))
                || printed.contains(&format!(".SH {section}\n")),
            "{section} missing"
        );
    }
    assert!(
        printed.contains("AUDREY_FEDERATION_PROXY_TLS_CERT"),
        "every flag's variable is listed"
    );
    if Path::new("/usr/bin/man").exists() {
        let out = Command::new("man")
            .args(["--warnings", "-l", "-Tutf8"])
            .arg(root().join("packaging/audrey-federation.1"))
            .env("MANWIDTH", "80")
            .output()
            .expect("man");
        assert!(out.status.success(), "{out:?}");
        assert!(
            out.stderr.is_empty(),
            "man warnings: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Undo overstrike (bold is `c\x08c`, underline `_\x08c`).
        let mut text = String::new();
        for c in String::from_utf8_lossy(&out.stdout).chars() {
            if c == '\u{8}' {
                text.pop();
            } else {
                text.push(c);
            }
        }
        assert!(text.contains("--proxy-listen <PROXY_LISTEN>"), "{text}");
    }
}

#[test]
fn deb_ships_binary_config_unit_and_creates_the_user() {
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_deb(tmp.path());

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "usr/bin/audrey-federation",
        "etc/audrey-federation/config.toml",
        UNIT,
        "usr/share/doc/audrey-federation/install.md",
        MAN,
        TAKEOVER,
    ] {
        assert!(listing.contains(path), "{path} missing from:\n{listing}");
    }
    assert!(
        listing.contains("-rw-r----- 0/0") && listing.contains("etc/audrey-federation/config.toml"),
        "{listing}"
    );
    let conffiles = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/audrey-federation/config.toml");

    // Unpack into a throwaway root.
    let sysroot = tmp.path().join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&sysroot));
    let binary = sysroot.join("usr/bin/audrey-federation");
    let help = run(Command::new(&binary).arg("check").arg("--help"));
    assert!(help.contains("--config"), "{help}");
    let takeover = sysroot.join(TAKEOVER);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&takeover).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let usage = run(Command::new(&takeover).arg("--help"));
    assert!(usage.contains("rollback behind-apache"), "{usage}");

    // The unit as shipped, pointed at the unpacked binary (the host has none at /usr/bin).
    let unit = std::fs::read_to_string(sysroot.join(UNIT)).unwrap();
    for directive in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=audrey-federation",
        "ExecStart=/usr/bin/audrey-federation run --config /etc/audrey-federation/config.toml",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/audrey-federation",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == directive), "{directive} missing");
    }
    let verify_dir = tmp.path().join("verify");
    std::fs::create_dir_all(&verify_dir).unwrap();
    let verify_unit = verify_dir.join("audrey-federation.service");
    std::fs::write(
        &verify_unit,
        unit.replace("/usr/bin/audrey-federation", binary.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&verify_unit)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The shipped config parses and validates.
    let cfg = sysroot.join("etc/audrey-federation/config.toml");
    let cfg = audrey_federation::config::Config::load(&cfg).expect("example config parses");
    cfg.validate().expect("example config validates");

    // postinst against the throwaway root: user, group, state dir, config group.
    for f in ["passwd", "group", "shadow", "gshadow"] {
        let host = Path::new("/etc").join(f);
        if host.exists() {
            std::fs::copy(&host, sysroot.join("etc").join(f)).unwrap();
        }
    }
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    run(Command::new("sh")
        .arg(control.join("postinst"))
        .arg("configure")
        .env("DPKG_ROOT", &sysroot));
    let passwd = std::fs::read_to_string(sysroot.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("audrey-federation:"))
        .unwrap_or_else(|| panic!("no user in:\n{passwd}"));
    assert!(
        user.ends_with(":/var/lib/audrey-federation:/usr/sbin/nologin"),
        "{user}"
    );
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid < 1000, "a system user: {user}");
    use std::os::unix::fs::MetadataExt as _;
    let state = std::fs::metadata(sysroot.join("var/lib/audrey-federation")).unwrap();
    assert_eq!(state.uid(), uid);
    assert_eq!(
        state.mode() & 0o777,
        0o700,
        "state directory private (docs/security.md)"
    );
    // Running it again changes nothing (upgrade).
    run(Command::new("sh")
        .arg(control.join("postinst"))
        .arg("configure")
        .env("DPKG_ROOT", &sysroot));
    let again = std::fs::read_to_string(sysroot.join("etc/passwd")).unwrap();
    assert_eq!(again, passwd);
}

#[test]
fn rpm_lists_the_same_files() {
    let Some(generate_rpm) = tool("cargo-generate-rpm") else {
        panic!("cargo-generate-rpm not found: run scripts/install-deps");
    };
    let tmp = tempfile::tempdir().unwrap();
    // generate-rpm reads target/release/…; give it the test build's binary there.
    let staged = tmp.path().join("stage");
    std::fs::create_dir_all(staged.join("target/release")).unwrap();
    for dir in ["packaging", "docs"] {
        run(Command::new("cp")
            .arg("-a")
            .arg(root().join(dir))
            .arg(&staged));
    }
    for f in ["Cargo.toml", "Cargo.lock", "README.md"] {
        std::fs::copy(root().join(f), staged.join(f)).unwrap();
    }
    // Stripped, and an uncompressed payload: compressing a debug binary takes minutes.
    run(Command::new("strip")
        .arg("-o")
        .arg(staged.join("target/release/audrey-federation"))
        .arg(env!("CARGO_BIN_EXE_audrey-federation")));
    run(Command::new(generate_rpm)
        .current_dir(&staged)
        .args(["--payload-compress", "none", "-o"])
        .arg(tmp.path()));
    let rpm = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "rpm"))
        .expect("an .rpm was written");
    let size = std::fs::metadata(&rpm).unwrap().len();
    assert!(size > 1_000_000, "{} is only {size} bytes", rpm.display());
    if Path::new("/usr/bin/rpm").exists() {
        let files = run(Command::new("rpm").arg("-qlp").arg(&rpm));
        for path in [
            "/usr/bin/audrey-federation",
            "/etc/audrey-federation/config.toml",
            &format!("/{UNIT}"),
            &format!("/{MAN}"),
            &format!("/{TAKEOVER}"),
        ] {
            assert!(files.lines().any(|l| l == path), "{path} missing:\n{files}");
        }
        let scripts = run(Command::new("rpm").arg("-qp").arg("--scripts").arg(&rpm));
        assert!(scripts.contains("useradd"), "{scripts}");
    }
}
