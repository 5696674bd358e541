//! Confluence's REST API: v2 pages and spaces (`/wiki/api/v2`, Cloud only)
//! and v1 content (`/wiki/rest/api` on Cloud, `/rest/api` on Data Center).
//! Bodies are storage format only. Space permissions are not emulated:
//! everyone on the site may read and write every space.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ApiError, Params, body_json, id_text, reply};
use crate::gate::Caller;
use crate::site::{Content, Directory, Page, Site, lock};
use crate::time;

/// Confluence refuses longer titles.
const MAX_TITLE_CHARS: usize = 255;
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 250;

pub(crate) fn v2_routes() -> Router<Arc<Site>> {
    Router::new()
        .route("/pages", get(list_pages).post(create_page))
        .route("/pages/{id}", get(get_page).put(update_page))
        .route("/pages/{id}/children", get(children))
        .route("/spaces", get(list_spaces))
}

pub(crate) fn v1_routes() -> Router<Arc<Site>> {
    Router::new()
        .route("/content", get(list_content))
        .route("/content/{id}", get(get_content))
        .route("/content/{id}/permission/check", axum::routing::post(check_content_permission))
}

#[derive(Debug, Deserialize)]
struct PagePath {
    id: String,
}

type Handled = Result<Response, ApiError>;

fn bad(title: impl Into<String>) -> ApiError {
    ApiError::v2(StatusCode::BAD_REQUEST, title)
}

fn not_found() -> ApiError {
    ApiError::v2(StatusCode::NOT_FOUND, "Not Found")
}

fn page_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| bad(format!("'{raw}' is not a page id; page ids are numeric.")))
}

/// `body-format` — only `storage` is emulated.
fn wants_body(params: &Params) -> Result<bool, ApiError> {
    match params.get("body-format") {
        None => Ok(false),
        Some("storage") => Ok(true),
        Some(other) => {
            Err(bad(format!("body-format '{other}' is not supported by the dev site; use storage.")))
        }
    }
}

async fn get_page(
    State(site): State<Arc<Site>>,
    Path(p): Path<PagePath>,
    RawQuery(query): RawQuery,
) -> Handled {
    let with_body = wants_body(&Params::parse(query.as_deref()))?;
    let id = page_id(&p.id)?;
    let content = lock(&site.content);
    let page = content.pages.get(&id).ok_or_else(not_found)?;
    Ok(reply(StatusCode::OK, page_json(&site.dir, page, with_body)))
}

async fn list_pages(State(site): State<Arc<Site>>, RawQuery(query): RawQuery) -> Handled {
    let params = Params::parse(query.as_deref());
    let with_body = wants_body(&params)?;
    if params.get("cursor").is_some() {
        return Err(bad("The dev site never returns a cursor; it has no further pages."));
    }
    let limit = params.number("limit", DEFAULT_LIMIT).map_err(bad)?.clamp(1, MAX_LIMIT);
    let spaces: Vec<u64> = params
        .list("space-id")
        .iter()
        .map(|s| s.parse().map_err(|_| bad(format!("space-id '{s}' is not numeric."))))
        .collect::<Result<_, _>>()?;
    let title = params.get("title");
    let content = lock(&site.content);
    let results: Vec<Value> = content
        .pages
        .values()
        .filter(|p| spaces.is_empty() || spaces.contains(&p.space_id))
        .filter(|p| title.is_none_or(|t| t == p.title))
        .take(limit)
        .map(|p| page_json(&site.dir, p, with_body))
        .collect();
    Ok(reply(StatusCode::OK, json!({ "results": results, "_links": {} })))
}

async fn children(
    State(site): State<Arc<Site>>,
    Path(p): Path<PagePath>,
    RawQuery(query): RawQuery,
) -> Handled {
    let params = Params::parse(query.as_deref());
    let limit = params.number("limit", DEFAULT_LIMIT).map_err(bad)?.clamp(1, MAX_LIMIT);
    let id = page_id(&p.id)?;
    let content = lock(&site.content);
    if !content.pages.contains_key(&id) {
        return Err(not_found());
    }
    let results: Vec<Value> = content
        .pages
        .values()
        .filter(|c| c.parent_id == Some(id))
        .take(limit)
        .zip(0u64..)
        .map(|(c, position)| {
            json!({
                "id": c.id.to_string(), "status": "current", "title": c.title,
                "spaceId": c.space_id.to_string(), "childPosition": position,
            })
        })
        .collect();
    Ok(reply(StatusCode::OK, json!({ "results": results, "_links": {} })))
}

async fn list_spaces(State(site): State<Arc<Site>>, RawQuery(query): RawQuery) -> Handled {
    let params = Params::parse(query.as_deref());
    let limit = params.number("limit", DEFAULT_LIMIT).map_err(bad)?.clamp(1, MAX_LIMIT);
    let ids = params.list("ids");
    let keys = params.list("keys");
    let content = lock(&site.content);
    let results: Vec<Value> = site
        .dir
        .spaces
        .iter()
        .filter(|s| ids.is_empty() || ids.contains(&s.id.to_string()))
        .filter(|s| keys.is_empty() || keys.contains(&s.key))
        .take(limit)
        .map(|s| {
            let homepage = content.pages.values().find(|p| p.space_id == s.id && p.parent_id.is_none());
            json!({
                "id": s.id.to_string(), "key": s.key, "name": s.name, "type": "global", "status": "current",
                "homepageId": homepage.map(|p| p.id.to_string()), "description": null, "icon": null,
                "_links": { "webui": format!("/spaces/{}", s.key) },
            })
        })
        .collect();
    Ok(reply(StatusCode::OK, json!({ "results": results, "_links": {} })))
}

/// `body: {representation: storage, value}` → the value.
fn storage_body(v: &Value) -> Result<Option<String>, ApiError> {
    let Some(body) = v.get("body").filter(|b| !b.is_null()) else {
        return Ok(None);
    };
    match body.get("representation").and_then(Value::as_str) {
        Some("storage") => {}
        other => {
            return Err(bad(format!(
                "body.representation {} is not supported by the dev site; use storage.",
                other.unwrap_or("(missing)")
            )));
        }
    }
    body.get("value")
        .and_then(Value::as_str)
        .map(|s| Some(s.to_owned()))
        .ok_or_else(|| bad("body.value must be a string."))
}

fn check_title(v: &Value) -> Result<String, ApiError> {
    let title = v.get("title").and_then(Value::as_str).map(str::trim).unwrap_or_default();
    if title.is_empty() {
        return Err(bad("A page needs a title."));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(bad("A page title has at most 255 characters."));
    }
    Ok(title.to_owned())
}

fn check_status(v: &Value) -> Result<(), ApiError> {
    match v.get("status").and_then(Value::as_str) {
        None | Some("current") => Ok(()),
        Some(other) => Err(bad(format!("status '{other}' is not supported by the dev site; use current."))),
    }
}

async fn create_page(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Handled {
    let v = body_json(&body).map_err(bad)?;
    check_status(&v)?;
    let space_id: u64 = v
        .get("spaceId")
        .and_then(id_text)
        .and_then(|s| s.parse().ok())
        .filter(|id| site.dir.space(*id).is_some())
        .ok_or_else(|| bad("spaceId must name a space of this site."))?;
    let title = check_title(&v)?;
    let text = storage_body(&v)?.unwrap_or_default();
    let now = time::now_millis();
    let (response, event) = {
        let mut content = lock(&site.content);
        let parent_id = match v.get("parentId").filter(|p| !p.is_null()) {
            None => None,
            Some(raw) => {
                let id = id_text(raw).and_then(|s| s.parse::<u64>().ok());
                let parent = id.and_then(|id| content.pages.get(&id)).filter(|p| p.space_id == space_id);
                Some(parent.ok_or_else(|| bad("parentId must name a page in the same space."))?.id)
            }
        };
        if content.pages.values().any(|p| p.space_id == space_id && p.title == title) {
            return Err(bad(
                "A page with this title already exists: A page already exists with the same TITLE in this space",
            ));
        }
        let page = content
            .add_page(Page {
                id: 0,
                space_id,
                title,
                body: text,
                parent_id,
                author: caller.account_id.clone(),
                created: now,
                version: 1,
                version_author: caller.account_id.clone(),
                version_created: now,
                version_message: String::new(),
            })
            .map_err(|_| {
                ApiError::v2(StatusCode::SERVICE_UNAVAILABLE, "The dev site holds as many pages as it will.")
            })?;
        (page_json(&site.dir, page, true), event_content(&site.dir, page))
    };
    site.emit("avi:confluence:created:page", &caller.account_id, vec![("content", event)]);
    Ok(reply(StatusCode::OK, response))
}

async fn update_page(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
    Path(p): Path<PagePath>,
    body: Bytes,
) -> Handled {
    let id = page_id(&p.id)?;
    let v = body_json(&body).map_err(bad)?;
    check_status(&v)?;
    if v.get("id").and_then(id_text).is_some_and(|given| given != p.id) {
        return Err(bad("The id in the body is not the page's id."));
    }
    let title = check_title(&v)?;
    let text = storage_body(&v)?;
    let number = v
        .get("version")
        .and_then(|ver| ver.get("number"))
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("version.number is required: the current version plus one."))?;
    let message =
        v.get("version").and_then(|ver| ver.get("message")).and_then(Value::as_str).unwrap_or_default();
    let (response, event) = {
        let mut content = lock(&site.content);
        let page = content.pages.get(&id).ok_or_else(not_found)?;
        if number != u64::from(page.version) + 1 {
            return Err(ApiError::v2(
                StatusCode::CONFLICT,
                format!(
                    "Version must be incremented when updating a page. Current Version is: {}",
                    page.version
                ),
            ));
        }
        let space_id = page.space_id;
        if content
            .pages
            .values()
            .any(|other| other.id != id && other.space_id == space_id && other.title == title)
        {
            return Err(bad(
                "A page with this title already exists: A page already exists with the same TITLE in this space",
            ));
        }
        let page = content.pages.get_mut(&id).ok_or_else(not_found)?;
        page.title = title;
        if let Some(text) = text {
            page.body = text;
        }
        page.version = u32::try_from(number).unwrap_or(u32::MAX);
        page.version_author = caller.account_id.clone();
        page.version_created = time::now_millis();
        page.version_message = message.to_owned();
        (page_json(&site.dir, page, true), event_content(&site.dir, page))
    };
    site.emit("avi:confluence:updated:page", &caller.account_id, vec![("content", event)]);
    Ok(reply(StatusCode::OK, response))
}

/// v1 `GET /content/{id}` with `expand=body.storage,version,space`.
async fn get_content(
    State(site): State<Arc<Site>>,
    Path(p): Path<PagePath>,
    RawQuery(query): RawQuery,
) -> Handled {
    let params = Params::parse(query.as_deref());
    let expand = params.list("expand");
    let missing = || ApiError::v1(StatusCode::NOT_FOUND, format!("No content found with id: {}", p.id));
    let id: u64 = p.id.parse().map_err(|_| missing())?;
    let content = lock(&site.content);
    let page = content.pages.get(&id).ok_or_else(missing)?;
    Ok(reply(StatusCode::OK, content_v1(&site.dir, &content, page, &expand)))
}

/// v1 `GET /content`: pages (the only content type the dev site has),
/// optionally of one space or with one title, paged by `start`/`limit`.
async fn list_content(State(site): State<Arc<Site>>, RawQuery(query): RawQuery) -> Handled {
    let params = Params::parse(query.as_deref());
    let expand = params.list("expand");
    let start = params.number("start", 0).map_err(|e| ApiError::v1(StatusCode::BAD_REQUEST, e))?;
    let limit =
        params.number("limit", 25).map_err(|e| ApiError::v1(StatusCode::BAD_REQUEST, e))?.clamp(1, MAX_LIMIT);
    let wanted_type = params.get("type").unwrap_or("page");
    let space_key = params.get("spaceKey");
    let title = params.get("title");
    let content = lock(&site.content);
    let dir = &site.dir;
    let results: Vec<Value> = content
        .pages
        .values()
        .filter(|_| wanted_type == "page")
        .filter(|p| space_key.is_none_or(|k| dir.space(p.space_id).is_some_and(|s| s.key == k)))
        .filter(|p| title.is_none_or(|t| t == p.title))
        .skip(start)
        .take(limit)
        .map(|p| content_v1(dir, &content, p, &expand))
        .collect();
    let size = results.len();
    Ok(reply(
        StatusCode::OK,
        json!({ "results": results, "start": start, "limit": limit, "size": size, "_links": {} }),
    ))
}

/// v1 `POST /content/{id}/permission/check`: may a user read, update or
/// delete a page? On the dev site every person may do all three in every
/// space (it has no space permissions); unknown people may do none.
async fn check_content_permission(
    State(site): State<Arc<Site>>,
    Path(p): Path<PagePath>,
    body: Bytes,
) -> Handled {
    let body = body_json(&body).map_err(|e| ApiError::v1(StatusCode::BAD_REQUEST, e))?;
    let missing = || ApiError::v1(StatusCode::NOT_FOUND, format!("No content found with id: {}", p.id));
    let id: u64 = p.id.parse().map_err(|_| missing())?;
    if !lock(&site.content).pages.contains_key(&id) {
        return Err(missing());
    }
    let subject = body.get("subject");
    let (kind, who) = (
        subject.and_then(|s| s.get("type")).and_then(Value::as_str),
        subject.and_then(|s| s.get("identifier")).and_then(Value::as_str),
    );
    let operation = body.get("operation").and_then(Value::as_str).unwrap_or_default();
    if !matches!(operation, "read" | "update" | "delete") {
        return Err(ApiError::v1(
            StatusCode::BAD_REQUEST,
            format!("The operation '{operation}' is not one of read, update or delete."),
        ));
    }
    if kind != Some("user") {
        return Err(ApiError::v1(
            StatusCode::BAD_REQUEST,
            "The dev site checks subjects of type 'user' only.",
        ));
    }
    let known = who.is_some_and(|w| site.dir.user(w).is_some());
    Ok(reply(StatusCode::OK, json!({ "hasPermission": known })))
}

/// A page as v1 renders it, with the `expand`ed parts asked for.
fn content_v1(dir: &Directory, content: &Content, page: &Page, expand: &[String]) -> Value {
    let space = dir.space(page.space_id);
    let mut out = serde_json::Map::new();
    out.insert("id".into(), page.id.to_string().into());
    out.insert("type".into(), "page".into());
    out.insert("status".into(), "current".into());
    out.insert("title".into(), page.title.clone().into());
    out.insert(
        "space".into(),
        space.map_or(
            Value::Null,
            |s| json!({ "id": s.id, "key": s.key, "name": s.name, "type": "global", "status": "current" }),
        ),
    );
    out.insert(
        "version".into(),
        json!({
            "by": person_v1(dir, &page.version_author),
            "when": time::confluence(page.version_created),
            "number": page.version,
            "message": page.version_message,
            "minorEdit": false,
        }),
    );
    if expand.iter().any(|e| e == "body.storage") {
        out.insert("body".into(), json!({ "storage": { "value": page.body, "representation": "storage" } }));
    }
    if expand.iter().any(|e| e == "ancestors") {
        let mut ancestors = Vec::new();
        let mut next = page.parent_id;
        while let Some(pid) = next {
            let Some(parent) = content.pages.get(&pid) else { break };
            if ancestors.len() > content.pages.len() {
                break;
            }
            ancestors.push(json!({ "id": parent.id.to_string(), "type": "page", "status": "current", "title": parent.title }));
            next = parent.parent_id;
        }
        ancestors.reverse();
        out.insert("ancestors".into(), ancestors.into());
    }
    let webui = format!("/spaces/{}/pages/{}", space.map(|s| s.key.as_str()).unwrap_or_default(), page.id);
    out.insert("_links".into(), json!({ "webui": webui }));
    Value::Object(out)
}

fn person_v1(dir: &Directory, account_id: &str) -> Value {
    let name = dir.user(account_id).map(|u| u.display_name.clone());
    json!({ "type": "known", "accountId": account_id, "accountType": "atlassian", "displayName": name })
}

/// A page as v2 renders it.
pub(crate) fn page_json(dir: &Directory, page: &Page, with_body: bool) -> Value {
    let body = if with_body {
        json!({ "storage": { "representation": "storage", "value": page.body } })
    } else {
        json!({})
    };
    let space_key = dir.space(page.space_id).map(|s| s.key.as_str()).unwrap_or_default();
    json!({
        "id": page.id.to_string(),
        "status": "current",
        "title": page.title,
        "spaceId": page.space_id.to_string(),
        "parentId": page.parent_id.map(|p| p.to_string()),
        "parentType": page.parent_id.map(|_| "page"),
        "authorId": page.author,
        "ownerId": page.author,
        "createdAt": time::confluence(page.created),
        "version": {
            "number": page.version,
            "message": page.version_message,
            "minorEdit": false,
            "authorId": page.version_author,
            "createdAt": time::confluence(page.version_created),
        },
        "body": body,
        "_links": { "webui": format!("/spaces/{space_key}/pages/{}", page.id) },
    })
}

/// A page as a Confluence event carries it.
fn event_content(dir: &Directory, page: &Page) -> Value {
    let space = dir.space(page.space_id);
    json!({
        "id": page.id.to_string(),
        "type": "page",
        "status": "current",
        "title": page.title,
        "space": space.map(|s| json!({ "id": s.id.to_string(), "key": s.key, "name": s.name })),
        "version": { "number": page.version },
    })
}
