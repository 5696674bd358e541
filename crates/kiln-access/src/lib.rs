//! `kiln-access`: the people who run Kiln, and what each may do.
//!
//! - [`policy`]: roles, operations and the one table that authorizes them,
//!   with a deny rule no role can pass: nobody reads customer data.
//! - [`Access`]: operator accounts with Argon2id passwords and TOTP (each
//!   code accepted once), sign-in throttled per source address and locked
//!   per account after repeated failures, sessions with idle and absolute
//!   timeouts, and API tokens (shown once, stored hashed, scoped, expiring).
//!
//! Every change, and every refused sign-in, is recorded in the audit trail
//! in the transaction that makes it.

#![forbid(unsafe_code)]

pub mod policy;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kiln_audit::{Audit, AuditError, Event};
use kiln_crypto::Sha256;
use kiln_kvs::{Clock, Kvs, KvsError};
use kiln_store::{Millis, NewOperator, OperatorRow, SessionRow, Store, StoreError};
use zeroize::Zeroizing;

pub use policy::{Credential, Decision, Operation, Role, authorize};

const MINUTE: Millis = 60_000;
const DAY: Millis = 24 * 60 * MINUTE;

/// Limits on sign-in and on how long a credential lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Consecutive failures that lock an account.
    pub lock_after: i64,
    /// How long a lock lasts.
    pub lock_for: Millis,
    /// Failures from one source address within `source_window` before that
    /// address is refused outright.
    pub source_limit: i64,
    pub source_window: Millis,
    /// A session unused this long ends.
    pub session_idle: Millis,
    /// A session ends this long after sign-in, used or not.
    pub session_absolute: Millis,
    /// The longest an API token may live.
    pub token_max_lifetime: Millis,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lock_after: 5,
            lock_for: 15 * MINUTE,
            source_limit: 20,
            source_window: 15 * MINUTE,
            session_idle: 15 * MINUTE,
            session_absolute: 12 * 60 * MINUTE,
            token_max_lifetime: 90 * DAY,
        }
    }
}

/// Why an access operation did not happen. Sign-in failures say nothing
/// about which part was wrong.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("sign-in failed: wrong name, password or code")]
    BadCredentials,
    #[error("sign-in refused: the account is locked after repeated failures; try again later")]
    Locked,
    #[error("sign-in refused: too many failed attempts from this address; try again later")]
    Throttled,
    #[error("the session or token has expired or was revoked; sign in again")]
    Unauthenticated,
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no operator named {0:?}")]
    UnknownOperator(String),
    #[error("the access store failed: {0}")]
    Store(#[from] StoreError),
    #[error("the audit trail cannot be written: {0}")]
    Audit(#[from] AuditError),
    #[error("sealed storage failed: {0}")]
    Sealed(#[from] KvsError),
    #[error("{0}")]
    Crypto(#[from] kiln_crypto::envelope::CryptoError),
}

/// Who is acting, how they proved it, and what their role is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub operator_id: i64,
    pub name: String,
    pub role: Role,
    pub credential: Credential,
}

impl Principal {
    /// The policy's decision for this principal.
    pub fn may(&self, op: Operation) -> Decision {
        authorize(self.role, &self.credential, op)
    }

    /// `Ok` if allowed, else [`AccessError::Forbidden`].
    pub fn require(&self, op: Operation) -> Result<(), AccessError> {
        match self.may(op) {
            Decision::Allow => Ok(()),
            Decision::Deny(why) => Err(AccessError::Forbidden(why)),
        }
    }
}

/// A new account's one-time secrets, shown once to whoever created it.
#[derive(Debug)]
pub struct NewAccount {
    pub name: String,
    pub role: Role,
    pub password: Zeroizing<String>,
    /// The `otpauth://` URI to scan, when the account has a second factor.
    pub totp_uri: Option<Zeroizing<String>>,
}

/// A session secret as the client holds it, and when it was made.
#[derive(Debug)]
pub struct SessionSecret(pub Zeroizing<String>);

impl SessionSecret {
    /// The `Set-Cookie` value: host-only (`__Host-`), never sent over plain
    /// HTTP, invisible to scripts, never sent cross-site.
    pub fn cookie(&self, settings: &Settings) -> String {
        format!(
            "{COOKIE_NAME}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
            self.0.as_str(),
            settings.session_absolute / 1000
        )
    }
}

/// The session cookie's name.
pub const COOKIE_NAME: &str = "__Host-kiln_session";
/// The prefix of API tokens, so that secret scanners can find leaked ones.
pub const TOKEN_PREFIX: &str = "kiln_pat_";
/// The sealed-storage owner holding operators' TOTP secrets.
const MFA_OWNER: &str = "kiln:operators";

fn mfa_key(operator_id: i64) -> String {
    format!("totp:{operator_id}")
}

fn random_secret(bytes: usize) -> Result<Zeroizing<String>, AccessError> {
    let mut raw = Zeroizing::new(vec![0u8; bytes]);
    kiln_crypto::fill_random(&mut raw)
        .map_err(|_| AccessError::Crypto(kiln_crypto::envelope::CryptoError::Random))?;
    Ok(Zeroizing::new(URL_SAFE_NO_PAD.encode(raw.as_slice())))
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::of(secret.as_bytes()).as_bytes().to_vec()
}

/// Operator names: lower-case letters, digits, `.`, `_`, `-`, 1 to 64.
pub fn check_name(name: &str) -> Result<(), AccessError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AccessError::Invalid(format!(
            "operator names are 1 to 64 of a-z, 0-9, '.', '_' and '-'; got {:?}",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Operator accounts, sign-in, sessions and tokens over one store.
pub struct Access {
    store: Store,
    sealed: Kvs,
    settings: Settings,
    clock: Clock,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Access {
    /// `sealed` holds TOTP secrets (sealed like app secrets, under the
    /// key provider's keys).
    pub fn new(store: Store, sealed: Kvs, settings: Settings) -> Self {
        Access::with_clock(store, sealed, settings, Arc::new(kiln_store::now_millis))
    }

    pub fn with_clock(store: Store, sealed: Kvs, settings: Settings, clock: Clock) -> Self {
        Access { store, sealed, settings, clock }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn now(&self) -> Millis {
        (self.clock)()
    }

    /// Create an account with a generated password (and a TOTP secret for
    /// roles that need one, or when `mfa` asks for it). The secrets are in
    /// the result only.
    pub async fn add_operator(
        &self,
        name: &str,
        role: Role,
        mfa: bool,
        audit: Audit<'_>,
    ) -> Result<NewAccount, AccessError> {
        check_name(name)?;
        let password = random_secret(18)?;
        let hash = kiln_crypto::password::hash(&password)?;
        let mut tx = self.store.begin().await?;
        if tx.operator_by_name(name).await?.is_some() {
            return Err(AccessError::Conflict(format!("an operator named {name:?} already exists")));
        }
        let new = NewOperator { name, role: role.as_str(), password_hash: &hash, mfa_enrolled: false };
        let id = tx.operator_insert(new, self.now()).await?;
        audit.append(&mut tx, Event::operator_created(name, role.as_str())).await?;
        tx.commit().await?;
        let totp_uri =
            if mfa || role.requires_mfa() { Some(self.enroll_mfa(id, name, audit).await?) } else { None };
        Ok(NewAccount { name: name.to_owned(), role, password, totp_uri })
    }

    /// A new TOTP secret for operator `id`, replacing any old one. Until
    /// this completes, an account whose role needs MFA cannot sign in.
    async fn enroll_mfa(
        &self,
        id: i64,
        name: &str,
        audit: Audit<'_>,
    ) -> Result<Zeroizing<String>, AccessError> {
        let secret = kiln_crypto::otp::new_secret()?;
        let encoded = Zeroizing::new(kiln_crypto::otp::base32(&secret));
        self.sealed.set_token(MFA_OWNER, &mfa_key(id), &encoded, None).await?;
        let mut tx = self.store.begin().await?;
        tx.operator_set_mfa(id, true).await?;
        audit.append(&mut tx, Event::mfa_changed(name, "enrolled")).await?;
        tx.commit().await?;
        Ok(Zeroizing::new(kiln_crypto::otp::otpauth_uri("Kiln", name, &secret)))
    }

    /// Give `name` a new TOTP secret (a lost phone); every session and
    /// token of theirs ends.
    pub async fn reset_mfa(&self, name: &str, audit: Audit<'_>) -> Result<Zeroizing<String>, AccessError> {
        let op = self.operator(name).await?;
        self.revoke_everything(&op, audit, None).await?;
        self.enroll_mfa(op.id, name, audit).await
    }

    /// Set `name`'s password (at least [`MIN_PASSWORD_CHARS`]); every
    /// session of theirs ends.
    pub async fn set_password(
        &self,
        name: &str,
        password: &str,
        audit: Audit<'_>,
    ) -> Result<(), AccessError> {
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(AccessError::Invalid(format!(
                "passwords are at least {MIN_PASSWORD_CHARS} characters"
            )));
        }
        let op = self.operator(name).await?;
        let hash = kiln_crypto::password::hash(password)?;
        let mut tx = self.store.begin().await?;
        tx.operator_set_password(op.id, &hash).await?;
        let sessions = tx.sessions_revoke_all(op.id, self.now()).await?;
        tx.operator_reset_failures(op.id).await?;
        audit.append(&mut tx, Event::password_changed(name, sessions)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn operator(&self, name: &str) -> Result<OperatorRow, AccessError> {
        let mut tx = self.store.begin_read().await?;
        let op = tx.operator_by_name(name).await?;
        tx.commit().await?;
        op.ok_or_else(|| AccessError::UnknownOperator(name.to_owned()))
    }

    /// Every account, for `kiln admin user list`: names, roles and state;
    /// never a hash or secret.
    pub async fn operators(&self) -> Result<Vec<OperatorRow>, AccessError> {
        let mut tx = self.store.begin_read().await?;
        let mut rows = tx.operators().await?;
        tx.commit().await?;
        for row in &mut rows {
            row.password_hash = String::new();
        }
        Ok(rows)
    }

    /// Change `name`'s role; their sessions end so that the next request
    /// is made under the new role.
    pub async fn set_role(&self, name: &str, role: Role, audit: Audit<'_>) -> Result<(), AccessError> {
        let op = self.operator(name).await?;
        let mut tx = self.store.begin().await?;
        tx.operator_set_role(op.id, role.as_str()).await?;
        tx.sessions_revoke_all(op.id, self.now()).await?;
        audit.append(&mut tx, Event::role_changed(name, &op.role, role.as_str())).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Disable `name`: no sign-in, and every session and token ends now.
    pub async fn disable(&self, name: &str, audit: Audit<'_>) -> Result<(), AccessError> {
        let op = self.operator(name).await?;
        self.revoke_everything(&op, audit, Some(self.now())).await
    }

    async fn revoke_everything(
        &self,
        op: &OperatorRow,
        audit: Audit<'_>,
        disable_at: Option<Millis>,
    ) -> Result<(), AccessError> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let sessions = tx.sessions_revoke_all(op.id, now).await?;
        let tokens = tx.tokens_revoke_all(op.id, now).await?;
        if disable_at.is_some() {
            tx.operator_set_disabled(op.id, disable_at).await?;
            audit.append(&mut tx, Event::operator_disabled(&op.name, sessions, tokens)).await?;
        } else {
            tx.operator_set_mfa(op.id, false).await?;
            audit.append(&mut tx, Event::mfa_changed(&op.name, "reset")).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sign in with a password and, when the account has a second factor
    /// (always for privileged roles), a current TOTP code that has not been
    /// used before. `source` is the client's address.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        code: Option<&str>,
        source: &str,
        audit: Audit<'_>,
    ) -> Result<(SessionSecret, Principal), AccessError> {
        let now = self.now();
        let mut tx = self.store.begin().await?;
        if tx.login_failures_since(source, now - self.settings.source_window).await?
            >= self.settings.source_limit
        {
            let who = self.who(&mut tx, name, audit).await?;
            audit.append(&mut tx, Event::login_failed(&who, "throttled", false)).await?;
            tx.commit().await?;
            return Err(AccessError::Throttled);
        }
        let Some(op) = tx.operator_by_name(name).await? else {
            // Spend the same time as a real check, so that timing does not
            // say which names exist.
            let _ = kiln_crypto::password::verify(password, DUMMY_HASH);
            let who = unknown_name(audit, name);
            return self.fail(tx, None, &who, "bad credentials", source, audit).await;
        };
        if op.locked_until.is_some_and(|t| t > now) {
            tx.login_failure_insert(source, now).await?;
            audit.append(&mut tx, Event::login_failed(&op.name, "account locked", true)).await?;
            tx.commit().await?;
            return Err(AccessError::Locked);
        }
        let password_ok = kiln_crypto::password::verify(password, &op.password_hash)?;
        if !password_ok || op.disabled_at.is_some() {
            let reason = if password_ok { "account disabled" } else { "bad credentials" };
            return self.fail(tx, Some(&op), &op.name, reason, source, audit).await;
        }
        let role: Role = op.role.parse().map_err(AccessError::Invalid)?;
        let needs_code = op.mfa_enrolled || role.requires_mfa();
        if needs_code {
            if !op.mfa_enrolled {
                return self.fail(tx, Some(&op), &op.name, "second factor not enrolled", source, audit).await;
            }
            let step = match code {
                Some(code) => self.matching_step(op.id, code, now).await?,
                None => None,
            };
            let fresh = match step {
                Some(step) => tx.operator_use_mfa_step(op.id, step).await?,
                None => false,
            };
            if !fresh {
                let reason = if step.is_some() { "code already used" } else { "bad second factor" };
                return self.fail(tx, Some(&op), &op.name, reason, source, audit).await;
            }
        }
        tx.operator_reset_failures(op.id).await?;
        let secret = random_secret(32)?;
        let row = SessionRow {
            token_hash: digest(&secret),
            operator_id: op.id,
            created_at: now,
            last_seen_at: now,
            revoked_at: None,
            source: Some(source.to_owned()),
        };
        tx.session_insert(&row).await?;
        let fingerprint = audit.auditor.fingerprint(secret.as_bytes());
        audit.append(&mut tx, Event::login(&op.name, needs_code, &fingerprint)).await?;
        tx.commit().await?;
        let principal =
            Principal { operator_id: op.id, name: op.name, role, credential: Credential::Session };
        Ok((SessionSecret(secret), principal))
    }

    /// The name to record for a sign-in attempt: the account's, or a keyed
    /// fingerprint when no such account exists.
    async fn who(
        &self,
        tx: &mut kiln_store::Tx,
        name: &str,
        audit: Audit<'_>,
    ) -> Result<String, AccessError> {
        Ok(match tx.operator_by_name(name).await? {
            Some(op) => op.name,
            None => unknown_name(audit, name),
        })
    }

    async fn fail<T>(
        &self,
        mut tx: kiln_store::Tx,
        op: Option<&OperatorRow>,
        who: &str,
        reason: &str,
        source: &str,
        audit: Audit<'_>,
    ) -> Result<T, AccessError> {
        let now = self.now();
        tx.login_failure_insert(source, now).await?;
        let mut locked = false;
        if let Some(op) = op {
            let lock =
                (op.failed_logins + 1 >= self.settings.lock_after).then_some(now + self.settings.lock_for);
            tx.operator_failed_login(op.id, lock).await?;
            locked = lock.is_some();
        }
        audit.append(&mut tx, Event::login_failed(who, reason, locked)).await?;
        tx.commit().await?;
        Err(if locked { AccessError::Locked } else { AccessError::BadCredentials })
    }

    /// The step (now, one before, or one after, for clock drift) whose code
    /// is `code`, if any.
    async fn matching_step(&self, id: i64, code: &str, now: Millis) -> Result<Option<i64>, AccessError> {
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(None);
        }
        let Ok(wanted) = code.parse::<u32>() else { return Ok(None) };
        let Some(encoded) = self.sealed.get_token(MFA_OWNER, &mfa_key(id)).await? else { return Ok(None) };
        let secret = Zeroizing::new(kiln_crypto::otp::base32_decode(&encoded).ok_or_else(|| {
            AccessError::Invalid("the stored second-factor secret is damaged; reset it".into())
        })?);
        let current = kiln_crypto::otp::step_at(u64::try_from(now / 1000).unwrap_or(0));
        let found = [current, current.saturating_sub(1), current + 1]
            .into_iter()
            .find(|step| kiln_crypto::otp::code(&secret, *step) == wanted);
        Ok(found.and_then(|s| i64::try_from(s).ok()))
    }

    /// The principal behind a session secret, if the session is live: not
    /// revoked, used within the idle timeout, younger than the absolute
    /// one, and its operator not disabled. Using it resets the idle clock.
    pub async fn session(&self, secret: &str) -> Result<Principal, AccessError> {
        let now = self.now();
        let hash = digest(secret);
        let mut tx = self.store.begin().await?;
        let Some(session) = tx.session_get(&hash).await? else { return Err(AccessError::Unauthenticated) };
        let live = session.revoked_at.is_none()
            && now - session.last_seen_at < self.settings.session_idle
            && now - session.created_at < self.settings.session_absolute;
        let op = tx.operator_by_id(session.operator_id).await?;
        let Some(op) = op.filter(|op| live && op.disabled_at.is_none()) else {
            return Err(AccessError::Unauthenticated);
        };
        tx.session_touch(&hash, now).await?;
        tx.commit().await?;
        let role: Role = op.role.parse().map_err(AccessError::Invalid)?;
        Ok(Principal { operator_id: op.id, name: op.name, role, credential: Credential::Session })
    }

    /// End a session.
    pub async fn logout(&self, secret: &str, audit: Audit<'_>) -> Result<(), AccessError> {
        let hash = digest(secret);
        let mut tx = self.store.begin().await?;
        let Some(session) = tx.session_get(&hash).await? else { return Err(AccessError::Unauthenticated) };
        if tx.session_revoke(&hash, self.now()).await? {
            let name = tx.operator_by_id(session.operator_id).await?.map(|o| o.name).unwrap_or_default();
            audit
                .append(&mut tx, Event::logout(&name, &audit.auditor.fingerprint(secret.as_bytes())))
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A new API token for `principal`, limited to `scopes` (each one the
    /// role can use) and living `lifetime` (at most the configured maximum).
    /// The secret is in the result only; the store keeps its SHA-256.
    pub async fn create_token(
        &self,
        principal: &Principal,
        name: &str,
        scopes: &[&str],
        lifetime: Millis,
        audit: Audit<'_>,
    ) -> Result<(i64, Zeroizing<String>), AccessError> {
        principal.require(Operation::SelfTokens)?;
        if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(AccessError::Invalid("a token name is 1 to 100 printable characters".into()));
        }
        if scopes.is_empty() {
            return Err(AccessError::Invalid("a token needs at least one scope".into()));
        }
        let allowed = policy::scopes_for(principal.role);
        if let Some(bad) = scopes.iter().find(|s| !allowed.contains(s)) {
            return Err(AccessError::Forbidden(format!(
                "the {} role cannot grant the scope {bad:?}; it can grant {}",
                principal.role,
                allowed.join(", ")
            )));
        }
        if lifetime <= 0 || lifetime > self.settings.token_max_lifetime {
            return Err(AccessError::Invalid(format!(
                "a token lives at most {} days",
                self.settings.token_max_lifetime / DAY
            )));
        }
        let secret = Zeroizing::new(format!("{TOKEN_PREFIX}{}", random_secret(32)?.as_str()));
        let now = self.now();
        let expires_at = now + lifetime;
        let scopes_json = serde_json::to_string(scopes).map_err(|e| AccessError::Invalid(e.to_string()))?;
        let mut tx = self.store.begin().await?;
        let id = tx
            .token_insert(&digest(&secret), principal.operator_id, name, &scopes_json, now, expires_at)
            .await?;
        audit.append(&mut tx, Event::token_created(&principal.name, id, name, scopes, expires_at)).await?;
        tx.commit().await?;
        Ok((id, secret))
    }

    /// The principal behind an API token, if it is live.
    pub async fn token(&self, secret: &str) -> Result<Principal, AccessError> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Err(AccessError::Unauthenticated);
        }
        let now = self.now();
        let mut tx = self.store.begin().await?;
        let Some(token) = tx.token_by_hash(&digest(secret)).await? else {
            return Err(AccessError::Unauthenticated);
        };
        let op = tx.operator_by_id(token.operator_id).await?;
        let live = token.revoked_at.is_none() && token.expires_at > now;
        let Some(op) = op.filter(|op| live && op.disabled_at.is_none()) else {
            return Err(AccessError::Unauthenticated);
        };
        tx.token_touch(token.id, now).await?;
        tx.commit().await?;
        let scopes: Vec<String> = serde_json::from_str(&token.scopes)
            .map_err(|_| AccessError::Invalid(format!("token {} has damaged scopes", token.id)))?;
        let role: Role = op.role.parse().map_err(AccessError::Invalid)?;
        Ok(Principal { operator_id: op.id, name: op.name, role, credential: Credential::Token { scopes } })
    }

    /// Revoke token `id`: the principal's own, or anyone's for those who
    /// manage operators.
    pub async fn revoke_token(
        &self,
        principal: &Principal,
        id: i64,
        audit: Audit<'_>,
    ) -> Result<(), AccessError> {
        let mut tx = self.store.begin().await?;
        let owner = tx.tokens_of(principal.operator_id).await?.iter().any(|t| t.id == id);
        if !owner {
            principal.require(Operation::OperatorsManage)?;
        }
        if !tx.token_revoke(id, self.now()).await? {
            return Err(AccessError::Invalid(format!("token {id} does not exist or is already revoked")));
        }
        audit.append(&mut tx, Event::token_revoked(&principal.name, id)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `name` as a principal signed in by the host's owner: for creating a
    /// token on their behalf from the command line on the Kiln host.
    pub async fn operator_principal(&self, name: &str) -> Result<Principal, AccessError> {
        let op = self.operator(name).await?;
        if op.disabled_at.is_some() {
            return Err(AccessError::Invalid(format!("{name} is disabled")));
        }
        let role: Role = op.role.parse().map_err(AccessError::Invalid)?;
        Ok(Principal { operator_id: op.id, name: op.name, role, credential: Credential::Session })
    }

    /// `name`'s API tokens (never their secrets, which are not stored).
    pub async fn tokens(&self, name: &str) -> Result<Vec<kiln_store::TokenRow>, AccessError> {
        let op = self.operator(name).await?;
        let mut tx = self.store.begin_read().await?;
        let rows = tx.tokens_of(op.id).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// The principal for the command line on the Kiln host: whoever can
    /// read the data directory and the key file is already the owner of
    /// this installation, so it acts as an owner without signing in, and
    /// every action is recorded under its OS user name.
    pub fn host_principal(user: &str) -> Principal {
        Principal {
            operator_id: 0,
            name: format!("host:{user}"),
            role: Role::Owner,
            credential: Credential::Session,
        }
    }
}

/// How a sign-in under a name that has no account is recorded: a keyed
/// fingerprint, since what was typed may be a password.
fn unknown_name(audit: Audit<'_>, typed: &str) -> String {
    format!("unknown#{}", audit.auditor.fingerprint(typed.as_bytes()))
}

/// An Argon2id hash of a random password, verified against when the name
/// does not exist.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$a2lsbmtpbG5raWxua2lsbg$qMc6zwu0CtshqaA8VQKkJ7v6CrlnM0OcVgrsnNyDnO8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_host_only_secure_httponly_and_strict() {
        let cookie = SessionSecret(Zeroizing::new("s3cr3t".into())).cookie(&Settings::default());
        assert_eq!(
            cookie,
            "__Host-kiln_session=s3cr3t; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=43200"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("alice.smith-2").is_ok());
        for bad in ["", "Alice", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
