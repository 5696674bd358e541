//! What a dev site starts with: users and their permissions, projects,
//! issues, workflow, spaces, pages, OAuth clients and personal access
//! tokens. Loaded from JSON that rejects unknown keys; checked for
//! consistency when the site is built from it ([`Seed::validate`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The site's initial content. Field names are snake_case in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// The site's host name, e.g. `kiln-dev.atlassian.net`; its first label
    /// is the site's name in `accessible-resources`.
    pub site: String,
    pub cloud_id: String,
    pub users: Vec<SeedUser>,
    #[serde(default)]
    pub projects: Vec<SeedProject>,
    #[serde(default)]
    pub issues: Vec<SeedIssue>,
    /// The workflow's statuses; the first is where new issues start.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<SeedStatus>,
    /// Global transitions: each is available from every status but its target.
    #[serde(default = "default_transitions")]
    pub transitions: Vec<SeedTransition>,
    #[serde(default)]
    pub spaces: Vec<SeedSpace>,
    #[serde(default)]
    pub pages: Vec<SeedPage>,
    #[serde(default)]
    pub oauth_clients: Vec<SeedClient>,
    /// Data Center personal access tokens.
    #[serde(default)]
    pub personal_access_tokens: Vec<SeedPat>,
}

/// A person (or an app's service account) on the site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedUser {
    pub account_id: String,
    pub display_name: String,
    pub email: String,
    /// Holds Jira's global ADMINISTER permission and, on this site, every
    /// project permission in every project.
    #[serde(default)]
    pub site_admin: bool,
    /// Project key (or `*` for every project) → the permissions held there.
    #[serde(default)]
    pub permissions: BTreeMap<String, Vec<Permission>>,
}

/// A Jira project permission, named as Jira names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Permission {
    BrowseProjects,
    CreateIssues,
    EditIssues,
    DeleteIssues,
    TransitionIssues,
    AddComments,
    AssignIssues,
    AdministerProjects,
}

impl Permission {
    /// Every project permission the site knows.
    pub const ALL: [Permission; 8] = [
        Permission::BrowseProjects,
        Permission::CreateIssues,
        Permission::EditIssues,
        Permission::DeleteIssues,
        Permission::TransitionIssues,
        Permission::AddComments,
        Permission::AssignIssues,
        Permission::AdministerProjects,
    ];

    /// The key Jira's API uses, e.g. `BROWSE_PROJECTS`.
    pub fn key(self) -> &'static str {
        match self {
            Permission::BrowseProjects => "BROWSE_PROJECTS",
            Permission::CreateIssues => "CREATE_ISSUES",
            Permission::EditIssues => "EDIT_ISSUES",
            Permission::DeleteIssues => "DELETE_ISSUES",
            Permission::TransitionIssues => "TRANSITION_ISSUES",
            Permission::AddComments => "ADD_COMMENTS",
            Permission::AssignIssues => "ASSIGN_ISSUES",
            Permission::AdministerProjects => "ADMINISTER_PROJECTS",
        }
    }

    /// The permission named `key`, if the site knows it.
    pub fn from_key(key: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.key() == key)
    }

    /// Jira's numeric id and display name.
    pub(crate) fn id_and_name(self) -> (&'static str, &'static str) {
        match self {
            Permission::BrowseProjects => ("10", "Browse Projects"),
            Permission::CreateIssues => ("11", "Create Issues"),
            Permission::EditIssues => ("12", "Edit Issues"),
            Permission::AssignIssues => ("13", "Assign Issues"),
            Permission::AddComments => ("15", "Add Comments"),
            Permission::DeleteIssues => ("16", "Delete Issues"),
            Permission::AdministerProjects => ("23", "Administer Projects"),
            Permission::TransitionIssues => ("46", "Transition Issues"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedProject {
    /// Numeric, as Jira's project ids are.
    pub id: String,
    pub key: String,
    pub name: String,
    #[serde(default = "default_issue_types")]
    pub issue_types: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedIssue {
    /// `<PROJECT KEY>-<number>`; the project is taken from it.
    pub key: String,
    pub summary: String,
    /// A string or an Atlassian Document Format document.
    #[serde(default)]
    pub description: Option<serde_json::Value>,
    #[serde(default = "default_issue_type")]
    pub issue_type: String,
    /// A status name; the workflow's first status if absent.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub reporter: Option<String>,
    #[serde(default)]
    pub assignee: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedStatus {
    pub id: String,
    pub name: String,
    pub category: StatusCategory,
}

/// Jira's three status categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusCategory {
    New,
    Indeterminate,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTransition {
    pub id: String,
    pub name: String,
    /// The target status's name.
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSpace {
    /// Numeric, as Confluence's space ids are.
    pub id: String,
    pub key: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPage {
    /// Numeric, as Confluence's content ids are.
    pub id: String,
    /// The space's key.
    pub space: String,
    pub title: String,
    /// Storage-format XHTML.
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub parent_id: Option<String>,
    /// The author's account id.
    pub author: String,
    #[serde(default = "default_version")]
    pub version: u32,
}

/// An OAuth 2.0 (3LO) client registered with the site.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedClient {
    pub client_id: String,
    pub client_secret: String,
    /// Exact redirect URIs; `/authorize` refuses any other.
    pub redirect_uris: Vec<String>,
    /// The scopes the client may be granted (`offline_access` for refresh tokens).
    pub scopes: Vec<String>,
    /// The account the `client_credentials` grant acts as (an app's
    /// "asApp" identity); without one that grant is refused.
    #[serde(default)]
    pub service_account_id: Option<String>,
}

impl std::fmt::Debug for SeedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedClient")
            .field("client_id", &self.client_id)
            .field("redirect_uris", &self.redirect_uris)
            .field("scopes", &self.scopes)
            .field("service_account_id", &self.service_account_id)
            .finish_non_exhaustive()
    }
}

/// A Data Center personal access token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPat {
    pub token: String,
    pub account_id: String,
}

impl std::fmt::Debug for SeedPat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedPat").field("account_id", &self.account_id).finish_non_exhaustive()
    }
}

/// A seed that cannot make a site.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("the seed is not valid JSON for a dev site: {0}")]
    Json(String),
    #[error("the seed names {what} {value:?} twice; each must be unique")]
    Duplicate { what: &'static str, value: String },
    #[error("the seed refers to {what} {value:?}, which it does not define")]
    Unknown { what: &'static str, value: String },
    #[error("the seed's {what} is not valid: {reason}")]
    Invalid { what: String, reason: String },
}

impl Seed {
    /// Parse and check a seed.
    pub fn from_json(text: &str) -> Result<Seed, SeedError> {
        let seed: Seed = serde_json::from_str(text).map_err(|e| SeedError::Json(e.to_string()))?;
        seed.validate()?;
        Ok(seed)
    }

    /// Whether the seed is consistent: unique ids and keys, references that
    /// resolve, numeric ids where Atlassian's are numeric.
    pub fn validate(&self) -> Result<(), SeedError> {
        crate::site::Directory::from_seed(self).map(|_| ())
    }

    /// A small site: `alice` (site admin), `bob` (works in KILN, cannot see
    /// SEC), `carol` (browses KILN only), the `Kiln app` service account;
    /// projects KILN and SEC; spaces DEV and TEAM; one OAuth client
    /// `kiln-dev-client` (secret `kiln-dev-client-secret`); Data Center
    /// tokens `dev-pat-alice` and `dev-pat-bob`.
    pub fn example() -> Seed {
        let all: Vec<Permission> = Permission::ALL.to_vec();
        let perms = |entries: &[(&str, &[Permission])]| -> BTreeMap<String, Vec<Permission>> {
            entries.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())).collect()
        };
        let user = |id: &str, name: &str, email: &str, admin: bool, permissions| SeedUser {
            account_id: id.to_owned(),
            display_name: name.to_owned(),
            email: email.to_owned(),
            site_admin: admin,
            permissions,
        };
        use Permission::*;
        let issue = |key: &str, summary: &str, status: &str, reporter: &str| SeedIssue {
            key: key.to_owned(),
            summary: summary.to_owned(),
            description: Some(serde_json::Value::String(format!("{summary}, seeded."))),
            issue_type: "Task".to_owned(),
            status: Some(status.to_owned()),
            reporter: Some(reporter.to_owned()),
            assignee: None,
            labels: Vec::new(),
        };
        Seed {
            site: "kiln-dev.atlassian.net".to_owned(),
            cloud_id: "4f3c2a1b-0d9e-4c8b-a7f6-5e4d3c2b1a09".to_owned(),
            users: vec![
                user(ALICE, "Alice Admin", "alice@example.com", true, perms(&[("*", &all)])),
                user(
                    BOB,
                    "Bob Builder",
                    "bob@example.com",
                    false,
                    perms(&[(
                        "KILN",
                        &[BrowseProjects, CreateIssues, EditIssues, TransitionIssues, AddComments],
                    )]),
                ),
                user(
                    CAROL,
                    "Carol Reader",
                    "carol@example.com",
                    false,
                    perms(&[("KILN", &[BrowseProjects])]),
                ),
                user(KILN_APP, "Kiln app", "kiln-app@connect.atlassian.com", true, perms(&[("*", &all)])),
            ],
            projects: vec![
                SeedProject {
                    id: "10000".to_owned(),
                    key: "KILN".to_owned(),
                    name: "Kiln".to_owned(),
                    issue_types: default_issue_types(),
                },
                SeedProject {
                    id: "10001".to_owned(),
                    key: "SEC".to_owned(),
                    name: "Security".to_owned(),
                    issue_types: default_issue_types(),
                },
            ],
            issues: vec![
                issue("KILN-1", "Set up the dev site", "To Do", ALICE),
                issue("KILN-2", "Write the product gateway", "In Progress", BOB),
                issue("SEC-1", "Rotate the signing keys after the security leak", "To Do", ALICE),
            ],
            statuses: default_statuses(),
            transitions: default_transitions(),
            spaces: vec![
                SeedSpace { id: "65537".to_owned(), key: "DEV".to_owned(), name: "Development".to_owned() },
                SeedSpace { id: "65538".to_owned(), key: "TEAM".to_owned(), name: "Team".to_owned() },
            ],
            pages: vec![
                SeedPage {
                    id: "1001".to_owned(),
                    space: "DEV".to_owned(),
                    title: "Development home".to_owned(),
                    body: "<p>Welcome to the dev site.</p>".to_owned(),
                    parent_id: None,
                    author: ALICE.to_owned(),
                    version: 1,
                },
                SeedPage {
                    id: "1002".to_owned(),
                    space: "DEV".to_owned(),
                    title: "Runbook".to_owned(),
                    body: "<p>Restart it.</p>".to_owned(),
                    parent_id: Some("1001".to_owned()),
                    author: BOB.to_owned(),
                    version: 1,
                },
            ],
            oauth_clients: vec![SeedClient {
                client_id: "kiln-dev-client".to_owned(),
                client_secret: "kiln-dev-client-secret".to_owned(),
                redirect_uris: vec![
                    "https://localhost/oauth/callback".to_owned(),
                    "https://127.0.0.1/oauth/callback".to_owned(),
                ],
                scopes: [
                    "read:jira-work",
                    "write:jira-work",
                    "read:jira-user",
                    "read:permission:jira",
                    "read:page:confluence",
                    "write:page:confluence",
                    "read:space:confluence",
                    "read:confluence-content.summary",
                    "read:confluence-space.summary",
                    "read:confluence-content.permission",
                    "search:confluence",
                    "write:confluence-content",
                    "read:me",
                    "read:account",
                    // Jira Software DevOps, for build and deployment providers.
                    "read:build-info:jira",
                    "write:build-info:jira",
                    "delete:build-info:jira",
                    "read:deployment-info:jira",
                    "write:deployment-info:jira",
                    "delete:deployment-info:jira",
                    "offline_access",
                ]
                .into_iter()
                .map(str::to_owned)
                .collect(),
                service_account_id: Some(KILN_APP.to_owned()),
            }],
            personal_access_tokens: vec![
                SeedPat { token: "dev-pat-alice".to_owned(), account_id: ALICE.to_owned() },
                SeedPat { token: "dev-pat-bob".to_owned(), account_id: BOB.to_owned() },
            ],
        }
    }
}

/// Account ids in [`Seed::example`].
pub const ALICE: &str = "557058:alice";
pub const BOB: &str = "557058:bob";
pub const CAROL: &str = "557058:carol";
pub const KILN_APP: &str = "557058:kiln-app";

fn default_statuses() -> Vec<SeedStatus> {
    vec![
        SeedStatus { id: "10000".to_owned(), name: "To Do".to_owned(), category: StatusCategory::New },
        SeedStatus {
            id: "3".to_owned(),
            name: "In Progress".to_owned(),
            category: StatusCategory::Indeterminate,
        },
        SeedStatus { id: "10001".to_owned(), name: "Done".to_owned(), category: StatusCategory::Done },
    ]
}

fn default_transitions() -> Vec<SeedTransition> {
    [("11", "To Do"), ("21", "In Progress"), ("31", "Done")]
        .into_iter()
        .map(|(id, to)| SeedTransition { id: id.to_owned(), name: to.to_owned(), to: to.to_owned() })
        .collect()
}

fn default_issue_types() -> Vec<String> {
    vec!["Task".to_owned(), "Bug".to_owned(), "Story".to_owned()]
}

fn default_issue_type() -> String {
    "Task".to_owned()
}

fn default_version() -> u32 {
    1
}
