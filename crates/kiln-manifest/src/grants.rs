//! Grants: the part of a manifest a site admin consents to, and the rules
//! that decide whether a new version needs that consent again.
//!
//! Kiln follows Forge: adding, changing or removing a scope, adding or
//! widening egress, adding or changing a remote, adding a dynamic web
//! trigger, changing auth providers, enabling licensing or customer-managed
//! egress all make a *major* version. Everything else is *minor* and rolls
//! out without asking.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{EgressEntry, ExternalKind, Manifest, ModuleKey, Scope, ScopeGrant, WebTriggerResponse};

/// What an installation is allowed to do, derived from a manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Grants {
    pub scopes: BTreeMap<Scope, ScopeGrant>,
    pub egress: BTreeMap<ExternalKind, BTreeSet<EgressEntry>>,
    /// Custom UI content-security relaxations, as `scripts:unsafe-eval`.
    pub content: BTreeSet<String>,
    pub remotes: BTreeMap<String, RemoteGrant>,
    pub dynamic_webtriggers: BTreeSet<ModuleKey>,
    pub static_webtriggers: BTreeSet<ModuleKey>,
    pub providers: Option<serde_json::Value>,
    pub licensing: bool,
    pub configurable_egress: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteGrant {
    pub base_urls: BTreeSet<String>,
    pub app_system_token: bool,
    pub app_user_token: bool,
    pub in_scope_eud: bool,
}

impl Grants {
    pub fn of(manifest: &Manifest) -> Self {
        let p = &manifest.permissions;
        let mut content = BTreeSet::new();
        content.extend(p.content_scripts.iter().map(|s| format!("scripts:{s}")));
        content.extend(p.content_styles.iter().map(|s| format!("styles:{s}")));
        let mut dynamic_webtriggers = BTreeSet::new();
        let mut static_webtriggers = BTreeSet::new();
        for w in &manifest.modules.webtriggers {
            match w.response {
                WebTriggerResponse::Dynamic => dynamic_webtriggers.insert(w.key.clone()),
                WebTriggerResponse::Static { .. } => static_webtriggers.insert(w.key.clone()),
            };
        }
        Grants {
            scopes: p.scopes.clone(),
            egress: p
                .external
                .iter()
                .filter(|(_, entries)| !entries.is_empty())
                .map(|(k, entries)| (*k, entries.iter().cloned().collect()))
                .collect(),
            content,
            remotes: manifest
                .remotes
                .iter()
                .map(|r| {
                    (
                        r.key.clone(),
                        RemoteGrant {
                            base_urls: r.base_urls.values().cloned().collect(),
                            app_system_token: r.app_system_token,
                            app_user_token: r.app_user_token,
                            in_scope_eud: r.in_scope_eud.unwrap_or(false),
                        },
                    )
                })
                .collect(),
            dynamic_webtriggers,
            static_webtriggers,
            providers: manifest.providers.clone(),
            licensing: manifest.app.licensing_enabled,
            configurable_egress: p.configurable_egress,
        }
    }

    /// What `requested` may do that `self` does not already allow. Empty means
    /// `requested` needs no new consent from whoever consented to `self`.
    pub fn missing_from(&self, requested: &Grants) -> Vec<GrantChange> {
        let mut out = Vec::new();
        for (scope, grant) in &requested.scopes {
            match self.scopes.get(scope) {
                None => out.push(GrantChange::ScopeAdded(scope.to_string())),
                Some(have) if grant.allow_impersonation && !have.allow_impersonation => {
                    out.push(GrantChange::ImpersonationAllowed(scope.to_string()));
                }
                Some(_) => {}
            }
        }
        for (kind, entries) in &requested.egress {
            let have = self.egress.get(kind);
            for entry in entries {
                let covered = have.is_some_and(|h| h.iter().any(|c| entry_covers(c, entry)));
                if !covered {
                    out.push(GrantChange::EgressAdded { kind: *kind, entry: describe_entry(entry) });
                }
            }
        }
        for c in requested.content.difference(&self.content) {
            out.push(GrantChange::ContentPolicyAdded(c.clone()));
        }
        for (key, remote) in &requested.remotes {
            match self.remotes.get(key) {
                None => out.push(GrantChange::RemoteAdded(key.clone())),
                Some(have) => {
                    for url in remote.base_urls.difference(&have.base_urls) {
                        out.push(GrantChange::RemoteUrlAdded { remote: key.clone(), url: url.clone() });
                    }
                    if remote.app_system_token && !have.app_system_token {
                        out.push(GrantChange::RemoteTokenAdded {
                            remote: key.clone(),
                            token: "appSystemToken".to_owned(),
                        });
                    }
                    if remote.app_user_token && !have.app_user_token {
                        out.push(GrantChange::RemoteTokenAdded {
                            remote: key.clone(),
                            token: "appUserToken".to_owned(),
                        });
                    }
                    if remote.in_scope_eud && !have.in_scope_eud {
                        out.push(GrantChange::RemoteStoresUserData(key.clone()));
                    }
                }
            }
        }
        if self.dynamic_webtriggers.is_empty()
            && let Some(first) = requested.dynamic_webtriggers.iter().next()
        {
            out.push(GrantChange::DynamicWebtriggerAdded(first.to_string()));
        }
        for key in requested.dynamic_webtriggers.intersection(&self.static_webtriggers) {
            out.push(GrantChange::WebtriggerMadeDynamic(key.to_string()));
        }
        if requested.providers.is_some() && requested.providers != self.providers {
            out.push(GrantChange::ProvidersChanged);
        }
        if requested.licensing && !self.licensing {
            out.push(GrantChange::LicensingEnabled);
        }
        if requested.configurable_egress && !self.configurable_egress {
            out.push(GrantChange::ConfigurableEgressEnabled);
        }
        out
    }

    /// Decide whether `next`, deployed after `self`, is a major or minor version.
    pub fn classify(&self, next: &Grants) -> VersionChange {
        let mut reasons = self.missing_from(next);
        // Forge also treats removing or changing a scope as major, even though
        // it narrows what the app may do: the consent screen must stay exact.
        for (scope, grant) in &self.scopes {
            match next.scopes.get(scope) {
                None => reasons.push(GrantChange::ScopeRemoved(scope.to_string())),
                Some(n) if grant.allow_impersonation && !n.allow_impersonation => {
                    reasons.push(GrantChange::ImpersonationRevoked(scope.to_string()));
                }
                Some(_) => {}
            }
        }
        if self.providers.is_some() && next.providers.is_none() {
            reasons.push(GrantChange::ProvidersChanged);
        }
        if reasons.is_empty() { VersionChange::Minor } else { VersionChange::Major(reasons) }
    }
}

/// Does consented entry `have` allow everything `want` allows?
fn entry_covers(have: &EgressEntry, want: &EgressEntry) -> bool {
    // Analytics-only egress without user data is narrower than plain egress.
    let purpose_ok = !have.analytics || want.analytics;
    let eud_ok = have.in_scope_eud || !want.in_scope_eud;
    purpose_ok && eud_ok && have.target.covers(&want.target)
}

fn describe_entry(entry: &EgressEntry) -> String {
    let mut s = entry.target.to_string();
    if entry.analytics {
        s.push_str(" (analytics");
        s.push_str(if entry.in_scope_eud { ", end-user data)" } else { ")" });
    }
    s
}

/// Whether a new version needs consent, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "reasons")]
pub enum VersionChange {
    Minor,
    Major(Vec<GrantChange>),
}

/// One difference in grants between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "change", content = "detail")]
pub enum GrantChange {
    ScopeAdded(String),
    ScopeRemoved(String),
    ImpersonationAllowed(String),
    ImpersonationRevoked(String),
    EgressAdded { kind: ExternalKind, entry: String },
    ContentPolicyAdded(String),
    RemoteAdded(String),
    RemoteUrlAdded { remote: String, url: String },
    RemoteTokenAdded { remote: String, token: String },
    RemoteStoresUserData(String),
    DynamicWebtriggerAdded(String),
    WebtriggerMadeDynamic(String),
    ProvidersChanged,
    LicensingEnabled,
    ConfigurableEgressEnabled,
}

impl fmt::Display for GrantChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantChange::ScopeAdded(s) => write!(f, "permissions.scopes: adds scope {s}"),
            GrantChange::ScopeRemoved(s) => write!(f, "permissions.scopes: removes scope {s}"),
            GrantChange::ImpersonationAllowed(s) => {
                write!(f, "permissions.scopes: allows offline impersonation with {s}")
            }
            GrantChange::ImpersonationRevoked(s) => {
                write!(f, "permissions.scopes: stops offline impersonation with {s}")
            }
            GrantChange::EgressAdded { kind, entry } => {
                write!(f, "{}: adds egress to {entry}", kind.manifest_path())
            }
            GrantChange::ContentPolicyAdded(c) => write!(f, "permissions.content: adds {c}"),
            GrantChange::RemoteAdded(k) => write!(f, "remotes: adds remote {k}"),
            GrantChange::RemoteUrlAdded { remote, url } => {
                write!(f, "remotes: remote {remote} adds base URL {url}")
            }
            GrantChange::RemoteTokenAdded { remote, token } => {
                write!(f, "remotes: remote {remote} receives {token}")
            }
            GrantChange::RemoteStoresUserData(k) => {
                write!(f, "remotes: remote {k} now stores end-user data")
            }
            GrantChange::DynamicWebtriggerAdded(k) => {
                write!(f, "modules.webtrigger: adds dynamic web trigger {k}")
            }
            GrantChange::WebtriggerMadeDynamic(k) => {
                write!(f, "modules.webtrigger: web trigger {k} changes from static to dynamic")
            }
            GrantChange::ProvidersChanged => write!(f, "providers: external auth providers change"),
            GrantChange::LicensingEnabled => write!(f, "app.licensing: enables paid licensing"),
            GrantChange::ConfigurableEgressEnabled => {
                write!(f, "permissions.external.configurable: enables customer-managed egress")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EgressTarget;

    fn scope(s: &str) -> Scope {
        Scope::new_unchecked(s)
    }

    fn host(h: &str) -> EgressEntry {
        EgressEntry { target: EgressTarget::Host(h.into()), analytics: false, in_scope_eud: true }
    }

    fn with_scopes(list: &[&str]) -> Grants {
        Grants {
            scopes: list.iter().map(|s| (scope(s), ScopeGrant::default())).collect(),
            ..Grants::default()
        }
    }

    #[test]
    fn identical_grants_are_minor() {
        let g = with_scopes(&["read:jira-work"]);
        assert_eq!(g.classify(&g.clone()), VersionChange::Minor);
    }

    #[test]
    fn adding_removing_or_changing_a_scope_is_major() {
        let a = with_scopes(&["read:jira-work"]);
        let b = with_scopes(&["read:jira-work", "write:jira-work"]);
        assert_eq!(
            a.classify(&b),
            VersionChange::Major(vec![GrantChange::ScopeAdded("write:jira-work".into())])
        );
        assert_eq!(
            b.classify(&a),
            VersionChange::Major(vec![GrantChange::ScopeRemoved("write:jira-work".into())])
        );
        let mut c = a.clone();
        c.scopes.insert(scope("read:jira-work"), ScopeGrant { allow_impersonation: true });
        assert_eq!(
            a.classify(&c),
            VersionChange::Major(vec![GrantChange::ImpersonationAllowed("read:jira-work".into())])
        );
    }

    #[test]
    fn egress_widening_is_major_and_narrowing_is_minor() {
        let mut narrow = Grants::default();
        narrow.egress.insert(ExternalKind::FetchBackend, [host("api.example.com")].into());
        let mut wide = Grants::default();
        wide.egress.insert(
            ExternalKind::FetchBackend,
            [EgressEntry {
                target: EgressTarget::Subdomains("example.com".into()),
                analytics: false,
                in_scope_eud: true,
            }]
            .into(),
        );
        assert!(matches!(narrow.classify(&wide), VersionChange::Major(_)));
        assert_eq!(wide.classify(&narrow), VersionChange::Minor);
        assert!(wide.missing_from(&narrow).is_empty());
        // Analytics-only egress does not cover egress carrying user data.
        let mut analytics = Grants::default();
        analytics.egress.insert(
            ExternalKind::FetchBackend,
            [EgressEntry {
                target: EgressTarget::Host("api.example.com".into()),
                analytics: true,
                in_scope_eud: false,
            }]
            .into(),
        );
        assert!(matches!(analytics.classify(&narrow), VersionChange::Major(_)));
        assert_eq!(narrow.classify(&analytics), VersionChange::Minor);
    }

    #[test]
    fn first_dynamic_webtrigger_or_static_to_dynamic_is_major() {
        let key = |k: &str| ModuleKey::parse(k).unwrap();
        let none = Grants::default();
        let stat = Grants { static_webtriggers: [key("hook")].into(), ..Grants::default() };
        let dynamic = Grants { dynamic_webtriggers: [key("hook")].into(), ..Grants::default() };
        assert_eq!(none.classify(&stat), VersionChange::Minor);
        assert_eq!(
            stat.classify(&dynamic),
            VersionChange::Major(vec![
                GrantChange::DynamicWebtriggerAdded("hook".into()),
                GrantChange::WebtriggerMadeDynamic("hook".into())
            ])
        );
        let two_dynamic =
            Grants { dynamic_webtriggers: [key("hook"), key("other")].into(), ..Grants::default() };
        assert_eq!(dynamic.classify(&two_dynamic), VersionChange::Minor);
    }

    #[test]
    fn changes_round_trip_through_json() {
        let change = VersionChange::Major(vec![
            GrantChange::ScopeAdded("write:jira-work".into()),
            GrantChange::EgressAdded { kind: ExternalKind::FetchBackend, entry: "api.example.com".into() },
            GrantChange::ProvidersChanged,
        ]);
        let json = serde_json::to_string(&change).unwrap();
        assert_eq!(serde_json::from_str::<VersionChange>(&json).unwrap(), change);
        let minor = serde_json::to_string(&VersionChange::Minor).unwrap();
        assert_eq!(serde_json::from_str::<VersionChange>(&minor).unwrap(), VersionChange::Minor);
    }
}
