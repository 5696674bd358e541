//! Setup the end-to-end tests share: a jailed worker pool running this
//! crate's worker, an app built from a manifest and one source file, a
//! key-value store on a test store, and the web-trigger call they invoke.

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
