//! docs/install.md, run as written: every fenced block marked `<!-- runnable -->` (or
//! `<!-- runnable: any status -->`, which may fail) runs, in the page's order, as root in a
//! throwaway root: a copy-on-write overlay of this machine's own file system mounted in a
//! private mount namespace (`unshare --mount`) and entered with `chroot`, so `apt-get install`
//! really installs the `.deb` (cargo-deb over the test build's binary) and its maintainer
//! scripts really run, while every write lands in the overlay's upper folder. After each
//! block the runner records the state of the paths the page names; the test then asserts
//! what the page says at that point, and that this machine itself gained nothing.
//!
//! There is no systemd in the overlay: a stand-in `systemctl` (put in `/usr/local/sbin` of the
//! overlay, not by the page) records its calls, and the test checks they are the page's.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One runnable block: its text (marker indentation removed) and whether it must succeed.
#[derive(Debug)]
struct Step {
    line: usize,
    script: String,
    strict: bool,
}

/// The runnable blocks of `text`, in order.
fn runnable(text: &str) -> Vec<Step> {
    let lines: Vec<&str> = text.lines().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let strict = match trimmed {
            "<!-- runnable -->" => true,
            "<!-- runnable: any status -->" => false,
            _ => {
                i += 1;
                continue;
            }
        };
        let indent = &lines[i][..lines[i].len() - trimmed.len()];
        assert!(
            lines
                .get(i + 1)
                .is_some_and(|l| l.starts_with(&format!("{indent}```sh"))),
            "docs/install.md:{}: a runnable marker must be followed by a ```sh block",
            i + 1
        );
        let mut script = String::new();
        let mut j = i + 2;
        while lines[j].trim_end() != format!("{indent}```") {
            script.push_str(lines[j].strip_prefix(indent).unwrap_or(lines[j]));
            script.push('\n');
            j += 1;
        }
        steps.push(Step {
            line: i + 1,
            script,
            strict,
        });
        i = j + 1;
    }
    steps
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

/// The `.deb` as docs/install.md names it, made by cargo-deb from the test build's binary.
fn build_deb(out: &Path) -> PathBuf {
    let local = repo().join("target/tools/cargo/bin/cargo-deb");
    let cargo_deb = if local.exists() {
        local
    } else {
        PathBuf::from("cargo-deb")
    };
    assert!(Path::new(env!("CARGO_BIN_EXE_audrey-federation")).exists());
    run(Command::new(cargo_deb)
        .current_dir(repo())
        .args([
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "--no-dbgsym",
            "-o",
        ])
        .arg(out.join("audrey-federation_0.1.0-1_amd64.deb")));
    out.join("audrey-federation_0.1.0-1_amd64.deb")
}

/// What the runner records after each step, inside the overlay.
const WATCHED: &[&str] = &[
    "/usr/bin/audrey-federation",
    "/usr/sbin/audrey-federation-takeover",
    "/usr/share/man/man1/audrey-federation.1.gz",
    "/etc/audrey-federation/config.toml",
    "/usr/lib/systemd/system/audrey-federation.service",
    "/usr/share/doc/audrey-federation/README.md",
    "/var/lib/audrey-federation",
    "/etc/audrey-federation/tls",
    "/etc/audrey-federation/tls/server.pem",
    "/etc/audrey-federation/tls/server.key",
    "/etc/systemd/system/audrey-federation.service.d/takeover.conf",
];

/// The shell run in the mount namespace: overlay, chroot, each step, a record after each.
const RUNNER: &str = r#"set -eu
mount --make-rprivate /
mkdir -p "$T/upper" "$T/ovwork" "$T/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/ovwork" "$T/root"
mount -t proc proc "$T/root/proc"
mount --rbind /dev "$T/root/dev"
# The working folder and the steps, wherever /tmp is mounted (the overlay shows only /'s own file system).
for d in "$W" "$T/steps"; do
    mkdir -p "$T/root$d"
    mount --bind "$d" "$T/root$d"
done
mkdir -p "$T/root/usr/local/sbin"
cat > "$T/root/usr/local/sbin/systemctl" <<'EOF'
#!/bin/sh
echo "$*" >> /run/systemctl-calls
EOF
chmod 0755 "$T/root/usr/local/sbin/systemctl"
n=0
for step in "$T"/steps/*.sh; do
    n=$((n+1))
    set +e
    chroot "$T/root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        /bin/sh -ec "cd '$W' && . '$step'" > "$T/out/$n.txt" 2>&1
    echo $? > "$T/out/$n.status"
    set -e
    for p in $WATCHED; do
        stat -c '%n %u %g %a %F' "$T/root$p" 2>/dev/null | sed "s|^$T/root||" || true
    done > "$T/out/$n.stat"
    grep '^audrey-federation:' "$T/root/etc/passwd" > "$T/out/$n.user" || true
    cp "$T/root/etc/systemd/system/audrey-federation.service.d/takeover.conf" "$T/out/$n.dropin" 2>/dev/null || true
    cp "$T/root/run/systemctl-calls" "$T/out/$n.systemctl" 2>/dev/null || true
done
"#;

/// What one step left: its output, status and the recorded paths.
struct After {
    out: String,
    status: i32,
    /// `path uid gid mode type` per existing watched path.
    stat: Vec<(String, u32, u32, u32, String)>,
    user: Option<(u32, u32)>,
    dropin: Option<String>,
    systemctl: String,
}

impl After {
    fn path(&self, p: &str) -> Option<&(String, u32, u32, u32, String)> {
        self.stat.iter().find(|s| s.0 == p)
    }
}

fn read_after(out: &Path, n: usize) -> After {
    let f = |ext: &str| std::fs::read_to_string(out.join(format!("{n}.{ext}"))).ok();
    let stat = f("stat")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut w = l.splitn(5, ' ');
            let path = w.next().unwrap().to_owned();
            let num = |x: Option<&str>| x.unwrap().parse::<u32>().unwrap();
            let (uid, gid) = (num(w.next()), num(w.next()));
            let mode = u32::from_str_radix(w.next().unwrap(), 8).unwrap();
            (path, uid, gid, mode, w.next().unwrap_or("").to_owned())
        })
        .collect();
    let user = f("user").and_then(|u| {
        let mut x = u.split(':').skip(2);
        Some((x.next()?.parse().ok()?, x.next()?.parse().ok()?))
    });
    After {
        out: f("txt").unwrap_or_default(),
        status: f("status")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1),
        stat,
        user,
        dropin: f("dropin"),
        systemctl: f("systemctl").unwrap_or_default(),
    }
}

#[test]
fn install_md_steps_run_in_a_throwaway_root() {
    let doc = std::fs::read_to_string(repo().join("docs/install.md")).unwrap();
    let steps = runnable(&doc);
    let index = |needle: &str| {
        steps
            .iter()
            .position(|s| s.script.contains(needle))
            .unwrap_or_else(|| panic!("no runnable step with {needle:?} in docs/install.md"))
    };
    let (install, check, tls, takeover, rollback, purge) = (
        index("apt-get install ./audrey-federation_0.1.0-1_amd64.deb"),
        index("runuser -u audrey-federation -- audrey-federation check"),
        index("install -m 0640 -g audrey-federation server.pem server.key"),
        index("audrey-federation-takeover in-place"),
        index("audrey-federation-takeover rollback in-place"),
        index("apt-get purge"),
    );
    assert!(
        install < check && check < tls && tls < takeover && takeover < rollback && rollback < purge,
        "the steps are out of order"
    );

    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // The operator's working folder: the package and the server's certificate and key.
    let work = t.join("work");
    std::fs::create_dir_all(&work).unwrap();
    build_deb(&work);
    let pki = support_certs(&t.join("pki"));
    std::fs::copy(pki.join("server.pem"), work.join("server.pem")).unwrap();
    std::fs::copy(pki.join("server.key"), work.join("server.key")).unwrap();
    std::fs::create_dir_all(t.join("steps")).unwrap();
    std::fs::create_dir_all(t.join("out")).unwrap();
    for (n, s) in steps.iter().enumerate() {
        std::fs::write(t.join(format!("steps/{:02}.sh", n + 1)), &s.script).unwrap();
    }
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let host_had_etc = Path::new("/etc/audrey-federation").exists();
    let host_had_state = Path::new("/var/lib/audrey-federation").exists();
    let out = Command::new("timeout")
        .args(["300", "unshare", "--mount", "sh", "-c", RUNNER])
        .env("T", t)
        .env("W", &work)
        .env("WATCHED", WATCHED.join(" "))
        .output()
        .expect("unshare (util-linux)");
    assert!(
        out.status.success(),
        "runner: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Vec<After> = (1..=steps.len())
        .map(|n| read_after(&t.join("out"), n))
        .collect();
    for (s, a) in steps.iter().zip(&after) {
        eprintln!(
            "docs/install.md:{} (exit {}):\n{}{}",
            s.line, a.status, s.script, a.out
        );
        if s.strict {
            assert_eq!(
                a.status, 0,
                "docs/install.md:{}: step failed:\n{}{}",
                s.line, s.script, a.out
            );
        }
    }

    // 1. The package installed: every path of the page's tables, owners and modes as it says.
    let a = &after[install];
    let (uid, gid) = a.user.expect("the postinst created the user");
    for p in WATCHED.iter().take(7) {
        assert!(
            a.path(p).is_some(),
            "{p} missing after the install:\n{}",
            a.out
        );
        assert!(
            doc.contains(&format!("`{p}`")),
            "docs/install.md does not name {p}"
        );
    }
    assert_eq!(
        a.path("/var/lib/audrey-federation")
            .map(|s| (s.1, s.2, s.3)),
        Some((uid, gid, 0o700))
    );
    assert_eq!(
        a.path("/etc/audrey-federation/config.toml")
            .map(|s| (s.1, s.2, s.3)),
        Some((0, gid, 0o640))
    );
    let tls_dir = a
        .path("/etc/audrey-federation/tls")
        .expect("/etc/audrey-federation/tls exists after the install (3(b) copies keys there)");
    assert_eq!((tls_dir.1, tls_dir.2, tls_dir.3), (0, gid, 0o750));
    assert!(doc.contains(
        "`/etc/audrey-federation/tls` | keys and certificates, mode 0750 root:audrey-federation"
    ));

    // 2. check, as the service user, reads the config and finds the state directory.
    assert!(
        after[check]
            .out
            .contains("OK state dir /var/lib/audrey-federation: writable"),
        "{}",
        after[check].out
    );
    // 3(b) 1. The key files are the group's to read.
    for f in ["server.pem", "server.key"] {
        let p = format!("/etc/audrey-federation/tls/{f}");
        assert_eq!(
            after[tls].path(&p).map(|s| (s.1, s.2, s.3)),
            Some((0, gid, 0o640)),
            "{p}"
        );
    }
    // 3(b) 3. The drop-in the page shows, then the page's systemctl calls, in order.
    let shown = std::fs::read_to_string(repo().join("docs/recipes/systemd/takeover.conf")).unwrap();
    assert_eq!(after[takeover].dropin.as_deref(), Some(shown.as_str()));
    // (`systemctl cat` is the script looking which Apache unit there is: it changes nothing.)
    let changes = |calls: &str| -> Vec<String> {
        calls
            .lines()
            .filter(|l| !l.starts_with("cat "))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        changes(&after[takeover].systemctl),
        [
            "daemon-reload",
            "disable --now apache2",
            "restart audrey-federation"
        ]
    );
    for call in [
        "systemctl daemon-reload",
        "systemctl disable --now apache2",
        "systemctl restart audrey-federation",
    ] {
        assert!(doc.contains(call), "docs/install.md does not say {call}");
    }
    assert!(
        after[rollback].dropin.is_none(),
        "the rollback left the drop-in"
    );
    assert_eq!(
        changes(&after[rollback].systemctl)[3..],
        [
            "daemon-reload",
            "stop audrey-federation",
            "enable --now apache2"
        ]
    );
    // 5. The purge: no state, no user.
    let p = &after[purge];
    assert!(p.user.is_none(), "the purge left the user");
    assert!(p.path("/var/lib/audrey-federation").is_none());
    assert!(p.path("/usr/bin/audrey-federation").is_none());

    // This machine gained nothing.
    assert_eq!(std::fs::read_to_string("/etc/passwd").unwrap(), host_passwd);
    assert_eq!(Path::new("/etc/audrey-federation").exists(), host_had_etc);
    assert_eq!(
        Path::new("/var/lib/audrey-federation").exists(),
        host_had_state
    );
}

/// A CA and a server certificate (`server.pem`, `server.key`) by the shipped `certs/gen-certs.sh`.
fn support_certs(dir: &Path) -> PathBuf {
    run(Command::new("bash")
        .arg(repo().join("certs/gen-certs.sh"))
        .arg(dir)
        .arg("site-a"));
    dir.to_owned()
}
