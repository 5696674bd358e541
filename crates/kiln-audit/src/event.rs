//! What a record says: who, did what, to what, with what outcome.

use std::fmt;

use serde_json::{Value, json};

/// Every kind of event the trail holds. Adding one is a change to this
/// list, reviewed like the seccomp allow-list: an event that is not here
/// cannot be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    OperatorCreated,
    OperatorDisabled,
    PasswordChanged,
    OperatorLogin,
    OperatorLoginFailed,
    OperatorLogout,
    MfaChanged,
    RoleChanged,
    TokenCreated,
    TokenRevoked,
    Deploy,
    Install,
    Upgrade,
    Consent,
    Rollback,
    VariableSet,
    VariableUnset,
    KeyRotation,
    EgressAllowed,
    EgressDenied,
    ProductRequest,
    ScopeRefused,
    SandboxFault,
    ConfigChanged,
    AuditExport,
    AuditVerify,
    AdminRequest,
    UserConsent,
}

impl Action {
    pub const ALL: [Action; 28] = [
        Action::OperatorCreated,
        Action::OperatorDisabled,
        Action::PasswordChanged,
        Action::OperatorLogin,
        Action::OperatorLoginFailed,
        Action::OperatorLogout,
        Action::MfaChanged,
        Action::RoleChanged,
        Action::TokenCreated,
        Action::TokenRevoked,
        Action::Deploy,
        Action::Install,
        Action::Upgrade,
        Action::Consent,
        Action::Rollback,
        Action::VariableSet,
        Action::VariableUnset,
        Action::KeyRotation,
        Action::EgressAllowed,
        Action::EgressDenied,
        Action::ProductRequest,
        Action::ScopeRefused,
        Action::SandboxFault,
        Action::ConfigChanged,
        Action::AuditExport,
        Action::AuditVerify,
        Action::AdminRequest,
        Action::UserConsent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::OperatorCreated => "operator.created",
            Action::OperatorDisabled => "operator.disabled",
            Action::PasswordChanged => "operator.password_changed",
            Action::OperatorLogin => "operator.login",
            Action::OperatorLoginFailed => "operator.login_failed",
            Action::OperatorLogout => "operator.logout",
            Action::MfaChanged => "operator.mfa_changed",
            Action::RoleChanged => "operator.role_changed",
            Action::TokenCreated => "token.created",
            Action::TokenRevoked => "token.revoked",
            Action::Deploy => "app.deploy",
            Action::Install => "app.install",
            Action::Upgrade => "app.upgrade",
            Action::Consent => "app.consent",
            Action::Rollback => "app.rollback",
            Action::VariableSet => "variable.set",
            Action::VariableUnset => "variable.unset",
            Action::KeyRotation => "keys.rotate",
            Action::EgressAllowed => "egress.allowed",
            Action::EgressDenied => "egress.denied",
            Action::ProductRequest => "product.request",
            Action::ScopeRefused => "product.scope_refused",
            Action::SandboxFault => "sandbox.fault",
            Action::ConfigChanged => "config.changed",
            Action::AuditExport => "audit.export",
            Action::AuditVerify => "audit.verify",
            Action::AdminRequest => "admin.request",
            Action::UserConsent => "user.consent",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Tried and failed (bad input, a fault).
    Failure,
    /// Refused by policy (consent, permissions, authorization).
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// What an egress decision record holds (the gateway's record, by field).
#[derive(Debug, Clone, Copy)]
pub struct EgressHop<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub address: Option<&'a str>,
    pub allowed: bool,
    pub status: Option<u16>,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub reason: Option<&'a str>,
    /// Reached loopback through the gateway's insecure test setting.
    pub insecure: bool,
}

/// What a product gateway decision record holds: the route (its template,
/// not the path, so no identifiers from the app's data), on whose behalf,
/// and how it ended; never a body, a header's value or a token.
#[derive(Debug, Clone, Copy)]
pub struct ProductCall<'a> {
    pub product: &'a str,
    pub method: &'a str,
    /// The matched template, or the refused path cut to 300 characters.
    pub route: &'a str,
    /// `app`, `user`, `impersonation` or `none`.
    pub acting: &'a str,
    pub account_id: Option<&'a str>,
    pub status: Option<u16>,
    pub request_bytes: usize,
    pub response_bytes: usize,
    /// Why it was refused, when it was.
    pub refused: Option<&'a str>,
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// Someone at the command line on the Kiln host, by their OS user name.
    Cli(String),
    /// A signed-in operator account.
    Operator(String),
    /// Kiln itself (roll-outs, the sandbox, schedules).
    System,
    /// An app's code, through the host calls it makes (egress, product
    /// requests); by app id.
    App(String),
    /// A person of the product site, by account id, whom the site vouched
    /// for (a verified context token): a user's own OAuth consent.
    User(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Cli(user) => write!(f, "cli:{user}"),
            Actor::Operator(name) => write!(f, "operator:{name}"),
            Actor::System => f.write_str("system"),
            Actor::App(id) => write!(f, "app:{id}"),
            Actor::User(account) => write!(f, "user:{account}"),
        }
    }
}

/// Who acted, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub actor: Actor,
    /// The network address a request came from, if it came over one.
    pub source: Option<String>,
}

impl Context {
    pub fn cli(user: &str) -> Self {
        Context { actor: Actor::Cli(user.to_owned()), source: None }
    }

    pub fn system() -> Self {
        Context { actor: Actor::System, source: None }
    }
}

/// One event, built by the constructors below. Targets and details hold
/// identifiers, versions, counts and names; never a stored value, secret,
/// token or payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub(crate) action: Action,
    pub(crate) target: String,
    pub(crate) outcome: Outcome,
    pub(crate) details: Value,
}

fn app_target(app: &str, env: &str) -> String {
    format!("app:{app}/{env}")
}

fn installation_target(app: &str, env: &str, site: &str, product: &str) -> String {
    format!("installation:{app}/{env}@{site}#{product}")
}

impl Event {
    fn new(action: Action, target: String, details: Value) -> Self {
        Event { action, target, outcome: Outcome::Success, details }
    }

    pub fn action(&self) -> Action {
        self.action
    }

    /// The same event, failed: `reason` says why (an error kind and message
    /// about the request, never data from it).
    pub fn failed(mut self, reason: &str) -> Self {
        self.outcome = Outcome::Failure;
        self.with_reason(reason)
    }

    /// The same event, refused by policy.
    pub fn denied(mut self, reason: &str) -> Self {
        self.outcome = Outcome::Denied;
        self.with_reason(reason)
    }

    fn with_reason(mut self, reason: &str) -> Self {
        let reason: String = reason.chars().take(500).collect();
        if let Value::Object(map) = &mut self.details {
            map.insert("reason".into(), Value::String(reason));
        }
        self
    }

    pub fn deploy(
        app: &str,
        env: &str,
        version: &str,
        previous: Option<&str>,
        change: &str,
        bundle: &str,
    ) -> Self {
        Event::new(
            Action::Deploy,
            app_target(app, env),
            json!({ "version": version, "previous": previous, "change": change, "bundle": bundle }),
        )
    }

    /// A deploy that did not store a version (its details say why).
    pub fn deploy_attempt(app: Option<&str>, env: &str) -> Self {
        Event::new(Action::Deploy, app_target(app.unwrap_or("unknown"), env), json!({}))
    }

    pub fn install(
        app: &str,
        env: &str,
        site: &str,
        product: &str,
        version: &str,
        installation: &str,
    ) -> Self {
        Event::new(
            Action::Install,
            installation_target(app, env, site, product),
            json!({ "version": version, "installation": installation }),
        )
    }

    /// `automatic`: a minor version rolled out by a deploy, not asked for.
    pub fn upgrade(
        app: &str,
        env: &str,
        site: &str,
        product: &str,
        from: &str,
        to: &str,
        automatic: bool,
    ) -> Self {
        Event::new(
            Action::Upgrade,
            installation_target(app, env, site, product),
            json!({ "from": from, "to": to, "automatic": automatic }),
        )
    }

    /// An upgrade, install or rollback that did not happen (see
    /// [`Event::failed`] and [`Event::denied`]).
    pub fn attempt(action: Action, app: &str, env: &str, site: &str, product: Option<&str>) -> Self {
        let target = installation_target(app, env, site, product.unwrap_or("unknown"));
        Event::new(action, target, json!({}))
    }

    /// An installation's admin accepted a version's permissions.
    pub fn consent(app: &str, env: &str, site: &str, product: &str, version: &str, added: &[String]) -> Self {
        Event::new(
            Action::Consent,
            installation_target(app, env, site, product),
            json!({ "version": version, "added": added }),
        )
    }

    pub fn rollback(app: &str, env: &str, site: &str, product: &str, from: &str, to: &str) -> Self {
        Event::new(
            Action::Rollback,
            installation_target(app, env, site, product),
            json!({ "from": from, "to": to }),
        )
    }

    /// A variable was set; its value is not recorded.
    pub fn variable_set(app: &str, env: &str, name: &str, encrypted: bool) -> Self {
        Event::new(Action::VariableSet, app_target(app, env), json!({ "name": name, "encrypted": encrypted }))
    }

    pub fn variable_unset(app: &str, env: &str, name: &str) -> Self {
        Event::new(Action::VariableUnset, app_target(app, env), json!({ "name": name }))
    }

    /// `what`: "kek" or "data-keys".
    pub fn key_rotation(what: &str, key_id: Option<&str>, count: usize) -> Self {
        Event::new(Action::KeyRotation, format!("keys:{what}"), json!({ "keyId": key_id, "count": count }))
    }

    /// A worker crashed, was killed by the jail, or broke the protocol.
    pub fn sandbox_fault(app: &str, function: &str, code: &str, message: &str) -> Self {
        let message: String = message.chars().take(300).collect();
        let mut event = Event::new(
            Action::SandboxFault,
            format!("function:{app}#{function}"),
            json!({ "code": code, "message": message }),
        );
        event.outcome = Outcome::Failure;
        event
    }

    /// A new operator account (its password and MFA secret are not recorded).
    pub fn operator_created(name: &str, role: &str) -> Self {
        Event::new(Action::OperatorCreated, format!("operator:{name}"), json!({ "role": role }))
    }

    pub fn operator_disabled(name: &str, sessions: u64, tokens: u64) -> Self {
        Event::new(
            Action::OperatorDisabled,
            format!("operator:{name}"),
            json!({ "sessionsRevoked": sessions, "tokensRevoked": tokens }),
        )
    }

    /// A password was set (not recorded); `sessions` were ended by it.
    pub fn password_changed(name: &str, sessions: u64) -> Self {
        Event::new(
            Action::PasswordChanged,
            format!("operator:{name}"),
            json!({ "sessionsRevoked": sessions }),
        )
    }

    pub fn role_changed(name: &str, from: &str, to: &str) -> Self {
        Event::new(Action::RoleChanged, format!("operator:{name}"), json!({ "from": from, "to": to }))
    }

    /// `change`: "enrolled" or "reset".
    pub fn mfa_changed(name: &str, change: &str) -> Self {
        Event::new(Action::MfaChanged, format!("operator:{name}"), json!({ "change": change }))
    }

    /// A sign-in; `session` is a keyed fingerprint of the session, so later
    /// records about it can be matched without revealing it.
    pub fn login(name: &str, mfa: bool, session: &str) -> Self {
        Event::new(
            Action::OperatorLogin,
            format!("operator:{name}"),
            json!({ "mfa": mfa, "session": session }),
        )
    }

    /// A refused sign-in. `who` is the operator's name when the account
    /// exists, else a keyed fingerprint of what was typed (which may be a
    /// mistyped password, so it is never recorded as typed).
    pub fn login_failed(who: &str, reason: &str, locked: bool) -> Self {
        let mut event =
            Event::new(Action::OperatorLoginFailed, format!("operator:{who}"), json!({ "locked": locked }));
        event.outcome = Outcome::Denied;
        event.with_reason(reason)
    }

    pub fn logout(name: &str, session: &str) -> Self {
        Event::new(Action::OperatorLogout, format!("operator:{name}"), json!({ "session": session }))
    }

    pub fn token_created(owner: &str, id: i64, name: &str, scopes: &[&str], expires_at: i64) -> Self {
        Event::new(
            Action::TokenCreated,
            format!("token:{id}"),
            json!({ "operator": owner, "name": name, "scopes": scopes, "expiresAt": expires_at }),
        )
    }

    pub fn token_revoked(owner: &str, id: i64) -> Self {
        Event::new(Action::TokenRevoked, format!("token:{id}"), json!({ "operator": owner }))
    }

    /// The egress gateway refused a destination.
    pub fn egress_denied(app: &str, installation: &str, host: &str, reason: &str) -> Self {
        Event::new(
            Action::EgressDenied,
            format!("installation:{installation}"),
            json!({ "app": app, "host": host }),
        )
        .denied(reason)
    }

    /// One egress gateway decision: where, and how it ended; never a body
    /// or a header's value.
    pub fn egress(app: &str, installation: &str, hop: &EgressHop<'_>) -> Self {
        let mut details = json!({
            "app": app,
            "method": hop.method,
            "host": hop.host,
            "port": hop.port,
            "address": hop.address,
            "status": hop.status,
            "requestBytes": hop.request_bytes,
            "responseBytes": hop.response_bytes,
        });
        if let (true, Some(map)) = (hop.insecure, details.as_object_mut()) {
            map.insert("insecure".into(), json!("insecure_allow_loopback"));
        }
        let target = format!("installation:{installation}");
        match (hop.allowed, hop.reason) {
            (true, _) => Event::new(Action::EgressAllowed, target, details),
            (false, reason) => {
                Event::new(Action::EgressDenied, target, details).denied(reason.unwrap_or("refused"))
            }
        }
    }

    /// One product gateway decision (`requestJira`, `requestConfluence`).
    pub fn product(app: &str, installation: &str, call: &ProductCall<'_>) -> Self {
        let route: String = call.route.chars().take(300).collect();
        let details = json!({
            "app": app,
            "product": call.product,
            "method": call.method,
            "route": route,
            "acting": call.acting,
            "accountId": call.account_id,
            "status": call.status,
            "requestBytes": call.request_bytes,
            "responseBytes": call.response_bytes,
        });
        let target = format!("installation:{installation}");
        match call.refused {
            None => Event::new(Action::ProductRequest, target, details),
            Some(reason) => Event::new(Action::ScopeRefused, target, details).denied(reason),
        }
    }

    /// A request to the admin API: the route it matched, the path asked for
    /// (identifiers only: no query string, no body), the scope it needed,
    /// and why it was refused, if it was.
    pub fn admin_request(method: &str, route: &str, path: &str, scope: &str, refused: Option<&str>) -> Self {
        let path: String = path.chars().take(300).collect();
        let event = Event::new(
            Action::AdminRequest,
            format!("route:{method} {route}"),
            json!({ "path": path, "scope": scope }),
        );
        match refused {
            Some(reason) => event.denied(reason),
            None => event,
        }
    }

    /// A user let an installation act for them (`asUser()`): their OAuth
    /// consent came back, for their own account, and the tokens are kept.
    /// The account and the scopes granted; never a code or a token.
    pub fn user_consent(app: &str, installation: &str, account_id: &str, scopes: &[String]) -> Self {
        Event::new(
            Action::UserConsent,
            format!("installation:{installation}"),
            json!({ "app": app, "accountId": account_id, "scopes": scopes }),
        )
    }

    pub fn audit_export(format: &str, after: i64, records: u64) -> Self {
        Event::new(
            Action::AuditExport,
            "audit".into(),
            json!({ "format": format, "after": after, "records": records }),
        )
    }

    pub fn audit_verify(records: u64, problems: usize) -> Self {
        let mut event = Event::new(
            Action::AuditVerify,
            "audit".into(),
            json!({ "records": records, "problems": problems }),
        );
        if problems > 0 {
            event.outcome = Outcome::Failure;
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_a_unique_name_that_parses_back() {
        let mut seen = std::collections::HashSet::new();
        for action in Action::ALL {
            assert!(seen.insert(action.as_str()), "{action:?} repeats a name");
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        assert_eq!(Action::parse("app.delete_everything"), None);
    }
}
