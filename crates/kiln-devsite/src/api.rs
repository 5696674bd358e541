//! What every product handler shares: errors in the shape each API answers
//! with, query parameters, and JSON bodies read without axum's own
//! rejections (whose shapes are not Atlassian's).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A refusal, in the shape of the API that refuses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ApiError {
    /// Jira: `{"errorMessages":[...],"errors":{...}}`.
    Jira { status: StatusCode, messages: Vec<String>, errors: BTreeMap<String, String> },
    /// Confluence v2: `{"errors":[{"status","code","title","detail"}]}`.
    ConfluenceV2 { status: StatusCode, title: String },
    /// Confluence v1: `{"statusCode","data":{...},"message"}`.
    ConfluenceV1 { status: StatusCode, message: String },
}

impl ApiError {
    pub(crate) fn jira(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::Jira { status, messages: vec![message.into()], errors: BTreeMap::new() }
    }

    /// A 400 naming what is wrong with each field.
    pub(crate) fn jira_fields(errors: BTreeMap<String, String>) -> ApiError {
        ApiError::Jira { status: StatusCode::BAD_REQUEST, messages: Vec::new(), errors }
    }

    /// Jira's answer for an issue that does not exist or cannot be seen.
    pub(crate) fn no_issue() -> ApiError {
        ApiError::jira(StatusCode::NOT_FOUND, "Issue does not exist or you do not have permission to see it.")
    }

    pub(crate) fn v2(status: StatusCode, title: impl Into<String>) -> ApiError {
        ApiError::ConfluenceV2 { status, title: title.into() }
    }

    pub(crate) fn v1(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::ConfluenceV1 { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Jira { status, messages, errors } => {
                reply(status, json!({ "errorMessages": messages, "errors": errors }))
            }
            ApiError::ConfluenceV2 { status, title } => {
                let code = match status {
                    StatusCode::BAD_REQUEST => "INVALID_REQUEST_PARAMETER",
                    StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
                    StatusCode::FORBIDDEN => "PERMISSION_DENIED",
                    StatusCode::NOT_FOUND => "NOT_FOUND",
                    StatusCode::CONFLICT => "CONFLICT",
                    _ => "INTERNAL_SERVER_ERROR",
                };
                reply(
                    status,
                    json!({ "errors": [{ "status": status.as_u16(), "code": code, "title": title, "detail": null }] }),
                )
            }
            ApiError::ConfluenceV1 { status, message } => reply(
                status,
                json!({
                    "statusCode": status.as_u16(),
                    "data": { "authorized": status != StatusCode::FORBIDDEN, "valid": true, "errors": [], "successful": false },
                    "message": message,
                }),
            ),
        }
    }
}

/// `value` as a JSON response.
pub(crate) fn reply(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

/// A request's query parameters, decoded.
#[derive(Debug, Default, Clone)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(query: Option<&str>) -> Params {
        Params::from_form(query.unwrap_or_default().as_bytes())
    }

    /// An `application/x-www-form-urlencoded` body.
    pub(crate) fn from_form(body: &[u8]) -> Params {
        Params(url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Params {
        Params(pairs)
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, each split at commas (`?a=1,2&a=3`).
    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// A non-negative integer parameter, `default` if absent; `Err` names it.
    pub(crate) fn number(&self, name: &str, default: usize) -> Result<usize, String> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(v) => {
                v.parse().map_err(|_| format!("The parameter '{name}' must be a non-negative integer."))
            }
        }
    }
}

/// A request body as JSON; an empty body is `null`.
pub(crate) fn body_json(body: &[u8]) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| format!("The request body is not valid JSON: {e}"))
}

/// A JSON value that is a string or a number, as text (Atlassian accepts
/// ids both ways).
pub(crate) fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
