//! Jira's REST API, mounted at `/rest/api/3` and `/rest/api/2` (Cloud) and
//! `/rest/api/2` (Data Center): issues, transitions, comments, search with
//! the [`crate::jql`] subset, projects, fields, users and permissions.
//!
//! Every handler acts for the [`Caller`] the gate established and enforces
//! that person's project permissions: an issue in a project they cannot
//! browse does not exist for them (404), as in Jira. v3 speaks rich text as
//! Atlassian Document Format, v2 as plain strings; either is accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::{ApiError, Params, body_json, id_text, reply};
use crate::gate::Caller;
use crate::jql::{self, Clause, Order};
use crate::seed::{Permission, StatusCategory};
use crate::site::{Change, Comment, Content, Directory, History, Issue, Project, Site, Status, User, lock};
use crate::{Via, time};

/// The most results one page of a search or listing holds.
const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: usize = 50;

/// Jira refuses longer summaries.
const MAX_SUMMARY_CHARS: usize = 255;

pub(crate) fn routes() -> Router<Arc<Site>> {
    Router::new()
        .route("/issue", post(create_issue))
        .route("/issue/{issue}", get(get_issue).put(edit_issue).delete(delete_issue))
        .route("/issue/{issue}/transitions", get(list_transitions).post(transition))
        .route("/issue/{issue}/comment", get(list_comments).post(add_comment))
        .route("/search", get(search_get).post(search_post))
        .route("/search/jql", get(search_jql_get).post(search_jql_post))
        .route("/project", get(list_projects))
        .route("/project/search", get(search_projects))
        .route("/project/{project}", get(get_project))
        .route("/field", get(list_fields))
        .route("/user", get(get_user))
        .route("/myself", get(myself))
        .route("/users/search", get(search_users))
        .route("/mypermissions", get(my_permissions))
        .route("/permissions/check", post(check_permissions))
        .route("/serverInfo", get(server_info))
}

#[derive(Debug, Deserialize)]
struct IssuePath {
    issue: String,
}

#[derive(Debug, Deserialize)]
struct ProjectPath {
    project: String,
}

type Handled = Result<Response, ApiError>;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::jira(StatusCode::BAD_REQUEST, message)
}

fn forbidden(message: &str) -> ApiError {
    ApiError::jira(StatusCode::FORBIDDEN, message)
}

fn full() -> ApiError {
    ApiError::jira(
        StatusCode::SERVICE_UNAVAILABLE,
        "The dev site holds as many objects as it will; restart it.",
    )
}

/// The person the caller acts as.
fn acting<'a>(dir: &'a Directory, caller: &Caller) -> Result<&'a User, ApiError> {
    dir.user(&caller.account_id)
        .ok_or_else(|| ApiError::jira(StatusCode::UNAUTHORIZED, "The caller's account is not on this site."))
}

/// The issue `id_or_key` and its project, if `user` may browse it.
fn visible<'a>(
    dir: &'a Directory,
    content: &Content,
    user: &User,
    id_or_key: &str,
) -> Result<(u64, &'a Project), ApiError> {
    let issue = content.issue(id_or_key).ok_or_else(ApiError::no_issue)?;
    let project =
        dir.project_by_id(&issue.project_id).filter(|p| user.can_browse(p)).ok_or_else(ApiError::no_issue)?;
    Ok((issue.id, project))
}

// ---------------------------------------------------------------- issues

async fn create_issue(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Handled {
    let body = body_json(&body).map_err(bad)?;
    let dir = &site.dir;
    let user = acting(dir, &caller)?;
    let fields = body
        .get("fields")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("The request needs a 'fields' object."))?;
    let mut errors = BTreeMap::new();
    let project = fields
        .get("project")
        .and_then(|p| p.get("key").or_else(|| p.get("id")))
        .and_then(id_text)
        .and_then(|k| dir.project(&k))
        .filter(|p| user.can_browse(p));
    if let Some(project) = project
        && !user.can(project, Permission::CreateIssues)
    {
        return Err(forbidden("You do not have permission to create issues in this project."));
    }
    if project.is_none() {
        errors.insert("project".to_owned(), "Specify a valid project ID or key".to_owned());
    }
    let summary = match fields.get("summary") {
        Some(v) => check_summary(v).map_err(|e| errors.insert("summary".to_owned(), e)).ok(),
        None => {
            errors.insert("summary".to_owned(), "You must specify a summary of the issue.".to_owned());
            None
        }
    };
    let issue_type = match fields.get("issuetype") {
        None => {
            errors.insert("issuetype".to_owned(), "Specify an issue type".to_owned());
            None
        }
        Some(t) => {
            let named = t.get("name").and_then(Value::as_str).map(str::to_owned);
            let by_id = t.get("id").and_then(id_text).and_then(|id| {
                dir.issue_types.iter().find(|(_, tid)| **tid == id).map(|(name, _)| name.clone())
            });
            let name = named.or(by_id).filter(|n| project.is_none_or(|p| p.issue_types.contains(n)));
            if name.is_none() {
                errors.insert("issuetype".to_owned(), "Specify a valid issue type".to_owned());
            }
            name
        }
    };
    let mut description = None;
    let mut labels = Vec::new();
    let mut assignee = None;
    let mut reporter = Some(user.account_id.clone());
    for (name, value) in fields {
        match name.as_str() {
            "project" | "summary" | "issuetype" => {}
            "description" => match check_rich(value) {
                Ok(v) => description = v,
                Err(e) => {
                    errors.insert(name.clone(), e);
                }
            },
            "labels" => match check_labels(value) {
                Ok(l) => labels = l,
                Err(e) => {
                    errors.insert(name.clone(), e);
                }
            },
            "assignee" | "reporter" => match check_user(dir, value) {
                Ok(account) if name == "assignee" => assignee = account,
                Ok(account) => reporter = account,
                Err(e) => {
                    errors.insert(name.clone(), e);
                }
            },
            other => {
                errors.insert(other.to_owned(), cannot_set(other));
            }
        }
    }
    let (Some(project), Some(summary), Some(issue_type), true) =
        (project, summary, issue_type, errors.is_empty())
    else {
        return Err(ApiError::jira_fields(errors));
    };
    let now = time::now_millis();
    let first_status = dir.statuses.first().map(|s| s.id.clone()).unwrap_or_default();
    let (response, event) = {
        let mut content = lock(&site.content);
        let issue = content
            .add_issue(
                project,
                Issue {
                    id: 0,
                    key: String::new(),
                    project_id: String::new(),
                    summary,
                    description,
                    issue_type,
                    status_id: first_status,
                    reporter,
                    assignee,
                    labels,
                    created: now,
                    updated: now,
                    comments: Vec::new(),
                    history: Vec::new(),
                },
            )
            .map_err(|_| full())?;
        (json!({ "id": issue.id.to_string(), "key": issue.key }), event_issue(dir, issue))
    };
    site.emit("avi:jira:created:issue", &user.account_id, vec![("issue", event)]);
    Ok(reply(StatusCode::CREATED, response))
}

async fn get_issue(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<IssuePath>,
    RawQuery(query): RawQuery,
) -> Handled {
    let params = Params::parse(query.as_deref());
    let dir = &site.dir;
    let user = acting(dir, &caller)?;
    let content = lock(&site.content);
    let (id, _) = visible(dir, &content, user, &p.issue)?;
    let issue = content.issues.get(&id).ok_or_else(ApiError::no_issue)?;
    let view = View {
        adf: caller.adf,
        fields: Fields::parse(&params.list("fields"), Fields::All),
        changelog: params.list("expand").iter().any(|e| e == "changelog"),
    };
    Ok(reply(StatusCode::OK, issue_json(dir, issue, &view)))
}

/// `update.labels`: a list of `{add: l}`, `{remove: l}` or `{set: [l...]}`.
fn apply_label_ops(labels: &mut Vec<String>, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("'update.labels' must be a list of operations.")?;
    for op in ops {
        let op = op
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or("Each label operation is one of add, remove or set.")?;
        match op.iter().next() {
            Some((verb, value)) if verb == "add" => {
                let label = check_labels(&Value::Array(vec![value.clone()]))?;
                for l in label {
                    if !labels.contains(&l) {
                        labels.push(l);
                    }
                }
            }
            Some((verb, Value::String(label))) if verb == "remove" => labels.retain(|l| l != label),
            Some((verb, value)) if verb == "set" => *labels = check_labels(value)?,
            _ => return Err("Each label operation is one of add, remove or set.".into()),
        }
    }
    Ok(())
}

async fn edit_issue(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<IssuePath>,
    body: Bytes,
) -> Handled {
    let body = body_json(&body).map_err(bad)?;
    let dir = &site.dir;
    let user = acting(dir, &caller)?;
    let event = {
        let mut content = lock(&site.content);
        let (id, project) = visible(dir, &content, user, &p.issue)?;
        if !user.can(project, Permission::EditIssues) {
            return Err(forbidden("You do not have permission to edit issues in this project."));
        }
        let empty = Map::new();
        let fields = match body.get("fields") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(f)) => f,
            Some(_) => return Err(bad("'fields' must be an object.")),
        };
        let current = content.issues.get(&id).ok_or_else(ApiError::no_issue)?.clone();
        let mut next = current.clone();
        let mut errors = BTreeMap::new();
        for (name, value) in fields {
            let result = match name.as_str() {
                "summary" => check_summary(value).map(|s| next.summary = s),
                "description" => check_rich(value).map(|d| next.description = d),
                "labels" => check_labels(value).map(|l| next.labels = l),
                "assignee" => check_user(dir, value).map(|a| next.assignee = a),
                other => Err(cannot_set(other)),
            };
            if let Err(e) = result {
                errors.insert(name.clone(), e);
            }
        }
        // Jira's `update` verbs, for labels (what apps use most); other
        // fields' verbs are refused by name.
        let updates = match body.get("update") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(u)) => u,
            Some(_) => return Err(bad("'update' must be an object.")),
        };
        for (name, ops) in updates {
            let result = match name.as_str() {
                "labels" => apply_label_ops(&mut next.labels, ops),
                other => Err(format!(
                    "The dev site supports 'update' operations on labels only, not on '{other}'."
                )),
            };
            if let Err(e) = result {
                errors.insert(name.clone(), e);
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::jira_fields(errors));
        }
        let items = changes(dir, &current, &next);
        if items.is_empty() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        if let Some(stored) = content.issues.get_mut(&id) {
            stored.summary = next.summary;
            stored.description = next.description;
            stored.labels = next.labels;
            stored.assignee = next.assignee;
        }
        record_update(dir, &mut content, id, user, items)?
    };
    site.emit("avi:jira:updated:issue", &user.account_id, event);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_issue(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<IssuePath>,
) -> Handled {
    let dir = &site.dir;
    let user = acting(dir, &caller)?;
    let event = {
        let mut content = lock(&site.content);
        let (id, project) = visible(dir, &content, user, &p.issue)?;
        if !user.can(project, Permission::DeleteIssues) {
            return Err(forbidden("You do not have permission to delete issues in this project."));
        }
        let issue = content.remove_issue(id).ok_or_else(ApiError::no_issue)?;
        event_issue(dir, &issue)
    };
    site.emit("avi:jira:deleted:issue", &user.account_id, vec![("issue", event)]);
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----------------------------------------------------------- transitions

async fn list_transitions(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<IssuePath>,
) -> Handled {
    let dir = &site.dir;
    let user = acting(dir, &caller)?;
    let content = lock(&site.content);
    let (id, project) = visible(dir, &content, user, &p.issue)?;
    let issue = content.issues.get(&id).ok_or_else(ApiError::no_issue)?;
    let transitions: Vec<Value> = if user.can(project, Permission::TransitionIssues) {
        dir.transitions
            .iter()
            .filter(|t| t.to != issue.status_id)
            .filter_map(|t| {
                let to = dir.status(&t.to)?;
                Some(json!({
                    "id": t.id, "name": t.name, "to": status_json(to),
                    "hasScreen": false, "isGlobal": true, "isInitial": false,
                    "isAvailable": true, "isConditional": false, "isLooped": false,
                }))
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(reply(StatusCode::OK, json!({ "expand": "transitions", "transitions": transitions })))
}

async fn transition(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<IssuePath>,
    body: Bytes,
) -> Handled {
    let body = body_json(&body).map_err(bad)?;
    let dir = &site.dir;
    let user = acting(dir, &caller)?;
    let wanted = body
        .get("transition")
        .and_then(|t| t.get("id"))
        .and_then(id_text)
        .ok_or_else(|| bad("Missing 'transition' identifier"))?;
    let event = {
        let mut content = lock(&site.content);
        let (id, project) = visible(dir, &content, user, &p.issue)?;
        if !user.can(project, Permission::TransitionIssues) {
            return Err(forbidden("You do not have permission to transition this issue."));
        }
        let from = content.issues.get(&id).map(|i| i.status_id.clone()).unwrap_or_default();
        let target = dir
            .transitions
            .iter()
            .find(|t| t.id == wanted && t.to != from)
            .and_then(|t| dir.status(&t.to))
            .ok_or_else(|| bad(format!("Transition id '{wanted}' is not valid for this issue.")))?;
        let from_name = dir.status(&from).map(|s| s.name.clone());
        if let Some(issue) = content.issues.get_mut(&id) {
            issue.status_id = target.id.clone();
        }
        let change = Change {
            field: "status",
            from: Some(from),
            from_string: from_name,
            to: Some(target.id.clone()),
            to_string: Some(target.name.clone()),
        };
        record_update(dir, &mut content, id, user, vec![change])?
    };
    site.emit("avi:jira:updated:issue", &user.account_id, event);
    Ok(StatusCode::NO_CONTENT.into_response())
}

// -------------------------------------------------------------- comments

async fn list_comments(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<IssuePath>,
    RawQuery(query): RawQuery,
) -> Handled {
    let params = Params::parse(query.as_deref());
    let start = params.number("startAt", 0).map_err(bad)?;
    let max = params.number("maxResults", DEFAULT_PAGE).map_err(bad)?.min(MAX_PAGE);
    let dir = &site.dir;
    let user = acting(dir, &caller)?;
    let content = lock(&site.content);
    let (id, _) = visible(dir, &content, user, &p.issue)?;
    let issue = content.issues.get(&id).ok_or_else(ApiError::no_issue)?;
    let mut comments: Vec<&Comment> = issue.comments.iter().collect();
    if params.get("orderBy") == Some("-created") {
        comments.reverse();
    }
    let page: Vec<Value> =
        comments.iter().skip(start).take(max).map(|c| comment_json(dir, c, caller.adf)).collect();
    Ok(reply(
        StatusCode::OK,
        json!({ "startAt": start, "maxResults": max, "total": comments.len(), "comments": page }),
    ))
}

async fn add_comment(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<IssuePath>,
    body: Bytes,
) -> Handled {
    let body = body_json(&body).map_err(bad)?;
    let dir = &site.dir;
    let user = acting(dir, &caller)?;
    let text = match body.get("body").map(check_rich) {
        Some(Ok(Some(v))) if !plain(Some(&v)).unwrap_or_default().trim().is_empty() => v,
        _ => {
            let errors =
                BTreeMap::from([("comment".to_owned(), "Comment body can not be empty!".to_owned())]);
            return Err(ApiError::jira_fields(errors));
        }
    };
    let (response, issue_event, comment_event) = {
        let mut content = lock(&site.content);
        let (id, project) = visible(dir, &content, user, &p.issue)?;
        if !user.can(project, Permission::AddComments) {
            return Err(forbidden("You do not have permission to add comments to this issue."));
        }
        let comment = content.add_comment(id, &user.account_id, text).map_err(|_| full())?;
        let issue = content.issues.get(&id).ok_or_else(ApiError::no_issue)?;
        (comment_json(dir, &comment, caller.adf), event_issue(dir, issue), comment_json(dir, &comment, true))
    };
    site.emit(
        "avi:jira:commented:issue",
        &user.account_id,
        vec![("issue", issue_event), ("comment", comment_event)],
    );
    Ok(reply(StatusCode::CREATED, response))
}

// ---------------------------------------------------------------- search

/// A search request, from query parameters or a JSON body.
#[derive(Debug, Default)]
struct Search {
    jql: String,
    start_at: usize,
    max_results: usize,
    fields: Vec<String>,
    changelog: bool,
    next_page_token: Option<String>,
}

impl Search {
    fn from_params(p: &Params) -> Result<Search, ApiError> {
        Ok(Search {
            jql: p.get("jql").unwrap_or_default().to_owned(),
            start_at: p.number("startAt", 0).map_err(bad)?,
            max_results: p.number("maxResults", DEFAULT_PAGE).map_err(bad)?.min(MAX_PAGE),
            fields: p.list("fields"),
            changelog: p.list("expand").iter().any(|e| e == "changelog"),
            next_page_token: p.get("nextPageToken").map(str::to_owned),
        })
    }

    fn from_body(body: &[u8]) -> Result<Search, ApiError> {
        let v = body_json(body).map_err(bad)?;
        let number = |name: &str, default: usize| match v.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(n) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("'{name}' must be a non-negative integer."))),
        };
        let strings = |name: &str| -> Vec<String> {
            match v.get(name) {
                Some(Value::Array(items)) => {
                    items.iter().filter_map(Value::as_str).map(str::to_owned).collect()
                }
                Some(Value::String(s)) => s.split(',').map(|x| x.trim().to_owned()).collect(),
                _ => Vec::new(),
            }
        };
        Ok(Search {
            jql: v.get("jql").and_then(Value::as_str).unwrap_or_default().to_owned(),
            start_at: number("startAt", 0)?,
            max_results: number("maxResults", DEFAULT_PAGE)?.min(MAX_PAGE),
            fields: strings("fields"),
            changelog: strings("expand").iter().any(|e| e == "changelog"),
            next_page_token: v.get("nextPageToken").and_then(Value::as_str).map(str::to_owned),
        })
    }
}

/// The ids of the issues `user` can see that match `jql`, in order.
fn run_jql(dir: &Directory, content: &Content, user: &User, jql: &str) -> Result<(Vec<u64>, bool), ApiError> {
    let query = jql::parse(jql).map_err(|e| bad(e.to_string()))?;
    let mut projects = Vec::new();
    let mut statuses = Vec::new();
    let mut keys = Vec::new();
    for clause in &query.clauses {
        match clause {
            Clause::Project(v) => {
                let project = dir
                    .project(v)
                    .or_else(|| dir.projects.iter().find(|p| p.name.eq_ignore_ascii_case(v)))
                    .filter(|p| user.can_browse(p))
                    .ok_or_else(|| bad(format!("The value '{v}' does not exist for the field 'project'.")))?;
                projects.push(project.id.as_str());
            }
            Clause::Status(v) => {
                let status = dir
                    .status_named(v)
                    .ok_or_else(|| bad(format!("The value '{v}' does not exist for the field 'status'.")))?;
                statuses.push(status.id.as_str());
            }
            Clause::Key(v) => {
                let (id, _) = visible(dir, content, user, v)
                    .map_err(|_| bad(format!("An issue with key '{v}' does not exist for field 'key'.")))?;
                keys.push(id);
            }
        }
    }
    let mut found: Vec<&Issue> = content
        .issues
        .values()
        .filter(|i| dir.project_by_id(&i.project_id).is_some_and(|p| user.can_browse(p)))
        .filter(|i| projects.iter().all(|p| *p == i.project_id))
        .filter(|i| statuses.iter().all(|s| *s == i.status_id))
        .filter(|i| keys.iter().all(|k| *k == i.id))
        .collect();
    found.sort_by_key(|i| (i.created, i.id));
    if query.order != Some(Order::CreatedAsc) {
        found.reverse();
    }
    Ok((found.into_iter().map(|i| i.id).collect(), !query.clauses.is_empty()))
}

fn classic_search(site: &Site, caller: &Caller, s: &Search) -> Handled {
    let dir = &site.dir;
    let user = acting(dir, caller)?;
    let content = lock(&site.content);
    let (ids, _) = run_jql(dir, &content, user, &s.jql)?;
    let view =
        View { adf: caller.adf, fields: Fields::parse(&s.fields, Fields::All), changelog: s.changelog };
    let issues: Vec<Value> = ids
        .iter()
        .skip(s.start_at)
        .take(s.max_results)
        .filter_map(|id| content.issues.get(id))
        .map(|i| issue_json(dir, i, &view))
        .collect();
    Ok(reply(
        StatusCode::OK,
        json!({
            "expand": "schema,names",
            "startAt": s.start_at,
            "maxResults": s.max_results,
            "total": ids.len(),
            "issues": issues,
        }),
    ))
}

/// The enhanced search: token pagination, bounded queries only, and only
/// issue ids unless fields are asked for.
fn enhanced_search(site: &Site, caller: &Caller, s: &Search) -> Handled {
    let dir = &site.dir;
    let user = acting(dir, caller)?;
    let start = match s.next_page_token.as_deref() {
        None | Some("") => 0,
        Some(t) => t.parse::<usize>().map_err(|_| bad("The nextPageToken is not one this site issued."))?,
    };
    let content = lock(&site.content);
    let (ids, bounded) = run_jql(dir, &content, user, &s.jql)?;
    if !bounded {
        return Err(bad(
            "Unbounded JQL queries are not allowed here. Please add a search restriction to your query.",
        ));
    }
    let view =
        View { adf: caller.adf, fields: Fields::parse(&s.fields, Fields::IdOnly), changelog: s.changelog };
    let issues: Vec<Value> = ids
        .iter()
        .skip(start)
        .take(s.max_results)
        .filter_map(|id| content.issues.get(id))
        .map(|i| issue_json(dir, i, &view))
        .collect();
    let end = start.saturating_add(s.max_results);
    let mut out = Map::new();
    out.insert("issues".into(), issues.into());
    out.insert("isLast".into(), (end >= ids.len()).into());
    if end < ids.len() {
        out.insert("nextPageToken".into(), end.to_string().into());
    }
    Ok(reply(StatusCode::OK, Value::Object(out)))
}

async fn search_get(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Handled {
    classic_search(&site, &caller, &Search::from_params(&Params::parse(query.as_deref()))?)
}

async fn search_post(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Handled {
    classic_search(&site, &caller, &Search::from_body(&body)?)
}

async fn search_jql_get(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Handled {
    enhanced_search(&site, &caller, &Search::from_params(&Params::parse(query.as_deref()))?)
}

async fn search_jql_post(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Handled {
    enhanced_search(&site, &caller, &Search::from_body(&body)?)
}

// -------------------------------------------------------------- projects

async fn list_projects(State(site): State<Arc<Site>>, Extension(caller): Extension<Caller>) -> Handled {
    let user = acting(&site.dir, &caller)?;
    let projects: Vec<Value> = site
        .dir
        .projects
        .iter()
        .filter(|p| user.can_browse(p))
        .map(|p| project_json(&site.dir, p, false))
        .collect();
    Ok(reply(StatusCode::OK, Value::Array(projects)))
}

async fn search_projects(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Handled {
    let params = Params::parse(query.as_deref());
    let start = params.number("startAt", 0).map_err(bad)?;
    let max = params.number("maxResults", DEFAULT_PAGE).map_err(bad)?.min(MAX_PAGE);
    let needle = params.get("query").unwrap_or_default().to_lowercase();
    let user = acting(&site.dir, &caller)?;
    let matching: Vec<&Project> = site
        .dir
        .projects
        .iter()
        .filter(|p| user.can_browse(p))
        .filter(|p| p.key.to_lowercase().contains(&needle) || p.name.to_lowercase().contains(&needle))
        .collect();
    let values: Vec<Value> =
        matching.iter().skip(start).take(max).map(|p| project_json(&site.dir, p, false)).collect();
    Ok(reply(
        StatusCode::OK,
        json!({
            "startAt": start,
            "maxResults": max,
            "total": matching.len(),
            "isLast": start.saturating_add(max) >= matching.len(),
            "values": values,
        }),
    ))
}

async fn get_project(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<ProjectPath>,
) -> Handled {
    let user = acting(&site.dir, &caller)?;
    let project = site.dir.project(&p.project).filter(|pr| user.can_browse(pr)).ok_or_else(|| {
        ApiError::jira(StatusCode::NOT_FOUND, format!("No project could be found with key '{}'.", p.project))
    })?;
    Ok(reply(StatusCode::OK, project_json(&site.dir, project, true)))
}

// ---------------------------------------------------------------- fields

/// The system fields the site has: id, name, schema type.
const FIELDS: [(&str, &str, &str); 11] = [
    ("summary", "Summary", "string"),
    ("description", "Description", "string"),
    ("issuetype", "Issue Type", "issuetype"),
    ("project", "Project", "project"),
    ("status", "Status", "status"),
    ("reporter", "Reporter", "user"),
    ("assignee", "Assignee", "user"),
    ("labels", "Labels", "array"),
    ("created", "Created", "datetime"),
    ("updated", "Updated", "datetime"),
    ("comment", "Comment", "comments-page"),
];

async fn list_fields() -> Handled {
    let fields: Vec<Value> = FIELDS
        .iter()
        .map(|(id, name, kind)| {
            json!({
                "id": id, "key": id, "name": name, "custom": false, "orderable": true,
                "navigable": true, "searchable": true, "clauseNames": [id],
                "schema": { "type": kind, "system": id },
            })
        })
        .collect();
    Ok(reply(StatusCode::OK, Value::Array(fields)))
}

// ----------------------------------------------------------------- users

async fn get_user(State(site): State<Arc<Site>>, RawQuery(query): RawQuery) -> Handled {
    let params = Params::parse(query.as_deref());
    let account = params
        .get("accountId")
        .or_else(|| params.get("username"))
        .or_else(|| params.get("key"))
        .ok_or_else(|| bad("The query parameter 'accountId' is required."))?;
    let user = site.dir.user(account).ok_or_else(|| {
        ApiError::jira(
            StatusCode::NOT_FOUND,
            "Specified user does not exist or you do not have required permissions",
        )
    })?;
    Ok(reply(StatusCode::OK, user_json(user)))
}

async fn myself(State(site): State<Arc<Site>>, Extension(caller): Extension<Caller>) -> Handled {
    Ok(reply(StatusCode::OK, user_json(acting(&site.dir, &caller)?)))
}

async fn search_users(State(site): State<Arc<Site>>, RawQuery(query): RawQuery) -> Handled {
    let params = Params::parse(query.as_deref());
    let start = params.number("startAt", 0).map_err(bad)?;
    let max = params.number("maxResults", DEFAULT_PAGE).map_err(bad)?.min(MAX_PAGE);
    let needle = params.get("query").unwrap_or_default().to_lowercase();
    let users: Vec<Value> = site
        .dir
        .users
        .iter()
        .filter(|u| {
            needle.is_empty()
                || u.display_name.to_lowercase().contains(&needle)
                || u.email.to_lowercase().contains(&needle)
                || u.account_id == needle
        })
        .skip(start)
        .take(max)
        .map(user_json)
        .collect();
    Ok(reply(StatusCode::OK, Value::Array(users)))
}

// ----------------------------------------------------------- permissions

/// Jira's one global permission the site knows.
const ADMINISTER: &str = "ADMINISTER";

async fn my_permissions(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Handled {
    let params = Params::parse(query.as_deref());
    let dir = &site.dir;
    let user = acting(dir, &caller)?;
    let wanted = params.list("permissions");
    if wanted.is_empty() {
        return Err(bad("The 'permissions' query parameter is required."));
    }
    let no_project =
        |v: &str| ApiError::jira(StatusCode::NOT_FOUND, format!("No project could be found with key '{v}'."));
    let context: Option<&Project> =
        if let Some(v) = params.get("projectKey").or_else(|| params.get("projectId")) {
            Some(dir.project(v).filter(|p| user.can_browse(p)).ok_or_else(|| no_project(v))?)
        } else if let Some(v) = params.get("issueKey").or_else(|| params.get("issueId")) {
            let content = lock(&site.content);
            Some(visible(dir, &content, user, v)?.1)
        } else {
            None
        };
    let mut out = Map::new();
    for key in &wanted {
        let entry = if key == ADMINISTER {
            json!({
                "id": "0", "key": ADMINISTER, "name": "Administer Jira", "type": "GLOBAL",
                "description": "Create and administer projects, issue types, fields and more.",
                "havePermission": user.site_admin,
            })
        } else {
            let permission = Permission::from_key(key)
                .ok_or_else(|| bad(format!("The permission '{key}' is not one the dev site knows.")))?;
            let have = match context {
                Some(p) => user.can(p, permission),
                None => dir.projects.iter().any(|p| user.can(p, permission)),
            };
            let (id, name) = permission.id_and_name();
            json!({
                "id": id, "key": key, "name": name, "type": "PROJECT",
                "description": name, "havePermission": have,
            })
        };
        out.insert(key.clone(), entry);
    }
    Ok(reply(StatusCode::OK, json!({ "permissions": out })))
}

async fn check_permissions(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Handled {
    let body = body_json(&body).map_err(bad)?;
    let dir = &site.dir;
    let me = acting(dir, &caller)?;
    let target = match body.get("accountId").and_then(Value::as_str) {
        None => me,
        Some(id) if id == me.account_id => me,
        Some(id) => {
            if !me.site_admin {
                return Err(forbidden(
                    "Checking another user's permissions needs the Administer Jira global permission.",
                ));
            }
            dir.user(id).ok_or_else(|| bad(format!("The user with accountId '{id}' does not exist.")))?
        }
    };
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let numbers = |v: Option<&Value>| -> Vec<u64> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| id_text(x).and_then(|t| t.parse().ok())).collect())
            .unwrap_or_default()
    };
    let mut global = Vec::new();
    for key in strings(body.get("globalPermissions")) {
        if key != ADMINISTER {
            return Err(bad(format!("The global permission '{key}' is not one the dev site knows.")));
        }
        if target.site_admin {
            global.push(key);
        }
    }
    let content = lock(&site.content);
    let mut granted = Vec::new();
    let requests = body.get("projectPermissions").and_then(Value::as_array).cloned().unwrap_or_default();
    for request in &requests {
        let projects = numbers(request.get("projects"));
        let issues = numbers(request.get("issues"));
        for key in strings(request.get("permissions")) {
            let permission = Permission::from_key(&key)
                .ok_or_else(|| bad(format!("The permission '{key}' is not one the dev site knows.")))?;
            let allowed = |p: &Project| target.can_browse(p) && target.can(p, permission);
            let project_ids: Vec<u64> = projects
                .iter()
                .copied()
                .filter(|id| dir.project_by_id(&id.to_string()).is_some_and(allowed))
                .collect();
            let issue_ids: Vec<u64> = issues
                .iter()
                .copied()
                .filter(|id| {
                    content.issues.get(id).and_then(|i| dir.project_by_id(&i.project_id)).is_some_and(allowed)
                })
                .collect();
            granted.push(json!({ "permission": key, "projects": project_ids, "issues": issue_ids }));
        }
    }
    Ok(reply(StatusCode::OK, json!({ "globalPermissions": global, "projectPermissions": granted })))
}

async fn server_info(State(site): State<Arc<Site>>, Extension(caller): Extension<Caller>) -> Handled {
    let now = time::now_millis();
    Ok(reply(
        StatusCode::OK,
        json!({
            "baseUrl": format!("https://{}", site.dir.site_host),
            "version": "1001.0.0-SNAPSHOT",
            "versionNumbers": [1001, 0, 0],
            "deploymentType": if caller.via == Via::Pat { "Server" } else { "Cloud" },
            "buildNumber": 100_000,
            "buildDate": time::jira(now),
            "serverTime": time::jira(now),
            "scmInfo": "kiln-devsite",
            "serverTitle": format!("{} (Kiln dev site)", site.dir.site_name()),
        }),
    ))
}

// ------------------------------------------------------------- rendering

/// Which fields an issue is rendered with.
#[derive(Debug, Clone)]
pub(crate) enum Fields {
    All,
    Some(BTreeSet<String>),
    /// Only `id` (the enhanced search's default).
    IdOnly,
}

impl Fields {
    fn parse(list: &[String], default: Fields) -> Fields {
        let names: BTreeSet<String> = list.iter().filter(|f| !f.starts_with('-')).cloned().collect();
        if names.is_empty() {
            default
        } else if names.contains("*all") || names.contains("*navigable") {
            Fields::All
        } else {
            Fields::Some(names)
        }
    }

    fn wants(&self, name: &str) -> bool {
        match self {
            Fields::All => true,
            Fields::Some(names) => names.contains(name),
            Fields::IdOnly => false,
        }
    }
}

/// How an issue is rendered.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub(crate) adf: bool,
    pub(crate) fields: Fields,
    pub(crate) changelog: bool,
}

pub(crate) fn issue_json(dir: &Directory, issue: &Issue, view: &View) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), issue.id.to_string().into());
    if matches!(view.fields, Fields::IdOnly) {
        return Value::Object(out);
    }
    out.insert("key".into(), issue.key.clone().into());
    let mut fields = Map::new();
    for (name, _, _) in FIELDS {
        if view.fields.wants(name) {
            fields.insert(name.into(), field_json(dir, issue, name, view.adf));
        }
    }
    out.insert("fields".into(), fields.into());
    if view.changelog {
        let histories: Vec<Value> = issue.history.iter().map(|h| history_json(dir, h)).collect();
        out.insert(
            "changelog".into(),
            json!({ "startAt": 0, "maxResults": histories.len(), "total": histories.len(), "histories": histories }),
        );
    }
    Value::Object(out)
}

/// Record `items` as `user`'s change to issue `id`; the payload of the
/// `avi:jira:updated:issue` event: the issue as it now is, and the changelog
/// entry.
fn record_update(
    dir: &Directory,
    content: &mut Content,
    id: u64,
    user: &User,
    items: Vec<Change>,
) -> Result<Vec<(&'static str, Value)>, ApiError> {
    let history = content.record_history(id, &user.account_id, items).ok_or_else(ApiError::no_issue)?;
    let issue = content.issues.get(&id).ok_or_else(ApiError::no_issue)?;
    Ok(vec![("issue", event_issue(dir, issue)), ("changelog", changelog_event(&history))])
}

/// How an issue appears in an event: v3's shape, every field.
fn event_issue(dir: &Directory, issue: &Issue) -> Value {
    issue_json(dir, issue, &View { adf: true, fields: Fields::All, changelog: false })
}

fn field_json(dir: &Directory, issue: &Issue, name: &str, adf: bool) -> Value {
    let user = |id: &Option<String>| id.as_deref().and_then(|id| dir.user(id)).map_or(Value::Null, user_json);
    match name {
        "summary" => issue.summary.clone().into(),
        "description" => issue.description.as_ref().map_or(Value::Null, |d| rich(d, adf)),
        "issuetype" => json!({
            "id": dir.issue_types.get(&issue.issue_type),
            "name": issue.issue_type,
            "subtask": false,
        }),
        "project" => {
            dir.project_by_id(&issue.project_id).map_or(Value::Null, |p| project_json(dir, p, false))
        }
        "status" => dir.status(&issue.status_id).map_or(Value::Null, status_json),
        "reporter" => user(&issue.reporter),
        "assignee" => user(&issue.assignee),
        "labels" => issue.labels.clone().into(),
        "created" => time::jira(issue.created).into(),
        "updated" => time::jira(issue.updated).into(),
        "comment" => {
            let comments: Vec<Value> = issue.comments.iter().map(|c| comment_json(dir, c, adf)).collect();
            json!({ "comments": comments, "maxResults": comments.len(), "total": comments.len(), "startAt": 0 })
        }
        _ => Value::Null,
    }
}

fn status_json(s: &Status) -> Value {
    let (id, key, name) = match s.category {
        StatusCategory::New => (2, "new", "To Do"),
        StatusCategory::Indeterminate => (4, "indeterminate", "In Progress"),
        StatusCategory::Done => (3, "done", "Done"),
    };
    json!({ "id": s.id, "name": s.name, "statusCategory": { "id": id, "key": key, "name": name } })
}

fn project_json(dir: &Directory, p: &Project, full: bool) -> Value {
    let mut v = json!({
        "id": p.id, "key": p.key, "name": p.name,
        "projectTypeKey": "software", "simplified": false, "style": "classic", "isPrivate": false,
    });
    if full && let Value::Object(map) = &mut v {
        let types: Vec<Value> = p
            .issue_types
            .iter()
            .map(|t| json!({ "id": dir.issue_types.get(t), "name": t, "subtask": false }))
            .collect();
        map.insert("issueTypes".into(), types.into());
    }
    v
}

pub(crate) fn user_json(u: &User) -> Value {
    json!({
        "accountId": u.account_id,
        "accountType": if u.is_app { "app" } else { "atlassian" },
        "displayName": u.display_name,
        "emailAddress": u.email,
        "active": true,
        "timeZone": "UTC",
        "locale": "en_US",
    })
}

fn comment_json(dir: &Directory, c: &Comment, adf: bool) -> Value {
    let author = dir.user(&c.author).map_or(Value::Null, user_json);
    json!({
        "id": c.id.to_string(),
        "author": author,
        "updateAuthor": author,
        "body": rich(&c.body, adf),
        "created": time::jira(c.created),
        "updated": time::jira(c.created),
        "jsdPublic": true,
    })
}

fn history_json(dir: &Directory, h: &History) -> Value {
    json!({
        "id": h.id.to_string(),
        "author": dir.user(&h.author).map_or(Value::Null, user_json),
        "created": time::jira(h.created),
        "items": h.items.iter().map(change_json).collect::<Vec<_>>(),
    })
}

fn change_json(c: &Change) -> Value {
    json!({
        "field": c.field, "fieldtype": "jira", "fieldId": c.field,
        "from": c.from, "fromString": c.from_string, "to": c.to, "toString": c.to_string,
    })
}

fn changelog_event(h: &History) -> Value {
    json!({ "id": h.id.to_string(), "items": h.items.iter().map(change_json).collect::<Vec<_>>() })
}

/// What changed between `before` and `after`, as changelog items.
fn changes(dir: &Directory, before: &Issue, after: &Issue) -> Vec<Change> {
    let mut items = Vec::new();
    let text = |field, from: Option<String>, to: Option<String>| Change {
        field,
        from: None,
        from_string: from,
        to: None,
        to_string: to,
    };
    if before.summary != after.summary {
        items.push(text("summary", Some(before.summary.clone()), Some(after.summary.clone())));
    }
    if before.description != after.description {
        items.push(text(
            "description",
            plain(before.description.as_ref()),
            plain(after.description.as_ref()),
        ));
    }
    if before.labels != after.labels {
        items.push(text("labels", Some(before.labels.join(" ")), Some(after.labels.join(" "))));
    }
    if before.assignee != after.assignee {
        let name =
            |id: &Option<String>| id.as_deref().and_then(|id| dir.user(id)).map(|u| u.display_name.clone());
        items.push(Change {
            field: "assignee",
            from: before.assignee.clone(),
            from_string: name(&before.assignee),
            to: after.assignee.clone(),
            to_string: name(&after.assignee),
        });
    }
    items
}

// ------------------------------------------------------------ validation

fn cannot_set(field: &str) -> String {
    format!("Field '{field}' cannot be set. It is not on the appropriate screen, or unknown.")
}

fn check_summary(v: &Value) -> Result<String, String> {
    let s = v.as_str().map(str::trim).unwrap_or_default();
    if s.is_empty() {
        Err("You must specify a summary of the issue.".to_owned())
    } else if s.chars().count() > MAX_SUMMARY_CHARS {
        Err("Summary must be less than 255 characters.".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

/// A rich-text value: a string, an ADF document, or null (none).
fn check_rich(v: &Value) -> Result<Option<Value>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(_) => Ok(Some(v.clone())),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("doc") => Ok(Some(v.clone())),
        _ => Err("Operation value must be a string or an Atlassian Document.".to_owned()),
    }
}

fn check_labels(v: &Value) -> Result<Vec<String>, String> {
    let err = || "Labels are a list of strings without spaces.".to_owned();
    let items = v.as_array().ok_or_else(err)?;
    items
        .iter()
        .map(|l| l.as_str().filter(|s| !s.is_empty() && !s.contains(char::is_whitespace)).map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(err)
}

/// `{"accountId": ...}` naming a user of the site, or null (nobody).
fn check_user(dir: &Directory, v: &Value) -> Result<Option<String>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let id = v.get("accountId").and_then(Value::as_str).ok_or("Specify a user as {\"accountId\": ...}.")?;
    dir.user(id).map(|u| Some(u.account_id.clone())).ok_or_else(|| format!("User '{id}' does not exist."))
}

// ------------------------------------------------------------- rich text

/// `value` as the API version wants it: ADF for v3, a string for v2.
pub(crate) fn rich(value: &Value, adf: bool) -> Value {
    match (value, adf) {
        (Value::String(s), true) => text_to_adf(s),
        (Value::Object(_), false) => Value::String(adf_to_text(value)),
        (v, _) => v.clone(),
    }
}

fn text_to_adf(s: &str) -> Value {
    let paragraphs: Vec<Value> = s
        .lines()
        .map(|line| {
            if line.is_empty() {
                json!({ "type": "paragraph", "content": [] })
            } else {
                json!({ "type": "paragraph", "content": [{ "type": "text", "text": line }] })
            }
        })
        .collect();
    json!({ "type": "doc", "version": 1, "content": paragraphs })
}

/// The text of an ADF document, a line per block.
pub(crate) fn adf_to_text(v: &Value) -> String {
    fn walk(v: &Value, out: &mut String) {
        if let Some(t) = v.get("text").and_then(Value::as_str) {
            out.push_str(t);
        }
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind == "hardBreak" {
            out.push('\n');
        }
        if let Some(children) = v.get("content").and_then(Value::as_array) {
            for c in children {
                walk(c, out);
            }
        }
        if matches!(kind, "paragraph" | "heading" | "codeBlock" | "blockquote" | "rule") {
            out.push('\n');
        }
    }
    let mut out = String::new();
    walk(v, &mut out);
    out.trim_end().to_owned()
}

/// Rich text as a plain string (for changelogs).
fn plain(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(adf_to_text(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rich_text_converts_between_api_versions() {
        let adf = rich(&Value::String("one\ntwo".into()), true);
        assert_eq!(adf["type"], "doc");
        assert_eq!(adf_to_text(&adf), "one\ntwo");
        assert_eq!(rich(&adf, false), Value::String("one\ntwo".into()));
        assert_eq!(rich(&Value::String("x".into()), false), Value::String("x".into()));
    }
}
