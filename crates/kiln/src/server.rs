//! The running platform: what `kiln serve` and `kiln dev` start.
//!
//! One composition for both: the admin API, web triggers, resolver calls,
//! product events and the insecure test clock (when configured) on one
//! HTTPS listener; metrics and readiness on an optional loopback listener;
//! and the background workers — alert rules, the durable jobs worker
//! (queue consumers and trigger deliveries), the scheduler and the
//! lifecycle-event poller — each spawned with the shutdown signal so the
//! drain waits for them. `kiln serve` reads the parts from its settings
//! file; `kiln dev` hands them over directly ([`DevParts`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::trail::Trail;
use crate::{Failure, alert_config, key_provider, open, usage};

/// How to run.
pub(crate) struct Options {
    pub(crate) listen: SocketAddr,
    pub(crate) identity: kiln_crypto::tls::Identity,
    /// The settings file (`[alerts]`, `[product]`, `[resolvers]`,
    /// `[events]`, `[scheduler]`, `[jobs]`).
    pub(crate) config: Option<PathBuf>,
    pub(crate) public_url: Option<String>,
    pub(crate) webtrigger_rate: u32,
    pub(crate) metrics_listen: Option<SocketAddr>,
    pub(crate) drain: Duration,
    /// Fork a process for every invocation, small apps' too
    /// (`kiln serve --process-per-invocation`).
    pub(crate) process_per_invocation: bool,
    /// Forking workers' code on huge pages (off: `kiln serve --no-huge-pages`).
    pub(crate) huge_pages: bool,
    pub(crate) egress: EgressOptions,
    /// Set by `kiln dev`: what the settings file would otherwise say.
    pub(crate) dev: Option<DevParts>,
    /// Told the HTTPS listener's address once it listens.
    pub(crate) bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
}

/// Test and development settings for the egress gateway; each weakens a
/// protection and is logged loudly when set.
#[derive(Debug, Default, Clone)]
pub(crate) struct EgressOptions {
    /// Let app `fetch` reach loopback addresses.
    pub(crate) insecure_loopback: bool,
    /// `host=ip[:port]` entries answered instead of DNS.
    pub(crate) insecure_resolve: Vec<String>,
    /// More roots (PEM) to trust besides the system's.
    pub(crate) extra_roots: Option<String>,
}

/// What `kiln dev` supplies instead of a settings file.
pub(crate) struct DevParts {
    pub(crate) product: Arc<kiln_product::ProductGateway>,
    pub(crate) events: kiln_server::events::EventsConfig,
    /// Taken by the resolver route when the server starts.
    pub(crate) tokens: Option<kiln_server::resolver::TokenVerifier>,
    pub(crate) app_logs: kiln_server::runner::LogSink,
    pub(crate) insecure_test_clock: bool,
    /// The first retry's wait for a failed queued event.
    pub(crate) backoff: Duration,
}

/// Serve until SIGTERM or Ctrl-C, then drain.
pub(crate) async fn run(data_dir: &Path, mut options: Options) -> Result<(), Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    let store = open(data_dir).await?;
    let provider = key_provider(data_dir, &store).await?;
    let trail = Trail::open(data_dir, &store).await?;
    let tls = kiln_crypto::tls::server_config(&options.identity).map_err(|e| usage(e.to_string()))?;
    let config = options.config.as_deref();
    let alerts = alert_config(config)?;
    let load = |e: kiln_server::alerting::ConfigError| usage(e.to_string());
    let (tokens, events, mut scheduler, jobs) = match options.dev.as_mut() {
        Some(dev) => {
            let mut scheduler = kiln_server::scheduler::SchedulerConfig::defaults();
            if dev.insecure_test_clock {
                scheduler = kiln_server::scheduler::SchedulerConfig::parse(
                    "[scheduler]\ninsecure_test_clock = true\ntick_seconds = 1\n",
                )
                .map_err(usage)?;
            }
            let mut jobs = kiln_server::jobs::JobsConfig::defaults();
            jobs.settings.backoff_base = dev.backoff;
            jobs.settings.poll_interval = Duration::from_millis(250);
            (dev.tokens.take(), Some(dev.events.clone()), scheduler, jobs)
        }
        None => match config {
            Some(path) => (
                kiln_server::resolver::load(path).map_err(load)?,
                kiln_server::events::EventsConfig::load(path).map_err(load)?,
                kiln_server::scheduler::SchedulerConfig::load(path).map_err(load)?,
                kiln_server::jobs::JobsConfig::load(path).map_err(load)?,
            ),
            None => (
                None,
                None,
                kiln_server::scheduler::SchedulerConfig::defaults(),
                kiln_server::jobs::JobsConfig::defaults(),
            ),
        },
    };
    if scheduler.insecure_test_clock.is_some() {
        tracing::warn!(
            "WARNING: insecure_test_clock: scheduled triggers follow a clock anyone on this host can move \
             (POST /_kiln/test/clock); production installations' scheduled triggers do not run"
        );
    }
    let cloud_ids = events.as_ref().map(|e| e.cloud_ids()).unwrap_or_default();
    scheduler.settings.cloud_ids = cloud_ids.clone();
    let state = Arc::new(kiln_server::AdminState {
        store: store.clone(),
        access: kiln_access::Access::new(
            store.clone(),
            kiln_kvs::Kvs::new(store.clone(), provider.clone()),
            kiln_access::Settings::default(),
        ),
        kvs: kiln_kvs::Kvs::new(store.clone(), provider.clone()),
        auditor: trail.auditor().clone(),
        checkpoint_file: Some(trail.checkpoint_file().to_path_buf()),
        alert_rules: alerts.rules.clone(),
    });
    // The shutdown signal: `true` once SIGTERM or Ctrl-C arrives. The HTTPS
    // listener and readiness watch it; so does every background worker,
    // each spawned into `background` with its own receiver so that the
    // drain waits for it to finish what it is doing.
    let (shutdown, stopping) = tokio::sync::watch::channel(false);
    let mut background = tokio::task::JoinSet::new();
    // Evaluate the alert rules and deliver new alerts every 30 seconds.
    background.spawn({
        let (store, mut stopping) = (store.clone(), stopping.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
                if let Err(e) = kiln_audit::alerts::evaluate(&store, &alerts.rules).await {
                    tracing::warn!(error = %e, "the alert rules could not run");
                    continue;
                }
                if let Some(hook) = &alerts.webhook
                    && let Err(e) = kiln_server::alerting::deliver_pending(&store, hook).await
                {
                    tracing::warn!(error = %e, "alerts could not be delivered");
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| fail(format!("cannot listen on {}: {e}", options.listen)))?;
    let bound = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let public_url = options.public_url.clone().unwrap_or_else(|| format!("https://{bound}"));
    let kvs = Arc::new(kiln_kvs::Kvs::new(store.clone(), provider.clone()));
    let runner = runner(&store, kvs.clone(), &trail, config, &public_url, &options)?;
    let webtriggers = Arc::new(
        kiln_server::webtrigger::Webtriggers::new(runner.clone()).with_rate_limit(options.webtrigger_rate),
    );
    let metrics = runner.metrics.clone();
    if tokens.is_none() {
        tracing::info!("resolver calls are off: the settings file has no [resolvers] section");
    }
    let executor: Arc<dyn kiln_server::runner::Execute> = Arc::new(runner.clone());
    // Users' own OAuth consent for asUser(), through the product gateway the
    // runner's host calls use, so the tokens land where asUser() reads them.
    let consent = kiln_server::consent::Consent::new(
        store.clone(),
        kvs.clone(),
        runner.host.product(),
        trail.auditor().clone(),
        &public_url,
    )
    .map(Arc::new);
    let resolvers = Arc::new(
        kiln_server::resolver::Resolvers::new(store.clone(), executor.clone(), tokens)
            .with_consent(consent.clone()),
    );
    // Durable work: queued events (consumers, trigger deliveries), the
    // scheduler and the lifecycle events, each stopping with the server.
    if jobs.enabled {
        let worker = kiln_server::jobs::spawn(
            executor.clone(),
            store.clone(),
            kvs.clone(),
            jobs.settings.clone(),
            stopping.clone(),
        );
        background.spawn(async move {
            let _ = worker.await;
        });
    } else {
        tracing::info!("this node delivers no queued events ([jobs] enabled = false)");
    }
    if scheduler.enabled {
        let worker = kiln_server::scheduler::spawn(
            executor.clone(),
            store.clone(),
            scheduler.clock(),
            scheduler.settings.clone(),
            stopping.clone(),
        );
        background.spawn(async move {
            let _ = worker.await;
        });
    } else {
        tracing::info!("this node runs no scheduled triggers ([scheduler] enabled = false)");
    }
    let queue: Arc<dyn kiln_server::events::Enqueue> =
        Arc::new(kiln_server::events::JobsQueue::new(store.clone(), kvs.clone()));
    let lifecycle = kiln_server::lifecycle::spawn(
        store.clone(),
        queue.clone(),
        kiln_server::lifecycle::Settings { cloud_ids, ..Default::default() },
        stopping.clone(),
    );
    background.spawn(async move {
        let _ = lifecycle.await;
    });
    let events_router = events.map(|c| {
        let router = Arc::new(kiln_server::events::EventRouter::new(
            store.clone(),
            c,
            queue.clone(),
            Arc::new(kiln_server::scheduler::SystemClock),
        ));
        metrics.add_source(router.stats.clone());
        kiln_server::events::router(router)
    });
    // Watched before anything says the server is up, so that a signal sent
    // as soon as it is drains rather than kills.
    let force = Arc::new(tokio::sync::Notify::new());
    let signals = shutdown_signals(shutdown, force.clone())
        .map_err(|e| fail(format!("cannot watch for signals: {e}")))?;
    let (metrics_stop, metrics_server) = match options.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| fail(format!("cannot listen on {addr} for metrics: {e}")))?;
            let at = listener.local_addr().map_err(|e| fail(e.to_string()))?;
            if !at.ip().is_loopback() {
                tracing::warn!(address = %at, "metrics are served to anyone who reaches this address (--insecure-metrics-listen-any)");
            }
            tracing::info!(address = %at, "Metrics on http://{at}/metrics");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            // Readiness here too: this listener stays up while the HTTPS one
            // drains, so local probes can see the node is going away.
            let routes = kiln_server::metrics::router(runner.clone())
                .merge(kiln_server::health::router_with_drain(store.clone(), stopping.clone()));
            let server = axum::serve(listener, routes)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .into_future();
            (Some(stop), Some(tokio::spawn(server)))
        }
        None => (None, None),
    };
    tracing::info!(address = %bound, "Kiln admin API on https://{bound} (SIGTERM or Ctrl-C stops it)");
    tracing::info!("Web triggers on https://{bound}/x1/... ('kiln webtrigger' prints an installation's URL)");
    tracing::info!("Resolver calls on https://{bound}/resolver/v1/<installation> with a context token");
    let mut router = kiln_server::router(state)
        .merge(kiln_server::webtrigger::router(webtriggers))
        .merge(kiln_server::resolver::router(resolvers))
        .merge(kiln_server::health::router_with_drain(store.clone(), stopping.clone()));
    if let Some(events) = events_router {
        tracing::info!("Product events on https://{bound}/events/<source>");
        router = router.merge(events);
    }
    if let Some(consent) = consent {
        tracing::info!("User consent for asUser() on https://{bound}/oauth/consent and /oauth/callback");
        router = router.merge(kiln_server::consent::router(consent));
    }
    if let Some(clock) = &scheduler.insecure_test_clock {
        router = router.merge(kiln_server::scheduler::insecure_test_clock_router(Some(clock.clone())));
    }
    let router = router
        .layer(axum::middleware::from_fn_with_state(metrics.clone(), kiln_server::metrics::count_http))
        .layer(axum::middleware::from_fn(kiln_http::security_headers));
    if let Some(tell) = options.bound {
        let _ = tell.send(bound);
    }
    let mut stop_serving = stopping.clone();
    let draining = kiln_http::serve_graceful(listener, tls, router, async move {
        let _ = stop_serving.wait_for(|stop| *stop).await;
    })
    .await
    .map_err(|e| fail(format!("the server stopped: {e}")))?;
    metrics.set_draining();
    drain(draining, &metrics, &mut background, options.drain, &force).await;
    signals.abort();
    if let Some(stop) = metrics_stop {
        let _ = stop.send(());
    }
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    trail.checkpoint(&store).await;
    tracing::info!("stopped");
    Ok(())
}

/// The first SIGTERM or Ctrl-C sets `shutdown`; a second one notifies
/// `force`, which cuts the drain short.
fn shutdown_signals(
    shutdown: tokio::sync::watch::Sender<bool>,
    force: Arc<tokio::sync::Notify>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(tokio::spawn(async move {
        for round in 0.. {
            let which = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            };
            if round == 0 {
                tracing::info!(
                    signal = which,
                    "stopping: new connections are refused; in-flight work finishes"
                );
                let _ = shutdown.send(true);
            } else {
                tracing::warn!(signal = which, "stopping now: the drain is cut short");
                force.notify_one();
            }
        }
    }))
}

/// After the listener has closed: wait, for at most `limit` (or until
/// `force`), for the open connections to answer what they were sent, for
/// invocations running outside any request to end, and for the background
/// workers to stop. Whatever is left then is abandoned, and said so.
async fn drain(
    mut connections: kiln_http::Draining,
    metrics: &kiln_server::metrics::Metrics,
    background: &mut tokio::task::JoinSet<()>,
    limit: Duration,
    force: &tokio::sync::Notify,
) {
    tracing::info!(
        open_connections = connections.open(),
        invocations_in_flight = metrics.in_flight(),
        background_workers = background.len(),
        drain_seconds = limit.as_secs(),
        "draining"
    );
    let work = async {
        connections.finished().await;
        while metrics.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while background.join_next().await.is_some() {}
    };
    let finished = tokio::select! {
        done = tokio::time::timeout(limit, work) => done.is_ok(),
        () = force.notified() => false,
    };
    if finished {
        tracing::info!("drained: every in-flight request and invocation finished");
    } else {
        tracing::warn!(
            open_connections = connections.open(),
            invocations_in_flight = metrics.in_flight(),
            background_workers = background.len(),
            "the drain did not finish; stopping with this work unfinished"
        );
        background.abort_all();
    }
}

/// The server's sandbox settings. By default every program runs each
/// invocation from one prepared runtime in a worker that puts its memory
/// back after each invocation; `process_per_invocation` forks
/// for every program, so that even an engine exploit cannot outlive the
/// invocation it started in.
fn sandbox_config(
    process_per_invocation: bool,
    huge_pages: bool,
) -> Result<kiln_sandbox::SandboxConfig, kiln_sandbox::SandboxError> {
    let mut config = kiln_sandbox::SandboxConfig::for_current_exe()?;
    if process_per_invocation {
        config.fork_above_bytes = 0;
        config.reset_instead_of_fork = false;
    }
    config.huge_pages = huge_pages;
    Ok(config)
}

/// The runner every module type shares: jailed workers (refused where
/// they cannot start), and host calls that reach the installation's own
/// storage, its consented egress and the product site (`[product]` in the
/// settings file, or the dev site under `kiln dev`).
fn runner(
    store: &kiln_store::Store,
    kvs: Arc<kiln_kvs::Kvs>,
    trail: &Trail,
    config: Option<&Path>,
    public_url: &str,
    options: &Options,
) -> Result<Arc<kiln_server::runner::Runner>, Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    if options.process_per_invocation {
        tracing::info!("every invocation runs in a process of its own (--process-per-invocation)");
    }
    if !options.huge_pages {
        tracing::info!("forking workers keep their code off huge pages (--no-huge-pages)");
    }
    let sandbox = sandbox_config(options.process_per_invocation, options.huge_pages)
        .and_then(kiln_sandbox::Sandbox::new)
        .map_err(|e| fail(format!("app code cannot run here: {e}")))?;
    let product = match (&options.dev, config) {
        (Some(dev), _) => Some(dev.product.clone()),
        (None, Some(path)) => kiln_server::product_config::load(path, kvs.clone())
            .map_err(|e| usage(e.to_string()))?
            .map(Arc::new),
        (None, None) => None,
    };
    let mut roots = kiln_crypto::tls::system_roots().unwrap_or_default();
    if let Some(extra) = &options.egress.extra_roots {
        roots.push('\n');
        roots.push_str(extra);
    }
    let mut egress_config = kiln_egress::Config::new(roots);
    if options.egress.insecure_loopback {
        tracing::warn!(
            "WARNING: insecure egress setting: app fetch may reach loopback addresses on this machine; \
             production installations' code will not run"
        );
        egress_config.insecure_allow_loopback = true;
    }
    let egress = if options.egress.insecure_resolve.is_empty() {
        kiln_egress::Gateway::new(
            egress_config,
            Arc::new(kiln_egress::SystemResolver),
            Arc::new(kiln_egress::SystemDialer),
        )
    } else {
        let table = kiln_egress::InsecureStaticResolver::parse(&options.egress.insecure_resolve).map_err(usage)?;
        tracing::warn!(
            entries = ?options.egress.insecure_resolve,
            "WARNING: insecure egress setting: these names resolve from a fixed table and nothing else resolves"
        );
        let dialer = table.dialer();
        kiln_egress::Gateway::new(egress_config, Arc::new(table), Arc::new(dialer))
    }
    .map_err(|e| fail(format!("the egress gateway: {e}")))?;
    let host = kiln_host::Host::new(
        tokio::runtime::Handle::current(),
        store.clone(),
        trail.auditor().clone(),
        Arc::new(egress),
        product,
        Some(kvs.clone()),
    )
    .with_public_url(public_url);
    let mut runner = kiln_server::runner::Runner::new(
        store.clone(),
        kvs,
        Arc::new(sandbox),
        Arc::new(host),
        trail.auditor().clone(),
        Arc::new(kiln_server::metrics::Metrics::new()),
    );
    if let Some(dev) = &options.dev {
        runner = runner.with_logs(dev.app_logs.clone());
    }
    Ok(Arc::new(runner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_follows_process_per_invocation_and_no_huge_pages() {
        let default = sandbox_config(false, true).unwrap();
        assert_eq!(default.fork_above_bytes, kiln_sandbox::FORK_ABOVE_BYTES);
        assert!(default.huge_pages);
        assert!(default.reset_instead_of_fork);
        let per_invocation = sandbox_config(true, true).unwrap();
        assert_eq!(per_invocation.fork_above_bytes, 0);
        assert!(!per_invocation.reset_instead_of_fork, "a process per invocation, not one reset");
        assert!(!sandbox_config(false, false).unwrap().huge_pages);
    }
}
