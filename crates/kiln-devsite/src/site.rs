//! The site's state: the [`Directory`] fixed by the seed (people, projects,
//! workflow, spaces, OAuth clients, tokens) and the [`Content`] the APIs
//! change (issues, comments, pages).
//!
//! [`build`] is the one place a [`Seed`] is checked; everything past it
//! works with resolved ids.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use kiln_crypto::Sha256;
use serde_json::Value;

use crate::seed::{Permission, Seed, SeedError, StatusCategory};
use crate::{Delivery, SeenRequest, events, oauth, time};

/// How many requests [`crate::DevSite::requests`] remembers (the oldest go first).
const MAX_REMEMBERED_REQUESTS: usize = 10_000;

/// A site's issues, comments or pages stop growing here, so that a runaway
/// client cannot exhaust the test process's memory.
pub(crate) const MAX_OBJECTS: usize = 10_000;

/// Lock `m`, carrying on if another thread panicked while holding it (the
/// data are plain records; a half-finished test's change is harmless).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running site's shared state.
#[derive(Debug)]
pub(crate) struct Site {
    pub(crate) dir: Directory,
    pub(crate) base_url: String,
    pub(crate) content: Mutex<Content>,
    /// Builds and deployments the DevOps APIs were sent.
    pub(crate) devops: Mutex<crate::devops::DevopsStore>,
    pub(crate) tokens: Mutex<oauth::Tokens>,
    pub(crate) log: Mutex<Log>,
    pub(crate) outbox: Option<events::Outbox>,
    pub(crate) deliveries: std::sync::Arc<Mutex<Vec<Delivery>>>,
    /// Signs context tokens (see `context`); made at start, never stored.
    pub(crate) context_key: kiln_crypto::jws::Ed25519Signer,
    /// Injected failures waiting for their request (see `faults`).
    pub(crate) faults: Mutex<Vec<crate::faults::Fault>>,
}

/// What tests look at afterwards.
#[derive(Debug, Default)]
pub(crate) struct Log {
    pub(crate) requests: VecDeque<SeenRequest>,
    pub(crate) token_requests: BTreeMap<String, usize>,
}

impl Site {
    pub(crate) fn remember(&self, seen: SeenRequest) {
        let mut log = lock(&self.log);
        if log.requests.len() >= MAX_REMEMBERED_REQUESTS {
            log.requests.pop_front();
        }
        log.requests.push_back(seen);
    }

    /// Queue a product event (nothing happens without an event sink).
    pub(crate) fn emit(&self, event_type: &'static str, actor: &str, payload: Vec<(&'static str, Value)>) {
        if let Some(outbox) = &self.outbox {
            let mut body = serde_json::Map::new();
            body.insert("eventType".into(), event_type.into());
            body.insert("atlassianId".into(), actor.into());
            for (k, v) in payload {
                body.insert(k.into(), v);
            }
            body.insert("context".into(), serde_json::json!({ "cloudId": self.dir.cloud_id }));
            outbox.send(event_type, Value::Object(body), &self.deliveries);
        }
    }
}

/// Who and what the seed defines; fixed for the site's life.
#[derive(Debug)]
pub(crate) struct Directory {
    pub(crate) site_host: String,
    pub(crate) cloud_id: String,
    /// In seed order.
    pub(crate) users: Vec<User>,
    pub(crate) projects: Vec<Project>,
    pub(crate) statuses: Vec<Status>,
    pub(crate) transitions: Vec<Transition>,
    pub(crate) spaces: Vec<Space>,
    pub(crate) clients: Vec<Client>,
    /// SHA-256 of each personal access token → its account id.
    pub(crate) pats: HashMap<Sha256, String>,
    /// Issue type name → id, across projects.
    pub(crate) issue_types: BTreeMap<String, String>,
}

#[derive(Debug)]
pub(crate) struct User {
    pub(crate) account_id: String,
    pub(crate) display_name: String,
    pub(crate) email: String,
    pub(crate) site_admin: bool,
    /// A client's service account (Jira's `accountType: app`).
    pub(crate) is_app: bool,
    everywhere: BTreeSet<Permission>,
    /// Project id → permissions there.
    per_project: BTreeMap<String, BTreeSet<Permission>>,
}

impl User {
    pub(crate) fn can(&self, project: &Project, permission: Permission) -> bool {
        self.site_admin
            || self.everywhere.contains(&permission)
            || self.per_project.get(&project.id).is_some_and(|p| p.contains(&permission))
    }

    pub(crate) fn can_browse(&self, project: &Project) -> bool {
        self.can(project, Permission::BrowseProjects)
    }
}

#[derive(Debug)]
pub(crate) struct Project {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) issue_types: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Status {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) category: StatusCategory,
}

#[derive(Debug)]
pub(crate) struct Transition {
    pub(crate) id: String,
    pub(crate) name: String,
    /// The target status's id.
    pub(crate) to: String,
}

#[derive(Debug)]
pub(crate) struct Space {
    pub(crate) id: u64,
    pub(crate) key: String,
    pub(crate) name: String,
}

#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) client_id: String,
    pub(crate) secret_digest: Sha256,
    pub(crate) redirect_uris: Vec<String>,
    pub(crate) scopes: BTreeSet<String>,
    pub(crate) service_account: Option<String>,
}

impl Directory {
    pub(crate) fn user(&self, account_id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.account_id == account_id)
    }

    pub(crate) fn project_by_id(&self, id: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.id == id)
    }

    /// By id or key (keys case-insensitively, as Jira does).
    pub(crate) fn project(&self, id_or_key: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.id == id_or_key || p.key.eq_ignore_ascii_case(id_or_key))
    }

    pub(crate) fn status(&self, id: &str) -> Option<&Status> {
        self.statuses.iter().find(|s| s.id == id)
    }

    /// By id or name (names case-insensitively).
    pub(crate) fn status_named(&self, id_or_name: &str) -> Option<&Status> {
        self.statuses.iter().find(|s| s.id == id_or_name || s.name.eq_ignore_ascii_case(id_or_name))
    }

    pub(crate) fn space(&self, id: u64) -> Option<&Space> {
        self.spaces.iter().find(|s| s.id == id)
    }

    pub(crate) fn client(&self, client_id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }

    /// The site's name: its host's first label.
    pub(crate) fn site_name(&self) -> &str {
        self.site_host.split('.').next().unwrap_or_default()
    }

    pub(crate) fn from_seed(seed: &Seed) -> Result<Directory, SeedError> {
        build(seed).map(|(dir, _)| dir)
    }
}

/// What the APIs create, change and delete.
#[derive(Debug)]
pub(crate) struct Content {
    pub(crate) issues: BTreeMap<u64, Issue>,
    /// Upper-case key → id.
    keys: HashMap<String, u64>,
    next_issue_id: u64,
    /// Project id → the number the next issue's key gets.
    next_issue_number: HashMap<String, u64>,
    next_comment_id: u64,
    next_history_id: u64,
    pub(crate) pages: BTreeMap<u64, Page>,
    next_page_id: u64,
    comments: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Issue {
    pub(crate) id: u64,
    pub(crate) key: String,
    pub(crate) project_id: String,
    pub(crate) summary: String,
    /// As given: a string or an ADF document.
    pub(crate) description: Option<Value>,
    pub(crate) issue_type: String,
    pub(crate) status_id: String,
    pub(crate) reporter: Option<String>,
    pub(crate) assignee: Option<String>,
    pub(crate) labels: Vec<String>,
    pub(crate) created: u64,
    pub(crate) updated: u64,
    pub(crate) comments: Vec<Comment>,
    pub(crate) history: Vec<History>,
}

#[derive(Debug, Clone)]
pub(crate) struct Comment {
    pub(crate) id: u64,
    pub(crate) author: String,
    /// As given: a string or an ADF document.
    pub(crate) body: Value,
    pub(crate) created: u64,
}

/// One changelog entry: who changed which fields when.
#[derive(Debug, Clone)]
pub(crate) struct History {
    pub(crate) id: u64,
    pub(crate) author: String,
    pub(crate) created: u64,
    pub(crate) items: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) field: &'static str,
    pub(crate) from: Option<String>,
    pub(crate) from_string: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) to_string: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) id: u64,
    pub(crate) space_id: u64,
    pub(crate) title: String,
    /// Storage-format XHTML.
    pub(crate) body: String,
    pub(crate) parent_id: Option<u64>,
    pub(crate) author: String,
    pub(crate) created: u64,
    pub(crate) version: u32,
    pub(crate) version_author: String,
    pub(crate) version_created: u64,
    pub(crate) version_message: String,
}

/// The site's content is full (see [`MAX_OBJECTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

impl Content {
    /// By numeric id or key (keys case-insensitively).
    pub(crate) fn issue_id(&self, id_or_key: &str) -> Option<u64> {
        match id_or_key.parse::<u64>() {
            Ok(id) => self.issues.contains_key(&id).then_some(id),
            Err(_) => self.keys.get(&id_or_key.to_ascii_uppercase()).copied(),
        }
    }

    pub(crate) fn issue(&self, id_or_key: &str) -> Option<&Issue> {
        self.issue_id(id_or_key).and_then(|id| self.issues.get(&id))
    }

    /// Add an issue to `project`, giving it the next id and key.
    pub(crate) fn add_issue(&mut self, project: &Project, mut issue: Issue) -> Result<&Issue, Full> {
        if self.issues.len() >= MAX_OBJECTS {
            return Err(Full);
        }
        let number = self.next_issue_number.entry(project.id.clone()).or_insert(1);
        issue.key = format!("{}-{number}", project.key);
        *number += 1;
        issue.id = self.next_issue_id;
        self.next_issue_id += 1;
        issue.project_id = project.id.clone();
        self.keys.insert(issue.key.to_ascii_uppercase(), issue.id);
        Ok(self.issues.entry(issue.id).or_insert(issue))
    }

    pub(crate) fn remove_issue(&mut self, id: u64) -> Option<Issue> {
        let issue = self.issues.remove(&id)?;
        self.keys.remove(&issue.key.to_ascii_uppercase());
        self.comments = self.comments.saturating_sub(issue.comments.len());
        Some(issue)
    }

    pub(crate) fn add_comment(&mut self, issue_id: u64, author: &str, body: Value) -> Result<Comment, Full> {
        if self.comments >= MAX_OBJECTS {
            return Err(Full);
        }
        let id = self.next_comment_id;
        let issue = self.issues.get_mut(&issue_id).ok_or(Full)?;
        let comment = Comment { id, author: author.to_owned(), body, created: time::now_millis() };
        issue.comments.push(comment.clone());
        self.next_comment_id += 1;
        self.comments += 1;
        Ok(comment)
    }

    /// Record `items` in the issue's changelog; returns the entry.
    pub(crate) fn record_history(
        &mut self,
        issue_id: u64,
        author: &str,
        items: Vec<Change>,
    ) -> Option<History> {
        let id = self.next_history_id;
        let issue = self.issues.get_mut(&issue_id)?;
        let now = time::now_millis();
        let entry = History { id, author: author.to_owned(), created: now, items };
        issue.history.push(entry.clone());
        issue.updated = now;
        self.next_history_id += 1;
        Some(entry)
    }

    pub(crate) fn add_page(&mut self, mut page: Page) -> Result<&Page, Full> {
        if self.pages.len() >= MAX_OBJECTS {
            return Err(Full);
        }
        page.id = self.next_page_id;
        self.next_page_id += 1;
        Ok(self.pages.entry(page.id).or_insert(page))
    }
}

/// Check `seed` and build the site's directory and initial content from it.
pub(crate) fn build(seed: &Seed) -> Result<(Directory, Content), SeedError> {
    let invalid =
        |what: &str, reason: &str| SeedError::Invalid { what: what.to_owned(), reason: reason.to_owned() };
    let unknown = |what: &'static str, value: &str| SeedError::Unknown { what, value: value.to_owned() };
    if seed.site.is_empty() || !seed.site.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
        return Err(invalid("site", "it must be a host name such as kiln-dev.atlassian.net"));
    }
    if seed.cloud_id.is_empty() || !seed.cloud_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(invalid("cloud_id", "it must be letters, digits and '-', like a UUID"));
    }
    unique("account id", seed.users.iter().map(|u| u.account_id.as_str()))?;
    unique("project id", seed.projects.iter().map(|p| p.id.as_str()))?;
    unique("project key", seed.projects.iter().map(|p| p.key.as_str()))?;
    unique("status id", seed.statuses.iter().map(|s| s.id.as_str()))?;
    unique("status name", seed.statuses.iter().map(|s| s.name.as_str()))?;
    unique("transition id", seed.transitions.iter().map(|t| t.id.as_str()))?;
    unique("issue key", seed.issues.iter().map(|i| i.key.as_str()))?;
    unique("space id", seed.spaces.iter().map(|s| s.id.as_str()))?;
    unique("space key", seed.spaces.iter().map(|s| s.key.as_str()))?;
    unique("page id", seed.pages.iter().map(|p| p.id.as_str()))?;
    unique("client id", seed.oauth_clients.iter().map(|c| c.client_id.as_str()))?;
    unique("personal access token", seed.personal_access_tokens.iter().map(|p| p.token.as_str()))?;

    let projects: Vec<Project> = seed
        .projects
        .iter()
        .map(|p| {
            if p.id.parse::<u64>().is_err() {
                return Err(invalid(&format!("project {}", p.key), "its id must be numeric"));
            }
            let key_ok = p.key.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && p.key.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !key_ok {
                return Err(invalid(
                    &format!("project {}", p.key),
                    "its key must be upper-case letters and digits",
                ));
            }
            if p.issue_types.is_empty() {
                return Err(invalid(&format!("project {}", p.key), "it needs at least one issue type"));
            }
            Ok(Project {
                id: p.id.clone(),
                key: p.key.clone(),
                name: p.name.clone(),
                issue_types: p.issue_types.clone(),
            })
        })
        .collect::<Result<_, _>>()?;

    let app_accounts: HashSet<&str> =
        seed.oauth_clients.iter().filter_map(|c| c.service_account_id.as_deref()).collect();
    let users: Vec<User> = seed
        .users
        .iter()
        .map(|u| {
            let mut everywhere = BTreeSet::new();
            let mut per_project = BTreeMap::new();
            for (key, perms) in &u.permissions {
                if key == "*" {
                    everywhere.extend(perms.iter().copied());
                } else {
                    let project =
                        projects.iter().find(|p| &p.key == key).ok_or_else(|| unknown("project", key))?;
                    per_project.insert(project.id.clone(), perms.iter().copied().collect());
                }
            }
            Ok(User {
                account_id: u.account_id.clone(),
                display_name: u.display_name.clone(),
                email: u.email.clone(),
                site_admin: u.site_admin,
                is_app: app_accounts.contains(u.account_id.as_str()),
                everywhere,
                per_project,
            })
        })
        .collect::<Result<_, SeedError>>()?;
    let has_user = |id: &str| users.iter().any(|u| u.account_id == id);

    if seed.statuses.is_empty() {
        return Err(invalid("statuses", "the workflow needs at least one status"));
    }
    let statuses: Vec<Status> = seed
        .statuses
        .iter()
        .map(|s| Status { id: s.id.clone(), name: s.name.clone(), category: s.category })
        .collect();
    let transitions: Vec<Transition> = seed
        .transitions
        .iter()
        .map(|t| {
            let to = statuses.iter().find(|s| s.name == t.to).ok_or_else(|| unknown("status", &t.to))?;
            Ok(Transition { id: t.id.clone(), name: t.name.clone(), to: to.id.clone() })
        })
        .collect::<Result<_, SeedError>>()?;

    let spaces: Vec<Space> = seed
        .spaces
        .iter()
        .map(|s| {
            let id =
                s.id.parse().map_err(|_| invalid(&format!("space {}", s.key), "its id must be numeric"))?;
            Ok(Space { id, key: s.key.clone(), name: s.name.clone() })
        })
        .collect::<Result<_, SeedError>>()?;

    let clients: Vec<Client> = seed
        .oauth_clients
        .iter()
        .map(|c| {
            let what = format!("OAuth client {}", c.client_id);
            if c.client_secret.len() < 8 {
                return Err(invalid(&what, "its secret must be at least 8 characters"));
            }
            if c.redirect_uris.is_empty() {
                return Err(invalid(&what, "it needs at least one redirect URI"));
            }
            for uri in &c.redirect_uris {
                let parsed = url::Url::parse(uri).map_err(|e| invalid(&what, &format!("{uri}: {e}")))?;
                if parsed.fragment().is_some() {
                    return Err(invalid(&what, &format!("{uri}: a redirect URI has no fragment")));
                }
            }
            if c.scopes.is_empty() {
                return Err(invalid(&what, "it needs at least one scope"));
            }
            if let Some(account) = &c.service_account_id
                && !has_user(account)
            {
                return Err(unknown("service account", account));
            }
            Ok(Client {
                client_id: c.client_id.clone(),
                secret_digest: Sha256::of(c.client_secret.as_bytes()),
                redirect_uris: c.redirect_uris.clone(),
                scopes: c.scopes.iter().cloned().collect(),
                service_account: c.service_account_id.clone(),
            })
        })
        .collect::<Result<_, SeedError>>()?;

    let mut pats = HashMap::new();
    for pat in &seed.personal_access_tokens {
        if !has_user(&pat.account_id) {
            return Err(unknown("account", &pat.account_id));
        }
        pats.insert(Sha256::of(pat.token.as_bytes()), pat.account_id.clone());
    }

    let mut issue_types = BTreeMap::new();
    for name in projects.iter().flat_map(|p| p.issue_types.iter()) {
        let next = format!("{}", 10_001 + issue_types.len());
        issue_types.entry(name.clone()).or_insert(next);
    }

    let dir = Directory {
        site_host: seed.site.clone(),
        cloud_id: seed.cloud_id.clone(),
        users,
        projects,
        statuses,
        transitions,
        spaces,
        clients,
        pats,
        issue_types,
    };
    let content = initial_content(seed, &dir)?;
    Ok((dir, content))
}

fn initial_content(seed: &Seed, dir: &Directory) -> Result<Content, SeedError> {
    let unknown = |what: &'static str, value: &str| SeedError::Unknown { what, value: value.to_owned() };
    let invalid =
        |what: &str, reason: &str| SeedError::Invalid { what: what.to_owned(), reason: reason.to_owned() };
    let now = time::now_millis();
    let mut content = Content {
        issues: BTreeMap::new(),
        keys: HashMap::new(),
        next_issue_id: 10_000,
        next_issue_number: HashMap::new(),
        next_comment_id: 10_000,
        next_history_id: 10_000,
        pages: BTreeMap::new(),
        next_page_id: 1,
        comments: 0,
    };
    let count = u64::try_from(seed.issues.len()).unwrap_or(u64::MAX);
    for (n, i) in (0u64..).zip(&seed.issues) {
        let (project_key, number) = i
            .key
            .rsplit_once('-')
            .ok_or_else(|| invalid(&format!("issue {}", i.key), "its key is not PROJECT-N"))?;
        let number: u64 =
            number.parse().map_err(|_| invalid(&format!("issue {}", i.key), "its key is not PROJECT-N"))?;
        let project = dir
            .projects
            .iter()
            .find(|p| p.key == project_key)
            .ok_or_else(|| unknown("project", project_key))?;
        let status = match &i.status {
            Some(name) => {
                dir.statuses.iter().find(|s| &s.name == name).ok_or_else(|| unknown("status", name))?
            }
            None => dir.statuses.first().ok_or_else(|| unknown("status", "(first)"))?,
        };
        if !project.issue_types.contains(&i.issue_type) {
            return Err(unknown("issue type", &i.issue_type));
        }
        for account in i.reporter.iter().chain(&i.assignee) {
            if dir.user(account).is_none() {
                return Err(unknown("account", account));
            }
        }
        // Seeded issues were created a minute apart, in seed order.
        let created = now.saturating_sub((count - n) * 60_000);
        let id = content.next_issue_id;
        content.next_issue_id += 1;
        let next = content.next_issue_number.entry(project.id.clone()).or_insert(1);
        *next = (*next).max(number + 1);
        content.keys.insert(i.key.to_ascii_uppercase(), id);
        content.issues.insert(
            id,
            Issue {
                id,
                key: i.key.clone(),
                project_id: project.id.clone(),
                summary: i.summary.clone(),
                description: i.description.clone(),
                issue_type: i.issue_type.clone(),
                status_id: status.id.clone(),
                reporter: i.reporter.clone(),
                assignee: i.assignee.clone(),
                labels: i.labels.clone(),
                created,
                updated: created,
                comments: Vec::new(),
                history: Vec::new(),
            },
        );
    }
    let page_ids: HashMap<&str, (u64, &str)> = seed
        .pages
        .iter()
        .map(|p| {
            let id =
                p.id.parse().map_err(|_| invalid(&format!("page {}", p.id), "its id must be numeric"))?;
            Ok((p.id.as_str(), (id, p.space.as_str())))
        })
        .collect::<Result<_, SeedError>>()?;
    for p in &seed.pages {
        let (id, _) = page_ids.get(p.id.as_str()).copied().ok_or_else(|| unknown("page", &p.id))?;
        let space = dir.spaces.iter().find(|s| s.key == p.space).ok_or_else(|| unknown("space", &p.space))?;
        let parent_id = match &p.parent_id {
            None => None,
            Some(parent) => {
                let (pid, pspace) =
                    page_ids.get(parent.as_str()).copied().ok_or_else(|| unknown("page", parent))?;
                if pspace != p.space {
                    return Err(invalid(&format!("page {}", p.id), "its parent is in another space"));
                }
                Some(pid)
            }
        };
        if dir.user(&p.author).is_none() {
            return Err(unknown("account", &p.author));
        }
        if p.version == 0 {
            return Err(invalid(&format!("page {}", p.id), "versions start at 1"));
        }
        content.next_page_id = content.next_page_id.max(id + 1);
        content.pages.insert(
            id,
            Page {
                id,
                space_id: space.id,
                title: p.title.clone(),
                body: p.body.clone(),
                parent_id,
                author: p.author.clone(),
                created: now,
                version: p.version,
                version_author: p.author.clone(),
                version_created: now,
                version_message: String::new(),
            },
        );
    }
    Ok(content)
}

fn unique<'a>(what: &'static str, values: impl Iterator<Item = &'a str>) -> Result<(), SeedError> {
    let mut seen = HashSet::new();
    for v in values {
        if !seen.insert(v) {
            return Err(SeedError::Duplicate { what, value: v.to_owned() });
        }
    }
    Ok(())
}
