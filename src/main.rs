//! The `audrey-federation` binary: flags, tracing, metrics recorder, signals, listeners,
//! then [`audrey_federation::run`]. No logic of its own lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use audrey_federation::config::Config;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "audrey-federation",
    version,
    about = "Federates unmodified Audrey Config Servers over AMQP 1.0",
    long_about = "A sidecar in front of an unmodified Audrey Config Server (Aeolus). It takes the \
server's port, forwards every request unchanged, records each change (PUT /params, POST /configs, \
DELETE /deployment) durably before the client is answered, publishes it to a per-deployment \
AMQP 1.0 topic over mutual TLS, and replays other sites' changes to its own server as \
OAuth-signed requests.\n\nStart with `audrey-federation check --config FILE`, then \
`audrey-federation run --config FILE` (or the systemd unit)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run(RunArgs),
    /// The operator's first command: checks the configuration, the upstream (really an
    /// Audrey Config Server), the state directory, certificate and key files (expiry), the
    /// broker (a real connect with the configured certificate) and this site's queue. One
    /// `OK …` or `FAIL …` line each; exit 0 only when all are OK (2: the config is invalid).
    Check {
        /// The TOML configuration file.
        #[arg(long, env = "AUDREY_FEDERATION_CONFIG")]
        config: PathBuf,
        /// Only parse and validate the configuration (no network, no files but the config).
        #[arg(long)]
        config_only: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Print this manual page (roff) to standard output: `audrey-federation man | man -l -`.
    Man,
    /// List, retry or drop dead letters (a stopped sidecar's store directly; a running
    /// sidecar's through its admin listener).
    DeadLetters {
        #[command(subcommand)]
        action: DeadAction,
    },
}

#[derive(Subcommand)]
enum DeadAction {
    /// Show dead letters (secrets and instance-config XML are never shown).
    List {
        #[command(flatten)]
        common: DeadArgs,
        /// Most letters shown.
        #[arg(long, default_value_t = audrey_federation::deadletters::DEFAULT_LIMIT)]
        limit: usize,
    },
    /// Put dead letters back: outbound into the outbox (same message id and order),
    /// inbound re-parked for the parked-retry timer.
    Retry {
        #[command(flatten)]
        common: DeadArgs,
        #[command(flatten)]
        which: Which,
    },
    /// Remove dead letters for good, printing each one removed.
    Drop {
        #[command(flatten)]
        common: DeadArgs,
        #[command(flatten)]
        which: Which,
    },
}

#[derive(clap::Args)]
struct DeadArgs {
    /// The TOML configuration file.
    #[arg(long, env = "AUDREY_FEDERATION_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
    /// Only this direction.
    #[arg(long, value_enum)]
    direction: Option<DirectionArg>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// One dead letter (needs --direction: outbound ids are origin_seq, inbound ids local).
    #[arg(long)]
    id: Option<u64>,
    /// Every dead letter (of --direction, if given).
    #[arg(long)]
    all: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    Outbound,
    Inbound,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The TOML configuration file.
    #[arg(long, env = "AUDREY_FEDERATION_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
    /// Log format.
    #[arg(long, env = "AUDREY_FEDERATION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Every key that is commonly set per host; each overrides the file.
#[derive(clap::Args)]
struct Overrides {
    /// Overrides `site`.
    #[arg(long, env = "AUDREY_FEDERATION_SITE")]
    site: Option<String>,
    /// Overrides `proxy.listen`.
    #[arg(long, env = "AUDREY_FEDERATION_PROXY_LISTEN")]
    proxy_listen: Option<SocketAddr>,
    /// Overrides `proxy.upstream`.
    #[arg(long, env = "AUDREY_FEDERATION_PROXY_UPSTREAM")]
    proxy_upstream: Option<String>,
    /// Overrides `admin.listen`.
    #[arg(long, env = "AUDREY_FEDERATION_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Overrides `state.dir`.
    #[arg(long, env = "AUDREY_FEDERATION_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Overrides `proxy.tls_cert` (TLS on the listener, with `--proxy-tls-key`).
    #[arg(long, env = "AUDREY_FEDERATION_PROXY_TLS_CERT")]
    proxy_tls_cert: Option<PathBuf>,
    /// Overrides `proxy.tls_key`.
    #[arg(long, env = "AUDREY_FEDERATION_PROXY_TLS_KEY")]
    proxy_tls_key: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl Overrides {
    fn apply(self, cfg: &mut Config) {
        if let Some(v) = self.site {
            cfg.site = v;
        }
        if let Some(v) = self.proxy_listen {
            cfg.proxy.listen = v;
        }
        if let Some(v) = self.proxy_upstream {
            cfg.proxy.upstream = v;
        }
        if let Some(v) = self.admin_listen {
            cfg.admin.listen = v;
        }
        if let Some(v) = self.state_dir {
            cfg.state.dir = v;
        }
        if let Some(v) = self.proxy_tls_cert {
            cfg.proxy.tls_cert = Some(v);
        }
        if let Some(v) = self.proxy_tls_key {
            cfg.proxy.tls_key = Some(v);
        }
    }
}

fn load(
    path: &std::path::Path,
    overrides: Overrides,
) -> Result<Config, audrey_federation::config::ConfigError> {
    let mut cfg = Config::load(path)?;
    overrides.apply(&mut cfg);
    cfg.validate()?;
    Ok(cfg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            config,
            config_only,
            overrides,
        } => match load(&config, overrides) {
            Ok(cfg) if config_only => {
                println!(
                    "OK config: site {:?}, proxy {} -> {}",
                    cfg.site, cfg.proxy.listen, cfg.proxy.upstream
                );
                ExitCode::SUCCESS
            }
            Ok(cfg) => check(&cfg),
            Err(e) => {
                println!("FAIL config {}: {e}", config.display());
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::DeadLetters { action } => dead_letters::main(action),
        Command::Man => match man::render(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write the manual page: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            let cfg = match load(&args.config, args.overrides) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(args.log_format);
            match run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

mod man {
    //! `audrey-federation man`: the manual page, made from the same clap definitions as
    //! `--help` (so the two cannot disagree) plus the sections clap has no place for.
    use super::Cli;
    use clap::CommandFactory;
    use std::io::Write;

    /// Sections after the commands: files, signals, environment, exit status.
    const TAIL: &str = r#".SH FILES
.TP
\fI/etc/audrey-federation/config.toml\fR
The configuration (TOML; unknown keys are refused, each error names its key). The package's
copy is commented key by key.
.TP
\fI/var/lib/audrey-federation/\fR
State: the outbox, the versioned state of other sites' instances, parked changes and dead letters (redb). Back it up
with the service stopped; never share it between two running sidecars.
.TP
\fI/usr/lib/systemd/system/audrey-federation.service\fR
The hardened unit (Type=notify).
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting, answer in-flight requests, publish what is left in the outbox until it is empty
or \fIshutdown.drain_timeout\fR passes, exit 0.
.TP
\fBSIGHUP\fR
Re-read certificate files: the listener's at its next TLS handshake, the broker client's at its
next connection. The configuration file needs a restart. \fBsystemctl reload\fR sends it.
.SH SYSTEMD
Under systemd (\fB$NOTIFY_SOCKET\fR set) the sidecar sends READY=1 once its listeners accept
and its store is open, RELOADING=1/READY=1 around SIGHUP, STOPPING=1 when it drains, and
WATCHDOG=1 at half of \fBWatchdogSec=\fR.
.SH EXIT STATUS
0 on success (run: after a clean drain; check: every line OK); 1 on a failure; 2 when the
configuration is invalid or the command line is wrong.
.SH SEE ALSO
\fI/usr/share/doc/audrey-federation/install.md\fR (installing beside or in place of Apache,
rollback), the metrics at \fBhttp://\fIadmin.listen\fB/metrics\fR, \fBsystemctl\fR(1).
"#;

    pub(super) fn render(out: &mut dyn Write) -> std::io::Result<()> {
        let cmd = Cli::command();
        let page = clap_mangen::Man::new(cmd.clone()).manual("audrey-federation manual");
        page.render_title(out)?;
        page.render_name_section(out)?;
        page.render_synopsis_section(out)?;
        page.render_description_section(out)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{} {}", cmd.get_name(), sub.get_name());
            writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
            let sub = sub.clone().bin_name(name);
            let page = clap_mangen::Man::new(sub.clone());
            let mut parts = Vec::new();
            page.render_synopsis_section(&mut parts)?;
            page.render_description_section(&mut parts)?;
            page.render_options_section(&mut parts)?;
            // Each part's section becomes a subsection of the command's.
            for line in String::from_utf8_lossy(&parts).split_inclusive('\n') {
                match line.strip_prefix(".SH ") {
                    Some(title) => write!(out, ".SS {title}")?,
                    None => out.write_all(line.as_bytes())?,
                }
            }
            for action in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
                let about = action
                    .get_about()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                writeln!(
                    out,
                    ".TP\n\\fB{}\\fR\n{}",
                    action.get_name(),
                    about.replace('\n', " ")
                )?;
            }
        }
        environment(&cmd, out)?;
        out.write_all(TAIL.as_bytes())?;
        page.render_version_section(out)
    }

    /// Every variable a flag reads (each overrides the file), then the log filter.
    fn environment(cmd: &clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(out, ".SH ENVIRONMENT")?;
        let mut seen = std::collections::BTreeMap::new();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
                    seen.insert(env.to_string_lossy().into_owned(), long.to_string());
                }
            }
        }
        for (env, long) in seen {
            writeln!(out, ".TP\n\\fB{env}\\fR\nAs \\fB--{long}\\fR.")?;
        }
        writeln!(
            out,
            ".TP\n\\fBAUDREY_FEDERATION_LOG\\fR\nThe log filter (default \\fBinfo\\fR; e.g. \\fBaudrey_federation=debug\\fR)."
        )
    }
}

mod dead_letters {
    //! The `dead-letters` subcommand: picks the store or the admin endpoint, prints, exits.
    use super::*;
    use audrey_federation::deadletters::{
        self as dl, remote, DeadLetterError, Direction, Item, Letter, Selector,
    };
    use audrey_federation::store::{Store, FILE_NAME};

    enum Target {
        Local(Store),
        /// The admin address and the bearer token of `admin.token_file`, if set.
        Remote(SocketAddr, Option<String>),
    }

    enum Failure {
        Usage(String),
        Failed(String),
    }

    impl From<DeadLetterError> for Failure {
        fn from(e: DeadLetterError) -> Failure {
            match e {
                DeadLetterError::Usage(why) => Failure::Usage(why),
                other => Failure::Failed(other.to_string()),
            }
        }
    }

    pub(super) fn main(action: DeadAction) -> ExitCode {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(act(action)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(Failure::Usage(why)) => {
                eprintln!("error: {why}");
                ExitCode::from(2)
            }
            Err(Failure::Failed(why)) => {
                eprintln!("error: {why}");
                ExitCode::FAILURE
            }
        }
    }

    /// Runs the action; `Ok(false)` when some selected letter was refused or gone.
    async fn act(action: DeadAction) -> Result<bool, Failure> {
        let (common, which, limit) = match action {
            DeadAction::List { common, limit } => (common, None, limit),
            DeadAction::Retry { common, which } => (common, Some((which, true)), 0),
            DeadAction::Drop { common, which } => (common, Some((which, false)), 0),
        };
        let cfg =
            load(&common.config, common.overrides).map_err(|e| Failure::Usage(e.to_string()))?;
        let direction = common.direction.map(|d| match d {
            DirectionArg::Outbound => Direction::Outbound,
            DirectionArg::Inbound => Direction::Inbound,
        });
        let target = target(&cfg)?;
        let Some((which, is_retry)) = which else {
            let letters = match &target {
                Target::Local(store) => {
                    dl::list(store, direction, limit).map_err(|e| Failure::Failed(e.to_string()))?
                }
                Target::Remote(addr, token) => {
                    remote::list(*addr, token.as_deref(), direction, limit).await?
                }
            };
            print_letters(&letters, None, common.json);
            close(target).await;
            return Ok(true);
        };
        let sel = Selector {
            direction,
            id: which.id,
            all: which.all,
        };
        sel.validate().map_err(Failure::Usage)?;
        let result = match (&target, is_retry) {
            (Target::Local(store), true) => dl::retry(store, &sel).await,
            (Target::Local(store), false) => dl::drop(store, &sel).await,
            (Target::Remote(addr, token), true) => {
                remote::retry(*addr, token.as_deref(), &sel).await
            }
            (Target::Remote(addr, token), false) => {
                remote::drop(*addr, token.as_deref(), &sel).await
            }
        };
        close(target).await;
        let report = result?;
        let letters: Vec<Letter> = report.items.iter().map(|i| i.letter.clone()).collect();
        if common.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else if letters.is_empty() {
            println!("no dead letters selected");
        } else {
            print_letters(&letters, Some(&report.items), false);
        }
        Ok(report.all_done())
    }

    /// The store when the sidecar is stopped; its admin listener when it runs (redb locks
    /// the file while a process holds it open).
    fn target(cfg: &Config) -> Result<Target, Failure> {
        let file = cfg.state.dir.join(FILE_NAME);
        if !file.exists() {
            return Err(Failure::Failed(format!(
                "no store at {} (check state.dir)",
                file.display()
            )));
        }
        match Store::open(&cfg.state.dir, &cfg.site) {
            Ok(store) => Ok(Target::Local(store)),
            Err(e) if e.is_locked() => {
                let mut addr = cfg.admin.listen;
                if addr.port() == 0 {
                    return Err(Failure::Usage(format!(
                        "{} is in use by a running sidecar, and admin.listen has port 0: pass --admin-listen with its admin address",
                        file.display()
                    )));
                }
                if addr.ip().is_unspecified() {
                    addr.set_ip(match addr {
                        SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                        SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                    });
                }
                let token = match &cfg.admin.token_file {
                    None => None,
                    Some(path) => Some(
                        audrey_federation::admin::read_token_file(path).map_err(Failure::Failed)?,
                    ),
                };
                eprintln!(
                    "the store is in use by a running sidecar: asking its admin listener at {addr}"
                );
                Ok(Target::Remote(addr, token))
            }
            Err(e) => Err(Failure::Failed(e.to_string())),
        }
    }

    async fn close(target: Target) {
        if let Target::Local(store) = target {
            if let Err(e) = store.close().await {
                eprintln!("warning: closing the store: {e}");
            }
        }
    }

    fn print_letters(letters: &[Letter], items: Option<&[Item]>, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(letters).unwrap_or_default()
            );
        } else if letters.is_empty() {
            println!("no dead letters");
        } else {
            print!("{}", dl::render_table(letters, items));
        }
    }
}

/// Runs `check` on a valid configuration and prints one line per check.
fn check(cfg: &Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(audrey_federation::check::run(cfg));
    print!("{report}");
    if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUDREY_FEDERATION_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn run(cfg: Config) -> anyhow::Result<()> {
    let metrics =
        audrey_federation::metrics::install().context("installing the metrics recorder")?;
    let proxy = tokio::net::TcpListener::bind(cfg.proxy.listen)
        .await
        .with_context(|| format!("binding proxy.listen {}", cfg.proxy.listen))?;
    let admin = tokio::net::TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("binding admin.listen {}", cfg.admin.listen))?;
    // One machine-readable line for scripts and tests that bind port 0.
    println!(
        "listening proxy={} admin={}",
        proxy.local_addr()?,
        admin.local_addr()?
    );
    tracing::info!(site = %cfg.site, proxy = %proxy.local_addr()?, admin = %admin.local_addr()?, upstream = %cfg.proxy.upstream, "audrey-federation started");

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: stop accepting, finish in-flight requests, flush");
        signal.cancel();
    });
    let listeners = audrey_federation::Listeners { proxy, admin };
    audrey_federation::run(cfg, listeners, metrics, shutdown).await?;
    Ok(())
}

/// Returns at SIGTERM or SIGINT. SIGHUP (`systemctl reload`) re-reads certificate files:
/// the listener's at its next handshake, the broker client's at its next connection (it
/// does so at every connection anyway); the configuration file needs a restart.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => {
                audrey_federation::systemd::reloading();
                audrey_federation::tls::reload_now();
                tracing::info!("SIGHUP: certificate files are re-read at the next TLS handshake or broker connection; configuration changes need a restart");
                audrey_federation::systemd::ready("reloaded certificates");
            }
        }
    }
}
