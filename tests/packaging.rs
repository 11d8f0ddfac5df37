//! The packages: the `.deb` built by `cargo deb` from the test build's binary is listed,
//! extracted into a throwaway root, its unit checked by `systemd-analyze verify`, its binary
//! checked stripped (the debug info is in the `-dbgsym.ddeb`), and its postinst and postrm run
//! against that root (creating and removing the system user there, never on this host: the
//! purge runs in a mount namespace whose `/var/lib` and `/etc/passwd` hold a stand-in host
//! state that must survive). The `.rpm` (cargo generate-rpm) is built and its file list
//! compared with the `.deb`'s (`scripts/install-packaging-tools` installs both tools).

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

/// `cargo deb --no-build --profile dev` over the binary this test run built: the `.deb`
/// (the `-dbgsym.ddeb` lies beside it).
fn build_deb(out: &Path) -> PathBuf {
    // cargo-deb stages (and strips) the binary in one shared `target/audrey-federation/`:
    // two tests packing at once corrupt each other's copy (seen as a FLAKY objcopy failure).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// The plain files of a `.deb` (`dpkg-deb -c`), as absolute paths.
fn deb_files(deb: &Path) -> Vec<String> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| format!("/{}", p.trim_start_matches("./")))
        .collect()
}

/// The ELF section names of `binary` (`readelf -S`).
fn sections(binary: &Path) -> String {
    run(Command::new("readelf").arg("-S").arg("-W").arg(binary))
}

/// The system user's `(uid, gid)` in `root`'s passwd file, if there is one.
fn ids_in(root: &Path) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).ok()?;
    let user = passwd
        .lines()
        .find(|l| l.starts_with("audrey-federation:"))?;
    let mut f = user.split(':').skip(2);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Copies this host's account files into `sysroot/etc` (what useradd --prefix edits there).
fn copy_accounts(sysroot: &Path) {
    std::fs::create_dir_all(sysroot.join("etc")).unwrap();
    for f in ["passwd", "group", "shadow", "gshadow"] {
        let host = Path::new("/etc").join(f);
        if host.exists() {
            std::fs::copy(&host, sysroot.join("etc").join(f)).unwrap();
        }
    }
}

/// What a maintainer script leaves in `sysroot`: the user, the state directory (owner, mode)
/// and `/etc/audrey-federation/tls` (root:the service group, 0750).
fn assert_installed(sysroot: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let (uid, gid) = ids_in(sysroot).expect("the user exists in the root");
    assert!(uid < 1000, "a system user: {uid}");
    let state = std::fs::metadata(sysroot.join("var/lib/audrey-federation")).unwrap();
    assert_eq!((state.uid(), state.gid()), (uid, gid));
    assert_eq!(state.mode() & 0o777, 0o700);
    let tls = std::fs::metadata(sysroot.join("etc/audrey-federation/tls"))
        .expect("/etc/audrey-federation/tls is created (docs/install.md copies keys there)");
    assert!(tls.is_dir());
    assert_eq!((tls.uid(), tls.gid()), (0, gid), "root:audrey-federation");
    assert_eq!(tls.mode() & 0o777, 0o750);
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
    // Shipped stripped; the debug info is in the -dbgsym package, found by build id.
    let shipped = sections(&binary);
    assert!(
        !shipped.contains(".debug_info") && shipped.contains(".gnu_debuglink"),
        "the shipped binary carries debug info:\n{shipped}"
    );
    let ddeb = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ddeb"))
        .expect("an audrey-federation-dbgsym .ddeb beside the .deb");
    let debug_files = deb_files(&ddeb);
    assert!(
        debug_files.len() == 1
            && debug_files[0].starts_with("/usr/lib/debug/.build-id/")
            && debug_files[0].ends_with(".debug"),
        "{debug_files:?}"
    );
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

    // postinst against the throwaway root: user, group, state dir, tls dir, config group.
    copy_accounts(&sysroot);
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
    assert_installed(&sysroot);
    // Running it again changes nothing (upgrade).
    run(Command::new("sh")
        .arg(control.join("postinst"))
        .arg("configure")
        .env("DPKG_ROOT", &sysroot));
    let again = std::fs::read_to_string(sysroot.join("etc/passwd")).unwrap();
    assert_eq!(again, passwd);
    purge_acts_in_its_root_only(&control.join("postrm"), &sysroot);
}

/// `postrm purge` with `DPKG_ROOT` removes the user and state of that root, and nothing of
/// the host's. The host is stood in for by a mount namespace (`unshare -m`): a tmpfs on
/// `/var/lib` holding an `audrey-federation` state directory, and a copy of `/etc/passwd`
/// (and group) with an `audrey-federation` user bound over the real ones. Both must be there
/// after the purge; nothing outside the namespace is touched.
fn purge_acts_in_its_root_only(postrm: &Path, sysroot: &Path) {
    let host = tempfile::tempdir().unwrap();
    for f in ["passwd", "group"] {
        let mut text = std::fs::read_to_string(Path::new("/etc").join(f)).unwrap();
        text.push_str(if f == "passwd" {
            "audrey-federation:x:987:987::/var/lib/audrey-federation:/usr/sbin/nologin\n"
        } else {
            "audrey-federation:x:987:\n"
        });
        std::fs::write(host.path().join(f), text).unwrap();
    }
    let script = r#"set -e
mount --make-rprivate /
mount -t tmpfs stand-in /var/lib
mkdir -p /var/lib/audrey-federation && echo outbox > /var/lib/audrey-federation/state.redb
mount --bind "$HOST/passwd" /etc/passwd
mount --bind "$HOST/group" /etc/group
sh "$POSTRM" purge
test -e /var/lib/audrey-federation/state.redb || { echo "host state removed"; exit 1; }
grep -q '^audrey-federation:' /etc/passwd || { echo "host user removed"; exit 1; }
"#;
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", script])
        .env("HOST", host.path())
        .env("POSTRM", postrm)
        .env("DPKG_ROOT", sysroot)
        .output()
        .expect("unshare (util-linux)");
    assert!(
        out.status.success(),
        "purge into {} touched the host: {}{}",
        sysroot.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ids_in(sysroot).is_none(), "the root's user is removed");
    let group = std::fs::read_to_string(sysroot.join("etc/group")).unwrap();
    assert!(!group.contains("\naudrey-federation:"), "{group}");
    assert!(!sysroot.join("var/lib/audrey-federation").exists());
    assert!(!sysroot.join("etc/audrey-federation/tls").exists());
}

/// The .deb's postinst does what the .rpm's script does, in the same words.
#[test]
fn postinst_and_rpm_script_agree() {
    let rpm = std::fs::read_to_string(root().join("packaging/create-user.sh")).unwrap();
    let rpm: Vec<&str> = rpm.lines().skip_while(|l| *l != "set -e").skip(1).collect();
    let deb = std::fs::read_to_string(root().join("packaging/debian/postinst")).unwrap();
    let deb: Vec<&str> = deb
        .lines()
        .skip_while(|l| l.trim() != "# create-user.sh begins")
        .skip(1)
        .take_while(|l| l.trim() != "# create-user.sh ends")
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    assert!(!rpm.is_empty());
    assert_eq!(
        deb, rpm,
        "packaging/debian/postinst and packaging/create-user.sh differ"
    );
    // And it acts alike: the rpm's script in a throwaway root.
    let tmp = tempfile::tempdir().unwrap();
    copy_accounts(tmp.path());
    run(Command::new("sh")
        .arg(root().join("packaging/create-user.sh"))
        .env("DPKG_ROOT", tmp.path()));
    assert_installed(tmp.path());
}

/// The `.rpm` ships every file the `.deb` ships (the manual page uncompressed; the .deb's
/// Debian copyright file aside), its script creates the user and the tls directory, and its
/// binary comes from the `dist` profile, the release build without debug info.
#[test]
fn rpm_ships_what_the_deb_ships() {
    let Some(generate_rpm) = tool("cargo-generate-rpm") else {
        panic!("cargo-generate-rpm not found: run scripts/install-deps");
    };
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let dist = &manifest["profile"]["dist"];
    assert_eq!(dist["inherits"].as_str(), Some("release"));
    assert_eq!(
        dist["strip"].as_str(),
        Some("debuginfo"),
        "the .rpm's binary is stripped"
    );
    let tmp = tempfile::tempdir().unwrap();
    // generate-rpm --profile dist reads target/dist/…; give it the test build's binary there,
    // stripped of its debug info as the dist profile does.
    let staged = tmp.path().join("stage");
    std::fs::create_dir_all(staged.join("target/dist")).unwrap();
    for dir in ["packaging", "docs"] {
        run(Command::new("cp")
            .arg("-a")
            .arg(root().join(dir))
            .arg(&staged));
    }
    for f in ["Cargo.toml", "Cargo.lock", "README.md"] {
        std::fs::copy(root().join(f), staged.join(f)).unwrap();
    }
    let binary = staged.join("target/dist/audrey-federation");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&binary)
        .arg(env!("CARGO_BIN_EXE_audrey-federation")));
    assert!(!sections(&binary).contains(".debug_info"));
    // An uncompressed payload: compressing even a stripped debug binary takes a while.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    run(Command::new(generate_rpm)
        .current_dir(&staged)
        .args(["--profile", "dist", "--payload-compress", "none", "-o"])
        .arg(&out));
    let rpm = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "rpm"))
        .expect("an .rpm was written");
    let size = std::fs::metadata(&rpm).unwrap().len();
    assert!(size > 1_000_000, "{} is only {size} bytes", rpm.display());
    let files = run(Command::new("rpm").arg("-qlp").arg(&rpm));
    let mut rpm_files: Vec<&str> = files.lines().collect();
    rpm_files.sort_unstable();
    let debs = tmp.path().join("deb");
    std::fs::create_dir_all(&debs).unwrap();
    let mut deb: Vec<String> = deb_files(&build_deb(&debs))
        .into_iter()
        .filter(|p| p != "/usr/share/doc/audrey-federation/copyright")
        .map(|p| p.strip_suffix(".gz").map(str::to_owned).unwrap_or(p))
        .collect();
    deb.sort_unstable();
    assert_eq!(rpm_files, deb, "the .rpm and the .deb ship different files");
    for path in [
        format!("/{UNIT}"),
        format!("/{MAN}"),
        format!("/{TAKEOVER}"),
    ] {
        assert!(rpm_files.contains(&path.as_str()), "{path} missing");
    }
    let scripts = run(Command::new("rpm").arg("-qp").arg("--scripts").arg(&rpm));
    assert!(
        scripts.contains("useradd") && scripts.contains("/etc/$name/tls"),
        "{scripts}"
    );
}
