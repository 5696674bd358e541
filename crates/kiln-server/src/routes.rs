//! The admin API's routes: the table, and one handler per row.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use kiln_access::{Operation, Principal, Role};
use kiln_audit::{Audit, Context, Event, ExportFormat};
use kiln_types::{AppId, Environment};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{AdminState, ApiError, Source};

/// One route: method, path template, and the operation it performs
/// (`None` only for signing in, which has no principal yet).
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub operation: Option<Operation>,
    handler: Handler,
}

#[derive(Debug, Clone, Copy)]
enum Handler {
    Login,
    Logout,
    Me,
    OperatorsList,
    OperatorAdd,
    OperatorRole,
    OperatorDisable,
    TokensList,
    TokenCreate,
    TokenRevoke,
    Versions,
    VariablesList,
    VariableSet,
    VariableUnset,
    AuditRecords,
    AuditExport,
    AuditVerify,
    AlertsList,
}

const fn route(method: Method, path: &'static str, operation: Option<Operation>, handler: Handler) -> Route {
    Route { method, path, operation, handler }
}

/// Every route the admin API has.
pub static ROUTES: [Route; 18] = [
    route(Method::POST, "/api/v1/login", None, Handler::Login),
    route(Method::POST, "/api/v1/logout", Some(Operation::SelfRead), Handler::Logout),
    route(Method::GET, "/api/v1/me", Some(Operation::SelfRead), Handler::Me),
    route(Method::GET, "/api/v1/operators", Some(Operation::OperatorsRead), Handler::OperatorsList),
    route(Method::POST, "/api/v1/operators", Some(Operation::OperatorsManage), Handler::OperatorAdd),
    route(
        Method::PUT,
        "/api/v1/operators/{name}/role",
        Some(Operation::OperatorsManage),
        Handler::OperatorRole,
    ),
    route(
        Method::POST,
        "/api/v1/operators/{name}/disable",
        Some(Operation::OperatorsManage),
        Handler::OperatorDisable,
    ),
    route(Method::GET, "/api/v1/tokens", Some(Operation::SelfTokens), Handler::TokensList),
    route(Method::POST, "/api/v1/tokens", Some(Operation::SelfTokens), Handler::TokenCreate),
    route(Method::DELETE, "/api/v1/tokens/{id}", Some(Operation::SelfTokens), Handler::TokenRevoke),
    route(Method::GET, "/api/v1/apps/{app}/{env}/versions", Some(Operation::AppsRead), Handler::Versions),
    route(
        Method::GET,
        "/api/v1/apps/{app}/{env}/variables",
        Some(Operation::VariablesRead),
        Handler::VariablesList,
    ),
    route(
        Method::PUT,
        "/api/v1/apps/{app}/{env}/variables/{name}",
        Some(Operation::VariablesWrite),
        Handler::VariableSet,
    ),
    route(
        Method::DELETE,
        "/api/v1/apps/{app}/{env}/variables/{name}",
        Some(Operation::VariablesWrite),
        Handler::VariableUnset,
    ),
    route(Method::GET, "/api/v1/audit/records", Some(Operation::AuditRead), Handler::AuditRecords),
    route(Method::GET, "/api/v1/audit/export", Some(Operation::AuditExport), Handler::AuditExport),
    route(Method::POST, "/api/v1/audit/verify", Some(Operation::AuditRead), Handler::AuditVerify),
    route(Method::GET, "/api/v1/alerts", Some(Operation::AlertsRead), Handler::AlertsList),
];

type S = State<Arc<AdminState>>;
type R = Result<Response, ApiError>;

pub(crate) fn method_router(route: &Route) -> MethodRouter<Arc<AdminState>> {
    match route.handler {
        Handler::Login => post(login),
        Handler::Logout => post(logout),
        Handler::Me => get(me),
        Handler::OperatorsList => get(operators_list),
        Handler::OperatorAdd => post(operator_add),
        Handler::OperatorRole => put(operator_role),
        Handler::OperatorDisable => post(operator_disable),
        Handler::TokensList => get(tokens_list),
        Handler::TokenCreate => post(token_create),
        Handler::TokenRevoke => delete(token_revoke),
        Handler::Versions => get(versions),
        Handler::VariablesList => get(variables_list),
        Handler::VariableSet => put(variable_set),
        Handler::VariableUnset => delete(variable_unset),
        Handler::AuditRecords => get(audit_records),
        Handler::AuditExport => get(audit_export),
        Handler::AuditVerify => post(audit_verify),
        Handler::AlertsList => get(alerts_list),
    }
}

fn ctx(p: &Principal, source: &Source) -> Context {
    Context { actor: kiln_audit::Actor::Operator(p.name.clone()), source: Some(source.0.clone()) }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn ok(value: Value) -> R {
    Ok(Json(value).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    name: String,
    password: String,
    code: Option<String>,
}

async fn login(State(s): S, Extension(source): Extension<Source>, Json(body): Json<LoginBody>) -> R {
    // The target of each sign-in record is the account's name, or a keyed
    // fingerprint of what was typed (kiln-access): the actor is not the
    // typed name, which may be a password.
    let anonymous =
        Context { actor: kiln_audit::Actor::Operator("anonymous".into()), source: Some(source.0.clone()) };
    let audit = Audit { auditor: &s.auditor, ctx: &anonymous };
    let (secret, principal) =
        s.access.login(&body.name, &body.password, body.code.as_deref(), &source.0, audit).await?;
    let mut res = Json(json!({ "name": principal.name, "role": principal.role.as_str() })).into_response();
    let cookie = HeaderValue::from_str(&secret.cookie(s.access.settings())).map_err(internal)?;
    res.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(res)
}

async fn logout(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(src): Extension<Source>,
    headers: axum::http::HeaderMap,
) -> R {
    let Some(secret) = crate::session_cookie(&headers) else {
        return Err(bad("sign-out ends a session; API tokens are revoked with DELETE /api/v1/tokens/{id}"));
    };
    let ctx = ctx(&p, &src);
    s.access.logout(&secret, Audit { auditor: &s.auditor, ctx: &ctx }).await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    let expired =
        format!("{}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0", kiln_access::COOKIE_NAME);
    res.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&expired).map_err(internal)?);
    Ok(res)
}

async fn me(Extension(p): Extension<Principal>) -> R {
    let via = match &p.credential {
        kiln_access::Credential::Session => json!({ "kind": "session" }),
        kiln_access::Credential::Token { scopes } => json!({ "kind": "token", "scopes": scopes }),
    };
    ok(json!({ "name": p.name, "role": p.role.as_str(), "credential": via }))
}

async fn operators_list(State(s): S) -> R {
    let now = kiln_store::now_millis();
    let rows = s.access.operators().await?;
    let list: Vec<Value> = rows
        .into_iter()
        .map(|o| {
            json!({
                "name": o.name,
                "role": o.role,
                "mfa": o.mfa_enrolled,
                "disabled": o.disabled_at.is_some(),
                "locked": o.locked_until.is_some_and(|t| t > now),
                "createdAt": o.created_at,
            })
        })
        .collect();
    ok(json!(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOperatorBody {
    name: String,
    role: String,
    #[serde(default)]
    mfa: bool,
}

async fn operator_add(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(src): Extension<Source>,
    Json(body): Json<NewOperatorBody>,
) -> R {
    let role: Role = body.role.parse().map_err(bad)?;
    let ctx = ctx(&p, &src);
    let account =
        s.access.add_operator(&body.name, role, body.mfa, Audit { auditor: &s.auditor, ctx: &ctx }).await?;
    // The new account's one-time secrets go to the owner creating it, once.
    let res = json!({
        "name": account.name,
        "role": account.role.as_str(),
        "password": account.password.as_str(),
        "totpUri": account.totp_uri.as_ref().map(|u| u.as_str()),
    });
    Ok((StatusCode::CREATED, Json(res)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: String,
}

async fn operator_role(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(src): Extension<Source>,
    Path(name): Path<String>,
    Json(body): Json<RoleBody>,
) -> R {
    let role: Role = body.role.parse().map_err(bad)?;
    let ctx = ctx(&p, &src);
    s.access.set_role(&name, role, Audit { auditor: &s.auditor, ctx: &ctx }).await?;
    ok(json!({ "name": name, "role": role.as_str() }))
}

async fn operator_disable(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(src): Extension<Source>,
    Path(name): Path<String>,
) -> R {
    if name == p.name {
        return Err(bad("an operator cannot disable their own account"));
    }
    let ctx = ctx(&p, &src);
    s.access.disable(&name, Audit { auditor: &s.auditor, ctx: &ctx }).await?;
    ok(json!({ "name": name, "disabled": true }))
}

async fn tokens_list(State(s): S, Extension(p): Extension<Principal>) -> R {
    let now = kiln_store::now_millis();
    let rows = s.access.tokens(&p.name).await?;
    let list: Vec<Value> = rows
        .into_iter()
        .map(|t| {
            let scopes: Value = serde_json::from_str(&t.scopes).unwrap_or(Value::Null);
            json!({
                "id": t.id,
                "name": t.name,
                "scopes": scopes,
                "expiresAt": t.expires_at,
                "active": t.revoked_at.is_none() && t.expires_at > now,
            })
        })
        .collect();
    ok(json!(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    name: String,
    scopes: Vec<String>,
    days: i64,
}

async fn token_create(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(src): Extension<Source>,
    Json(body): Json<NewTokenBody>,
) -> R {
    // A token cannot mint tokens: a leaked token must not outlive itself.
    if !matches!(p.credential, kiln_access::Credential::Session) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "tokens are created from a signed-in session"));
    }
    let scopes: Vec<&str> = body.scopes.iter().map(String::as_str).collect();
    let ctx = ctx(&p, &src);
    let lifetime = body.days.saturating_mul(24 * 3600 * 1000);
    let (id, secret) = s
        .access
        .create_token(&p, &body.name, &scopes, lifetime, Audit { auditor: &s.auditor, ctx: &ctx })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "secret": secret.as_str() }))).into_response())
}

async fn token_revoke(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(src): Extension<Source>,
    Path(id): Path<i64>,
) -> R {
    let ctx = ctx(&p, &src);
    s.access.revoke_token(&p, id, Audit { auditor: &s.auditor, ctx: &ctx }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `{app}` is the app id's UUID (`ari:cloud:ecosystem::app/` is implied) or
/// the whole id with its `/` percent-encoded.
fn app_env(app: &str, env: &str) -> Result<(AppId, Environment), ApiError> {
    let full =
        if app.starts_with("ari:") { app.to_owned() } else { format!("ari:cloud:ecosystem::app/{app}") };
    let app = AppId::parse(&full).map_err(|e| bad(e.to_string()))?;
    let env = Environment::parse(env).map_err(|e| bad(e.to_string()))?;
    Ok((app, env))
}

async fn versions(State(s): S, Path((app, env)): Path<(String, String)>) -> R {
    let (app, env) = app_env(&app, &env)?;
    match kiln_apps::versions(&s.store, &app, &env).await {
        Ok(listing) => ok(serde_json::to_value(listing).map_err(internal)?),
        Err(e) => Err(ApiError::new(
            if e.exit_code() == 2 { StatusCode::NOT_FOUND } else { StatusCode::INTERNAL_SERVER_ERROR },
            e.to_string(),
        )),
    }
}

fn variables_owner(app: &AppId, env: &Environment) -> String {
    format!("variables:{app}:{env}")
}

fn kvs_error(e: kiln_kvs::KvsError) -> ApiError {
    let status = if e.code == kiln_kvs::ErrorCode::StorageError {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::new(status, e.to_string())
}

async fn variables_list(State(s): S, Path((app, env)): Path<(String, String)>) -> R {
    let (app, env) = app_env(&app, &env)?;
    let vars = s.kvs.variables(&variables_owner(&app, &env), false).await.map_err(kvs_error)?;
    // Names only: values are the app's, not staff's.
    let list: Vec<Value> =
        vars.into_iter().map(|v| json!({ "name": v.name, "encrypted": v.encrypted })).collect();
    ok(json!(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VariableBody {
    value: String,
    #[serde(default)]
    encrypt: bool,
}

async fn variable_set(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(src): Extension<Source>,
    Path((app, env, name)): Path<(String, String, String)>,
    Json(body): Json<VariableBody>,
) -> R {
    let (app, env) = app_env(&app, &env)?;
    let ctx = ctx(&p, &src);
    let event = Event::variable_set(app.as_str(), env.as_str(), &name, body.encrypt);
    let audit = Audit { auditor: &s.auditor, ctx: &ctx };
    s.kvs
        .set_variable(&variables_owner(&app, &env), &name, &body.value, body.encrypt, audit, event)
        .await
        .map_err(kvs_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn variable_unset(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(src): Extension<Source>,
    Path((app, env, name)): Path<(String, String, String)>,
) -> R {
    let (app, env) = app_env(&app, &env)?;
    let ctx = ctx(&p, &src);
    let event = Event::variable_unset(app.as_str(), env.as_str(), &name);
    let audit = Audit { auditor: &s.auditor, ctx: &ctx };
    s.kvs.unset_variable(&variables_owner(&app, &env), &name, audit, event).await.map_err(kvs_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
    format: Option<String>,
}

async fn audit_records(State(s): S, Query(page): Query<Page>) -> R {
    if page.format.is_some() {
        return Err(bad("records are JSON; use /api/v1/audit/export for other formats"));
    }
    let limit = page.limit.unwrap_or(100).clamp(1, 1000);
    let mut tx = s.store.begin_read().await.map_err(internal)?;
    let rows = tx.audit_records(page.after, limit).await.map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            serde_json::from_str(&kiln_audit::export_line(r, ExportFormat::Jsonl)).unwrap_or(Value::Null)
        })
        .collect();
    ok(json!(list))
}

async fn audit_export(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(src): Extension<Source>,
    Query(page): Query<Page>,
) -> R {
    let format = match page.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => ExportFormat::Jsonl,
        "ocsf" => ExportFormat::Ocsf,
        other => return Err(bad(format!("format is jsonl or ocsf, not {other:?}"))),
    };
    let mut out = String::new();
    let mut cursor = page.after;
    let mut count = 0u64;
    loop {
        let mut tx = s.store.begin_read().await.map_err(internal)?;
        let rows = tx.audit_records(cursor, 1000).await.map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        let Some(last) = rows.last() else { break };
        cursor = last.seq;
        for r in &rows {
            out.push_str(&kiln_audit::export_line(r, format));
            out.push('\n');
            count += 1;
        }
    }
    let ctx = ctx(&p, &src);
    s.auditor
        .record(&s.store, &ctx, Event::audit_export(format.as_str(), page.after, count))
        .await
        .map_err(internal)?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

async fn audit_verify(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(src): Extension<Source>,
) -> R {
    let file = s.checkpoint_file.as_deref().filter(|f| f.exists());
    let report = s.auditor.verify(&s.store, file).await.map_err(internal)?;
    let ctx = ctx(&p, &src);
    s.auditor
        .record(&s.store, &ctx, Event::audit_verify(report.records, report.problems.len()))
        .await
        .map_err(internal)?;
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    ok(json!({
        "records": report.records,
        "head": report.head,
        "checkpoints": report.checkpoints,
        "fileCheckpoints": report.file_checkpoints,
        "intact": report.is_intact(),
        "problems": problems,
    }))
}

async fn alerts_list(State(s): S) -> R {
    kiln_audit::alerts::evaluate(&s.store, &s.alert_rules).await.map_err(internal)?;
    let rows = kiln_audit::alerts::list(&s.store, 200).await.map_err(internal)?;
    let list: Vec<Value> = rows
        .iter()
        .map(|a| {
            let mut v = crate::alerting::payload(a);
            if let Some(map) = v.as_object_mut() {
                map.insert("delivered".into(), json!(a.delivered_at.is_some()));
            }
            v
        })
        .collect();
    ok(json!(list))
}
