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
    /// Validate the configuration file without serving.
    Check {
        #[arg(long, env = "AUDREY_FEDERATION_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
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
        Command::Check { config, overrides } => match load(&config, overrides) {
            Ok(cfg) => {
                println!(
                    "config OK: site {:?}, proxy {} -> {}",
                    cfg.site, cfg.proxy.listen, cfg.proxy.upstream
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
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
