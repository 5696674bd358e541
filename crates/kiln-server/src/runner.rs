//! Running an installation's function: the one path every module type
//! (web triggers, product events, scheduled triggers, queue consumers,
//! resolvers) takes into the sandbox.
//!
//! [`Runner::run`] takes an installation and the version it runs, builds
//! the invocation's grants from what the installation's admin consented
//! to (never from anything the caller or the worker says), loads the
//! app's variables into `process.env`, and runs the function in a jailed
//! worker on a blocking thread. A fault of the sandbox (time-out, memory,
//! a dead worker; not an exception the app threw) goes to the audit trail
//! here, so no caller can forget it.
//!
//! [`Execute`] is the seam the scheduler, the queues and the event router
//! call through, so their tests can stand a recording fake in for the
//! sandbox.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_bundle::Bundle;
use kiln_crypto::Sha256;
use kiln_kvs::Kvs;
use kiln_sandbox::{Caller, InvokeRequest, Sandbox};
use kiln_store::{InstallationRecord, Store, VersionRecord};
use serde_json::{Value, json};

use crate::metrics::Metrics;

/// One function call for an installation.
#[derive(Debug, Clone)]
pub struct Call {
    pub installation: InstallationRecord,
    /// The version the installation runs (its manifest names the function).
    pub version: VersionRecord,
    /// The function module's key.
    pub function: String,
    /// The module that led here (web trigger, trigger, consumer...), for
    /// `getAppContext().moduleKey`.
    pub module_key: String,
    pub payload: Value,
    /// Fields merged into the platform's context (`installContext` and
    /// `environmentType` are always set by the runner).
    pub context: serde_json::Map<String, Value>,
    pub caller: Caller,
    /// The user in session (resolvers called from the UI), if any.
    pub account_id: Option<String>,
    /// What the call is, for metrics: `webtrigger`, `trigger`,
    /// `scheduledTrigger`, `consumer`, `resolver`.
    pub kind: &'static str,
}

/// Why a call gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `FUNCTION_ERROR` (the app threw), `TIME_OUT`,
    /// `FUNCTION_OUT_OF_MEMORY`, `PLATFORM_ERROR`, ...
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn platform(message: impl Into<String>) -> Self {
        Failure { code: "PLATFORM_ERROR".to_owned(), message: message.into() }
    }

    /// The app's own exception, as opposed to a fault of the platform.
    pub fn is_app_error(&self) -> bool {
        self.code == "FUNCTION_ERROR" || self.code == NEEDS_USER_CONSENT
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The code of a failure whose sandbox fault could not be recorded.
pub const AUDIT_FAILED: &str = "AUDIT_FAILED";

/// The code of a user call whose function threw after an `asUser()` call
/// for the user in session was refused for want of that user's consent
/// (`NeedsAuthenticationError`). Kiln's gateway saw the refusal, so this
/// is known without reading the app's error; the resolver route answers
/// it with a consent link. Like `FUNCTION_ERROR`, it is the app's outcome,
/// not a sandbox fault.
pub const NEEDS_USER_CONSENT: &str = "NEEDS_USER_CONSENT";

/// A boxed future, so [`Execute`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs calls: [`Runner`] in the server, a fake in tests.
pub trait Execute: Send + Sync {
    fn execute(&self, call: Call) -> BoxFuture<'_, Result<Value, Failure>>;
}

/// Loads bundles, builds grants and runs functions in the sandbox.
pub struct Runner {
    pub store: Store,
    pub kvs: Arc<Kvs>,
    pub sandbox: Arc<Sandbox>,
    pub host: Arc<kiln_host::Host>,
    pub auditor: kiln_audit::Auditor,
    pub metrics: Arc<Metrics>,
    bundles: Mutex<HashMap<Sha256, Arc<Bundle>>>,
    logs: Option<LogSink>,
}

/// Where the app's `console` lines go, when anywhere: `kiln dev` streams
/// them to the developer's terminal. `kiln serve` keeps them in memory
/// only (they are the app's data, not the operator's).
pub type LogSink = Arc<dyn Fn(&AppLog<'_>) + Send + Sync>;

/// One invocation's console output.
#[derive(Debug)]
pub struct AppLog<'a> {
    pub app: &'a str,
    pub function: &'a str,
    pub kind: &'static str,
    pub lines: &'a [(kiln_ipc::LogLevel, String)],
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").finish_non_exhaustive()
    }
}

impl Runner {
    pub fn new(
        store: Store,
        kvs: Arc<Kvs>,
        sandbox: Arc<Sandbox>,
        host: Arc<kiln_host::Host>,
        auditor: kiln_audit::Auditor,
        metrics: Arc<Metrics>,
    ) -> Self {
        Runner {
            store,
            kvs,
            sandbox,
            host,
            auditor,
            metrics,
            bundles: Mutex::new(HashMap::new()),
            logs: None,
        }
    }

    /// Send each invocation's console lines to `sink` (development).
    pub fn with_logs(mut self, sink: LogSink) -> Self {
        self.logs = Some(sink);
        self
    }

    /// The installation's bundle, decoded once per node.
    pub async fn bundle(&self, hash: &Sha256) -> Result<Arc<Bundle>, String> {
        if let Some(b) = self.bundles.lock().map_err(|e| e.to_string())?.get(hash) {
            return Ok(b.clone());
        }
        let bytes = self
            .store
            .begin_read()
            .await
            .map_err(|e| e.to_string())?
            .bundle(hash)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = bytes.ok_or("the bundle is missing")?;
        let decoded = Arc::new(Bundle::decode(&bytes, hash).map_err(|e| e.to_string())?);
        self.bundles.lock().map_err(|e| e.to_string())?.insert(*hash, decoded.clone());
        Ok(decoded)
    }

    /// Run `call` with what its installation's admin consented to. A
    /// sandbox fault is recorded in the audit trail before this returns;
    /// if it cannot be, the failure says so.
    pub async fn run(self: &Arc<Self>, call: Call) -> Result<Value, Failure> {
        let app = call.installation.app.to_string();
        let function = call.function.clone();
        // Counted, and logged, when it ends, or as cancelled if this future is dropped first.
        let in_flight = self.metrics.start(crate::metrics::Invocation {
            kind: call.kind,
            app: app.clone(),
            installation: call.installation.public_id.to_string(),
            function: function.clone(),
        });
        let outcome = self.run_inner(call).await;
        in_flight.finish(outcome.as_ref().err().map(|f| f.code.as_str()));
        if let Err(f) = &outcome
            && !f.is_app_error()
        {
            let event = kiln_audit::Event::sandbox_fault(&app, &function, &f.code, &f.message);
            if let Err(e) = self.auditor.record(&self.store, &kiln_audit::Context::system(), event).await {
                return Err(Failure {
                    code: AUDIT_FAILED.to_owned(),
                    message: format!("{f}; and the fault could not be recorded in the audit trail: {e}"),
                });
            }
        }
        outcome
    }

    async fn run_inner(self: &Arc<Self>, call: Call) -> Result<Value, Failure> {
        let Call { installation, version, function, module_key, payload, context, caller, account_id, kind } =
            call;
        let manifest = &version.manifest;
        let entry = manifest
            .function(&function)
            .ok_or_else(|| Failure::platform(format!("the function '{function}' is not in the manifest")))?;
        let bundle = self
            .bundle(&version.bundle)
            .await
            .map_err(|e| Failure::platform(format!("the app's code cannot be loaded: {e}")))?;
        let owner = kiln_host::webtrigger::owner(&installation);
        let app = installation.app.to_string();
        let variables = self
            .kvs
            .variables(&format!("variables:{app}:{}", installation.environment), true)
            .await
            .map_err(|e| Failure::platform(e.to_string()))?;
        let env = variables.into_iter().filter_map(|v| Some((v.name, v.value?))).collect();
        let consent = &installation.consent;
        let grants = kiln_host::InvocationGrants {
            app: app.clone(),
            installation: installation.public_id.to_string(),
            installation_row: Some(installation.id),
            environment: installation.environment.clone(),
            egress: consent
                .egress
                .get(&kiln_manifest::ExternalKind::FetchBackend)
                .map(|entries| entries.iter().map(|e| e.target.clone()).collect())
                .unwrap_or_default(),
            product: kiln_product::Installation::new(&owner, &consent.scopes),
            user: account_id.clone(),
        };
        let version_text = version.version.to_string();
        let public_id = installation.public_id.to_string();
        let runtime = kiln_host::runtime_description(&kiln_host::RuntimeSource {
            app: &app,
            version: Some(&version_text),
            environment: &installation.environment,
            installation: &public_id,
            module_key: &module_key,
            grants: consent,
            account_id: account_id.as_deref(),
        });
        let mut ctx = context;
        ctx.insert("installContext".into(), json!(install_context(&installation)));
        ctx.insert(
            "environmentType".into(),
            json!(installation.environment.to_string().to_ascii_uppercase()),
        );
        let invoke = InvokeRequest {
            function: function.clone(),
            payload,
            context: Value::Object(ctx),
            caller,
            memory_mb: entry.memory_mb.unwrap_or(manifest.app.runtime.memory_mb),
            deadline: None,
            env,
            runtime,
        };
        let this = self.clone();
        let hash = version.bundle;
        tokio::task::spawn_blocking(move || {
            let mut handler = this.host.invocation(&grants).map_err(|e| Failure::platform(e.to_string()))?;
            let result = this
                .sandbox
                .invoke(&grants.app, &hash, &bundle, &invoke, &mut handler)
                .map_err(|e| Failure::platform(e.to_string()))?;
            let needs_user_consent = handler.needs_user_consent();
            if let Some(sink) = &this.logs {
                // The developer sees a failure with the app's own message
                // (development only: the sink is `kiln dev`'s terminal).
                let mut lines = result.logs.clone();
                if let kiln_ipc::Outcome::Err(e) = &result.outcome {
                    lines.push((
                        kiln_ipc::LogLevel::Error,
                        format!("the function failed: {}: {}", e.code.as_str(), e.message),
                    ));
                }
                if !lines.is_empty() {
                    sink(&AppLog { app: &grants.app, function: &invoke.function, kind, lines: &lines });
                }
            }
            match result.outcome {
                kiln_ipc::Outcome::Ok { result } => {
                    serde_json::from_str(&result).map_err(|e| Failure::platform(e.to_string()))
                }
                // Only the app's own throw becomes a consent request: a
                // time-out or a crash stays the fault it is.
                kiln_ipc::Outcome::Err(e)
                    if needs_user_consent && e.code == kiln_ipc::ErrorCode::FunctionError =>
                {
                    Err(Failure { code: NEEDS_USER_CONSENT.to_owned(), message: e.message })
                }
                kiln_ipc::Outcome::Err(e) => {
                    Err(Failure { code: e.code.as_str().to_owned(), message: e.message })
                }
            }
        })
        .await
        .map_err(|e| Failure::platform(e.to_string()))?
    }
}

impl Execute for Arc<Runner> {
    fn execute(&self, call: Call) -> BoxFuture<'_, Result<Value, Failure>> {
        Box::pin(self.run(call))
    }
}

/// `ari:cloud:<product>::site/<host>`: the installation's context ARI.
pub fn install_context(installation: &InstallationRecord) -> String {
    format!(
        "ari:cloud:{}::site/{}",
        installation.product,
        installation.site.to_string().trim_start_matches("https://")
    )
}

/// The deadline a background call gets: its function's `timeoutSeconds`.
pub fn background(version: &VersionRecord, function: &str) -> Caller {
    Caller::Background {
        timeout_seconds: version.manifest.function(function).and_then(|f| f.timeout_seconds),
    }
}

/// How long to wait for a call before giving up on it from outside (the
/// sandbox enforces the deadline itself; this is for drains).
pub fn outer_deadline(caller: Caller) -> Duration {
    caller.deadline() + Duration::from_secs(5)
}
