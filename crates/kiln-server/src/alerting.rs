//! Alert configuration and delivery: which rules run (a TOML file that
//! refuses unknown keys), and a webhook that receives each new alert as a
//! signed JSON POST over HTTPS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_audit::alerts::{AlertRules, Threshold, WorkingHours};
use kiln_http::Method;
use kiln_store::{AlertRow, Store};
use serde::Deserialize;

use kiln_http::HttpsClient;

const MINUTE: i64 = 60_000;
/// Attempts per alert before delivery gives up (the alert stays listed).
pub const MAX_ATTEMPTS: i64 = 8;

/// A failure to read the alert configuration.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    alerts: Option<AlertsSection>,
    /// Read by [`crate::product_config`].
    #[allow(dead_code, reason = "parsed and checked there, present here so the file's keys are all known")]
    product: Option<toml::Value>,
    /// Read by [`crate::resolver`].
    #[allow(dead_code, reason = "parsed and checked there, present here so the file's keys are all known")]
    resolvers: Option<toml::Value>,
    /// Read by [`crate::events::EventsConfig`].
    #[allow(dead_code, reason = "parsed and checked there, present here so the file's keys are all known")]
    events: Option<toml::Value>,
    /// Read by [`crate::scheduler::SchedulerConfig`].
    #[allow(dead_code, reason = "parsed and checked there, present here so the file's keys are all known")]
    scheduler: Option<toml::Value>,
    /// Read by [`crate::jobs::JobsConfig`].
    #[allow(dead_code, reason = "parsed and checked there, present here so the file's keys are all known")]
    jobs: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdSection {
    threshold: i64,
    window_minutes: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoursSection {
    start: u32,
    end: u32,
    #[serde(default)]
    weekends: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsSection {
    /// `false` turns a rule off; a table sets its limits.
    failed_logins: Option<RuleSetting<ThresholdSection>>,
    new_address: Option<bool>,
    working_hours: Option<RuleSetting<HoursSection>>,
    denial_spike: Option<RuleSetting<ThresholdSection>>,
    verify_failure: Option<bool>,
    dedup_minutes: Option<i64>,
    webhook: Option<WebhookSection>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RuleSetting<T> {
    Enabled(bool),
    Set(T),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    url: String,
    /// The environment variable holding the HMAC key (never the key itself).
    secret_env: String,
    /// PEM roots to trust instead of the system's.
    ca_file: Option<PathBuf>,
}

/// Where alerts go.
#[derive(Clone)]
pub struct Webhook {
    pub url: url::Url,
    secret: Arc<HookSecret>,
    pub roots_pem: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

/// The webhook's HMAC key, kept out of `Debug` output.
struct HookSecret(Vec<u8>);

impl Webhook {
    /// A webhook at `url` (https, no credentials in it), signing with
    /// `secret` (at least 16 bytes), trusting `roots_pem`.
    pub fn new(url: &str, secret: &[u8], roots_pem: String) -> Result<Webhook, String> {
        let url = url::Url::parse(url).map_err(|e| format!("webhook.url: {e}"))?;
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(format!("webhook.url must be an https URL with a host, not {:?}", url.as_str()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("webhook.url must not carry credentials; use secret_env".into());
        }
        if secret.len() < 16 {
            return Err("the webhook secret must hold at least 16 bytes".into());
        }
        Ok(Webhook { url, secret: Arc::new(HookSecret(secret.to_vec())), roots_pem })
    }
}

/// The rules, and the webhook if one is configured.
#[derive(Debug, Clone, Default)]
pub struct AlertConfig {
    pub rules: AlertRules,
    pub webhook: Option<Webhook>,
}

fn threshold(s: ThresholdSection, what: &str) -> Result<Threshold, String> {
    if s.threshold < 1 || !(1..=24 * 60).contains(&s.window_minutes) {
        return Err(format!("{what}: threshold ≥ 1 and window_minutes between 1 and 1440"));
    }
    Ok(Threshold { threshold: s.threshold, window: s.window_minutes * MINUTE })
}

impl AlertConfig {
    /// Read `[alerts]` from a TOML file; keys not listed here are errors.
    pub fn load(path: &Path) -> Result<AlertConfig, ConfigError> {
        let fail = |message: String| ConfigError { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        AlertConfig::parse(&text).map_err(fail)
    }

    pub fn parse(text: &str) -> Result<AlertConfig, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let Some(a) = file.alerts else { return Ok(AlertConfig::default()) };
        let mut rules = AlertRules::default();
        match a.failed_logins {
            Some(RuleSetting::Enabled(false)) => rules.failed_logins = None,
            Some(RuleSetting::Set(t)) => rules.failed_logins = Some(threshold(t, "failed_logins")?),
            Some(RuleSetting::Enabled(true)) | None => {}
        }
        match a.denial_spike {
            Some(RuleSetting::Enabled(false)) => rules.denial_spike = None,
            Some(RuleSetting::Set(t)) => rules.denial_spike = Some(threshold(t, "denial_spike")?),
            Some(RuleSetting::Enabled(true)) | None => {}
        }
        match a.working_hours {
            Some(RuleSetting::Enabled(false)) => rules.working_hours = None,
            Some(RuleSetting::Set(h)) => {
                if h.start > 23 || h.end > 24 || h.start >= h.end {
                    return Err("working_hours: 0 ≤ start < end ≤ 24 (hours, UTC)".into());
                }
                rules.working_hours =
                    Some(WorkingHours { start_hour: h.start, end_hour: h.end, weekends: h.weekends });
            }
            Some(RuleSetting::Enabled(true)) | None => {}
        }
        if let Some(on) = a.new_address {
            rules.new_address = on;
        }
        if let Some(on) = a.verify_failure {
            rules.verify_failure = on;
        }
        if let Some(m) = a.dedup_minutes {
            if !(1..=7 * 24 * 60).contains(&m) {
                return Err("dedup_minutes is between 1 and 10080".into());
            }
            rules.dedup_window = m * MINUTE;
        }
        let webhook = match a.webhook {
            None => None,
            Some(w) => {
                if !w.url.starts_with("https://") {
                    return Err(format!("webhook.url must be an https URL, not {:?}", w.url));
                }
                let secret = std::env::var(&w.secret_env)
                    .map_err(|_| format!("webhook.secret_env names {}, which is not set", w.secret_env))?;
                let roots_pem = match &w.ca_file {
                    Some(p) => std::fs::read_to_string(p)
                        .map_err(|e| format!("webhook.ca_file {}: {e}", p.display()))?,
                    None => kiln_crypto::tls::system_roots()
                        .ok_or("no system certificate bundle found; set alerts.webhook.ca_file")?,
                };
                Some(Webhook::new(&w.url, secret.as_bytes(), roots_pem)?)
            }
        };
        Ok(AlertConfig { rules, webhook })
    }
}

/// The JSON an alert is sent as.
pub fn payload(a: &AlertRow) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "rule": a.rule,
        "key": a.dedup_key,
        "message": a.message,
        "count": a.count,
        "firstSeq": a.first_seq,
        "lastSeq": a.last_seq,
        "firstAt": a.first_at,
        "lastAt": a.last_at,
    })
}

/// The signature header's value for `body`: `sha256=<hex HMAC>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let tag = kiln_crypto::hmac_sha256(secret, body);
    format!("sha256={}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Send every alert not yet delivered (fewer than [`MAX_ATTEMPTS`] tries),
/// recording each attempt. Returns how many were delivered.
pub async fn deliver_pending(store: &Store, hook: &Webhook) -> Result<usize, kiln_store::StoreError> {
    let pending: Vec<AlertRow> = {
        let mut tx = store.begin_read().await?;
        let rows = tx.alerts(500).await?;
        tx.commit().await?;
        rows.into_iter().filter(|a| a.delivered_at.is_none() && a.attempts < MAX_ATTEMPTS).collect()
    };
    let host = hook.url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
    let port = hook.url.port_or_known_default().unwrap_or(443);
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let roots = kiln_crypto::tls::client_config(&hook.roots_pem);
    let mut delivered = 0;
    for alert in pending.iter().rev() {
        let body = payload(alert).to_string();
        let sig = signature(&hook.secret.0, body.as_bytes());
        let result = match &roots {
            Ok(roots) => {
                let client = HttpsClient::new(&addr, &host, roots.clone());
                let path = match hook.url.query() {
                    Some(q) => format!("{}?{q}", hook.url.path()),
                    None => hook.url.path().to_owned(),
                };
                let headers = [("x-kiln-signature", sig.as_str()), ("x-kiln-alert", "1")];
                match client.send(Method::POST, &path, &headers, Some(body.as_bytes())).await {
                    Ok(reply) if reply.status.is_success() => Ok(()),
                    Ok(reply) => Err(format!("the webhook answered {}", reply.status)),
                    Err(e) => Err(format!("cannot reach the webhook: {e}")),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let mut tx = store.begin().await?;
        match result {
            Ok(()) => {
                tx.alert_delivery(alert.id, Some(kiln_store::now_millis()), None).await?;
                delivered += 1;
            }
            Err(e) => tx.alert_delivery(alert.id, None, Some(&e)).await?,
        }
        tx.commit().await?;
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_sets_rules_and_refuses_what_it_does_not_know() {
        let c = AlertConfig::parse(
            "[alerts]\nfailed_logins = { threshold = 3, window_minutes = 10 }\nworking_hours = false\n\
             denial_spike = false\nnew_address = false\ndedup_minutes = 5\n",
        )
        .unwrap();
        assert_eq!(c.rules.failed_logins, Some(Threshold { threshold: 3, window: 10 * MINUTE }));
        assert_eq!(c.rules.working_hours, None);
        assert_eq!(c.rules.denial_spike, None);
        assert!(!c.rules.new_address && c.rules.verify_failure);
        assert_eq!(c.rules.dedup_window, 5 * MINUTE);
        assert!(c.webhook.is_none());
        assert_eq!(AlertConfig::parse("").unwrap().rules, AlertRules::default());

        for bad in [
            "[alerts]\nfailed_login = false\n",
            "[alert]\n",
            "[alerts]\nworking_hours = { start = 20, end = 7 }\n",
            "[alerts]\nfailed_logins = { threshold = 0, window_minutes = 5 }\n",
            "[alerts]\nwebhook = { url = \"http://example.com/hook\", secret_env = \"X\" }\n",
            "[alerts]\nwebhook = { url = \"https://u:p@example.com/hook\", secret_env = \"X\" }\n",
            "[alerts]\nwebhook = { url = \"https://example.com/hook\", secret_env = \"KILN_TEST_UNSET_VARIABLE\" }\n",
            "[alerts]\nwebhook = { url = \"https://example.com/hook\", secret = \"inline\" }\n",
        ] {
            assert!(AlertConfig::parse(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn the_signature_is_an_hmac_of_the_body() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
