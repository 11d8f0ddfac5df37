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
    about = "Federates unmodified Audrey Config Servers over AMQP 1.0"
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
        #[arg(long, env = "AUDREY_FEDERATION_CONFIG")]
        config: PathBuf,
        /// Only parse and validate the configuration (no network, no files but the config).
        #[arg(long)]
        config_only: bool,
        #[command(flatten)]
        overrides: Overrides,
    },
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

mod dead_letters {
    //! The `dead-letters` subcommand: picks the store or the admin endpoint, prints, exits.
    use super::*;
    use audrey_federation::deadletters::{
        self as dl, remote, DeadLetterError, Direction, Item, Letter, Selector,
    };
    use audrey_federation::store::{Store, FILE_NAME};

    enum Target {
        Local(Store),
        Remote(SocketAddr),
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
                Target::Remote(addr) => remote::list(*addr, direction, limit).await?,
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
            (Target::Remote(addr), true) => remote::retry(*addr, &sel).await,
            (Target::Remote(addr), false) => remote::drop(*addr, &sel).await,
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
                eprintln!(
                    "the store is in use by a running sidecar: asking its admin listener at {addr}"
                );
                Ok(Target::Remote(addr))
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

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
