//! `[product]` in the settings file: the Jira and Confluence site whose
//! APIs app code reaches through the product gateway. Unknown keys are
//! errors; the OAuth client secret is never in the file, only the name of
//! the environment variable holding it.
//!
//! ```toml
//! [product]
//! kind = "cloud"                       # Atlassian Cloud (or `kiln devsite`)
//! auth_url = "https://auth.atlassian.com"
//! api_url = "https://api.atlassian.com"
//! cloud_id = "4f3c2a1b-..."
//! client_id = "..."
//! client_secret_env = "KILN_OAUTH_CLIENT_SECRET"
//! redirect_uri = "https://kiln.example.com/oauth/callback"   # this server's /oauth/callback (users' consent)
//! ca_file = "/etc/kiln/site-ca.pem"    # optional: roots instead of the system's
//!
//! # or
//! kind = "data-center"
//! jira_url = "https://jira.example.com"
//! confluence_url = "https://wiki.example.com"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_product::{CloudSite, DataCenterSite, Endpoint, OAuthClient, ProductGateway, Site};
use serde::Deserialize;

use crate::alerting::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[allow(dead_code, reason = "read by the alert settings")]
    alerts: Option<toml::Value>,
    product: Option<ProductSection>,
    #[allow(dead_code, reason = "read by the resolver settings")]
    resolvers: Option<toml::Value>,
    #[allow(dead_code, reason = "read by events::EventsConfig")]
    events: Option<toml::Value>,
    #[allow(dead_code, reason = "read by scheduler::SchedulerConfig")]
    scheduler: Option<toml::Value>,
    #[allow(dead_code, reason = "read by jobs::JobsConfig")]
    jobs: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "kind")]
enum ProductSection {
    Cloud {
        auth_url: String,
        api_url: String,
        cloud_id: String,
        client_id: String,
        client_secret_env: String,
        redirect_uri: String,
        ca_file: Option<PathBuf>,
    },
    DataCenter {
        jira_url: Option<String>,
        confluence_url: Option<String>,
        ca_file: Option<PathBuf>,
    },
}

/// Largest response a product call may bring back (Forge's 5 MB).
const MAX_RESPONSE: usize = 5 * 1024 * 1024;

/// The product gateway the settings file at `path` describes, if it has a
/// `[product]` section; `kvs` keeps the gateway's tokens.
pub fn load(path: &Path, kvs: Arc<kiln_kvs::Kvs>) -> Result<Option<ProductGateway>, ConfigError> {
    let fail = |message: String| ConfigError { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let file: File = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let Some(section) = file.product else { return Ok(None) };
    let roots = |ca: &Option<PathBuf>| -> Result<String, ConfigError> {
        match ca {
            Some(ca) => std::fs::read_to_string(ca)
                .map_err(|e| fail(format!("product.ca_file {}: {e}", ca.display()))),
            None => kiln_crypto::tls::system_roots()
                .ok_or_else(|| fail("no system certificate bundle; set product.ca_file".into())),
        }
    };
    let endpoint = |url: &str, roots: &str, what: &str| {
        Endpoint::new(url, roots, MAX_RESPONSE).map_err(|e| fail(format!("product.{what}: {e}")))
    };
    let site = match section {
        ProductSection::Cloud {
            auth_url,
            api_url,
            cloud_id,
            client_id,
            client_secret_env,
            redirect_uri,
            ca_file,
        } => {
            let roots = roots(&ca_file)?;
            let secret = std::env::var(&client_secret_env).map_err(|_| {
                fail(format!("product.client_secret_env names {client_secret_env}, which is not set"))
            })?;
            if cloud_id.is_empty() || client_id.is_empty() {
                return Err(fail("product.cloud_id and product.client_id must not be empty".into()));
            }
            Site::Cloud(CloudSite {
                auth: endpoint(&auth_url, &roots, "auth_url")?,
                api: endpoint(&api_url, &roots, "api_url")?,
                cloud_id,
                client: OAuthClient { client_id, client_secret: secret.into(), redirect_uri },
            })
        }
        ProductSection::DataCenter { jira_url, confluence_url, ca_file } => {
            if jira_url.is_none() && confluence_url.is_none() {
                return Err(fail("a data-center product needs jira_url, confluence_url or both".into()));
            }
            let roots = roots(&ca_file)?;
            Site::DataCenter(DataCenterSite {
                jira: jira_url.as_deref().map(|u| endpoint(u, &roots, "jira_url")).transpose()?,
                confluence: confluence_url
                    .as_deref()
                    .map(|u| endpoint(u, &roots, "confluence_url"))
                    .transpose()?,
            })
        }
    };
    Ok(Some(ProductGateway::new(kiln_product::Config::default(), site, kvs)))
}
