//! `kiln-apps`: the life of an app, from deploy to the moment a function
//! would be invoked.
//!
//! - [`deploy`] validates the manifest, bundles the code and stores a new
//!   version. The version is major when its grants differ from the previous
//!   version's the way Forge counts (see [`kiln_manifest::Grants::classify`]),
//!   minor otherwise. A minor version rolls out at once to every installation
//!   on its major version, in the same transaction that stores it.
//! - [`install`] records an installation whose consent is exactly the
//!   current version's grants.
//! - [`plan_upgrade`] / [`upgrade`] move an installation to a newer version,
//!   requiring the admin's acceptance when that version needs grants the
//!   installation has not consented to.
//! - [`rollback`] moves an installation to an earlier version, and never to
//!   one that needs grants beyond the current consent.
//!
//! The invariant every operation keeps: an installation only ever runs a
//! version whose grants its consent covers.

#![forbid(unsafe_code)]

use std::path::Path;

use kiln_audit::{Action, Audit, AuditError, Event};
use kiln_bundle::{BundleError, build};
use kiln_crypto::Sha256;
use kiln_manifest::{GrantChange, Grants, LoadError, Manifest, VariableSource, VersionChange};
use kiln_store::{
    EventKind, InstallationRecord, NewVersion, Store, StoreError, VersionOrigin, VersionRecord,
};
use kiln_types::{AppId, Environment, InstallationId, Product, SiteUrl, Version};
use serde::Serialize;

/// Why a lifecycle operation did not happen. Nothing is stored when one of
/// these is returned.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Manifest(#[from] LoadError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{app} has no version in {environment}; run 'kiln deploy -e {environment}' first")]
    NotDeployed { app: AppId, environment: Environment },
    #[error(
        "{app} is not installed on {site} in {environment}; run 'kiln install --site {site} -e {environment}' first"
    )]
    NotInstalled { app: AppId, site: SiteUrl, environment: Environment },
    #[error(
        "{app} is already installed on {site} ({product}) in {environment}; use 'kiln upgrade' to change its version"
    )]
    AlreadyInstalled { app: AppId, site: SiteUrl, product: Product, environment: Environment },
    #[error("{0}")]
    AmbiguousProduct(String),
    #[error("version {version} does not exist in {environment}; 'kiln versions -e {environment}' lists them")]
    UnknownVersion { version: Version, environment: Environment },
    #[error(
        "{site} needs the admin's consent to move to {to}:\n{}\n  hint: review the permissions, then run 'kiln upgrade --site {site} --yes' to accept them",
        bullet(changes)
    )]
    ConsentRequired { site: SiteUrl, to: Version, changes: Vec<GrantChange> },
    #[error(
        "rolling {site} back to {to} would grant permissions its admin has not consented to:\n{}\n  hint: pick a version within the current consent, or deploy a fix as a new version",
        bullet(changes)
    )]
    RollbackWouldWiden { site: SiteUrl, to: Version, changes: Vec<GrantChange> },
    #[error("{site} runs {current}; {target} is not earlier, so this is not a rollback (use 'kiln upgrade')")]
    NotEarlier { site: SiteUrl, current: Version, target: Version },
    #[error("{site} runs {current}; {target} is older: use 'kiln rollback --site {site} --to {target}'")]
    NotLater { site: SiteUrl, current: Version, target: Version },
    #[error("{site} has no earlier version to return to; pass --to VERSION")]
    NothingToRollBack { site: SiteUrl },
}

fn bullet(changes: &[GrantChange]) -> String {
    changes.iter().map(|c| format!("  - {c}")).collect::<Vec<_>>().join("\n")
}

impl AppError {
    /// The process exit status a command should end with: 2 for bad input
    /// or usage, 1 for an action that was refused or failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Manifest(_)
            | AppError::Bundle(_)
            | AppError::NotDeployed { .. }
            | AppError::NotInstalled { .. }
            | AppError::AmbiguousProduct(_)
            | AppError::UnknownVersion { .. } => 2,
            AppError::Store(_)
            | AppError::Audit(_)
            | AppError::AlreadyInstalled { .. }
            | AppError::ConsentRequired { .. }
            | AppError::RollbackWouldWiden { .. }
            | AppError::NotEarlier { .. }
            | AppError::NotLater { .. }
            | AppError::NothingToRollBack { .. } => 1,
        }
    }

    /// How the audit trail records this failure: refused by policy, or
    /// failed.
    fn audited(&self, event: Event) -> Event {
        match self {
            AppError::ConsentRequired { .. } | AppError::RollbackWouldWiden { .. } => {
                event.denied(&self.to_string())
            }
            _ => event.failed(&self.to_string()),
        }
    }
}

/// Record a failed operation in a transaction of its own, then return its
/// error. The record is best effort: if the trail cannot be written either,
/// the original error is still what the caller sees (nothing happened).
async fn audit_failure<T>(
    store: &Store,
    audit: Audit<'_>,
    event: Event,
    error: AppError,
) -> Result<T, AppError> {
    if !matches!(error, AppError::Audit(_)) {
        let _ = audit.record(store, error.audited(event)).await;
    }
    Err(error)
}

/// An install, upgrade or rollback, as its failure is recorded.
struct InstallationAttempt<'a> {
    action: Action,
    app: &'a AppId,
    env: &'a Environment,
    site: &'a SiteUrl,
    product: Option<Product>,
}

impl InstallationAttempt<'_> {
    /// `result`, after recording it if it is a failure.
    async fn recorded<T>(
        self,
        store: &Store,
        audit: Audit<'_>,
        result: Result<T, AppError>,
    ) -> Result<T, AppError> {
        match result {
            Err(e) => {
                let (app, env, site) = (self.app.as_str(), self.env.as_str(), self.site.as_str());
                let event = Event::attempt(self.action, app, env, site, self.product.map(Product::as_str));
                audit_failure(store, audit, event, e).await
            }
            ok => ok,
        }
    }
}

// ------------------------------------------------------------------ deploy

/// What to deploy.
pub struct DeployRequest<'a> {
    pub app_dir: &'a Path,
    pub environment: Environment,
    /// Validate, bundle and decide the version, but store nothing.
    pub dry_run: bool,
    /// Values for `${NAME}` in the manifest.
    pub variables: &'a dyn VariableSource,
}

impl std::fmt::Debug for DeployRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployRequest")
            .field("app_dir", &self.app_dir)
            .field("environment", &self.environment)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployOutcome {
    pub app: AppId,
    pub environment: Environment,
    pub version: Version,
    pub previous: Option<Version>,
    pub origin: VersionOrigin,
    pub bundle: Sha256,
    pub modules: usize,
    pub source_bytes: u64,
    pub warnings: Vec<String>,
    pub stored: bool,
    /// Installations moved to this (minor) version by the deploy.
    pub rolled_out: Vec<InstallationMove>,
    /// Installations that need `kiln upgrade` (and consent) to reach it.
    pub pending: Vec<InstallationRef>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallationRef {
    pub site: SiteUrl,
    pub product: Product,
    pub version: Version,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallationMove {
    pub site: SiteUrl,
    pub product: Product,
    pub from: Version,
    pub to: Version,
}

/// Deploy the app in `req.app_dir` as a new version, recorded in the audit
/// trail (a dry run stores and records nothing).
pub async fn deploy(
    store: &Store,
    req: DeployRequest<'_>,
    audit: Audit<'_>,
) -> Result<DeployOutcome, AppError> {
    let (env, dry_run, app_dir, variables) =
        (req.environment.clone(), req.dry_run, req.app_dir, req.variables);
    match deploy_inner(store, req, audit).await {
        Err(e) if !dry_run => {
            // The app, if the manifest says which it is.
            let app = kiln_manifest::load(app_dir, variables).ok().map(|p| p.manifest.app.id);
            let event = Event::deploy_attempt(app.as_ref().map(AppId::as_str), env.as_str());
            audit_failure(store, audit, event, e).await
        }
        other => other,
    }
}

async fn deploy_inner(
    store: &Store,
    req: DeployRequest<'_>,
    audit: Audit<'_>,
) -> Result<DeployOutcome, AppError> {
    let parsed = kiln_manifest::load(req.app_dir, req.variables)?;
    let manifest_source = std::fs::read_to_string(req.app_dir.join(kiln_manifest::MANIFEST_FILE))
        .map_err(|source| LoadError::Io { path: req.app_dir.join(kiln_manifest::MANIFEST_FILE), source })?;
    let manifest = parsed.manifest;
    let built = build(req.app_dir, &manifest)?;
    let grants = Grants::of(&manifest);
    let app = manifest.app.id.clone();
    let env = req.environment;
    let mut warnings: Vec<String> =
        parsed.warnings.iter().map(|d| d.render(kiln_manifest::MANIFEST_FILE)).collect();
    warnings.extend(built.warnings.iter().cloned());

    let mut tx = store.begin().await?;
    tx.lock_app(&app).await?;
    let latest = tx.latest_version(&app, &env).await?;
    let (version, origin) = match &latest {
        None => (Version::FIRST, VersionOrigin::Initial),
        Some(prev) => match prev.grants.classify(&grants) {
            VersionChange::Minor => {
                (prev.version.next_minor(), VersionOrigin::Change { change: VersionChange::Minor })
            }
            major => (prev.version.next_major(), VersionOrigin::Change { change: major }),
        },
    };
    let installations = tx.installations(&app, &env).await?;
    let mut outcome = DeployOutcome {
        app: app.clone(),
        environment: env.clone(),
        version,
        previous: latest.as_ref().map(|v| v.version),
        origin: origin.clone(),
        bundle: built.hash,
        modules: built.bundle.modules.len(),
        source_bytes: built.source_bytes,
        warnings,
        stored: false,
        rolled_out: Vec::new(),
        pending: Vec::new(),
    };
    // Which installations this version reaches: those on the same major
    // whose consent covers it. Everything else waits for `kiln upgrade`.
    let mut reach = Vec::new();
    for inst in installations {
        if inst.version.major == version.major && inst.consent.missing_from(&grants).is_empty() {
            outcome.rolled_out.push(InstallationMove {
                site: inst.site.clone(),
                product: inst.product,
                from: inst.version,
                to: version,
            });
            reach.push(inst);
        } else {
            outcome.pending.push(InstallationRef {
                site: inst.site,
                product: inst.product,
                version: inst.version,
            });
        }
    }
    if req.dry_run {
        return Ok(outcome);
    }

    let app_row = tx.ensure_app(&app).await?;
    tx.put_bundle(&built.hash, &built.encoded).await?;
    let version_id = tx
        .insert_version(NewVersion {
            app_id: app_row,
            environment: &env,
            version,
            manifest_source: &manifest_source,
            manifest: &manifest,
            grants: &grants,
            origin: &origin,
            bundle: built.hash,
        })
        .await?;
    let change = match &origin {
        VersionOrigin::Initial => "initial".to_owned(),
        VersionOrigin::Change { change: VersionChange::Minor } => "minor".to_owned(),
        VersionOrigin::Change { .. } => "major".to_owned(),
    };
    let previous = latest.as_ref().map(|v| v.version.to_string());
    let event = Event::deploy(
        app.as_str(),
        env.as_str(),
        &version.to_string(),
        previous.as_deref(),
        &change,
        &built.hash.to_string(),
    );
    audit.append(&mut tx, event).await?;
    for inst in &reach {
        tx.set_installation_version(inst.id, version_id, None).await?;
        let detail = serde_json::json!({ "reason": "minor version rolled out on deploy" });
        tx.record_event(inst.id, EventKind::AutoUpgraded, Some(inst.version_id), version_id, &detail).await?;
        let event = Event::upgrade(
            app.as_str(),
            env.as_str(),
            inst.site.as_str(),
            inst.product.as_str(),
            &inst.version.to_string(),
            &version.to_string(),
            true,
        );
        audit.append(&mut tx, event).await?;
    }
    tx.commit().await?;
    outcome.stored = true;
    Ok(outcome)
}

// ----------------------------------------------------------------- install

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallOutcome {
    pub installation: InstallationId,
    pub app: AppId,
    pub environment: Environment,
    pub site: SiteUrl,
    pub product: Product,
    pub version: Version,
    pub grants: Grants,
}

/// Install the latest version of `app` in `env` on `site`; the site's
/// consent to its grants is recorded with it.
pub async fn install(
    store: &Store,
    app: &AppId,
    env: &Environment,
    site: &SiteUrl,
    product: Option<Product>,
    audit: Audit<'_>,
) -> Result<InstallOutcome, AppError> {
    let result = install_inner(store, app, env, site, product, audit).await;
    let attempt = InstallationAttempt { action: Action::Install, app, env, site, product };
    attempt.recorded(store, audit, result).await
}

async fn install_inner(
    store: &Store,
    app: &AppId,
    env: &Environment,
    site: &SiteUrl,
    product: Option<Product>,
    audit: Audit<'_>,
) -> Result<InstallOutcome, AppError> {
    let mut tx = store.begin().await?;
    tx.lock_app(app).await?;
    let latest = tx
        .latest_version(app, env)
        .await?
        .ok_or_else(|| AppError::NotDeployed { app: app.clone(), environment: env.clone() })?;
    let product = match product {
        Some(p) => p,
        None => infer_product(&latest.manifest)?,
    };
    let existing = tx.installations(app, env).await?;
    if existing.iter().any(|i| &i.site == site && i.product == product) {
        return Err(AppError::AlreadyInstalled {
            app: app.clone(),
            site: site.clone(),
            product,
            environment: env.clone(),
        });
    }
    let app_row = tx.ensure_app(app).await?;
    let id = tx.insert_installation(app_row, env, site, product, latest.id, &latest.grants).await?;
    let detail = serde_json::json!({ "consented": latest.grants });
    tx.record_event(id, EventKind::Installed, None, latest.id, &detail).await?;
    let public_id =
        tx.installations(app, env)
            .await?
            .into_iter()
            .find(|i| i.id == id)
            .map(|i| i.public_id)
            .ok_or_else(|| StoreError::Corrupt { what: "installation".into(), detail: "vanished".into() })?;
    let version = latest.version.to_string();
    let (a, e, s, p) = (app.as_str(), env.as_str(), site.as_str(), product.as_str());
    audit.append(&mut tx, Event::install(a, e, s, p, &version, &public_id.to_string())).await?;
    let granted: Vec<String> =
        Grants::default().missing_from(&latest.grants).iter().map(ToString::to_string).collect();
    audit.append(&mut tx, Event::consent(a, e, s, p, &version, &granted)).await?;
    tx.commit().await?;
    Ok(InstallOutcome {
        installation: public_id,
        app: app.clone(),
        environment: env.clone(),
        site: site.clone(),
        product,
        version: latest.version,
        grants: latest.grants,
    })
}

/// The product an app is for, read from its module types; apps with only
/// backend modules, or modules for both products, must say.
pub fn infer_product(manifest: &Manifest) -> Result<Product, AppError> {
    let mut jira = false;
    let mut confluence = false;
    for m in &manifest.modules.others {
        let t = m.module_type.as_str();
        jira |= t.starts_with("jira:")
            || t.starts_with("jiraServiceManagement:")
            || t.starts_with("connect-jira:");
        confluence |= t.starts_with("confluence:") || t == "macro" || t.starts_with("connect-confluence:");
    }
    for t in &manifest.modules.triggers {
        for e in &t.events {
            jira |= e.event_type.starts_with("avi:jira");
            confluence |= e.event_type.starts_with("avi:confluence");
        }
    }
    match (jira, confluence) {
        (true, false) => Ok(Product::Jira),
        (false, true) => Ok(Product::Confluence),
        (true, true) => Err(AppError::AmbiguousProduct(
            "the app has both Jira and Confluence modules; pass --product jira or --product confluence".into(),
        )),
        (false, false) => Err(AppError::AmbiguousProduct(
            "the app's modules do not say which product it is for; pass --product jira or --product confluence".into(),
        )),
    }
}

// ----------------------------------------------------------------- upgrade

/// What `kiln upgrade` would do for one installation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradePlan {
    pub site: SiteUrl,
    pub product: Product,
    pub from: Version,
    pub to: Version,
    /// Grants the target needs beyond the current consent: the admin must
    /// accept these.
    pub needs_consent: Vec<GrantChange>,
    /// Everything that changes between the two versions' grants, for display.
    pub changes: Vec<GrantChange>,
}

impl UpgradePlan {
    pub fn is_noop(&self) -> bool {
        self.from == self.to
    }
}

/// Work out what upgrading the installation on `site` to the latest version
/// would change. Stores nothing.
pub async fn plan_upgrade(
    store: &Store,
    app: &AppId,
    env: &Environment,
    site: &SiteUrl,
    product: Option<Product>,
) -> Result<UpgradePlan, AppError> {
    let mut tx = store.begin().await?;
    tx.lock_app(app).await?;
    let inst = find_installation(&mut tx, app, env, site, product).await?;
    let latest = tx
        .latest_version(app, env)
        .await?
        .ok_or_else(|| AppError::NotDeployed { app: app.clone(), environment: env.clone() })?;
    let current = version_of(&mut tx, inst.version_id).await?;
    Ok(plan(&inst, &current, &latest))
}

fn plan(inst: &InstallationRecord, current: &VersionRecord, target: &VersionRecord) -> UpgradePlan {
    let changes = match current.grants.classify(&target.grants) {
        VersionChange::Minor => Vec::new(),
        VersionChange::Major(changes) => changes,
    };
    UpgradePlan {
        site: inst.site.clone(),
        product: inst.product,
        from: inst.version,
        to: target.version,
        needs_consent: inst.consent.missing_from(&target.grants),
        changes,
    }
}

/// The admin's answer to an upgrade's permission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    /// The admin accepted the grants of exactly this version.
    AcceptedFor(Version),
    NotGiven,
}

/// Move the installation on `site` to version `to` (normally the latest).
/// If `to` needs grants beyond the installation's consent, `consent` must
/// accept that very version; the consent then becomes `to`'s grants.
#[expect(clippy::too_many_arguments, reason = "each is a separate choice of the caller's")]
pub async fn upgrade(
    store: &Store,
    app: &AppId,
    env: &Environment,
    site: &SiteUrl,
    product: Option<Product>,
    to: Version,
    consent: Consent,
    audit: Audit<'_>,
) -> Result<UpgradePlan, AppError> {
    let result = upgrade_inner(store, app, env, site, product, to, consent, audit).await;
    let attempt = InstallationAttempt { action: Action::Upgrade, app, env, site, product };
    attempt.recorded(store, audit, result).await
}

#[expect(clippy::too_many_arguments, reason = "as upgrade")]
async fn upgrade_inner(
    store: &Store,
    app: &AppId,
    env: &Environment,
    site: &SiteUrl,
    product: Option<Product>,
    to: Version,
    consent: Consent,
    audit: Audit<'_>,
) -> Result<UpgradePlan, AppError> {
    let mut tx = store.begin().await?;
    tx.lock_app(app).await?;
    let inst = find_installation(&mut tx, app, env, site, product).await?;
    let target = tx
        .versions(app, env)
        .await?
        .into_iter()
        .find(|v| v.version == to)
        .ok_or_else(|| AppError::UnknownVersion { version: to, environment: env.clone() })?;
    let current = version_of(&mut tx, inst.version_id).await?;
    let plan = plan(&inst, &current, &target);
    if plan.is_noop() {
        return Ok(plan);
    }
    if target.version < inst.version {
        return Err(AppError::NotLater { site: site.clone(), current: inst.version, target: target.version });
    }
    let new_consent = if plan.needs_consent.is_empty() {
        None
    } else if consent == Consent::AcceptedFor(to) {
        Some(&target.grants)
    } else {
        return Err(AppError::ConsentRequired { site: site.clone(), to, changes: plan.needs_consent });
    };
    tx.set_installation_version(inst.id, target.id, new_consent).await?;
    let accepted: Vec<String> = plan.needs_consent.iter().map(ToString::to_string).collect();
    let detail = serde_json::json!({ "accepted": accepted });
    tx.record_event(inst.id, EventKind::Upgraded, Some(inst.version_id), target.id, &detail).await?;
    let (a, e, s, p) = (app.as_str(), env.as_str(), site.as_str(), inst.product.as_str());
    let (from, to) = (inst.version.to_string(), target.version.to_string());
    if new_consent.is_some() {
        audit.append(&mut tx, Event::consent(a, e, s, p, &to, &accepted)).await?;
    }
    audit.append(&mut tx, Event::upgrade(a, e, s, p, &from, &to, false)).await?;
    tx.commit().await?;
    Ok(plan)
}

// ---------------------------------------------------------------- rollback

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackOutcome {
    pub site: SiteUrl,
    pub product: Product,
    pub from: Version,
    pub to: Version,
}

/// Move the installation on `site` back to `to`, or by default to the
/// version it ran before its current one. Refused if that version needs any
/// grant the installation's consent does not cover.
pub async fn rollback(
    store: &Store,
    app: &AppId,
    env: &Environment,
    site: &SiteUrl,
    product: Option<Product>,
    to: Option<Version>,
    audit: Audit<'_>,
) -> Result<RollbackOutcome, AppError> {
    let result = rollback_inner(store, app, env, site, product, to, audit).await;
    let attempt = InstallationAttempt { action: Action::Rollback, app, env, site, product };
    attempt.recorded(store, audit, result).await
}

async fn rollback_inner(
    store: &Store,
    app: &AppId,
    env: &Environment,
    site: &SiteUrl,
    product: Option<Product>,
    to: Option<Version>,
    audit: Audit<'_>,
) -> Result<RollbackOutcome, AppError> {
    let mut tx = store.begin().await?;
    tx.lock_app(app).await?;
    let inst = find_installation(&mut tx, app, env, site, product).await?;
    let versions = tx.versions(app, env).await?;
    let target = match to {
        Some(v) => versions
            .iter()
            .find(|r| r.version == v)
            .ok_or_else(|| AppError::UnknownVersion { version: v, environment: env.clone() })?,
        None => {
            // The most recent earlier version the installation moved from
            // into this one (skipping moves that came down from a later one,
            // so repeated rollbacks keep stepping back).
            let events = tx.events(inst.id).await?;
            let previous = events
                .iter()
                .rev()
                .filter(|e| e.to_version_id == inst.version_id)
                .filter_map(|e| e.from_version_id)
                .filter_map(|id| versions.iter().find(|v| v.id == id))
                .find(|v| v.version < inst.version);
            previous.ok_or_else(|| AppError::NothingToRollBack { site: site.clone() })?
        }
    };
    if target.version >= inst.version {
        return Err(AppError::NotEarlier {
            site: site.clone(),
            current: inst.version,
            target: target.version,
        });
    }
    let widening = inst.consent.missing_from(&target.grants);
    if !widening.is_empty() {
        return Err(AppError::RollbackWouldWiden {
            site: site.clone(),
            to: target.version,
            changes: widening,
        });
    }
    tx.set_installation_version(inst.id, target.id, None).await?;
    let detail = serde_json::json!({});
    tx.record_event(inst.id, EventKind::RolledBack, Some(inst.version_id), target.id, &detail).await?;
    let (from, to) = (inst.version.to_string(), target.version.to_string());
    let event = Event::rollback(app.as_str(), env.as_str(), site.as_str(), inst.product.as_str(), &from, &to);
    audit.append(&mut tx, event).await?;
    tx.commit().await?;
    Ok(RollbackOutcome { site: site.clone(), product: inst.product, from: inst.version, to: target.version })
}

// ---------------------------------------------------------------- versions

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionListing {
    pub app: AppId,
    pub environment: Environment,
    pub versions: Vec<VersionEntry>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionEntry {
    pub version: Version,
    pub created_at: i64,
    pub origin: VersionOrigin,
    pub bundle: Sha256,
    pub installations: Vec<InstalledEntry>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledEntry {
    pub installation: InstallationId,
    pub site: SiteUrl,
    pub product: Product,
    /// A later version this installation can only reach with `kiln upgrade`.
    pub pending: Option<Version>,
}

/// Every version of `app` in `env`, newest first, with the installations on each.
pub async fn versions(store: &Store, app: &AppId, env: &Environment) -> Result<VersionListing, AppError> {
    let mut tx = store.begin().await?;
    let versions = tx.versions(app, env).await?;
    if versions.is_empty() {
        return Err(AppError::NotDeployed { app: app.clone(), environment: env.clone() });
    }
    let installations = tx.installations(app, env).await?;
    let latest = versions.last().map(|v| v.version);
    let entries: Vec<VersionEntry> = versions
        .iter()
        .rev()
        .map(|v| VersionEntry {
            version: v.version,
            created_at: v.created_at,
            origin: v.origin.clone(),
            bundle: v.bundle,
            installations: installations
                .iter()
                .filter(|i| i.version_id == v.id)
                .map(|i| InstalledEntry {
                    installation: i.public_id.clone(),
                    site: i.site.clone(),
                    product: i.product,
                    pending: latest.filter(|l| *l > i.version),
                })
                .collect(),
        })
        .collect();
    Ok(VersionListing { app: app.clone(), environment: env.clone(), versions: entries })
}

// ----------------------------------------------------------------- helpers

async fn find_installation(
    tx: &mut kiln_store::Tx,
    app: &AppId,
    env: &Environment,
    site: &SiteUrl,
    product: Option<Product>,
) -> Result<InstallationRecord, AppError> {
    let mut matches: Vec<InstallationRecord> = tx
        .installations(app, env)
        .await?
        .into_iter()
        .filter(|i| &i.site == site && product.is_none_or(|p| p == i.product))
        .collect();
    match matches.len() {
        0 => Err(AppError::NotInstalled { app: app.clone(), site: site.clone(), environment: env.clone() }),
        1 => Ok(matches.remove(0)),
        _ => Err(AppError::AmbiguousProduct(format!(
            "the app is installed on {site} for both Jira and Confluence; pass --product"
        ))),
    }
}

async fn version_of(tx: &mut kiln_store::Tx, id: i64) -> Result<VersionRecord, AppError> {
    tx.version_by_id(id).await?.ok_or_else(|| {
        AppError::Store(StoreError::Corrupt { what: format!("version {id}"), detail: "missing".into() })
    })
}
