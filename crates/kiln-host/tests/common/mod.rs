//! Setup the end-to-end tests share: a jailed worker pool running this
//! crate's worker, an app built from a manifest and one source file, a
//! key-value store on a test store, the web-trigger call they invoke, and
//! for the capability tests two stored installations of an app with the
//! grants, gateway and store their host calls run with.

#![allow(dead_code, reason = "each test file uses part of this")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_kvs::{Clock, Kvs};
use kiln_sandbox::{Caller, InvokeRequest, Sandbox, SandboxConfig};
use kiln_store::Store;
use serde_json::{Value, json};

/// Workers in real jails, one at a time.
pub(crate) fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        worker_executable: PathBuf::from(env!("CARGO_BIN_EXE_kiln-host-worker")),
        worker_args: Vec::new(),
        namespaces: kiln_sandbox::Namespaces::Require,
        max_memory_mb: 64,
        pool_size: 1,
        recycle_after: 1_000,
        inherit_stderr: false,
        fork_above_bytes: usize::MAX,
        huge_pages: true,
        reset_instead_of_fork: false,
    })
    .expect("jailed workers must start on this machine")
}

/// An app whose `manifest.yml` is `manifest` and whose `src/index.js` is
/// `source`, built; the directory lives as long as the returned guard.
pub(crate) fn app(
    manifest: &str,
    source: &str,
) -> (tempfile::TempDir, kiln_manifest::Manifest, kiln_bundle::Built) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.yml"), manifest).unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/index.js"), source).unwrap();
    let parsed = kiln_manifest::load(dir.path(), &kiln_manifest::NoVariables).unwrap();
    let built = kiln_bundle::build(dir.path(), &parsed.manifest).unwrap();
    (dir, parsed.manifest, built)
}

/// A key-value store on `store` with a fixed test key, reading the time
/// from `clock`.
pub(crate) fn kvs(store: &Store, clock: Clock) -> Arc<Kvs> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
    let provider = kiln_crypto::keys::EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap();
    Arc::new(Kvs::with_clock(store.clone(), Arc::new(provider), clock))
}

/// A web-trigger call of the app's `main` function with `payload`, in 32 MB
/// and 20 seconds.
pub(crate) fn web_trigger(payload: Value) -> InvokeRequest {
    InvokeRequest {
        function: "main".into(),
        payload,
        context: json!({}),
        caller: Caller::WebTrigger,
        memory_mb: 32,
        deadline: Some(Duration::from_secs(20)),
        env: Default::default(),
        runtime: serde_json::Value::Null,
    }
}

/// Two installations (on `https://a.atlassian.net` and
/// `https://b.atlassian.net`) of the app whose manifest is `source`,
/// stored as `kiln install` stores them.
pub(crate) async fn two_installations(
    store: &Store,
    source: &str,
) -> (kiln_store::InstallationRecord, kiln_store::InstallationRecord) {
    use kiln_types::{Environment, Product, SiteUrl, Version};
    let manifest =
        kiln_manifest::parse_str("manifest.yml", source, &kiln_manifest::NoVariables).unwrap().manifest;
    let grants = kiln_manifest::Grants::of(&manifest);
    let env = Environment::development();
    let app = manifest.app.id.clone();
    let mut tx = store.begin().await.unwrap();
    let app_row = tx.ensure_app(&app).await.unwrap();
    let hash = kiln_crypto::Sha256::of(b"bundle");
    tx.put_bundle(&hash, b"bundle").await.unwrap();
    let version = tx
        .insert_version(kiln_store::NewVersion {
            app_id: app_row,
            environment: &env,
            version: Version::FIRST,
            manifest_source: source,
            manifest: &manifest,
            grants: &grants,
            origin: &kiln_store::VersionOrigin::Initial,
            bundle: hash,
        })
        .await
        .unwrap();
    for site in ["https://a.atlassian.net", "https://b.atlassian.net"] {
        let site = SiteUrl::parse(site).unwrap();
        tx.insert_installation(app_row, &env, &site, Product::Jira, version, &grants).await.unwrap();
    }
    let mut all = tx.installations(&app, &env).await.unwrap();
    tx.commit().await.unwrap();
    let b = all.pop().unwrap();
    (all.pop().unwrap(), b)
}

/// What an invocation of `app` for `installation` (none: `kiln invoke`)
/// may do: no egress, no scopes.
pub(crate) fn grants_for(
    app: &str,
    installation: Option<&kiln_store::InstallationRecord>,
) -> kiln_host::InvocationGrants {
    let owner = installation.map_or_else(|| "installation:none".to_owned(), kiln_host::webtrigger::owner);
    kiln_host::InvocationGrants {
        app: app.to_owned(),
        installation: installation.map_or_else(String::new, |i| i.public_id.to_string()),
        installation_row: installation.map(|i| i.id),
        environment: kiln_types::Environment::development(),
        egress: Vec::new(),
        product: kiln_product::Installation {
            owner,
            scopes: Default::default(),
            impersonable: Default::default(),
        },
        user: None,
    }
}

/// An egress gateway the capability tests never use.
pub(crate) fn unused_egress() -> Arc<kiln_egress::Gateway> {
    let cert = kiln_crypto::tls::self_signed(&["127.0.0.1"]).unwrap();
    let gateway = kiln_egress::Gateway::new(
        kiln_egress::Config::new(cert.cert_pem),
        Arc::new(kiln_egress::SystemResolver),
        Arc::new(kiln_egress::SystemDialer),
    );
    Arc::new(gateway.unwrap())
}

/// A key-value store on `store` with a fixed test key and the real clock.
pub(crate) fn sealed_kvs(store: &Store) -> Arc<Kvs> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([8u8; 32]);
    let provider = kiln_crypto::keys::EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap();
    Arc::new(Kvs::new(store.clone(), Arc::new(provider)))
}
