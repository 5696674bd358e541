//! Jira Software's DevOps APIs for builds and deployments, mounted at
//! `/ex/jira/{cloudId}/rest` (Cloud only: the gate has already checked the
//! token's scopes — `write:build-info:jira` and the like — against the
//! route table).
//!
//! Shaped like Atlassian's answers: a bulk submission is `202` with the
//! accepted and rejected entities and the issue keys this site does not
//! know; deletes by key or by properties are `202`. What it stores is the
//! entity as submitted and the request's properties, replaced only by a
//! submission with a higher `updateSequenceNumber`, as Jira does.
//!
//! Deliberately not emulated: submissions being asynchronous (an accepted
//! entity is readable at once), the `associations` form of issue links,
//! providerMetadata, and change management: every stored deployment's
//! gating status is `allowed`. Development information, feature flags and
//! remote links are not served (404).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::{body_json, reply};
use crate::site::{MAX_OBJECTS, Site, lock};

/// Atlassian's limit on entities per bulk submission.
const MAX_BATCH: usize = 100;

/// Atlassian's limit on properties per submission.
const MAX_PROPERTIES: usize = 5;

/// A build or deployment this site holds.
#[derive(Debug, Clone, PartialEq)]
pub struct DevopsEntity {
    /// The entity as the app submitted it.
    pub data: Value,
    /// The submission's `properties` (what bulk deletes match on).
    pub properties: BTreeMap<String, String>,
}

/// Builds by (pipelineId, buildNumber); deployments by (pipelineId,
/// environmentId, deploymentSequenceNumber).
#[derive(Debug, Default)]
pub(crate) struct DevopsStore {
    pub(crate) builds: BTreeMap<(String, i64), DevopsEntity>,
    pub(crate) deployments: BTreeMap<(String, String, i64), DevopsEntity>,
}

impl DevopsStore {
    fn len(&self) -> usize {
        self.builds.len().saturating_add(self.deployments.len())
    }
}

pub(crate) fn routes() -> Router<Arc<Site>> {
    Router::new()
        .route("/builds/0.1/bulk", post(submit_builds))
        .route("/builds/0.1/bulkByProperties", delete(delete_builds_by_properties))
        .route("/builds/0.1/pipelines/{pipeline}/builds/{number}", get(get_build).delete(delete_build))
        .route("/deployments/0.1/bulk", post(submit_deployments))
        .route("/deployments/0.1/bulkByProperties", delete(delete_deployments_by_properties))
        .route(
            "/deployments/0.1/pipelines/{pipeline}/environments/{environment}/deployments/{number}",
            get(get_deployment).delete(delete_deployment),
        )
        .route(
            "/deployments/0.1/pipelines/{pipeline}/environments/{environment}/deployments/{number}/gating-status",
            get(gating_status),
        )
}

/// Atlassian's `ErrorMessages` body.
fn errors(status: StatusCode, message: &str) -> Response {
    reply(status, json!([{ "message": message }]))
}

fn not_found() -> Response {
    errors(StatusCode::NOT_FOUND, "No data found for the given key.")
}

/// Deletes are `202` with no body.
fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// The submission's body: its entity list (under `list`) and properties;
/// `Err` is why the whole request is a 400.
fn submission(body: &[u8], list: &str) -> Result<(Vec<Value>, BTreeMap<String, String>), String> {
    let bad = |m: &str| m.to_owned();
    let body = body_json(body)?;
    let entities = body
        .get(list)
        .and_then(Value::as_array)
        .ok_or_else(|| bad(&format!("The request must contain a '{list}' array.")))?;
    if entities.is_empty() || entities.len() > MAX_BATCH {
        return Err(bad(&format!("'{list}' must hold between 1 and {MAX_BATCH} entries.")));
    }
    let mut properties = BTreeMap::new();
    if let Some(given) = body.get("properties").filter(|p| !p.is_null()) {
        let map = given.as_object().ok_or_else(|| bad("'properties' must be an object."))?;
        if map.len() > MAX_PROPERTIES {
            return Err(bad(&format!("At most {MAX_PROPERTIES} properties may be given.")));
        }
        for (key, value) in map {
            if key.contains(':') || key.starts_with('_') {
                return Err(bad(&format!(
                    "The property key '{key}' must not contain ':' or start with '_'."
                )));
            }
            let value =
                value.as_str().ok_or_else(|| bad(&format!("The property '{key}' must be a string.")))?;
            properties.insert(key.clone(), value.to_owned());
        }
    }
    Ok((entities.clone(), properties))
}

fn string_field(entity: &Value, field: &str, problems: &mut Vec<String>) -> String {
    match entity.get(field).and_then(Value::as_str).filter(|s| !s.is_empty()) {
        Some(s) => s.to_owned(),
        None => {
            problems.push(format!("'{field}' is required and must be a non-empty string."));
            String::new()
        }
    }
}

fn number_field(entity: &Value, field: &str, problems: &mut Vec<String>) -> i64 {
    match entity.get(field).and_then(Value::as_i64) {
        Some(n) => n,
        None => {
            problems.push(format!("'{field}' is required and must be an integer."));
            0
        }
    }
}

/// The issue keys an entity names that this site does not know.
fn unknown_keys(site: &Site, entity: &Value, into: &mut Vec<String>) {
    let content = lock(&site.content);
    let keys =
        entity.get("issueKeys").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
    for key in keys {
        if content.issue(key).is_none() && !into.iter().any(|k| k == key) {
            into.push(key.to_owned());
        }
    }
}

async fn submit_builds(State(site): State<Arc<Site>>, body: Bytes) -> Response {
    let (builds, properties) = match submission(&body, "builds") {
        Ok(s) => s,
        Err(message) => return errors(StatusCode::BAD_REQUEST, &message),
    };
    let (mut accepted, mut rejected, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    for build in builds {
        let mut problems = Vec::new();
        let pipeline = string_field(&build, "pipelineId", &mut problems);
        let number = number_field(&build, "buildNumber", &mut problems);
        let sequence = number_field(&build, "updateSequenceNumber", &mut problems);
        for field in ["displayName", "url", "state", "lastUpdated"] {
            string_field(&build, field, &mut problems);
        }
        let key = json!({ "pipelineId": pipeline, "buildNumber": number });
        let store = lock(&site.devops);
        if problems.is_empty()
            && store.len() >= MAX_OBJECTS
            && !store.builds.contains_key(&(pipeline.clone(), number))
        {
            problems.push("The dev site holds as many objects as it will; restart it.".to_owned());
        }
        if !problems.is_empty() {
            let errors: Vec<Value> = problems.into_iter().map(|m| json!({ "message": m })).collect();
            rejected.push(json!({ "key": key, "errors": errors }));
            continue;
        }
        let newer = store
            .builds
            .get(&(pipeline.clone(), number))
            .is_none_or(|old| old.data.get("updateSequenceNumber").and_then(Value::as_i64) < Some(sequence));
        drop(store);
        unknown_keys(&site, &build, &mut unknown);
        if newer {
            let entity = DevopsEntity { data: build, properties: properties.clone() };
            lock(&site.devops).builds.insert((pipeline, number), entity);
        }
        accepted.push(key);
    }
    reply(
        StatusCode::ACCEPTED,
        json!({ "acceptedBuilds": accepted, "rejectedBuilds": rejected, "unknownIssueKeys": unknown }),
    )
}

async fn submit_deployments(State(site): State<Arc<Site>>, body: Bytes) -> Response {
    let (deployments, properties) = match submission(&body, "deployments") {
        Ok(s) => s,
        Err(message) => return errors(StatusCode::BAD_REQUEST, &message),
    };
    let (mut accepted, mut rejected, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    for deployment in deployments {
        let mut problems = Vec::new();
        let number = number_field(&deployment, "deploymentSequenceNumber", &mut problems);
        let sequence = number_field(&deployment, "updateSequenceNumber", &mut problems);
        for field in ["displayName", "url", "description", "lastUpdated", "state"] {
            string_field(&deployment, field, &mut problems);
        }
        let empty = Value::Null;
        let pipeline = string_field(deployment.get("pipeline").unwrap_or(&empty), "id", &mut problems);
        let environment = string_field(deployment.get("environment").unwrap_or(&empty), "id", &mut problems);
        let key = json!({
            "pipelineId": pipeline, "environmentId": environment, "deploymentSequenceNumber": number,
        });
        let id = (pipeline, environment, number);
        let store = lock(&site.devops);
        if problems.is_empty() && store.len() >= MAX_OBJECTS && !store.deployments.contains_key(&id) {
            problems.push("The dev site holds as many objects as it will; restart it.".to_owned());
        }
        if !problems.is_empty() {
            let errors: Vec<Value> = problems.into_iter().map(|m| json!({ "message": m })).collect();
            rejected.push(json!({ "key": key, "errors": errors }));
            continue;
        }
        let newer = store
            .deployments
            .get(&id)
            .is_none_or(|old| old.data.get("updateSequenceNumber").and_then(Value::as_i64) < Some(sequence));
        drop(store);
        unknown_keys(&site, &deployment, &mut unknown);
        if newer {
            let entity = DevopsEntity { data: deployment, properties: properties.clone() };
            lock(&site.devops).deployments.insert(id, entity);
        }
        accepted.push(key);
    }
    reply(
        StatusCode::ACCEPTED,
        json!({ "acceptedDeployments": accepted, "rejectedDeployments": rejected, "unknownIssueKeys": unknown }),
    )
}

/// The properties a bulk delete matches on (every one must match);
/// `_updateSequenceNumber` is Atlassian's deprecated control parameter.
fn delete_filter(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let filter: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k != "_updateSequenceNumber")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if filter.is_empty() {
        return Err("At least one property to delete by must be given.".to_owned());
    }
    Ok(filter)
}

fn matches(entity: &DevopsEntity, filter: &[(String, String)]) -> bool {
    filter.iter().all(|(k, v)| entity.properties.get(k) == Some(v))
}

async fn delete_builds_by_properties(State(site): State<Arc<Site>>, RawQuery(query): RawQuery) -> Response {
    match delete_filter(query.as_deref()) {
        Ok(filter) => {
            lock(&site.devops).builds.retain(|_, e| !matches(e, &filter));
            accepted()
        }
        Err(message) => errors(StatusCode::BAD_REQUEST, &message),
    }
}

async fn delete_deployments_by_properties(
    State(site): State<Arc<Site>>,
    RawQuery(query): RawQuery,
) -> Response {
    match delete_filter(query.as_deref()) {
        Ok(filter) => {
            lock(&site.devops).deployments.retain(|_, e| !matches(e, &filter));
            accepted()
        }
        Err(message) => errors(StatusCode::BAD_REQUEST, &message),
    }
}

#[derive(Debug, Deserialize)]
struct BuildKey {
    pipeline: String,
    number: String,
}

#[derive(Debug, Deserialize)]
struct DeploymentKey {
    pipeline: String,
    environment: String,
    number: String,
}

fn build_id(key: BuildKey) -> Option<(String, i64)> {
    Some((key.pipeline, key.number.parse().ok()?))
}

fn deployment_id(key: DeploymentKey) -> Option<(String, String, i64)> {
    Some((key.pipeline, key.environment, key.number.parse().ok()?))
}

async fn get_build(State(site): State<Arc<Site>>, Path(key): Path<BuildKey>) -> Response {
    let store = lock(&site.devops);
    match build_id(key).and_then(|id| store.builds.get(&id)) {
        Some(build) => reply(StatusCode::OK, build.data.clone()),
        None => not_found(),
    }
}

async fn delete_build(State(site): State<Arc<Site>>, Path(key): Path<BuildKey>) -> Response {
    if let Some(id) = build_id(key) {
        lock(&site.devops).builds.remove(&id);
    }
    accepted()
}

async fn get_deployment(State(site): State<Arc<Site>>, Path(key): Path<DeploymentKey>) -> Response {
    let store = lock(&site.devops);
    match deployment_id(key).and_then(|id| store.deployments.get(&id)) {
        Some(deployment) => reply(StatusCode::OK, deployment.data.clone()),
        None => not_found(),
    }
}

async fn delete_deployment(State(site): State<Arc<Site>>, Path(key): Path<DeploymentKey>) -> Response {
    if let Some(id) = deployment_id(key) {
        lock(&site.devops).deployments.remove(&id);
    }
    accepted()
}

async fn gating_status(State(site): State<Arc<Site>>, Path(key): Path<DeploymentKey>) -> Response {
    let store = lock(&site.devops);
    let Some((id, deployment)) =
        deployment_id(key).and_then(|id| store.deployments.get(&id).map(|d| (id, d)))
    else {
        return not_found();
    };
    let updated = deployment.data.get("lastUpdated").cloned().unwrap_or(Value::Null);
    let (pipeline, environment, number) = id;
    let mut out = Map::new();
    out.insert("deploymentSequenceNumber".into(), json!(number));
    out.insert("pipelineId".into(), json!(pipeline));
    out.insert("environmentId".into(), json!(environment));
    out.insert("updatedTimestamp".into(), updated);
    out.insert("gatingStatus".into(), json!("allowed"));
    out.insert("details".into(), json!([]));
    reply(StatusCode::OK, Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_delete_needs_a_property_and_matches_all_of_them() {
        assert!(delete_filter(None).is_err());
        assert!(delete_filter(Some("_updateSequenceNumber=3")).is_err());
        let filter = delete_filter(Some("cloudId=c&jenkinsServerUuid=u")).unwrap();
        let entity = |props: &[(&str, &str)]| DevopsEntity {
            data: Value::Null,
            properties: props.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        assert!(matches(&entity(&[("cloudId", "c"), ("jenkinsServerUuid", "u"), ("x", "y")]), &filter));
        assert!(!matches(&entity(&[("cloudId", "c")]), &filter));
    }
}
