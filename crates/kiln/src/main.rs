//! The `kiln` command.
//!
//! Each subcommand parses its arguments into domain types (an invalid site,
//! environment or version is a usage error, exit 2), calls one `kiln-apps`
//! operation, and prints the outcome as text or JSON. Exit status: 0 success,
//! 1 a refused or failed action, 2 bad input or usage.
//!
//! Commands from the design brief that are not here yet (`dev`, `serve`,
//! `lint`, `scan`, ...) are not stubbed: clap reports them as unknown until
//! they exist. The hidden `__worker` argument turns this process into a
//! sandbox worker (see `kiln-sandbox`).

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool prints its results")]

mod admin;
mod bench;
mod bench_audit;
mod bench_gateways;
mod bench_kvs;
mod bench_webtrigger;
mod dev;
mod output;
mod remote;
mod server;
mod trail;

use output::{say, say_raw};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_apps::{AppError, Consent, DeployRequest};
use kiln_store::Store;
use kiln_types::{AppId, Environment, Product, SiteUrl, Version};
use trail::Trail;

/// Kiln: a self-hosted, security-first platform for Jira and Confluence apps.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
struct Cli {
    /// Where Kiln keeps its state [default: $KILN_DATA_DIR, else the user data directory]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Run the command through this Kiln server's admin API (https URL),
    /// with the API token in KILN_TOKEN
    #[arg(long, global = true, value_name = "URL", env = "KILN_SERVER")]
    server: Option<String>,

    /// Trust this PEM file for --server [default: $KILN_SERVER_CA, else the system's roots]
    #[arg(long, global = true, value_name = "FILE", requires = "server")]
    server_ca: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate, bundle and store a new version of the app in APP_DIR
    Deploy(DeployArgs),
    /// Install the latest version of the app on a site
    Install(InstallArgs),
    /// Move an installation to the latest version, showing new permissions for consent
    Upgrade(UpgradeArgs),
    /// Move an installation back to an earlier version within its consent
    Rollback(RollbackArgs),
    /// List the app's versions and which installations run which
    Versions(VersionsArgs),
    /// Run one function of the app in APP_DIR in the sandbox and print its result as JSON
    Invoke(InvokeArgs),
    /// Measure Kiln beside a baseline in the same run
    #[command(subcommand)]
    Bench(BenchCommand),
    /// App variables (process.env of the app's functions), sealed at rest
    #[command(subcommand)]
    Variables(VariablesCommand),
    /// Key-encryption and data keys
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The tamper-evident audit trail: verify, read, export, alerts
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Operator accounts and API tokens (on the Kiln host)
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// The whole platform on loopback for one app: dev site, server, deploy and install, logs, redeploy on change
    Dev(DevArgs),
    /// Serve the platform over HTTPS: admin API, web triggers, resolvers, product events, scheduled triggers, queues
    Serve(ServeArgs),
    /// Run the dev site: an emulated Jira and Confluence with OAuth, on loopback, for development
    Devsite(DevsiteArgs),
    /// Consent as a dev-site user, so `kiln invoke --account-id` can act for them (asUser())
    Consent(ConsentArgs),
    /// Print an installation's URL for a web trigger module (made on first use), served by `kiln serve`
    Webtrigger(WebtriggerArgs),
}

#[derive(Debug, Args)]
struct WebtriggerArgs {
    /// The web trigger module's key (modules.webtrigger[].key)
    module: String,
    #[command(flatten)]
    site: SiteArgs,
    #[command(flatten)]
    env: EnvArg,
    #[command(flatten)]
    app: AppArg,
    /// Where `kiln serve` is reached
    #[arg(long, value_name = "URL", default_value = "https://localhost:8443")]
    base_url: String,
    /// Also print the key callers sign requests with (for a module with `authentication: hmacSharedSecret`; made on first ask)
    #[arg(long)]
    signing_secret: bool,
}

#[derive(Debug, Args)]
struct ConsentArgs {
    /// The dev site (`kiln devsite`)
    #[arg(long, value_name = "URL")]
    devsite: String,
    /// The dev site's certificate [default: the data directory's]
    #[arg(long, value_name = "PEM")]
    devsite_ca: Option<PathBuf>,
    /// The dev-site user who consents
    #[arg(long, value_name = "ACCOUNT_ID")]
    account_id: String,
    /// The app directory, holding manifest.yml
    #[arg(default_value = ".")]
    app_dir: PathBuf,
}

#[derive(Debug, Args)]
struct DevsiteArgs {
    /// Address to listen on (loopback only)
    #[arg(long, default_value = "127.0.0.1:8444")]
    listen: std::net::SocketAddr,
    /// Seed data (JSON; unknown keys are errors) [default: the built-in example site]
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: std::net::SocketAddr,
    /// Certificate chain (PEM) [default: a self-signed one in the data directory]
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM)
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Settings file (TOML; `[alerts]`, `[product]`, `[resolvers]`: the context-token issuer and its keys). Unknown keys are errors.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where this server is reached from outside, for the web trigger URLs app code asks for [default: https://<listen address>]
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Requests each installation's web triggers take per minute (per node)
    #[arg(long, value_name = "N", default_value_t = kiln_server::webtrigger::DEFAULT_PER_MINUTE)]
    webtrigger_rate: u32,
    /// How log lines on standard error are written (events chosen by $KILN_LOG, e.g. "info" or "warn,kiln_server=debug")
    #[arg(long, value_enum, default_value_t = LogFormatArg::Json)]
    log_format: LogFormatArg,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, loopback addresses only) [default: not served]
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Allow --metrics-listen on an address that is not loopback (anyone who reaches it reads the metrics)
    #[arg(long, requires = "metrics_listen")]
    insecure_metrics_listen_any: bool,
    /// On SIGTERM or Ctrl-C, how long in-flight requests and invocations may take to finish before the server stops anyway
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    drain_seconds: u64,
    /// Run every invocation of every app in a process of its own, forked from the app's prepared worker, where by default a reused worker process puts its memory back after each invocation, at about seven times the CPU per call: see docs/THREAT_MODEL.md for what this bounds
    #[arg(long)]
    process_per_invocation: bool,
    /// Keep the code of workers that fork per invocation in the executable's shared file mapping instead of a private copy on huge pages: saves about 24 MB per such worker; forked invocations then run about 10% slower (docs/PERFORMANCE.md)
    #[arg(long)]
    no_huge_pages: bool,
    #[command(flatten)]
    egress: InsecureEgressArgs,
}

/// Egress settings for tests and development: each weakens a protection
/// and is logged loudly at every start.
#[derive(Debug, Args)]
struct InsecureEgressArgs {
    /// Let app fetch reach loopback addresses (tests against upstreams they start; production installations will not run)
    #[arg(long)]
    insecure_egress_loopback: bool,
    /// Answer HOST from this table instead of DNS (HOST=IP or HOST=IP:PORT; repeatable); no other name resolves
    #[arg(long, value_name = "HOST=ADDR")]
    insecure_egress_resolve: Vec<String>,
    /// Also trust this CA (PEM) for app fetch
    #[arg(long, value_name = "FILE")]
    egress_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormatArg {
    /// One JSON object per line: timestamp, level, target, fields (message and the event's own)
    Json,
    /// One readable line per event
    Text,
}

impl From<LogFormatArg> for kiln_server::logging::LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Json => kiln_server::logging::LogFormat::Json,
            LogFormatArg::Text => kiln_server::logging::LogFormat::Text,
        }
    }
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every record, every checkpoint and the checkpoint file; say where anything was changed
    Verify,
    /// Show the latest records, oldest first
    Tail {
        /// How many records
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// Print as export lines instead of text
        #[arg(long, value_enum)]
        format: Option<ExportFormatArg>,
    },
    /// Write every record (after --after) as one line each, for a SIEM
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormatArg::Jsonl)]
        format: ExportFormatArg,
        /// Only records after this sequence number (for incremental export)
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Write to this file instead of standard output
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Sign the trail's head now (commands that record something do this themselves)
    Checkpoint,
    /// Run the alert rules over new records and list alerts, newest first
    Alerts {
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
        /// Settings file with an `[alerts]` section (rules; the webhook is used by `kiln serve`)
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormatArg {
    /// Kiln's records, one JSON object per line, with their MACs
    Jsonl,
    /// OCSF 1.3 events (API Activity, Authentication)
    Ocsf,
}

impl From<ExportFormatArg> for kiln_audit::ExportFormat {
    fn from(f: ExportFormatArg) -> Self {
        match f {
            ExportFormatArg::Jsonl => kiln_audit::ExportFormat::Jsonl,
            ExportFormatArg::Ocsf => kiln_audit::ExportFormat::Ocsf,
        }
    }
}

#[derive(Debug, Subcommand)]
enum VariablesCommand {
    /// Set a variable for the app in an environment
    Set {
        name: String,
        value: String,
        /// Never show the value again (it is sealed at rest either way)
        #[arg(long)]
        encrypt: bool,
        #[command(flatten)]
        env: EnvArg,
        #[command(flatten)]
        app: AppArg,
    },
    /// Remove a variable
    Unset {
        name: String,
        #[command(flatten)]
        env: EnvArg,
        #[command(flatten)]
        app: AppArg,
    },
    /// List the variables (encrypted values are masked)
    List {
        #[command(flatten)]
        env: EnvArg,
        #[command(flatten)]
        app: AppArg,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a new key-encryption key, make it current and rewrap every data key
    Rotate {
        /// Also give every owner a new data key and re-encrypt its values
        #[arg(long)]
        data_keys: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Warm invocation latency and throughput, jailed, beside Node.js (node:vm and a process per call)
    Invoke {
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
        /// Measure without namespaces (for machines that cannot create them)
        #[arg(long)]
        insecure_skip_namespaces: bool,
        /// Measure only workloads whose name contains this ("trivial", "bundle")
        #[arg(long)]
        only: Option<String>,
        /// Fork a process for every invocation, small apps' too, as `kiln serve --process-per-invocation` does
        #[arg(long)]
        process_per_invocation: bool,
        /// Keep forking workers' code off huge pages, as `kiln serve --no-huge-pages` does
        #[arg(long)]
        no_huge_pages: bool,
    },
    /// Key-value store get, set and prefix query, encrypted beside plaintext, on SQLite (and PostgreSQL)
    Kvs {
        /// Sets per path and value size (gets and queries: five times as many)
        #[arg(long, default_value_t = 2000)]
        ops: usize,
        /// Also measure PostgreSQL at this URL (a fresh schema, dropped afterwards)
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
    },
    /// Audit trail appends (alone and in an action's transaction) and verification, beside unchained baselines
    Audit {
        /// Operations per path and measurement
        #[arg(long, default_value_t = 2000)]
        records: usize,
        /// Also measure PostgreSQL at this URL (fresh schemas, dropped afterwards)
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
    },
    /// Latency the egress and product gateways add, beside a direct HTTPS client, on loopback
    Gateways {
        /// Requests per path and side
        #[arg(long, default_value_t = 1000)]
        requests: usize,
    },
    /// wrk against a web trigger on kiln serve beside a Node.js https server with the same handler
    Webtrigger {
        /// Seconds per wrk run
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// wrk connections
        #[arg(long, default_value_t = 16)]
        connections: u32,
        /// Then run wrk against Kiln alone this long, sampling the server's memory
        #[arg(long, value_name = "SECONDS")]
        soak_seconds: Option<u64>,
    },
}

#[derive(Debug, Args)]
struct DevArgs {
    /// The app directory, holding manifest.yml and src/ (state goes to APP_DIR/.kiln/)
    #[arg(default_value = ".")]
    app_dir: PathBuf,
    /// Where the server listens (loopback only)
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: std::net::SocketAddr,
    /// Where the dev site listens (loopback only); its address is the installation's site
    #[arg(long, default_value = "127.0.0.1:8444")]
    devsite_listen: std::net::SocketAddr,
    #[command(flatten)]
    env: EnvArg,
    /// Scheduled triggers follow a clock moved by POST /_kiln/test/clock {"advanceSeconds": N} (tests)
    #[arg(long)]
    insecure_test_clock: bool,
    /// Seconds before a failed queued event is retried (doubling each time)
    #[arg(long, default_value_t = 2)]
    retry_seconds: u64,
    /// Deploy once and serve, without watching APP_DIR for changes
    #[arg(long)]
    no_watch: bool,
    #[command(flatten)]
    egress: InsecureEgressArgs,
}

#[derive(Debug, Args)]
struct InvokeArgs {
    /// The function module's key (modules.function[].key)
    function: String,
    /// The app directory, holding manifest.yml and src/
    #[arg(default_value = ".")]
    app_dir: PathBuf,
    /// The payload passed as the handler's first argument: JSON, @FILE to
    /// read it from a file, or - to read it from standard input (payloads
    /// up to 5 MB, more than a command line holds)
    #[arg(long, default_value = "{}")]
    payload: String,
    /// The context passed as the handler's second argument: JSON, @FILE or -
    #[arg(long)]
    context: Option<String>,
    /// Stop the function after this many milliseconds instead of its module's limit
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Run app code WITHOUT user, network and mount namespaces (seccomp,
    /// Landlock and rlimits still apply). For machines that cannot create
    /// namespaces; never for production.
    #[arg(long)]
    insecure_skip_namespaces: bool,
    /// Run the invocation in a process forked from a prepared worker, as
    /// every app's are under `kiln serve --process-per-invocation`
    #[arg(long)]
    process_per_invocation: bool,
    /// Answer requestJira/requestConfluence from this dev site (`kiln devsite`), as the app's service account
    #[arg(long, value_name = "URL")]
    devsite: Option<String>,
    /// The dev site's certificate [default: the data directory's, which `kiln devsite` uses]
    #[arg(long, value_name = "PEM", requires = "devsite")]
    devsite_ca: Option<PathBuf>,
    /// The user in session (asUser() acts for them; context.accountId)
    #[arg(long, value_name = "ACCOUNT_ID")]
    account_id: Option<String>,
    /// Also trust these roots for the app's fetch (a local test server's certificate)
    #[arg(long, value_name = "PEM")]
    egress_ca: Option<PathBuf>,
    /// Let the app's fetch reach loopback addresses (local test servers). Never in production.
    #[arg(long)]
    insecure_egress_loopback: bool,
    /// Whose variables become process.env
    #[command(flatten)]
    env: EnvArg,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// The app directory, holding manifest.yml and src/
    #[arg(default_value = ".")]
    app_dir: PathBuf,
    #[command(flatten)]
    env: EnvArg,
    /// Validate and print the version decision without storing anything
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
struct EnvArg {
    /// The environment: development, staging, production, or a custom one
    #[arg(short = 'e', long = "environment", default_value = "development", value_parser = parse_env)]
    environment: Environment,
}

#[derive(Debug, Args)]
struct AppArg {
    /// The app: a directory holding its manifest.yml, or its app id (ari:cloud:ecosystem::app/...)
    #[arg(long, default_value = ".")]
    app: String,
}

#[derive(Debug, Args)]
struct SiteArgs {
    /// The site, e.g. https://example.atlassian.net
    #[arg(long, value_parser = parse_site)]
    site: SiteUrl,
    /// The product [default: read from the app's modules]
    #[arg(long, value_parser = parse_product)]
    product: Option<Product>,
}

#[derive(Debug, Args)]
struct InstallArgs {
    #[command(flatten)]
    site: SiteArgs,
    #[command(flatten)]
    env: EnvArg,
    #[command(flatten)]
    app: AppArg,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
struct UpgradeArgs {
    #[command(flatten)]
    site: SiteArgs,
    #[command(flatten)]
    env: EnvArg,
    #[command(flatten)]
    app: AppArg,
    /// Accept the new permissions without asking (for scripts)
    #[arg(long, short = 'y')]
    yes: bool,
}

#[derive(Debug, Args)]
struct RollbackArgs {
    #[command(flatten)]
    site: SiteArgs,
    #[command(flatten)]
    env: EnvArg,
    #[command(flatten)]
    app: AppArg,
    /// The version to return to [default: the one the installation ran before]
    #[arg(long, value_parser = parse_version)]
    to: Option<Version>,
}

#[derive(Debug, Args)]
struct VersionsArgs {
    #[command(flatten)]
    env: EnvArg,
    #[command(flatten)]
    app: AppArg,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn parse_env(s: &str) -> Result<Environment, String> {
    Environment::parse(s).map_err(|e| e.to_string())
}

fn parse_site(s: &str) -> Result<SiteUrl, String> {
    SiteUrl::parse(s).map_err(|e| e.to_string())
}

fn parse_product(s: &str) -> Result<Product, String> {
    s.parse().map_err(|e: kiln_types::IdError| e.to_string())
}

fn parse_version(s: &str) -> Result<Version, String> {
    s.parse().map_err(|e: kiln_types::IdError| e.to_string())
}

/// A failure with the exit status it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<AppError> for Failure {
    fn from(e: AppError) -> Self {
        Failure { code: e.exit_code(), message: e.to_string() }
    }
}

impl From<kiln_store::StoreError> for Failure {
    fn from(e: kiln_store::StoreError) -> Self {
        Failure { code: 1, message: e.to_string() }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

fn main() -> ExitCode {
    // A worker process: jail and serve before anything else runs (no async
    // runtime, no argument parsing beyond this).
    if std::env::args_os().nth(1).is_some_and(|a| a == "__worker") {
        return kiln_sandbox::worker::worker_main();
    }
    let cli = Cli::parse();
    // The servers use every core (TLS, the store and request handling run
    // on the runtime; sandbox calls on its blocking threads); one-shot
    // commands need one thread.
    let mut builder = if matches!(cli.command, Command::Serve(_) | Command::Dev(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Blocking work a command left behind (a sandbox call still running when
    // `kiln serve`'s drain gave up) must not keep the process alive past
    // its deadline: it is left to the OS, and jailed workers die with
    // their parent.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {}", f.message.trim_end());
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Some(server) = &cli.server {
        let remote = remote::Remote::new(server, cli.server_ca)?;
        return remote::run(&remote, cli.command).await;
    }
    let data_dir = data_dir(cli.data_dir)?;
    match cli.command {
        Command::Deploy(args) => deploy(&data_dir, args).await,
        Command::Install(args) => {
            let store = open(&data_dir).await?;
            let app = app_id(&args.app.app)?;
            let trail = Trail::open(&data_dir, &store).await?;
            let outcome = kiln_apps::install(
                &store,
                &app,
                &args.env.environment,
                &args.site.site,
                args.site.product,
                trail.audit(),
            )
            .await;
            trail.checkpoint(&store).await;
            let outcome = outcome?;
            match args.format {
                Format::Json => output::json(&outcome),
                Format::Text => say_raw!("{}", output::install(&outcome)),
            }
            Ok(())
        }
        Command::Upgrade(args) => upgrade(&data_dir, args).await,
        Command::Invoke(args) => invoke(&data_dir, args).await,
        Command::Audit(command) => audit(&data_dir, command).await,
        Command::Admin(command) => admin::run(&data_dir, command).await,
        Command::Serve(args) => serve(&data_dir, args).await,
        Command::Dev(args) => {
            let extra_roots = match &args.egress.egress_ca {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| usage(format!("--egress-ca {}: {e}", path.display())))?,
                ),
                None => None,
            };
            dev::run(dev::DevOptions {
                app_dir: args.app_dir,
                listen: args.listen,
                devsite_listen: args.devsite_listen,
                environment: args.env.environment,
                insecure_test_clock: args.insecure_test_clock,
                egress: server::EgressOptions {
                    insecure_loopback: args.egress.insecure_egress_loopback,
                    insecure_resolve: args.egress.insecure_egress_resolve,
                    extra_roots,
                },
                retry_seconds: args.retry_seconds,
                no_watch: args.no_watch,
            })
            .await
        }
        Command::Devsite(args) => devsite(&data_dir, args).await,
        Command::Consent(args) => consent(&data_dir, args).await,
        Command::Webtrigger(args) => webtrigger_url(&data_dir, args).await,
        Command::Variables(command) => variables(&data_dir, command).await,
        Command::Keys(KeysCommand::Rotate { data_keys }) => rotate_keys(&data_dir, data_keys).await,
        Command::Bench(BenchCommand::Invoke {
            iterations,
            insecure_skip_namespaces,
            only,
            process_per_invocation,
            no_huge_pages,
        }) => {
            let setup = bench::Setup { insecure_skip_namespaces, process_per_invocation, no_huge_pages };
            bench::invoke(iterations.max(10), setup, only.as_deref())
        }
        Command::Bench(BenchCommand::Kvs { ops, postgres }) => bench_kvs::kvs(ops, postgres).await,
        Command::Bench(BenchCommand::Gateways { requests }) => {
            bench_gateways::gateways(requests.max(50)).await
        }
        Command::Bench(BenchCommand::Webtrigger { seconds, connections, soak_seconds }) => {
            bench_webtrigger::webtrigger(seconds.max(1), connections.max(1), soak_seconds).await
        }
        Command::Bench(BenchCommand::Audit { records, postgres }) => {
            bench_audit::audit(records, postgres).await
        }
        Command::Rollback(args) => {
            let store = open(&data_dir).await?;
            let app = app_id(&args.app.app)?;
            let env = &args.env.environment;
            let trail = Trail::open(&data_dir, &store).await?;
            let outcome = kiln_apps::rollback(
                &store,
                &app,
                env,
                &args.site.site,
                args.site.product,
                args.to,
                trail.audit(),
            )
            .await;
            trail.checkpoint(&store).await;
            let outcome = outcome?;
            say!(
                "Rolled {} ({}) back from {} to {}; its consented permissions are unchanged.",
                outcome.site,
                outcome.product,
                outcome.from,
                outcome.to
            );
            Ok(())
        }
        Command::Versions(args) => {
            let store = open(&data_dir).await?;
            let app = app_id(&args.app.app)?;
            let listing = kiln_apps::versions(&store, &app, &args.env.environment).await?;
            match args.format {
                Format::Json => output::json(&listing),
                Format::Text => say_raw!("{}", output::versions(&listing)),
            }
            Ok(())
        }
    }
}

async fn deploy(data_dir: &Path, args: DeployArgs) -> Result<(), Failure> {
    // A dry run must not create a data directory: with no database yet there
    // is no previous version, which an empty in-memory store says as well.
    // A dry run records nothing, so it needs no key (and makes no key file).
    let store = if args.dry_run && !data_dir.join(kiln_store::DATABASE_FILE).exists() {
        Store::open_in_memory().await?
    } else {
        open(data_dir).await?
    };
    let trail = if args.dry_run { Trail::ephemeral()? } else { Trail::open(data_dir, &store).await? };
    let variables = |name: &str| std::env::var(name).ok();
    let outcome = kiln_apps::deploy(
        &store,
        DeployRequest {
            app_dir: &args.app_dir,
            environment: args.env.environment,
            dry_run: args.dry_run,
            variables: &variables,
        },
        trail.audit(),
    )
    .await;
    if !args.dry_run {
        trail.checkpoint(&store).await;
    }
    let outcome = outcome?;
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    match args.format {
        Format::Json => output::json(&outcome),
        Format::Text => say_raw!("{}", output::deploy(&outcome)),
    }
    Ok(())
}

async fn upgrade(data_dir: &Path, args: UpgradeArgs) -> Result<(), Failure> {
    let store = open(data_dir).await?;
    let app = app_id(&args.app.app)?;
    let env = &args.env.environment;
    let (site, product) = (&args.site.site, args.site.product);
    let trail = Trail::open(data_dir, &store).await?;
    let plan = kiln_apps::plan_upgrade(&store, &app, env, site, product).await?;
    if plan.is_noop() {
        say!("{} ({}) already runs {}, the latest version in {env}.", plan.site, plan.product, plan.to);
        return Ok(());
    }
    say_raw!("{}", output::upgrade_plan(&plan));
    let consent = if plan.needs_consent.is_empty() || args.yes {
        Consent::AcceptedFor(plan.to)
    } else if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        say_raw!("Grant these permissions to {} on {}? [y/N] ", app, plan.site);
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| usage(format!("cannot read the answer: {e}")))?;
        if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            Consent::AcceptedFor(plan.to)
        } else {
            Consent::NotGiven
        }
    } else {
        Consent::NotGiven
    };
    let done = kiln_apps::upgrade(&store, &app, env, site, product, plan.to, consent, trail.audit()).await;
    trail.checkpoint(&store).await;
    let done = done?;
    say!("Upgraded {} ({}) from {} to {}.", done.site, done.product, done.from, done.to);
    Ok(())
}

/// A JSON option's value: the JSON itself, `@FILE` for a file's contents or
/// `-` for standard input (JSON never starts with `@` or is a lone `-`).
fn json_argument(flag: &str, value: &str) -> Result<serde_json::Value, Failure> {
    let limit = kiln_ipc::MAX_PAYLOAD_BYTES;
    // One byte past the limit is enough to know it is too large.
    let read = |from: &mut dyn Read, source: &str| {
        let mut bytes = Vec::new();
        from.take(u64::try_from(limit).unwrap_or(u64::MAX) + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| usage(format!("{flag}: cannot read {source}: {e}")))?;
        Ok::<_, Failure>(bytes)
    };
    let (bytes, source) = if value == "-" {
        (read(&mut std::io::stdin().lock(), "standard input")?, "standard input".to_owned())
    } else if let Some(path) = value.strip_prefix('@') {
        let mut file =
            std::fs::File::open(path).map_err(|e| usage(format!("{flag}: cannot open {path}: {e}")))?;
        (read(&mut file, path)?, path.to_owned())
    } else {
        return serde_json::from_str(value).map_err(|e| usage(format!("{flag} is not JSON: {e}")));
    };
    if bytes.len() > limit {
        return Err(usage(format!(
            "{flag}: {source} holds more than {limit} bytes (5 MB), more than an invocation carries"
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| usage(format!("{flag}: {source} is not JSON: {e}")))
}

/// Bundle the app in APP_DIR and run one function through a pool of jailed
/// workers, exactly as the server will.
async fn invoke(data_dir: &Path, args: InvokeArgs) -> Result<(), Failure> {
    let payload = json_argument("--payload", &args.payload)?;
    let context: serde_json::Value = match &args.context {
        Some(c) => json_argument("--context", c)?,
        None => serde_json::json!({ "installContext": "ari:cloud:jira::site/kiln-local" }),
    };
    let variables = |name: &str| std::env::var(name).ok();
    let parsed = kiln_manifest::load(&args.app_dir, &variables).map_err(|e| usage(e.to_string()))?;
    let manifest = parsed.manifest;
    let Some(function) = manifest.function(&args.function) else {
        let known: Vec<&str> = manifest.modules.functions.iter().map(|f| f.key.as_str()).collect();
        return Err(usage(format!(
            "the app has no function '{}'; its functions are: {}",
            args.function,
            known.join(", ")
        )));
    };
    let memory_mb = function.memory_mb.unwrap_or(manifest.app.runtime.memory_mb);
    let built = kiln_bundle::build(&args.app_dir, &manifest).map_err(|e| usage(e.to_string()))?;
    let mut config = kiln_sandbox::SandboxConfig::for_current_exe()
        .map_err(|e| Failure { code: 1, message: e.to_string() })?;
    config.pool_size = 1;
    if args.process_per_invocation {
        config.fork_above_bytes = 0;
        config.reset_instead_of_fork = false;
    }
    if args.insecure_skip_namespaces {
        eprintln!(
            "WARNING: --insecure-skip-namespaces: app code runs WITHOUT user, network and mount namespaces. \
             Seccomp, Landlock and resource limits still apply. Never use this in production."
        );
        config.namespaces = kiln_sandbox::Namespaces::InsecureSkipNamespaces;
    }
    let sandbox =
        kiln_sandbox::Sandbox::new(config).map_err(|e| Failure { code: 1, message: e.to_string() })?;
    let mut context = context;
    if let (Some(account), Some(map)) = (&args.account_id, context.as_object_mut()) {
        map.entry("accountId").or_insert_with(|| serde_json::Value::String(account.clone()));
    }
    let (host, grants, env) = invoke_host(data_dir, &args, &manifest).await?;
    let runtime = kiln_host::runtime_description(&kiln_host::RuntimeSource {
        app: &grants.app,
        version: None,
        environment: &grants.environment,
        installation: &grants.installation,
        module_key: &args.function,
        grants: &kiln_manifest::Grants::of(&manifest),
        account_id: args.account_id.as_deref(),
    });
    let request = kiln_sandbox::InvokeRequest {
        function: args.function.clone(),
        payload,
        context,
        caller: kiln_sandbox::caller_for(&manifest, &args.function),
        memory_mb,
        deadline: args.timeout_ms.map(std::time::Duration::from_millis),
        env,
        runtime,
    };
    let app = manifest.app.id.to_string();
    // The sandbox blocks while the worker runs; the host calls it answers
    // run on this runtime, which keeps serving them from this thread.
    let ran = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || {
            let mut handler = host.invocation(&grants).map_err(|e| e.to_string())?;
            sandbox
                .invoke(&app, &built.hash, &built.bundle, &request, &mut handler)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| Failure { code: 1, message: format!("the invocation thread failed: {e}") })?
    };
    let result = match ran {
        Ok(result) => result,
        Err(message) => {
            record_fault(data_dir, &app, &args.function, "PLATFORM_ERROR", &message).await;
            return Err(Failure { code: 1, message });
        }
    };
    for (level, text) in &result.logs {
        eprintln!("[{level}] {text}");
    }
    match result.outcome {
        kiln_ipc::Outcome::Ok { result } => {
            let value: serde_json::Value =
                serde_json::from_str(&result).unwrap_or(serde_json::Value::String(result));
            output::json(&value);
            Ok(())
        }
        kiln_ipc::Outcome::Err(e) => {
            if e.code != kiln_ipc::ErrorCode::FunctionError {
                record_fault(data_dir, &app, &args.function, e.code.as_str(), &e.message).await;
            }
            output::json(&serde_json::json!({ "error": e }));
            Err(Failure { code: 1, message: format!("{}: {}", e.code, e.message) })
        }
    }
}

/// What `kiln invoke` lets the function reach: its variables in the
/// environment `-e` names (`process.env`), the app's own storage in the
/// data directory (owner `local:<app id>`), `fetch` through the egress
/// gateway to what the manifest declares, and, with `--devsite`, product
/// calls to a dev site. The manifest's permissions stand in for an admin's
/// consent, since nothing is installed. Every decision goes to the data
/// directory's audit trail.
async fn invoke_host(
    data_dir: &Path,
    args: &InvokeArgs,
    manifest: &kiln_manifest::Manifest,
) -> Result<
    (
        std::sync::Arc<kiln_host::Host>,
        kiln_host::InvocationGrants,
        std::collections::BTreeMap<String, String>,
    ),
    Failure,
> {
    let store = open(data_dir).await?;
    let provider = key_provider(data_dir, &store).await?;
    let trail = Trail::open(data_dir, &store).await?;
    let kvs = std::sync::Arc::new(kiln_kvs::Kvs::new(store.clone(), provider));
    let app = manifest.app.id.to_string();
    let owner = format!("local:{app}");
    let variables = kvs
        .variables(&format!("variables:{app}:{}", args.env.environment), true)
        .await
        .map_err(|e| Failure { code: 1, message: format!("the app's variables cannot be read: {e}") })?;
    let env = variables.into_iter().filter_map(|v| Some((v.name, v.value?))).collect();

    let mut roots = kiln_crypto::tls::system_roots().unwrap_or_default();
    if let Some(path) = &args.egress_ca {
        let extra = std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
        roots.push('\n');
        roots.push_str(&extra);
    }
    let mut egress = kiln_egress::Config::new(roots);
    if args.insecure_egress_loopback {
        eprintln!(
            "WARNING: --insecure-egress-loopback: the app's fetch may reach loopback addresses on this machine. \
             Every such request is marked in the audit trail. Never use this in production."
        );
        egress.insecure_allow_loopback = true;
    }
    let egress = kiln_egress::Gateway::new(
        egress,
        std::sync::Arc::new(kiln_egress::SystemResolver),
        std::sync::Arc::new(kiln_egress::SystemDialer),
    )
    .map_err(|e| usage(format!("the egress roots: {e}")))?;

    let product = match &args.devsite {
        None => None,
        Some(url) => Some(std::sync::Arc::new(
            devsite_gateway(data_dir, url, args.devsite_ca.as_deref(), kvs.clone(), None).await?,
        )),
    };
    let grants = kiln_manifest::Grants::of(manifest);
    let egress_targets = grants
        .egress
        .get(&kiln_manifest::ExternalKind::FetchBackend)
        .map(|entries| entries.iter().map(|e| e.target.clone()).collect())
        .unwrap_or_default();
    let invocation = kiln_host::InvocationGrants {
        app,
        installation: "local".into(),
        installation_row: None,
        environment: args.env.environment.clone(),
        egress: egress_targets,
        product: kiln_product::Installation::new(&owner, &grants.scopes),
        user: args.account_id.clone(),
    };
    let runtime = tokio::runtime::Handle::current();
    let host = kiln_host::Host::new(
        runtime,
        store,
        trail.auditor().clone(),
        std::sync::Arc::new(egress),
        product,
        Some(kvs),
    );
    Ok((std::sync::Arc::new(host), invocation, env))
}

/// `kiln consent`: the OAuth 2.0 authorization-code flow against a dev
/// site, as `--account-id` (the dev site's `login_as` answers the consent
/// screen), for the app's product scopes. The user's tokens are kept sealed
/// where `kiln invoke` looks for them (owner `local:<app id>`).
async fn consent(data_dir: &Path, args: ConsentArgs) -> Result<(), Failure> {
    let no_vars = |_: &str| None;
    let manifest = kiln_manifest::load(&args.app_dir, &no_vars).map_err(|e| usage(e.to_string()))?.manifest;
    let app = manifest.app.id.to_string();
    let store = open(data_dir).await?;
    let provider = key_provider(data_dir, &store).await?;
    let kvs = std::sync::Arc::new(kiln_kvs::Kvs::new(store, provider));
    let gateway = devsite_gateway(data_dir, &args.devsite, args.devsite_ca.as_deref(), kvs, None).await?;
    let scopes: Vec<&str> = manifest
        .permissions
        .scopes
        .keys()
        .map(|s| s.as_str())
        .filter(|s| !kiln_manifest::scopes::PLATFORM_SCOPES.contains(s))
        .collect();
    let mut state = [0u8; 16];
    kiln_crypto::fill_random(&mut state).map_err(|e| Failure { code: 1, message: e.to_string() })?;
    let state: String = state.iter().map(|b| format!("{b:02x}")).collect();
    let url = gateway.tokens().authorization_url(&scopes, &state).map_err(|e| usage(e.to_string()))?;
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let login = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("login_as", &args.account_id)
        .finish();
    let (addr, host) = devsite_address(&args.devsite)?;
    let roots = devsite_roots(data_dir, args.devsite_ca.as_deref())?;
    let tls = kiln_crypto::tls::client_config(&roots).map_err(|e| usage(e.to_string()))?;
    let browser = kiln_http::HttpsClient::new(&addr, &host, tls);
    let reply = browser
        .send(kiln_http::Method::GET, &format!("/authorize?{query}&{login}"), &[], None)
        .await
        .map_err(|e| Failure { code: 1, message: format!("the dev site did not answer: {e}") })?;
    let location = reply.headers.get("location").and_then(|l| l.to_str().ok()).unwrap_or_default();
    let back = url::Url::parse(location).map_err(|_| Failure {
        code: 1,
        message: format!("the dev site refused the consent ({}): {}", reply.status, reply.text().trim()),
    })?;
    let pairs: std::collections::BTreeMap<String, String> = back.query_pairs().into_owned().collect();
    if pairs.get("state") != Some(&state) {
        return Err(Failure { code: 1, message: "the consent came back with another state; refused".into() });
    }
    let Some(code) = pairs.get("code") else {
        let why = pairs.get("error").map_or("no code", String::as_str);
        return Err(Failure { code: 1, message: format!("the dev site refused the consent: {why}") });
    };
    let done = gateway
        .tokens()
        .complete_authorization(&format!("local:{app}"), code)
        .await
        .map_err(|e| Failure { code: 1, message: e.to_string() })?;
    say!("{} consented for {app}: {}", done.account_id, done.scopes.join(" "));
    Ok(())
}

/// `kiln webtrigger`: the installation's URL for a web trigger module.
async fn webtrigger_url(data_dir: &Path, args: WebtriggerArgs) -> Result<(), Failure> {
    let app = app_id(&args.app.app)?;
    let store = open(data_dir).await?;
    let provider = key_provider(data_dir, &store).await?;
    let kvs = kiln_kvs::Kvs::new(store.clone(), provider);
    let installations = store.begin_read().await?.installations(&app, &args.env.environment).await?;
    let matching: Vec<_> = installations
        .into_iter()
        .filter(|i| i.site == args.site.site && args.site.product.is_none_or(|p| p == i.product))
        .collect();
    let installation = match matching.as_slice() {
        [one] => one,
        [] => {
            return Err(Failure {
                code: 1,
                message: kiln_apps::AppError::NotInstalled {
                    app,
                    site: args.site.site,
                    environment: args.env.environment,
                }
                .to_string(),
            });
        }
        _ => return Err(usage("the app is installed there for several products; pass --product")),
    };
    let token = kiln_server::webtrigger::token(&store, &kvs, installation, &args.module)
        .await
        .map_err(|e| Failure { code: 1, message: e.to_string() })?;
    say!("{}/x1/{token}", args.base_url.trim_end_matches('/'));
    if args.signing_secret {
        let secret = kiln_server::webtrigger::signing_secret(&store, &kvs, installation, &args.module)
            .await
            .map_err(|e| Failure { code: 1, message: e.to_string() })?;
        say!("signing key: {secret}");
    }
    Ok(())
}

/// `host:port` and host name of a dev site URL.
fn devsite_address(url: &str) -> Result<(String, String), Failure> {
    let parsed = url::Url::parse(url).map_err(|e| usage(format!("--devsite: {e}")))?;
    let host =
        parsed.host_str().ok_or_else(|| usage("--devsite has no host"))?.trim_matches(['[', ']']).to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    Ok((addr, host))
}

/// The dev site's certificate: `--devsite-ca`, else the data directory's.
fn devsite_roots(data_dir: &Path, ca: Option<&Path>) -> Result<String, Failure> {
    let path = ca.map_or_else(|| data_dir.join("tls/cert.pem"), Path::to_path_buf);
    std::fs::read_to_string(&path)
        .map_err(|e| usage(format!("the dev site's certificate {}: {e}", path.display())))
}

/// A product gateway for a dev site: its example OAuth client, and the
/// cloud id it reports for that client's token.
pub(crate) async fn devsite_gateway(
    data_dir: &Path,
    url: &str,
    ca: Option<&Path>,
    kvs: std::sync::Arc<kiln_kvs::Kvs>,
    redirect_uri: Option<&str>,
) -> Result<kiln_product::ProductGateway, Failure> {
    let roots = devsite_roots(data_dir, ca)?;
    let endpoint =
        || kiln_product::Endpoint::new(url, &roots, 5 << 20).map_err(|e| usage(format!("--devsite: {e}")));
    let seed = kiln_devsite::Seed::example();
    let client = seed.oauth_clients.first().ok_or_else(|| usage("the example seed has no OAuth client"))?;
    // Ask the site which cloud id the client's token covers.
    let api = endpoint()?;
    let (addr, host) = devsite_address(url)?;
    let tls = kiln_crypto::tls::client_config(&roots).map_err(|e| usage(e.to_string()))?;
    let http = kiln_http::HttpsClient::new(&addr, &host, tls);
    let grant = serde_json::json!({
        "grant_type": "client_credentials", "client_id": client.client_id, "client_secret": client.client_secret,
    });
    let unreachable = |e: std::io::Error| Failure {
        code: 1,
        message: format!("the dev site at {url} did not answer: {e}"),
    };
    let token = http
        .send(kiln_http::Method::POST, "/oauth/token", &[], Some(grant.to_string().as_bytes()))
        .await
        .map_err(unreachable)?
        .json();
    let bearer = format!("Bearer {}", token.get("access_token").and_then(|t| t.as_str()).unwrap_or_default());
    let resources = http
        .send(
            kiln_http::Method::GET,
            "/oauth/token/accessible-resources",
            &[("authorization", bearer.as_str())],
            None,
        )
        .await
        .map_err(unreachable)?
        .json();
    let cloud_id = resources
        .get(0)
        .and_then(|r| r.get("id"))
        .and_then(|id| id.as_str())
        .ok_or_else(|| Failure {
            code: 1,
            message: format!("the dev site at {url} reports no site for its example client"),
        })?
        .to_owned();
    Ok(kiln_product::ProductGateway::new(
        kiln_product::Config::default(),
        kiln_product::Site::Cloud(kiln_product::CloudSite {
            auth: endpoint()?,
            api,
            cloud_id,
            client: kiln_product::OAuthClient {
                client_id: client.client_id.clone(),
                client_secret: client.client_secret.clone().into(),
                redirect_uri: match redirect_uri {
                    Some(uri) => uri.to_owned(),
                    None => client.redirect_uris.first().cloned().unwrap_or_default(),
                },
            },
        }),
        kvs,
    ))
}

/// Record a sandbox fault (a timeout, the memory limit, a dead or killed
/// worker; not an exception thrown by the app) in the data directory's
/// audit trail. The invocation has already failed; if the record cannot be
/// written either, say so.
async fn record_fault(data_dir: &Path, app: &str, function: &str, code: &str, message: &str) {
    let recorded = async {
        let store = open(data_dir).await?;
        let trail = Trail::open(data_dir, &store).await?;
        trail.record(&store, kiln_audit::Event::sandbox_fault(app, function, code, message)).await?;
        trail.checkpoint(&store).await;
        Ok::<(), Failure>(())
    };
    if let Err(f) = recorded.await {
        eprintln!("warning: the sandbox fault was not recorded in the audit trail: {}", f.message);
    }
}

/// Where the key-encryption keys are: `KILN_KEK` if set, else the key file
/// (`KILN_KEY_FILE`, default `kiln.keys` in the data directory), created on
/// first use with a notice.
pub(crate) async fn key_provider(
    data_dir: &Path,
    store: &Store,
) -> Result<std::sync::Arc<dyn kiln_crypto::envelope::KeyProvider>, Failure> {
    let fail = |e: kiln_crypto::envelope::CryptoError| Failure { code: 1, message: e.to_string() };
    if let Ok(value) = std::env::var(kiln_crypto::keys::KEK_ENV_VAR) {
        return Ok(std::sync::Arc::new(kiln_crypto::keys::EnvKeyProvider::from_value(&value).map_err(fail)?));
    }
    let path = key_file(data_dir);
    if !path.exists() {
        // A new key file over existing data keys would open nothing and
        // invite a "fix" that loses them: refuse, and say what is missing.
        let wrapped = store.begin().await?.all_data_keys().await?;
        if !wrapped.is_empty() {
            let mut keks: Vec<&str> = wrapped.iter().map(|(_, row)| row.kek_id.as_str()).collect();
            keks.sort_unstable();
            keks.dedup();
            return Err(Failure {
                code: 1,
                message: format!(
                    "the key file {} does not exist, but {} data keys in the database are wrapped with \
                     key-encryption key(s) {}\n  hint: restore the key file from its backup (or point \
                     KILN_KEY_FILE at it); nothing was changed",
                    path.display(),
                    wrapped.len(),
                    keks.join(", ")
                ),
            });
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    let (provider, created) = kiln_crypto::keys::FileKeyProvider::open_or_create(&path).map_err(fail)?;
    if created {
        output::notice(&format!(
            "created the key-encryption key file {} (mode 0600). Keep it out of database backups and \
             back it up separately: without it, sealed data cannot be read.",
            path.display()
        ));
    }
    Ok(std::sync::Arc::new(provider))
}

pub(crate) fn key_file(data_dir: &Path) -> PathBuf {
    std::env::var_os("KILN_KEY_FILE").map_or_else(|| data_dir.join("kiln.keys"), PathBuf::from)
}

async fn variables(data_dir: &Path, command: VariablesCommand) -> Result<(), Failure> {
    let store = open(data_dir).await?;
    let provider = key_provider(data_dir, &store).await?;
    let trail = Trail::open(data_dir, &store).await?;
    let kvs = kiln_kvs::Kvs::new(store.clone(), provider);
    let owner = |app: &AppArg, env: &EnvArg| -> Result<String, Failure> {
        Ok(format!("variables:{}:{}", app_id(&app.app)?, env.environment))
    };
    let kvs_fail = |e: kiln_kvs::KvsError| Failure {
        code: if e.code == kiln_kvs::ErrorCode::StorageError { 1 } else { 2 },
        message: e.to_string(),
    };
    match command {
        VariablesCommand::Set { name, value, encrypt, env, app } => {
            let (id, e) = (app_id(&app.app)?.to_string(), env.environment.to_string());
            let event = kiln_audit::Event::variable_set(&id, &e, &name, encrypt);
            let done = kvs
                .set_variable(&owner(&app, &env)?, &name, &value, encrypt, trail.audit(), event.clone())
                .await;
            settle(&trail, &store, done.map_err(kvs_fail), event).await?;
            let how = if encrypt { "encrypted; its value will not be shown again" } else { "sealed at rest" };
            say!(
                "Set {name} for {} in {} ({how}). Functions see it from their next invocation.",
                app_id(&app.app)?,
                env.environment
            );
        }
        VariablesCommand::Unset { name, env, app } => {
            let (id, e) = (app_id(&app.app)?.to_string(), env.environment.to_string());
            let event = kiln_audit::Event::variable_unset(&id, &e, &name);
            let done = kvs.unset_variable(&owner(&app, &env)?, &name, trail.audit(), event.clone()).await;
            settle(&trail, &store, done.map_err(kvs_fail), event).await?;
            say!("Removed {name}.");
        }
        VariablesCommand::List { env, app } => {
            // Names only: values belong to the app (process.env), not to
            // whoever runs Kiln.
            for v in kvs.variables(&owner(&app, &env)?, false).await.map_err(kvs_fail)? {
                say!("{} ({})", v.name, if v.encrypted { "encrypted" } else { "sealed at rest" });
            }
        }
    }
    Ok(())
}

/// After an audited change: checkpoint, and if it failed for a reason other
/// than the trail itself, record the failure.
async fn settle(
    trail: &Trail,
    store: &Store,
    done: Result<(), Failure>,
    event: kiln_audit::Event,
) -> Result<(), Failure> {
    if let Err(f) = &done {
        let reason = f.message.lines().next().unwrap_or_default();
        if !reason.contains("audit trail") {
            trail.record(store, event.failed(reason)).await?;
        }
    }
    trail.checkpoint(store).await;
    done
}

async fn rotate_keys(data_dir: &Path, data_keys: bool) -> Result<(), Failure> {
    if std::env::var_os(kiln_crypto::keys::KEK_ENV_VAR).is_some() {
        return Err(usage(format!(
            "the key-encryption keys come from {}: add the new key there (first in the list), then run this command to rewrap",
            kiln_crypto::keys::KEK_ENV_VAR
        )));
    }
    let store = open(data_dir).await?;
    key_provider(data_dir, &store).await?;
    let trail = Trail::open(data_dir, &store).await?;
    let result = rotate_keys_audited(data_dir, &store, &trail, data_keys).await;
    if let Err(f) = &result {
        let reason = f.message.lines().next().unwrap_or_default();
        if !reason.contains("audit trail") {
            let what = if data_keys { "kek+data-keys" } else { "kek" };
            trail.record(&store, kiln_audit::Event::key_rotation(what, None, 0).failed(reason)).await?;
        }
    }
    trail.checkpoint(&store).await;
    result
}

async fn rotate_keys_audited(
    data_dir: &Path,
    store: &Store,
    trail: &Trail,
    data_keys: bool,
) -> Result<(), Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    let path = key_file(data_dir);
    let mut file = kiln_crypto::keys::FileKeyProvider::open(&path).map_err(|e| fail(e.to_string()))?;
    let new = file.rotate().map_err(|e| fail(e.to_string()))?;
    let kvs = kiln_kvs::Kvs::new(store.clone(), std::sync::Arc::new(file));
    let rewrapped = kvs.rewrap_all(trail.audit()).await.map_err(|e| fail(e.to_string()))?;
    say!("New key-encryption key {new} is current; {rewrapped} data keys rewrapped.");
    say!("Older keys stay in {} until you remove them; every data key now opens with {new}.", path.display());
    if data_keys {
        let owners = kvs.owners().await.map_err(|e| fail(e.to_string()))?;
        let mut resealed = 0;
        for owner in &owners {
            kvs.rotate_data_key(owner, trail.audit()).await.map_err(|e| fail(e.to_string()))?;
            loop {
                let n = kvs.reencrypt(owner, 500).await.map_err(|e| fail(e.to_string()))?;
                if n == 0 {
                    break;
                }
                resealed += n;
            }
        }
        say!("New data keys for {} owners; {resealed} values re-encrypted.", owners.len());
    }
    Ok(())
}

async fn audit(data_dir: &Path, command: AuditCommand) -> Result<(), Failure> {
    let store = open(data_dir).await?;
    match command {
        AuditCommand::Verify => trail::verify(data_dir, &store).await,
        AuditCommand::Tail { lines, format } => trail::tail(&store, lines, format.map(Into::into)).await,
        AuditCommand::Export { format, after, output } => {
            trail::export(data_dir, &store, format.into(), after, output.as_deref()).await
        }
        AuditCommand::Checkpoint => trail::checkpoint(data_dir, &store).await,
        AuditCommand::Alerts { limit, config } => {
            let config = alert_config(config.as_deref())?;
            trail::alerts(&store, &config.rules, limit).await
        }
    }
}

/// `kiln serve`: the admin API, web triggers, resolver calls, product
/// events and the background workers over HTTPS until SIGTERM or Ctrl-C;
/// then a graceful drain (see `server`). Its output is log lines on
/// standard error (`--log-format`), never a value.
async fn serve(data_dir: &Path, args: ServeArgs) -> Result<(), Failure> {
    let filter = std::env::var(kiln_server::logging::FILTER_ENV_VAR).ok();
    kiln_server::logging::init(args.log_format.into(), filter.as_deref())
        .map_err(|e| usage(e.to_string()))?;
    // Refused before anything else is opened: metrics on a reachable
    // address are an explicit, named choice.
    if let Some(addr) = args.metrics_listen
        && !addr.ip().is_loopback()
        && !args.insecure_metrics_listen_any
    {
        return Err(usage(format!(
            "--metrics-listen {addr} is not a loopback address; metrics are served without TLS or \
             authentication, so only to this host (127.0.0.1 or ::1) unless --insecure-metrics-listen-any"
        )));
    }
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => kiln_crypto::tls::Identity {
            cert_pem: std::fs::read_to_string(cert).map_err(|e| usage(format!("{}: {e}", cert.display())))?,
            key_pem: zeroize::Zeroizing::new(
                std::fs::read_to_string(key).map_err(|e| usage(format!("{}: {e}", key.display())))?,
            ),
        },
        _ => self_signed_identity(data_dir)?,
    };
    let extra_roots = match &args.egress.egress_ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| usage(format!("--egress-ca {}: {e}", path.display())))?,
        ),
        None => None,
    };
    server::run(
        data_dir,
        server::Options {
            listen: args.listen,
            identity,
            config: args.config,
            public_url: args.public_url,
            webtrigger_rate: args.webtrigger_rate,
            metrics_listen: args.metrics_listen,
            drain: std::time::Duration::from_secs(args.drain_seconds),
            process_per_invocation: args.process_per_invocation,
            huge_pages: !args.no_huge_pages,
            egress: server::EgressOptions {
                insecure_loopback: args.egress.insecure_egress_loopback,
                insecure_resolve: args.egress.insecure_egress_resolve,
                extra_roots,
            },
            dev: None,
            bound: None,
        },
    )
    .await
}

/// The alert settings from `--config`, or the defaults.
fn alert_config(path: Option<&Path>) -> Result<kiln_server::alerting::AlertConfig, Failure> {
    match path {
        Some(p) => kiln_server::alerting::AlertConfig::load(p).map_err(|e| usage(e.to_string())),
        None => Ok(kiln_server::alerting::AlertConfig::default()),
    }
}

/// `kiln devsite`: the emulated product on loopback until Ctrl-C, with the
/// data directory's development certificate.
async fn devsite(data_dir: &Path, args: DevsiteArgs) -> Result<(), Failure> {
    if !args.listen.ip().is_loopback() {
        return Err(usage(format!(
            "the dev site listens on loopback only (127.0.0.1 or ::1), not {}: it hands out tokens to anyone who asks",
            args.listen.ip()
        )));
    }
    let seed = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read the seed {}: {e}", path.display())))?;
            kiln_devsite::Seed::from_json(&text).map_err(|e| usage(format!("{}: {e}", path.display())))?
        }
        None => kiln_devsite::Seed::example(),
    };
    let identity = self_signed_identity(data_dir)?;
    let tls = kiln_crypto::tls::server_config(&identity).map_err(|e| usage(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure { code: 1, message: format!("cannot listen on {}: {e}", args.listen) })?;
    let clients: Vec<&str> = seed.oauth_clients.iter().map(|c| c.client_id.as_str()).collect();
    let users: Vec<&str> = seed.users.iter().map(|u| u.account_id.as_str()).collect();
    let (clients, users) = (clients.join(", "), users.join(", "));
    let site = kiln_devsite::start(listener, tls, kiln_devsite::DevSiteConfig { seed, events: None })
        .await
        .map_err(|e| usage(e.to_string()))?;
    eprintln!(
        "Dev site on {base} (Ctrl-C stops it)\n  cloud id:  {cloud}\n  Jira:      {base}/ex/jira/{cloud}/rest/api/3/...\n  \
         Confluence: {base}/ex/confluence/{cloud}/wiki/api/v2/...\n  OAuth:     {base}/authorize, {base}/oauth/token \
         (clients: {clients})\n  users:     {users}\n  certificate: {}\n  \
         context tokens: POST {base}/kiln/context-token (public key: {base}/kiln/context-keys, for [resolvers])",
        data_dir.join("tls/cert.pem").display(),
        base = site.base_url(),
        cloud = site.cloud_id(),
    );
    let _ = tokio::signal::ctrl_c().await;
    site.shutdown();
    Ok(())
}

/// A self-signed certificate for localhost, made once and kept in the data
/// directory (the key 0600), for development.
pub(crate) fn self_signed_identity(data_dir: &Path) -> Result<kiln_crypto::tls::Identity, Failure> {
    let dir = data_dir.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let fail = |e: std::io::Error| Failure { code: 1, message: format!("{}: {e}", dir.display()) };
    // Nodes starting together on one data directory make one certificate:
    // the check and the writes happen under an exclusive lock.
    std::fs::create_dir_all(&dir).map_err(fail)?;
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(".lock"))
        .map_err(fail)?;
    lock.lock().map_err(fail)?;
    if cert.exists() && key.exists() {
        return Ok(kiln_crypto::tls::Identity {
            cert_pem: std::fs::read_to_string(&cert).map_err(fail)?,
            key_pem: zeroize::Zeroizing::new(std::fs::read_to_string(&key).map_err(fail)?),
        });
    }
    let identity = kiln_crypto::tls::self_signed(&["localhost", "127.0.0.1", "::1"])
        .map_err(|e| Failure { code: 1, message: e.to_string() })?;
    std::fs::create_dir_all(&dir).map_err(fail)?;
    std::fs::write(&cert, &identity.cert_pem).map_err(fail)?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key).map_err(fail)?;
        f.write_all(identity.key_pem.as_bytes()).map_err(fail)?;
    }
    output::notice(&format!(
        "made a self-signed certificate for localhost in {}; pass --cert and --key for anything but development",
        dir.display()
    ));
    Ok(identity)
}

/// `--data-dir`, else `KILN_DATA_DIR`, else the platform's user data directory.
fn data_dir(flag: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    if let Some(dir) = std::env::var_os("KILN_DATA_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::data_dir().map(|d| d.join("kiln")).ok_or_else(|| {
        usage("no user data directory is known on this system; pass --data-dir or set KILN_DATA_DIR")
    })
}

/// PostgreSQL instead of the data directory's SQLite file, for several
/// nodes sharing one database (`postgres://user@host:port/db`).
pub(crate) const DATABASE_URL_ENV_VAR: &str = "KILN_DATABASE_URL";
/// The PostgreSQL schema to use (created if missing) [default: the user's search path].
pub(crate) const DATABASE_SCHEMA_ENV_VAR: &str = "KILN_DATABASE_SCHEMA";

/// The store every command uses: PostgreSQL when `KILN_DATABASE_URL` is
/// set, else the SQLite file in the data directory. Keys, the audit
/// checkpoint file and the TLS certificate stay in the data directory
/// either way, so nodes sharing a database share their key file too.
pub(crate) async fn open(data_dir: &Path) -> Result<Store, Failure> {
    match std::env::var(DATABASE_URL_ENV_VAR).ok().filter(|u| !u.is_empty()) {
        Some(url) => {
            let schema = std::env::var(DATABASE_SCHEMA_ENV_VAR).ok().filter(|s| !s.is_empty());
            Store::open_postgres(&url, schema.as_deref()).await.map_err(|e| Failure {
                code: 1,
                message: format!("cannot open the database named by {DATABASE_URL_ENV_VAR}: {e}"),
            })
        }
        None => Ok(Store::open_data_dir(data_dir).await?),
    }
}

/// `--app`: an app id, or a directory whose manifest names the app.
fn app_id(value: &str) -> Result<AppId, Failure> {
    if value.starts_with("ari:") {
        return AppId::parse(value).map_err(|e| usage(e.to_string()));
    }
    let dir = Path::new(value);
    let variables = |name: &str| std::env::var(name).ok();
    match kiln_manifest::load(dir, &variables) {
        Ok(parsed) => Ok(parsed.manifest.app.id),
        Err(e) => Err(usage(format!(
            "cannot tell which app to use from {}: {e}\n  hint: run the command in the app directory, or pass --app <app id>",
            dir.display()
        ))),
    }
}
