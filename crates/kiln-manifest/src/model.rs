//! The typed manifest. Every value here has passed validation in
//! [`crate::parse`]; nothing downstream re-checks shapes or patterns.

use std::collections::BTreeMap;
use std::fmt;

use kiln_types::AppId;
use serde::{Deserialize, Serialize};

/// A validated Forge manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub app: AppInfo,
    pub modules: Modules,
    pub permissions: Permissions,
    pub remotes: Vec<Remote>,
    pub resources: Vec<Resource>,
    pub variables: Vec<EnvVariable>,
    /// `providers` (external OAuth providers), kept as written: Kiln does not
    /// run external auth yet, but a change to it still forces a major version.
    pub providers: Option<serde_json::Value>,
    /// Other top-level sections Forge accepts (`translations`, `services`,
    /// `connectModules`, `overrides`), carried through unchanged.
    pub carried: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    pub fn function(&self, key: &str) -> Option<&FunctionModule> {
        self.modules.functions.iter().find(|f| f.key.as_str() == key)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppInfo {
    pub id: AppId,
    pub description: Option<String>,
    pub runtime: Runtime,
    pub licensing_enabled: bool,
    /// `access`, `connect`, `storage`, `package`, `compatibility`, `features`.
    pub carried: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub name: RuntimeName,
    /// Memory for every function unless it sets its own; Forge's default is 512.
    pub memory_mb: u32,
}

/// Default function memory, as in Forge.
pub const DEFAULT_MEMORY_MB: u32 = 512;
/// Forge's documented bounds for `memoryMB`.
pub const MEMORY_MB_RANGE: std::ops::RangeInclusive<u32> = 128..=1024;

/// The Node.js runtime the app was written for. Kiln runs every one of them
/// on the same engine; the name matters for compatibility reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuntimeName {
    #[serde(rename = "nodejs18.x")]
    Nodejs18,
    #[serde(rename = "nodejs20.x")]
    Nodejs20,
    #[serde(rename = "nodejs22.x")]
    Nodejs22,
    #[serde(rename = "nodejs24.x")]
    Nodejs24,
}

impl RuntimeName {
    pub const ALL: [(&'static str, RuntimeName); 4] = [
        ("nodejs18.x", RuntimeName::Nodejs18),
        ("nodejs20.x", RuntimeName::Nodejs20),
        ("nodejs22.x", RuntimeName::Nodejs22),
        ("nodejs24.x", RuntimeName::Nodejs24),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeName::Nodejs18 => "nodejs18.x",
            RuntimeName::Nodejs20 => "nodejs20.x",
            RuntimeName::Nodejs22 => "nodejs22.x",
            RuntimeName::Nodejs24 => "nodejs24.x",
        }
    }
}

/// A module key, `^[a-zA-Z0-9_-]+$`, unique within the manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModuleKey(String);

/// Longest module key accepted. Forge sets no bound; keys end up in URLs,
/// logs and database rows, so Kiln does.
pub const MAX_MODULE_KEY_LEN: usize = 255;

impl ModuleKey {
    pub fn parse(value: &str) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= MAX_MODULE_KEY_LEN
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModuleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ModuleKey {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value).ok_or_else(|| format!("invalid module key {value:?}"))
    }
}

impl From<ModuleKey> for String {
    fn from(value: ModuleKey) -> Self {
        value.0
    }
}

/// Every module, grouped by the types Kiln runs code for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Modules {
    pub functions: Vec<FunctionModule>,
    pub webtriggers: Vec<WebTrigger>,
    pub scheduled_triggers: Vec<ScheduledTrigger>,
    pub triggers: Vec<Trigger>,
    pub consumers: Vec<Consumer>,
    pub endpoints: Vec<Endpoint>,
    /// UI modules and every other module type: their references are checked,
    /// the rest is carried as written.
    pub others: Vec<OtherModule>,
}

impl Modules {
    pub fn count(&self) -> usize {
        self.functions.len()
            + self.webtriggers.len()
            + self.scheduled_triggers.len()
            + self.triggers.len()
            + self.consumers.len()
            + self.endpoints.len()
            + self.others.len()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionModule {
    pub key: ModuleKey,
    pub handler: Handler,
    /// 1..=900; only consumers and scheduled triggers may run longer than
    /// the defaults.
    pub timeout_seconds: Option<u32>,
    pub memory_mb: Option<u32>,
    pub providers: Option<serde_json::Value>,
}

/// Largest `timeoutSeconds` Forge accepts.
pub const MAX_TIMEOUT_SECONDS: u32 = 900;

/// A handler `file.export`: `file` is a path under `src/` without extension
/// (`index`, `resolvers/index`), `export` a JavaScript identifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handler {
    pub file: String,
    pub export: String,
}

impl fmt::Display for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.file, self.export)
    }
}

/// What a backend module runs: a `function` module, or a Forge Remote
/// `endpoint` module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    Function(ModuleKey),
    Endpoint(ModuleKey),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebTrigger {
    pub key: ModuleKey,
    pub target: Target,
    pub response: WebTriggerResponse,
    pub authentication: WebTriggerAuth,
    pub url_format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum WebTriggerResponse {
    /// The function returns the whole HTTP response.
    Dynamic,
    /// The function returns `{outputKey}` naming one of these responses.
    Static { outputs: Vec<StaticOutput> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaticOutput {
    pub key: String,
    pub status_code: u16,
    pub body: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WebTriggerAuth {
    None,
    HmacSharedSecret,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledTrigger {
    pub key: ModuleKey,
    pub target: Target,
    pub interval: Interval,
    pub app_is_licensed: Option<bool>,
}

/// Most scheduled triggers an app may declare, as in Forge.
pub const MAX_SCHEDULED_TRIGGERS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Interval {
    FiveMinute,
    Hour,
    Day,
    Week,
}

impl Interval {
    pub const ALL: [(&'static str, Interval); 4] = [
        ("fiveMinute", Interval::FiveMinute),
        ("hour", Interval::Hour),
        ("day", Interval::Day),
        ("week", Interval::Week),
    ];

    pub fn seconds(self) -> u64 {
        match self {
            Interval::FiveMinute => 300,
            Interval::Hour => 3_600,
            Interval::Day => 86_400,
            Interval::Week => 604_800,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub key: ModuleKey,
    pub target: Target,
    pub events: Vec<EventSubscription>,
    pub filter: Option<EventFilter>,
    pub payload: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventSubscription {
    pub event_type: String,
    pub filter: Option<EventFilter>,
    pub payload: Option<serde_json::Value>,
}

/// Longest event type name accepted.
pub const MAX_EVENT_TYPE_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFilter {
    pub ignore_self: Option<bool>,
    pub expression: Option<String>,
    pub on_error: OnError,
    pub app_is_licensed: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OnError {
    IgnoreAndLog,
    Ignore,
    Receive,
    ReceiveAndLog,
}

impl OnError {
    pub const ALL: [(&'static str, OnError); 4] = [
        ("IGNORE_AND_LOG", OnError::IgnoreAndLog),
        ("IGNORE", OnError::Ignore),
        ("RECEIVE", OnError::Receive),
        ("RECEIVE_AND_LOG", OnError::ReceiveAndLog),
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    pub key: ModuleKey,
    pub queue: String,
    pub target: ConsumerTarget,
    pub cross_version: bool,
}

/// Longest queue name, as in Forge.
pub const MAX_QUEUE_NAME_LEN: usize = 36;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConsumerTarget {
    Function(ModuleKey),
    /// The older form: a resolver function and the method defined on it.
    Resolver {
        function: ModuleKey,
        method: String,
    },
    Endpoint(ModuleKey),
}

impl ConsumerTarget {
    pub fn function(&self) -> Option<&ModuleKey> {
        match self {
            ConsumerTarget::Function(k) | ConsumerTarget::Resolver { function: k, .. } => Some(k),
            ConsumerTarget::Endpoint(_) => None,
        }
    }
}

/// A Forge Remote endpoint: Kiln records it; remote invocation comes later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub key: ModuleKey,
    pub remote: Option<String>,
    pub service: Option<String>,
    pub raw: serde_json::Value,
}

/// A module of any other type (`jira:issuePanel`, `macro`, `action`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtherModule {
    pub module_type: String,
    pub key: ModuleKey,
    /// `resolver.function` / `resolver.endpoint` of a UI module.
    pub resolver: Option<Target>,
    /// A direct `function:` reference (UI Kit 1 modules, actions, ...).
    pub function: Option<ModuleKey>,
    pub resource: Option<String>,
    pub raw: serde_json::Value,
}

/// An OAuth scope name. Known-ness is checked when a manifest is parsed, not
/// when a stored grant is read back, so scopes retired later stay readable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    pub(crate) fn new_unchecked(value: &str) -> Self {
        Self(value.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Scope {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.is_empty() || value.len() > 255 || value.chars().any(char::is_whitespace) {
            Err(format!("invalid scope {value:?}"))
        } else {
            Ok(Self(value))
        }
    }
}

impl From<Scope> for String {
    fn from(value: Scope) -> Self {
        value.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct ScopeGrant {
    /// May `asUser(accountId)` use this scope without a user in session?
    pub allow_impersonation: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Permissions {
    pub scopes: BTreeMap<Scope, ScopeGrant>,
    /// `external.*` lists, by kind (`fetch.backend`, `fetch.client`, `images`...).
    pub external: BTreeMap<ExternalKind, Vec<EgressEntry>>,
    /// `external.configurable.enabled`: customer-managed egress.
    pub configurable_egress: bool,
    /// `content.scripts` and `content.styles` (Custom UI CSP relaxations).
    pub content_scripts: Vec<String>,
    pub content_styles: Vec<String>,
    pub app_managed_enforcement: bool,
    pub sandbox: Vec<String>,
}

impl Permissions {
    /// The backend egress allow-list, the one the egress gateway enforces.
    pub fn backend_egress(&self) -> &[EgressEntry] {
        self.external.get(&ExternalKind::FetchBackend).map(Vec::as_slice).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExternalKind {
    FetchBackend,
    FetchClient,
    Fonts,
    Frames,
    Navigation,
    Images,
    Media,
    Scripts,
    Styles,
}

impl ExternalKind {
    pub fn manifest_path(self) -> &'static str {
        match self {
            ExternalKind::FetchBackend => "permissions.external.fetch.backend",
            ExternalKind::FetchClient => "permissions.external.fetch.client",
            ExternalKind::Fonts => "permissions.external.fonts",
            ExternalKind::Frames => "permissions.external.frames",
            ExternalKind::Navigation => "permissions.external.navigation",
            ExternalKind::Images => "permissions.external.images",
            ExternalKind::Media => "permissions.external.media",
            ExternalKind::Scripts => "permissions.external.scripts",
            ExternalKind::Styles => "permissions.external.styles",
        }
    }
}

/// One egress declaration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EgressEntry {
    pub target: EgressTarget,
    /// `category: analytics` marks egress that carries no customer data.
    pub analytics: bool,
    /// `inScopeEUD`: whether end-user data may flow there. Defaults to true:
    /// unless the vendor says otherwise, assume customer data goes out.
    pub in_scope_eud: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EgressTarget {
    /// `*`: any public host.
    Any,
    /// One host name (lower case, IDNA-encoded), from a bare host or a URL.
    Host(String),
    /// `*.example.com`: every subdomain of the name, not the name itself.
    Subdomains(String),
    /// `{remote: key}`: the base URLs of a declared remote.
    Remote(String),
    /// A custom URL scheme such as `slack:`; only in Custom UI lists.
    Scheme(String),
}

impl fmt::Display for EgressTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressTarget::Any => f.write_str("*"),
            EgressTarget::Host(h) => f.write_str(h),
            EgressTarget::Subdomains(d) => write!(f, "*.{d}"),
            EgressTarget::Remote(k) => write!(f, "remote:{k}"),
            EgressTarget::Scheme(s) => write!(f, "{s}:"),
        }
    }
}

impl EgressTarget {
    /// Does this declaration allow at least everything `other` allows?
    pub fn covers(&self, other: &EgressTarget) -> bool {
        match (self, other) {
            (a, b) if a == b => true,
            (EgressTarget::Any, EgressTarget::Host(_) | EgressTarget::Subdomains(_)) => true,
            (EgressTarget::Subdomains(d), EgressTarget::Host(h)) => is_strict_subdomain(h, d),
            (EgressTarget::Subdomains(d), EgressTarget::Subdomains(e)) => is_strict_subdomain(e, d),
            _ => false,
        }
    }
}

/// Is `host` a proper subdomain of `domain` (`a.b.example.com` of `example.com`)?
pub fn is_strict_subdomain(host: &str, domain: &str) -> bool {
    host.len() > domain.len()
        && host.ends_with(domain)
        && host.as_bytes().get(host.len() - domain.len() - 1) == Some(&b'.')
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remote {
    pub key: String,
    /// `default` plus any region URLs (`EU`, `US`, ...). A single-string
    /// `baseUrl` is stored under `default`. Empty for customer-managed remotes.
    pub base_urls: BTreeMap<String, String>,
    pub operations: Vec<String>,
    pub app_system_token: bool,
    pub app_user_token: bool,
    pub in_scope_eud: Option<bool>,
    pub configurable: Option<serde_json::Value>,
}

/// Longest remote or resource key, as in Forge.
pub const MAX_REMOTE_KEY_LEN: usize = 23;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub key: String,
    pub path: String,
    pub carried: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVariable {
    pub name: String,
    pub default: Option<String>,
}
