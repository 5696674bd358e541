//! `format = "atlassian-webhook"`: Jira Cloud's own webhooks, registered
//! by a Jira admin with the source's key as the webhook's secret, checked
//! and translated into the Forge event a trigger module expects.
//!
//! - **Authenticity.** Jira Cloud signs a webhook registered with a secret
//!   WebSub-style: `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw
//!   body)>` ("Secure admin webhooks",
//!   <https://developer.atlassian.com/cloud/jira/platform/webhooks/#secure-admin-webhooks>;
//!   read through stored copies quoting it, e.g.
//!   <https://hookdeck.com/webhooks/platforms/how-to-secure-and-verify-jira-webhooks-with-hookdeck>
//!   and <https://skills.sh/hookdeck/webhook-skills/jira-webhooks>). The
//!   tag is checked in constant time before the body is parsed.
//! - **Freshness.** Jira sends no timestamp header, so the signed body's
//!   `timestamp` (milliseconds) must be within [`MAX_SKEW`] of this node's
//!   clock. A webhook Jira delivers or retries later than that is refused
//!   like any stale event.
//! - **Replays.** The event id is the digest of the body, which the
//!   signature covers. `X-Atlassian-Webhook-Identifier` (the same across
//!   Jira's retries) is remembered as well, but only as a second replay
//!   key: the header is not signed, so an id taken from it alone would let
//!   a replayer pick a fresh one and pass the jobs table's unique key.
//! - **Translation.** Only kinds with a Forge event of the same meaning in
//!   Forge's event→scope table become events; anything else is answered
//!   202 with nothing queued (Jira retries what fails, and retrying will
//!   not give it a name), counted and logged. Never a guessed name.

use axum::http::HeaderMap;
use kiln_crypto::Sha256;
use kiln_store::Millis;
use serde_json::{Map, Value, json};

use super::{
    Accepted, EventSource, MAX_DELIVERY_ID_LEN, MAX_SKEW, ProductEvent, Refusal, Rejected, Verified,
    decode_hex,
};

/// The longest `webhookEvent` repeated in the log.
const MAX_LOGGED_NAME: usize = 64;

/// Check an Atlassian webhook and translate it (see the module comment).
pub(super) fn accept(
    source: &EventSource,
    headers: &HeaderMap,
    body: &[u8],
    now: Millis,
) -> Result<Accepted, Rejected> {
    let verified = verify(source, headers, body).map_err(Rejected::Refused)?;
    let Value::Object(hook) =
        serde_json::from_slice::<Value>(body).map_err(|e| Rejected::Malformed(e.to_string()))?
    else {
        return Err(Rejected::Malformed("the body is not a JSON object".into()));
    };
    if !fresh(&hook, now) {
        return Err(Rejected::Refused(Refusal::Stale));
    }
    let name = hook
        .get("webhookEvent")
        .and_then(Value::as_str)
        .ok_or_else(|| Rejected::Malformed("no webhookEvent".into()))?;
    let Some(event_type) = forge_name(name, &hook) else {
        return Ok(Accepted::Untranslated { webhook_event: loggable(name) });
    };
    let translated = translate(event_type, name, &hook, source).map_err(Rejected::Malformed)?;
    let event = ProductEvent::from_body(&verified, translated, source).map_err(Rejected::Malformed)?;
    let also_seen = headers
        .get("x-atlassian-webhook-identifier")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_DELIVERY_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(|id| format!("webhook:{id}"));
    Ok(Accepted::Event { event, event_id: format!("hub:{}", verified.digest.hex()), also_seen })
}

/// `X-Hub-Signature: sha256=<hex>` over the raw body under the source's key.
pub(super) fn verify(source: &EventSource, headers: &HeaderMap, body: &[u8]) -> Result<Verified, Refusal> {
    let tag = headers
        .get("x-hub-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .and_then(|s| s.strip_prefix("sha256="))
        .ok_or(Refusal::Signature)?;
    let given = decode_hex(tag).ok_or(Refusal::Signature)?;
    let expected = kiln_crypto::hmac_sha256(&source.secret, body);
    if !kiln_crypto::constant_time_eq(&expected, &given) {
        return Err(Refusal::Signature);
    }
    Ok(Verified { digest: Sha256::of(body) })
}

/// Whether the webhook's `timestamp` (Unix milliseconds) is within the window.
fn fresh(hook: &Map<String, Value>, now: Millis) -> bool {
    let Some(at) = hook.get("timestamp").and_then(Value::as_i64) else { return false };
    let skew = i64::try_from(MAX_SKEW.as_millis()).unwrap_or(i64::MAX);
    at.saturating_sub(now).saturating_abs() <= skew
}

/// The Forge event a webhook kind is, if Forge has one of the same meaning
/// (names as in `kiln-policy/data/event-scopes.tsv`).
fn forge_name(webhook_event: &str, hook: &Map<String, Value>) -> Option<&'static str> {
    match webhook_event {
        // Jira also sends `jira:issue_updated` for comment changes; Forge
        // reports those as comment events, which the `comment_*` webhooks
        // carry, so this copy would be a second, misnamed delivery.
        "jira:issue_updated"
            if hook
                .get("issue_event_type_name")
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with("issue_comment")) =>
        {
            None
        }
        "jira:issue_created" => Some("avi:jira:created:issue"),
        "jira:issue_updated" => Some("avi:jira:updated:issue"),
        "jira:issue_deleted" => Some("avi:jira:deleted:issue"),
        "comment_created" => Some("avi:jira:commented:issue"),
        "comment_deleted" => Some("avi:jira:deleted:comment"),
        // `comment_updated` among them: Forge's table has no edited-comment
        // event, and calling it `commented:issue` would tell apps a new
        // comment arrived.
        _ => None,
    }
}

/// The Forge-shaped body: `eventType`, `issue` (`id`, `key`, `fields` as
/// given), `atlassianId`, and `changelog` or `comment` where the kind has
/// one; `context.cloudId` is the source's.
fn translate(
    event_type: &str,
    webhook_event: &str,
    hook: &Map<String, Value>,
    source: &EventSource,
) -> Result<Map<String, Value>, String> {
    let issue = hook.get("issue").and_then(Value::as_object).ok_or("no issue object")?;
    let id = issue.get("id").and_then(Value::as_str).ok_or("issue.id is not a string")?;
    let key = issue.get("key").and_then(Value::as_str).ok_or("issue.key is not a string")?;
    let fields = match issue.get("fields") {
        None => Value::Object(Map::new()),
        Some(Value::Object(f)) => Value::Object(f.clone()),
        Some(_) => return Err("issue.fields is not an object".into()),
    };
    let comment = hook.get("comment");
    let is_comment = webhook_event.starts_with("comment_");
    if is_comment && !comment.is_some_and(Value::is_object) {
        return Err("a comment webhook without a comment object".into());
    }
    // Who acted: the webhook's user; a new comment's author when there is
    // none. A deleted comment's author is not who deleted it, so no
    // fallback there (Forge's `atlassianId` is optional).
    let actor = hook.get("user").and_then(|u| u.get("accountId")).or_else(|| {
        (webhook_event == "comment_created")
            .then(|| comment.and_then(|c| c.get("author")).and_then(|a| a.get("accountId")))
            .flatten()
    });

    let mut body = Map::new();
    body.insert("eventType".into(), json!(event_type));
    body.insert("issue".into(), json!({ "id": id, "key": key, "fields": fields }));
    if let Some(actor) = actor {
        body.insert("atlassianId".into(), actor.clone());
    }
    if event_type == "avi:jira:updated:issue"
        && let Some(changelog) = hook.get("changelog")
    {
        body.insert("changelog".into(), changelog.clone());
    }
    if is_comment && let Some(comment) = comment {
        body.insert("comment".into(), comment.clone());
    }
    if let Some(cloud_id) = &source.cloud_id {
        body.insert("context".into(), json!({ "cloudId": cloud_id }));
    }
    Ok(body)
}

/// A `webhookEvent` fit for a log line (it is signed, but still text
/// from elsewhere).
fn loggable(name: &str) -> String {
    if !name.is_empty() && name.len() <= MAX_LOGGED_NAME && name.bytes().all(|b| b.is_ascii_graphic()) {
        name.to_owned()
    } else {
        "(not a short printable name)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn only_kinds_with_a_forge_event_of_the_same_meaning_are_named() {
        let empty = Map::new();
        assert_eq!(forge_name("jira:issue_created", &empty), Some("avi:jira:created:issue"));
        assert_eq!(forge_name("jira:issue_updated", &empty), Some("avi:jira:updated:issue"));
        assert_eq!(forge_name("jira:issue_deleted", &empty), Some("avi:jira:deleted:issue"));
        assert_eq!(forge_name("comment_created", &empty), Some("avi:jira:commented:issue"));
        assert_eq!(forge_name("comment_deleted", &empty), Some("avi:jira:deleted:comment"));
        assert_eq!(forge_name("comment_updated", &empty), None);
        assert_eq!(forge_name("worklog_created", &empty), None);
        let commented = hook(json!({ "issue_event_type_name": "issue_commented" }));
        assert_eq!(forge_name("jira:issue_updated", &commented), None);
        // Every name given is one Forge's scope table lists.
        for name in [
            "jira:issue_created",
            "jira:issue_updated",
            "jira:issue_deleted",
            "comment_created",
            "comment_deleted",
        ] {
            let forge = forge_name(name, &empty).unwrap_or_default();
            assert!(
                kiln_policy::events::check(forge, &["read:jira-work".to_owned()].into()).is_ok(),
                "{forge}"
            );
        }
    }

    #[test]
    fn timestamps_outside_the_window_or_missing_are_not_fresh() {
        let now = 1_800_000_000_000;
        assert!(fresh(&hook(json!({ "timestamp": now - 299_000 })), now));
        assert!(fresh(&hook(json!({ "timestamp": now + 299_000 })), now));
        assert!(!fresh(&hook(json!({ "timestamp": now - 301_000 })), now));
        assert!(!fresh(&hook(json!({ "timestamp": now + 301_000 })), now));
        assert!(!fresh(&hook(json!({ "timestamp": (now / 1000).to_string() })), now));
        assert!(!fresh(&hook(json!({})), now));
    }
}
