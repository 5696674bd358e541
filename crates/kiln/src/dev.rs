//! `kiln dev [APP_DIR]`: the whole platform on loopback for one developer.
//!
//! In order: a data directory `APP_DIR/.kiln/` (ignored by git), a
//! self-signed certificate in it, the dev site (an emulated Jira and
//! Confluence with the example seed) on loopback, APP_DIR deployed and
//! installed on the dev site, `kiln serve`'s server on loopback with the
//! dev site as its product site and event source, every URL printed, the
//! app's console output streamed, and on every change under APP_DIR a new
//! deploy: a minor version rolls out by itself; a major one is upgraded on
//! the dev site too (the developer is the dev site's admin) and the new
//! permissions are printed. A change that does not deploy (a manifest
//! error, a syntax error) is reported and the running version stays.
//!
//! Nothing here is for production: the dev site hands out tokens to anyone
//! on loopback, and both listen on loopback only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_apps::DeployRequest;
use kiln_types::{Environment, Product, SiteUrl};

use crate::{Failure, usage};

/// How often the app directory is looked at for changes.
const POLL: Duration = Duration::from_millis(500);

/// Files under APP_DIR watched for changes: at most this many (a
/// `node_modules` tree is skipped; beyond this the watcher says so).
const MAX_WATCHED_FILES: usize = 20_000;

/// Directories whose changes are not the app's source.
const IGNORED_DIRS: [&str; 4] = [".kiln", "node_modules", ".git", "target"];

/// Where `kiln dev` keeps its state for APP_DIR.
pub(crate) fn data_dir(app_dir: &Path) -> Result<PathBuf, Failure> {
    let dir = app_dir.join(".kiln");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure { code: 1, message: format!("cannot create {}: {e}", dir.display()) })?;
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        // Keys, the database and the certificate's private key live here.
        let _ = std::fs::write(&ignore, "*\n");
    }
    Ok(dir)
}

/// A fingerprint of the app's files: path → (modified, length).
pub(crate) type Snapshot = BTreeMap<PathBuf, (SystemTime, u64)>;

/// The app's files as they are now.
pub(crate) fn snapshot(app_dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut stack = vec![app_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                let name = entry.file_name();
                if !IGNORED_DIRS.iter().any(|d| name == *d) {
                    stack.push(path);
                }
            } else if out.len() < MAX_WATCHED_FILES {
                out.insert(path, (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()));
            }
        }
    }
    out
}

/// Paths that differ between two snapshots, relative to APP_DIR.
pub(crate) fn changed(app_dir: &Path, before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut paths: Vec<String> = before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v))
        .map(|(p, _)| p)
        .chain(after.keys().filter(|p| !before.contains_key(*p)))
        .map(|p| p.strip_prefix(app_dir).unwrap_or(p).display().to_string())
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Deploy APP_DIR and bring the dev site's installation to the new
/// version: installed the first time, rolled out (minor) or upgraded with
/// the developer's consent (major) after. Returns what to tell the
/// developer.
pub(crate) async fn deploy_and_install(
    store: &kiln_store::Store,
    trail: &crate::trail::Trail,
    app_dir: &Path,
    env: &Environment,
    site: &SiteUrl,
) -> Result<String, Failure> {
    let variables = |name: &str| std::env::var(name).ok();
    let outcome = kiln_apps::deploy(
        store,
        DeployRequest { app_dir, environment: env.clone(), dry_run: false, variables: &variables },
        trail.audit(),
    )
    .await;
    trail.checkpoint(store).await;
    let outcome = outcome?;
    let mut said = String::new();
    for warning in &outcome.warnings {
        said.push_str(&format!("warning: {warning}\n"));
    }
    said.push_str(&crate::output::deploy(&outcome));
    let installed = store
        .begin_read()
        .await?
        .installations(&outcome.app, env)
        .await?
        .into_iter()
        .find(|i| &i.site == site && i.product == Product::Jira);
    match installed {
        None => {
            let done =
                kiln_apps::install(store, &outcome.app, env, site, Some(Product::Jira), trail.audit()).await;
            trail.checkpoint(store).await;
            let done = done?;
            said.push_str(&format!("Installed {} on the dev site ({site}).\n", done.version));
        }
        Some(i) if i.version == outcome.version => {
            if outcome.rolled_out.iter().any(|m| &m.site == site) {
                said.push_str(&format!("Rolled out to the dev site ({site}).\n"));
            }
        }
        Some(i) => {
            // A major version: the developer is the dev site's admin, so
            // consent is given here, and the new permissions are shown.
            let plan = kiln_apps::plan_upgrade(store, &outcome.app, env, site, Some(Product::Jira)).await?;
            said.push_str(&crate::output::upgrade_plan(&plan));
            let done = kiln_apps::upgrade(
                store,
                &outcome.app,
                env,
                site,
                Some(Product::Jira),
                plan.to,
                kiln_apps::Consent::AcceptedFor(plan.to),
                trail.audit(),
            )
            .await;
            trail.checkpoint(store).await;
            let done = done?;
            said.push_str(&format!(
                "Upgraded the dev site from {} to {} (you consented as the dev site's admin).\n",
                i.version, done.to
            ));
        }
    }
    Ok(said)
}

/// The dev site's address must be loopback: it hands out tokens.
pub(crate) fn check_loopback(what: &str, addr: std::net::SocketAddr) -> Result<(), Failure> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(usage(format!(
            "kiln dev's {what} listens on loopback only (127.0.0.1 or ::1), not {}",
            addr.ip()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_and_the_dev_site_listen_on_loopback_only() {
        assert!(check_loopback("server", "127.0.0.1:8443".parse().unwrap()).is_ok());
        assert!(check_loopback("dev site", "[::1]:8444".parse().unwrap()).is_ok());
        let refused = check_loopback("dev site", "0.0.0.0:8444".parse().unwrap()).unwrap_err();
        assert_eq!(refused.code, 2);
        assert!(refused.message.contains("loopback only"), "{}", refused.message);
    }

    #[test]
    fn a_changed_added_or_removed_file_is_a_change_and_node_modules_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("node_modules/x")).unwrap();
        std::fs::write(root.join("src/index.js"), "a").unwrap();
        std::fs::write(root.join("manifest.yml"), "m").unwrap();
        let before = snapshot(root);
        assert_eq!(before.len(), 2, "{before:?}");
        std::fs::write(root.join("node_modules/x/index.js"), "ignored").unwrap();
        std::fs::create_dir_all(root.join(".kiln")).unwrap();
        std::fs::write(root.join(".kiln/db"), "ignored").unwrap();
        assert!(changed(root, &before, &snapshot(root)).is_empty());
        std::fs::write(root.join("src/index.js"), "ab").unwrap();
        std::fs::write(root.join("src/new.js"), "n").unwrap();
        std::fs::remove_file(root.join("manifest.yml")).unwrap();
        assert_eq!(changed(root, &before, &snapshot(root)), ["manifest.yml", "src/index.js", "src/new.js"]);
    }
}

/// What `kiln dev` was asked to do.
#[derive(Debug)]
pub(crate) struct DevOptions {
    pub(crate) app_dir: PathBuf,
    pub(crate) listen: std::net::SocketAddr,
    pub(crate) devsite_listen: std::net::SocketAddr,
    pub(crate) environment: Environment,
    pub(crate) insecure_test_clock: bool,
    pub(crate) egress: crate::server::EgressOptions,
    /// The first retry's wait for a failed queued event.
    pub(crate) retry_seconds: u64,
    /// Stop after the first deploy instead of watching (scripts, CI).
    pub(crate) no_watch: bool,
}

/// `kiln dev`: see the module doc.
pub(crate) async fn run(options: DevOptions) -> Result<(), Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    check_loopback("server", options.listen)?;
    check_loopback("dev site", options.devsite_listen)?;
    let filter = std::env::var(kiln_server::logging::FILTER_ENV_VAR).ok();
    kiln_server::logging::init(
        kiln_server::logging::LogFormat::Text,
        Some(filter.as_deref().unwrap_or("warn")),
    )
    .map_err(|e| usage(e.to_string()))?;
    let app_dir = options.app_dir.clone();
    if !app_dir.join("manifest.yml").is_file() {
        return Err(usage(format!(
            "{} has no manifest.yml; run kiln dev in an app directory or pass one",
            app_dir.display()
        )));
    }
    let data_dir = data_dir(&app_dir)?;
    let identity = crate::self_signed_identity(&data_dir)?;
    // The server's address is fixed before the dev site starts: the dev
    // site sends its events there.
    let listen = concrete(options.listen)?;
    let mut secret = [0u8; 32];
    kiln_crypto::fill_random(&mut secret).map_err(|e| fail(e.to_string()))?;
    let secret: Vec<u8> = secret.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes();
    let devsite_listener = tokio::net::TcpListener::bind(options.devsite_listen)
        .await
        .map_err(|e| fail(format!("the dev site cannot listen on {}: {e}", options.devsite_listen)))?;
    // The server's consent callback, registered with the dev site's client
    // as a developer registers theirs with Atlassian: the dev site keeps
    // matching redirect URIs exactly, and only this kiln dev's own server
    // (on this port) is added.
    let callback = format!("https://{listen}/oauth/callback");
    let mut seed = kiln_devsite::Seed::example();
    if let Some(client) = seed.oauth_clients.first_mut() {
        client.redirect_uris.push(callback.clone());
    }
    let app_account = seed.oauth_clients.first().and_then(|c| c.service_account_id.clone());
    let site = kiln_devsite::start(
        devsite_listener,
        kiln_crypto::tls::server_config(&identity).map_err(|e| usage(e.to_string()))?,
        kiln_devsite::DevSiteConfig {
            seed,
            events: Some(kiln_devsite::EventSink {
                url: format!("https://{listen}/events/devsite"),
                secret: secret.clone(),
                roots_pem: identity.cert_pem.clone(),
            }),
        },
    )
    .await
    .map_err(|e| usage(e.to_string()))?;
    let site_url = SiteUrl::parse(&site.site_url()).map_err(|e| usage(e.to_string()))?;
    let store = crate::open(&data_dir).await?;
    let trail = crate::trail::Trail::open(&data_dir, &store).await?;
    let said = deploy_and_install(&store, &trail, &app_dir, &options.environment, &site_url).await?;
    eprint!("{said}");
    let provider = crate::key_provider(&data_dir, &store).await?;
    let kvs = std::sync::Arc::new(kiln_kvs::Kvs::new(store.clone(), provider));
    let product =
        crate::devsite_gateway(&data_dir, site.base_url(), None, kvs.clone(), Some(&callback)).await?;
    let source = kiln_server::events::EventSource::new(
        "devsite",
        site_url.clone(),
        &secret,
        Some(site.cloud_id().to_owned()),
        app_account,
    )
    .map_err(usage)?;
    let keys = kiln_crypto::jws::Ed25519PublicKey::from_jwk_set(&site.context_keys())
        .map_err(|e| fail(format!("the dev site's context keys: {e}")))?;
    let tokens = kiln_server::resolver::TokenVerifier::new(site.base_url(), keys);
    let app_logs: kiln_server::runner::LogSink =
        std::sync::Arc::new(|log: &kiln_server::runner::AppLog<'_>| {
            for (level, line) in log.lines {
                eprintln!("[{} {}] {level}: {line}", log.kind, log.function);
            }
        });
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let server = crate::server::run(
        &data_dir,
        crate::server::Options {
            listen,
            identity,
            config: None,
            public_url: None,
            webtrigger_rate: kiln_server::webtrigger::DEFAULT_PER_MINUTE,
            metrics_listen: None,
            drain: Duration::from_secs(10),
            process_per_invocation: false,
            huge_pages: true,
            egress: options.egress.clone(),
            dev: Some(crate::server::DevParts {
                product: std::sync::Arc::new(product),
                events: kiln_server::events::EventsConfig::new([source]),
                tokens: Some(tokens),
                app_logs,
                insecure_test_clock: options.insecure_test_clock,
                backoff: Duration::from_secs(options.retry_seconds.clamp(1, 900)),
            }),
            bound: Some(bound_tx),
        },
    );
    let data = data_dir.clone();
    let urls = async {
        let Ok(bound) = bound_rx.await else { return };
        match describe(&store, &kvs, &app_dir, &options.environment, &site_url, bound, &site, &data).await {
            Ok(text) => eprint!("{text}"),
            Err(e) => eprintln!("warning: cannot list the app's URLs: {}", e.message),
        }
    };
    let watch = async {
        if options.no_watch {
            return std::future::pending::<()>().await;
        }
        let mut last = snapshot(&app_dir);
        loop {
            tokio::time::sleep(POLL).await;
            let now = snapshot(&app_dir);
            let paths = changed(&app_dir, &last, &now);
            if paths.is_empty() {
                continue;
            }
            // Let an editor finish writing before deploying.
            tokio::time::sleep(POLL).await;
            last = snapshot(&app_dir);
            eprintln!("Changed: {}", paths.join(", "));
            match deploy_and_install(&store, &trail, &app_dir, &options.environment, &site_url).await {
                Ok(said) => eprint!("{said}"),
                Err(e) => eprintln!("Not deployed; the running version stays:\n  {}", e.message),
            }
        }
    };
    let result = tokio::select! {
        r = server => r,
        () = async { urls.await; watch.await } => Ok(()),
    };
    site.shutdown();
    result
}

/// Port 0 becomes a free port now, so the dev site can be told it.
fn concrete(addr: std::net::SocketAddr) -> Result<std::net::SocketAddr, Failure> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe = std::net::TcpListener::bind(addr)
        .map_err(|e| Failure { code: 1, message: format!("cannot listen on {addr}: {e}") })?;
    probe.local_addr().map_err(|e| Failure { code: 1, message: e.to_string() })
}

/// Every URL the developer needs.
#[allow(clippy::too_many_arguments, reason = "what the summary shows")]
async fn describe(
    store: &kiln_store::Store,
    kvs: &kiln_kvs::Kvs,
    app_dir: &Path,
    env: &Environment,
    site_url: &SiteUrl,
    bound: std::net::SocketAddr,
    site: &kiln_devsite::DevSite,
    data_dir: &Path,
) -> Result<String, Failure> {
    use std::fmt::Write as _;
    let variables = |name: &str| std::env::var(name).ok();
    let manifest = kiln_manifest::load(app_dir, &variables).map_err(|e| usage(e.to_string()))?.manifest;
    let installation = store
        .begin_read()
        .await?
        .installations(&manifest.app.id, env)
        .await?
        .into_iter()
        .find(|i| &i.site == site_url)
        .ok_or_else(|| Failure { code: 1, message: "the app is not installed on the dev site".into() })?;
    let mut s = String::new();
    let _ = writeln!(s, "\nKiln dev is running (Ctrl-C stops it). Data: {}", data_dir.display());
    let _ = writeln!(s, "  server:        https://{bound}  (admin API, health: /healthz)");
    let _ =
        writeln!(s, "  dev site:      {} for {site_url}  (cloud id {})", site.base_url(), site.cloud_id());
    let _ = writeln!(s, "  Jira REST:     {}/ex/jira/{}/rest/api/3/...", site.base_url(), site.cloud_id());
    let _ = writeln!(s, "  installation:  {} ({env}, {})", installation.public_id, installation.version);
    for w in &manifest.modules.webtriggers {
        match kiln_server::webtrigger::token(store, kvs, &installation, w.key.as_str()).await {
            Ok(token) => drop(writeln!(s, "  web trigger {}: https://{bound}/x1/{token}", w.key)),
            Err(e) => drop(writeln!(s, "  web trigger {}: no URL ({e})", w.key)),
        }
    }
    if !manifest.modules.triggers.is_empty() {
        let _ = writeln!(s, "  product events: the dev site posts them to https://{bound}/events/devsite");
    }
    if !manifest.modules.scheduled_triggers.is_empty() {
        let _ = writeln!(s, "  scheduled triggers: {}", manifest.modules.scheduled_triggers.len());
    }
    let _ = writeln!(
        s,
        "  resolvers:     POST https://{bound}/resolver/v1/{} with a token from POST {}/kiln/context-token",
        installation.public_id,
        site.base_url()
    );
    let _ = writeln!(
        s,
        "  user consent:  asUser() without it answers 403 NEEDS_USER_CONSENT and a consentUrl \
         (https://{bound}/oauth/consent?ticket=...)"
    );
    let _ = writeln!(s, "  certificate:   {}", data_dir.join("tls/cert.pem").display());
    let _ = writeln!(s, "Watching {} for changes.", app_dir.display());
    Ok(s)
}
