//! The `certline` command line.

use anyhow::Context as _;
use certline::App;
use certline::app::config::{Config, LogFormat};
use certline::app::reload::ConfigSource;
use certline::cli::{self, AdminClient, DomainFilter, Endpoint, Format};
use certline::server::activation::Activated;
use clap::{Args, Parser, Subcommand};
use sd_notify::NotifyState;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's allocator. sled 0.34 copies a tree node on every insert and
/// frees the old one, so the server allocates and frees many short-lived buffers per request,
/// from several threads: under load glibc's `malloc`/`free` were about 12 % of the server's
/// samples. mimalloc keeps per-thread free lists (BENCHMARKS.md has the before and after).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Check a configuration file, load the secrets it names, and print what was found.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// List registered domains with their Sectigo state (`--needs-action`: only those that
    /// need an operator, and why).
    Domains {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only domains in this bridge state (synced, failed, awaiting_confirmation, ...).
        #[arg(long)]
        state: Option<String>,
        /// Only this domain and its subdomains.
        #[arg(long)]
        suffix: Option<String>,
        /// Only domains that need an operator: failed, not in Sectigo, awaiting
        /// confirmation, paused bridge, DCV not validated or expiring.
        #[arg(long)]
        needs_action: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List API keys (id, e-mail, created/claimed/confirmed/revoked, domain count).
    Keys {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke the API key whose id starts with PREFIX (at least 4 hex digits, unique).
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        prefix: String,
    },
    /// Confirm the API key whose id starts with PREFIX, as its claim e-mail's link would (for
    /// owners who never got the mail): its domains waiting for a confirmed key go on to
    /// Sectigo.
    Confirm {
        #[command(flatten)]
        admin: AdminArgs,
        prefix: String,
    },
    /// Send a domain back to the Sectigo bridge's queue, due now.
    Requeue {
        #[command(flatten)]
        admin: AdminArgs,
        domain: String,
    },
    /// Register the domains in FILE (one per line, `#` comments) under an API key.
    Import {
        #[command(flatten)]
        admin: AdminArgs,
        file: PathBuf,
        /// The API key to register them under.
        #[arg(long, env = "CERTLINE_APIKEY", hide_env_values = true)]
        apikey: String,
    },
    /// Copy every record between a data directory and PostgreSQL, with no server running on
    /// either: `--from DIR --to postgres`, or `--from postgres --to DIR`. The target must be
    /// empty.
    Migrate {
        /// Where to copy from: a data directory, or `postgres`.
        #[arg(long)]
        from: String,
        /// Where to copy to: `postgres`, or a new (or empty) data directory.
        #[arg(long)]
        to: String,
        /// The configuration file whose [store.postgres] names the database (read whatever
        /// [store] backend says).
        #[arg(long)]
        config: PathBuf,
    },
    /// Take an online backup of a running server on the embedded store into FILE (through
    /// the admin API; the server keeps taking writes). On PostgreSQL use pg_dump.
    Backup {
        #[command(flatten)]
        admin: AdminArgs,
        /// The backup file to write (replaced only once the new backup is whole).
        file: PathBuf,
    },
    /// Restore a backup written by `certline backup` into a new (or empty) data directory
    /// (`--data DIR`), or into an empty PostgreSQL schema (`--to postgres --config FILE`).
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data directory to create; must not exist or be empty.
        #[arg(long, required_unless_present = "to", conflicts_with = "to")]
        data: Option<PathBuf>,
        /// `postgres`: restore into the database the --config file's [store.postgres] names.
        #[arg(long, requires = "config", value_parser = ["postgres"])]
        to: Option<String>,
        /// The configuration file whose [store.postgres] names the database (with --to).
        #[arg(long, requires = "to")]
        config: Option<PathBuf>,
    },
}

/// Where the admin API is (flags, then environment, then `--config`'s `[admin]`).
#[derive(Args)]
struct AdminArgs {
    /// The admin API's base URL, e.g. http://127.0.0.1:10080.
    #[arg(long, env = "CERTLINE_ADMIN_URL")]
    admin_url: Option<String>,
    /// The admin bearer token (prefer the environment variable: flags show in `ps`).
    #[arg(long, env = "CERTLINE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Read the URL and token from this config file's [admin] section.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Output format of lists.
#[derive(Args)]
struct OutputArgs {
    /// JSON Lines: one JSON object per line, as the admin API shows each item.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV with a header line.
    #[arg(long)]
    csv: bool,
}

impl OutputArgs {
    fn format(&self) -> Format {
        match (self.json, self.csv) {
            (true, _) => Format::Json,
            (_, true) => Format::Csv,
            _ => Format::Table,
        }
    }
}

/// Errors are printed as one chain of messages (`{:#}`), never as a `Debug` dump: an operator
/// with `RUST_BACKTRACE=1` set for another program still gets one clean line.
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            data,
            config,
        } => {
            let source = ConfigSource {
                file: config,
                listen,
                data_dir: data,
            };
            let config = source.load()?;
            init_tracing(&config);
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.enable_all();
            if config.worker_threads > 0 {
                runtime.worker_threads(config.worker_threads);
            }
            runtime
                .build()
                .context("starting the tokio runtime")?
                .block_on(serve(config, source))
        }
        Command::CheckConfig { file } => {
            let report = cli::check::check_config(&file)?;
            print!("{}", report.text);
            if !report.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Domains {
            admin,
            state,
            suffix,
            needs_action,
            output,
        } => {
            let filter = DomainFilter {
                state,
                suffix,
                needs_action,
            };
            admin_listing(admin, async |c, out| {
                cli::domains(c, filter, output.format(), out).await
            })
        }
        Command::Keys { admin, output } => admin_listing(admin, async |c, out| {
            cli::keys(c, output.format(), out).await
        }),
        Command::Revoke { admin, prefix } => {
            admin_call(admin, async |c| cli::revoke(c, &prefix).await)
        }
        Command::Confirm { admin, prefix } => {
            admin_call(admin, async |c| cli::confirm(c, &prefix).await)
        }
        Command::Requeue { admin, domain } => {
            admin_call(admin, async |c| cli::requeue(c, &domain).await)
        }
        Command::Import {
            admin,
            file,
            apikey,
        } => {
            let mut invalid = 0;
            admin_call(admin, async |c| {
                let report = cli::import(c, &file, &apikey).await?;
                invalid = report.invalid;
                Ok(report.text)
            })?;
            if invalid > 0 {
                anyhow::bail!(
                    "{invalid} line(s) were not valid domain names; fix them and import the file again (registered domains are skipped)"
                );
            }
            Ok(())
        }
        Command::Migrate { from, to, config } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            let (from, to) = (
                cli::migrate::Place::parse(&from),
                cli::migrate::Place::parse(&to),
            );
            let summary = runtime.block_on(cli::migrate::migrate(&from, &to, &config))?;
            print!("{summary}");
            Ok(())
        }
        Command::Backup { admin, file } => {
            let (client, runtime) = admin_client(admin)?;
            let summary = runtime.block_on(cli::backup::backup(&client, &file))?;
            print!("{summary}");
            Ok(())
        }
        Command::Restore {
            file,
            data,
            to: _,
            config,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            let summary = runtime.block_on(async {
                match (data, config) {
                    (Some(data), _) => cli::backup::restore(&file, &data).await,
                    (None, Some(config)) => cli::backup::restore_to_postgres(&file, &config).await,
                    (None, None) => unreachable!("clap requires --data or --to postgres"),
                }
            })?;
            print!("{summary}");
            Ok(())
        }
    }
}

/// Runs one admin API client call and prints its output.
fn admin_call(
    args: AdminArgs,
    call: impl AsyncFnOnce(&AdminClient) -> Result<String, cli::CliError>,
) -> anyhow::Result<()> {
    let (client, runtime) = admin_client(args)?;
    let text = runtime.block_on(call(&client))?;
    print!("{text}");
    Ok(())
}

/// Runs a listing that writes to stdout page by page. A closed stdout (`| head`) ends it
/// quietly.
fn admin_listing(
    args: AdminArgs,
    call: impl AsyncFnOnce(&AdminClient, &mut dyn Write) -> Result<(), cli::CliError>,
) -> anyhow::Result<()> {
    let (client, runtime) = admin_client(args)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match runtime.block_on(call(&client, &mut out)) {
        Err(cli::CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

fn admin_client(args: AdminArgs) -> anyhow::Result<(AdminClient, tokio::runtime::Runtime)> {
    let endpoint = Endpoint::resolve(args.admin_url, args.admin_token, args.config.as_deref())?;
    let client = AdminClient::new(endpoint)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    Ok((client, runtime))
}

/// Libraries whose debug output carries the values certline stores: tokio-postgres logs
/// every statement's parameters at `debug` (EAB HMAC keys in the ACME records, e-mail
/// addresses, link-token hashes). Whatever `RUST_LOG` or `[log] filter` asks, they log at
/// `info` at most: secrets never reach a log (found by tests/acme.rs on PostgreSQL, which
/// runs certline at `trace`).
const CAPPED: &[&str] = &["tokio_postgres=info", "postgres_protocol=info"];

fn init_tracing(config: &Config) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    for directive in CAPPED {
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    // Colour codes only for a terminal: log files and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before anything slow: SIGHUP's default action would end the process.
    let mut hangup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let data_dir = config.data_dir.clone();
    let activated = Activated::from_env(
        config.listen.port(),
        config.admin.as_ref().map(|a| a.listen.port()),
    )?;
    let app = App::start_activated(config, activated)
        .await
        .with_context(|| format!("starting certline with data in {}", data_dir.display()))?;
    // Scripts and tests that start certline on port 0 read these lines to find the ports.
    // The line-protocol line comes last, so a reader knows it has seen every port.
    if let Some(admin) = app.admin_addr() {
        println!("admin listening on {admin}");
    }
    println!("listening on {}", app.local_addr());
    std::io::stdout().flush()?;
    notify_systemd(&[NotifyState::Ready]);
    let shutdown = app.shutdown_token();
    let reloader = app.reloader(source);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let mut reloading = vec![NotifyState::Reloading];
                    reloading.extend(NotifyState::monotonic_usec_now().ok());
                    notify_systemd(&reloading);
                    // Secrets are files: read them off the runtime's threads.
                    let reloader = reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                    notify_systemd(&[NotifyState::Ready]);
                }
            }
        }
        tracing::info!("signal received: shutting down");
        notify_systemd(&[NotifyState::Stopping]);
        shutdown.cancel();
    });
    app.run().await?;
    Ok(())
}

/// Tells systemd (Type=notify) where certline is; nothing without `NOTIFY_SOCKET`.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
