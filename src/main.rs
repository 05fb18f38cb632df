//! The `certline` command line.

use anyhow::Context as _;
use certline::config::{Config, LogFormat};
use certline::server::Server;
use clap::{Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    version,
    about = "KeyChest-compatible registration server with Sectigo bridging"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the line-protocol server.
    Serve {
        /// Address to listen on [default: 0.0.0.0:10023, or the config file's `listen`].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Database directory [default: ./certline-data, or the config file's `data_dir`].
        #[arg(long)]
        data: Option<PathBuf>,
        /// TOML configuration file (see README.md for every key).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and print the effective settings.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            listen,
            data,
            config,
        } => {
            let mut config = match config {
                Some(path) => Config::from_file(&path)?,
                None => Config::default(),
            };
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(data) = data {
                config.data_dir = data;
            }
            init_tracing(&config);
            tokio::runtime::Runtime::new()
                .context("starting the tokio runtime")?
                .block_on(serve(config))
        }
        Command::CheckConfig { file } => {
            let config = Config::from_file(&file)?;
            println!("{config:#?}");
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}

fn init_tracing(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let server = Server::bind(config)
        .await
        .with_context(|| format!("starting certline with data in {}", data_dir.display()))?;
    // Scripts and tests that start certline on port 0 read this line to find the port.
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush()?;
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: shutting down");
        shutdown.cancel();
    });
    server.run().await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
