//! The tokens the product gateway alone holds, sealed in the KVS token
//! namespace of the installation (envelope-encrypted, never listed, never
//! readable as an entry or a secret), and the flows that obtain them.
//!
//! Atlassian Cloud (OAuth 2.0):
//! - `asApp()`: the client-credentials grant of the installation's OAuth
//!   client (a service account); the access token is kept until a minute
//!   before it expires.
//! - `asUser()`: the user's own consent through the authorization-code
//!   flow ([`Tokens::authorization_url`], [`Tokens::complete_authorization`],
//!   which also asks `accessible-resources` that the consent covers this
//!   site). Refresh tokens rotate: every refresh stores the new one, and
//!   refreshes of one user are serialised in this process so two calls do
//!   not present the same refresh token (which the authorization server
//!   treats as theft and answers by revoking the family). Across several
//!   nodes that serialisation does not hold yet; a node that loses the race
//!   gets `invalid_grant` and the user is asked to consent again.
//!
//! Data Center: personal access tokens, one for the app's service account
//! and one per user who set theirs ([`Tokens::set_personal_access_token`]).
//!
//! A token never appears in an error, a log line or a `Debug` output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_http::Method;
use kiln_kvs::{Kvs, Ttl, TtlUnit};
use zeroize::Zeroizing;

use crate::{Acting, CloudSite, Installation, ProductError, Site};

const APP_ACCESS: &str = "oauth:app:access";
const APP_PAT: &str = "pat:app";

fn user_access(account: &str) -> String {
    format!("oauth:user:{account}:access")
}

fn user_refresh(account: &str) -> String {
    format!("oauth:user:{account}:refresh")
}

fn user_pat(account: &str) -> String {
    format!("pat:user:{account}")
}

/// A token in memory: zeroed when dropped, never printed.
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A user's completed consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub account_id: String,
    /// The sites the consent covers (this one among them).
    pub cloud_ids: Vec<String>,
    pub scopes: Vec<String>,
}

/// Largest account id accepted; Atlassian's are under 130 characters.
const MAX_ACCOUNT_ID: usize = 128;

fn check_account(account: &str) -> Result<(), ProductError> {
    let ok = !account.is_empty()
        && account.len() <= MAX_ACCOUNT_ID
        && account.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ProductError::BadRequest(format!(
            "{:?} is not an Atlassian account id",
            account.chars().take(140).collect::<String>()
        )))
    }
}

/// What the token endpoint granted.
struct Granted {
    access: Zeroizing<String>,
    expires_in: u64,
    refresh: Option<Zeroizing<String>>,
    scope: String,
}

/// Why the token endpoint said no.
enum Refusal {
    /// The grant itself is no good (`invalid_grant`, `access_denied`, ...):
    /// asking again with it will not help.
    Grant(String),
    Other(ProductError),
}

/// Held while one (installation, principal) obtains a token.
type RefreshLock = Arc<tokio::sync::Mutex<()>>;

/// The credentials side of the gateway.
pub struct Tokens {
    kvs: Arc<Kvs>,
    site: Site,
    refreshing: Mutex<HashMap<(String, String), RefreshLock>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

fn store_err(e: kiln_kvs::KvsError) -> ProductError {
    ProductError::Credentials(format!("the token store failed: {e}"))
}

/// A JSON string literal, zeroed when dropped.
fn json_str(s: &str) -> Zeroizing<String> {
    Zeroizing::new(serde_json::Value::String(s.to_owned()).to_string())
}

impl Tokens {
    pub(crate) fn new(kvs: Arc<Kvs>, site: Site) -> Self {
        Tokens { kvs, site, refreshing: Mutex::new(HashMap::new()) }
    }

    /// The token for `acting` on `installation`; `None` for [`Acting::Nobody`].
    pub(crate) async fn token(
        &self,
        installation: &Installation,
        acting: &Acting,
    ) -> Result<Option<Secret>, ProductError> {
        let owner = installation.owner.as_str();
        match (&self.site, acting) {
            (_, Acting::Nobody) => Ok(None),
            (Site::Cloud(cloud), Acting::App) => self.app_access(cloud, owner).await.map(Some),
            (Site::Cloud(cloud), Acting::User(a) | Acting::Impersonate(a)) => {
                check_account(a)?;
                self.user_access(cloud, owner, a).await.map(Some)
            }
            (Site::DataCenter(_), Acting::App) => {
                match self.kvs.get_token(owner, APP_PAT).await.map_err(store_err)? {
                    Some(t) => Ok(Some(Secret(Zeroizing::new(t)))),
                    None => Err(ProductError::Credentials(
                        "no personal access token is set for this installation's app account".into(),
                    )),
                }
            }
            (Site::DataCenter(_), Acting::User(a) | Acting::Impersonate(a)) => {
                check_account(a)?;
                match self.kvs.get_token(owner, &user_pat(a)).await.map_err(store_err)? {
                    Some(t) => Ok(Some(Secret(Zeroizing::new(t)))),
                    None => Err(ProductError::NeedsAuthentication(format!(
                        "user {a} has not given this installation a personal access token"
                    ))),
                }
            }
        }
    }

    /// Drop the stored access token for `acting` after the site refused
    /// it; true when a fresh one can be obtained (OAuth), false when
    /// retrying cannot help (personal access tokens, no token).
    pub(crate) async fn forget_access(
        &self,
        installation: &Installation,
        acting: &Acting,
    ) -> Result<bool, ProductError> {
        let Site::Cloud(_) = self.site else { return Ok(false) };
        let name = match acting {
            Acting::App => APP_ACCESS.to_owned(),
            Acting::User(a) | Acting::Impersonate(a) => user_access(a),
            Acting::Nobody => return Ok(false),
        };
        self.kvs.delete_token(&installation.owner, &name).await.map_err(store_err)?;
        Ok(true)
    }

    async fn app_access(&self, cloud: &CloudSite, owner: &str) -> Result<Secret, ProductError> {
        if let Some(t) = self.kvs.get_token(owner, APP_ACCESS).await.map_err(store_err)? {
            return Ok(Secret(Zeroizing::new(t)));
        }
        let lock = self.lock(owner, "app");
        let _held = lock.lock().await;
        if let Some(t) = self.kvs.get_token(owner, APP_ACCESS).await.map_err(store_err)? {
            return Ok(Secret(Zeroizing::new(t)));
        }
        let body = Zeroizing::new(format!(
            r#"{{"grant_type":"client_credentials","client_id":{},"client_secret":{}}}"#,
            *json_str(&cloud.client.client_id),
            *json_str(&cloud.client.client_secret),
        ));
        let granted = match self.grant(cloud, &body).await {
            Ok(g) => g,
            Err(Refusal::Grant(code)) => {
                return Err(ProductError::Credentials(format!(
                    "the authorization server refused the app's client credentials ({code})"
                )));
            }
            Err(Refusal::Other(e)) => return Err(e),
        };
        self.keep_access(owner, APP_ACCESS, &granted).await?;
        Ok(Secret(granted.access))
    }

    async fn user_access(
        &self,
        cloud: &CloudSite,
        owner: &str,
        account: &str,
    ) -> Result<Secret, ProductError> {
        if let Some(t) = self.kvs.get_token(owner, &user_access(account)).await.map_err(store_err)? {
            return Ok(Secret(Zeroizing::new(t)));
        }
        let lock = self.lock(owner, account);
        let _held = lock.lock().await;
        if let Some(t) = self.kvs.get_token(owner, &user_access(account)).await.map_err(store_err)? {
            return Ok(Secret(Zeroizing::new(t)));
        }
        let needs_consent = || {
            ProductError::NeedsAuthentication(format!(
                "user {account} has not authorised this app to act for them, or their consent has ended"
            ))
        };
        let Some(refresh) = self.kvs.get_token(owner, &user_refresh(account)).await.map_err(store_err)?
        else {
            return Err(needs_consent());
        };
        let refresh = Zeroizing::new(refresh);
        let body = Zeroizing::new(format!(
            r#"{{"grant_type":"refresh_token","client_id":{},"client_secret":{},"refresh_token":{}}}"#,
            *json_str(&cloud.client.client_id),
            *json_str(&cloud.client.client_secret),
            *json_str(&refresh),
        ));
        let granted = match self.grant(cloud, &body).await {
            Ok(g) => g,
            Err(Refusal::Grant(_)) => {
                // The refresh token is dead (revoked, rotated elsewhere,
                // expired): forget it; only a new consent helps.
                self.kvs.delete_token(owner, &user_refresh(account)).await.map_err(store_err)?;
                return Err(needs_consent());
            }
            Err(Refusal::Other(e)) => return Err(e),
        };
        if let Some(next) = &granted.refresh {
            self.kvs.set_token(owner, &user_refresh(account), next, None).await.map_err(store_err)?;
        }
        self.keep_access(owner, &user_access(account), &granted).await?;
        Ok(Secret(granted.access))
    }

    async fn keep_access(&self, owner: &str, name: &str, granted: &Granted) -> Result<(), ProductError> {
        // Kept until a minute before it expires, so a call never starts
        // with a token about to lapse.
        let seconds = granted.expires_in.saturating_sub(60).max(1);
        let ttl = Ttl { value: seconds, unit: TtlUnit::Seconds };
        self.kvs.set_token(owner, name, &granted.access, Some(ttl)).await.map_err(store_err)
    }

    fn lock(&self, owner: &str, who: &str) -> RefreshLock {
        let mut locks = self.refreshing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry((owner.to_owned(), who.to_owned())).or_default().clone()
    }

    /// One request to the token endpoint.
    async fn grant(&self, cloud: &CloudSite, body: &str) -> Result<Granted, Refusal> {
        let headers = [("content-type", "application/json"), ("accept", "application/json")];
        let reply =
            cloud.auth.send(Method::POST, "/oauth/token", &headers, Some(body.as_bytes())).await.map_err(
                |e| {
                    Refusal::Other(ProductError::Credentials(format!(
                        "the authorization server did not answer: {e}"
                    )))
                },
            )?;
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
        if !reply.status.is_success() {
            // Only the error code is kept: a description could echo input.
            let code = json.get("error").and_then(|e| e.as_str()).unwrap_or("no error code");
            let code: String =
                code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            return Err(if reply.status.is_client_error() {
                Refusal::Grant(code)
            } else {
                Refusal::Other(ProductError::Credentials(format!(
                    "the authorization server answered {} ({code})",
                    reply.status.as_u16()
                )))
            });
        }
        let access =
            json.get("access_token").and_then(|t| t.as_str()).filter(|t| !t.is_empty()).ok_or_else(|| {
                Refusal::Other(ProductError::Credentials(
                    "the authorization server granted no access token".into(),
                ))
            })?;
        Ok(Granted {
            access: Zeroizing::new(access.to_owned()),
            expires_in: json.get("expires_in").and_then(|e| e.as_u64()).unwrap_or(3600),
            refresh: json.get("refresh_token").and_then(|t| t.as_str()).map(|t| Zeroizing::new(t.to_owned())),
            scope: json.get("scope").and_then(|s| s.as_str()).unwrap_or_default().to_owned(),
        })
    }

    fn cloud(&self) -> Result<&CloudSite, ProductError> {
        match &self.site {
            Site::Cloud(cloud) => Ok(cloud),
            Site::DataCenter(_) => Err(ProductError::ProductNotAvailable(
                "Data Center sites use personal access tokens, not OAuth consent".into(),
            )),
        }
    }

    /// Where to send a user to consent: the authorization server's
    /// `/authorize` for this client, asking for `scopes` (with
    /// `offline_access`, so the gateway can refresh) and carrying `state`,
    /// which the caller binds to the user's session and checks on return.
    pub fn authorization_url(&self, scopes: &[&str], state: &str) -> Result<String, ProductError> {
        let cloud = self.cloud()?;
        let mut all: Vec<&str> = scopes.to_vec();
        if !all.contains(&"offline_access") {
            all.push("offline_access");
        }
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("audience", "api.atlassian.com")
            .append_pair("client_id", &cloud.client.client_id)
            .append_pair("scope", &all.join(" "))
            .append_pair("redirect_uri", &cloud.client.redirect_uri)
            .append_pair("state", state)
            .append_pair("response_type", "code")
            .append_pair("prompt", "consent")
            .finish();
        Ok(format!("{}?{query}", cloud.auth.url("/authorize")))
    }

    /// The redirect URI this client gives the authorization server (Cloud
    /// only): where the user's browser comes back with the code.
    pub fn redirect_uri(&self) -> Option<&str> {
        match &self.site {
            Site::Cloud(cloud) => Some(&cloud.client.redirect_uri),
            Site::DataCenter(_) => None,
        }
    }

    /// Exchange the code the user came back with for their tokens, find
    /// who they are and check that the consent covers this site; keep the
    /// tokens sealed under `owner`.
    pub async fn complete_authorization(&self, owner: &str, code: &str) -> Result<Authorized, ProductError> {
        self.complete(owner, code, None).await
    }

    /// [`Tokens::complete_authorization`] for a consent that `account`
    /// started: if the person who signed in at the authorization server is
    /// someone else, nothing is kept and the consent is refused
    /// ([`ProductError::ConsentByAnotherAccount`]). A server that starts the
    /// flow for a user the product vouched for uses this, so a code from
    /// another person's consent (an injected or swapped code) never lands
    /// under the account that asked.
    pub async fn complete_authorization_as(
        &self,
        owner: &str,
        code: &str,
        account: &str,
    ) -> Result<Authorized, ProductError> {
        check_account(account)?;
        self.complete(owner, code, Some(account)).await
    }

    async fn complete(
        &self,
        owner: &str,
        code: &str,
        expected: Option<&str>,
    ) -> Result<Authorized, ProductError> {
        let cloud = self.cloud()?;
        let body = Zeroizing::new(format!(
            r#"{{"grant_type":"authorization_code","client_id":{},"client_secret":{},"code":{},"redirect_uri":{}}}"#,
            *json_str(&cloud.client.client_id),
            *json_str(&cloud.client.client_secret),
            *json_str(code),
            *json_str(&cloud.client.redirect_uri),
        ));
        let granted = match self.grant(cloud, &body).await {
            Ok(g) => g,
            Err(Refusal::Grant(code)) => {
                return Err(ProductError::NeedsAuthentication(format!(
                    "the authorization server refused the authorization code ({code}); start the consent again"
                )));
            }
            Err(Refusal::Other(e)) => return Err(e),
        };
        let bearer = Zeroizing::new(format!("Bearer {}", granted.access.as_str()));
        let get = |path: &'static str| {
            let headers = [("authorization", bearer.as_str()), ("accept", "application/json")];
            async move {
                let reply = cloud
                    .api
                    .send(Method::GET, path, &headers, None)
                    .await
                    .map_err(|e| ProductError::Credentials(format!("{path} did not answer: {e}")))?;
                if !reply.status.is_success() {
                    return Err(ProductError::Credentials(format!(
                        "{path} answered {}",
                        reply.status.as_u16()
                    )));
                }
                Ok(reply.json())
            }
        };
        let resources = get("/oauth/token/accessible-resources").await?;
        let cloud_ids: Vec<String> = resources
            .as_array()
            .map(|list| list.iter().filter_map(|r| r.get("id")?.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        if !cloud_ids.contains(&cloud.cloud_id) {
            return Err(ProductError::NeedsAuthentication(format!(
                "the consent does not cover site {}; it covers: {}",
                cloud.cloud_id,
                if cloud_ids.is_empty() { "no site".to_owned() } else { cloud_ids.join(", ") }
            )));
        }
        let me = get("/me").await?;
        let account_id = me
            .get("account_id")
            .and_then(|a| a.as_str())
            .ok_or_else(|| ProductError::Credentials("/me named no account".into()))?
            .to_owned();
        check_account(&account_id)?;
        if expected.is_some_and(|e| e != account_id) {
            return Err(ProductError::ConsentByAnotherAccount);
        }
        let Some(refresh) = &granted.refresh else {
            return Err(ProductError::Credentials(
                "the authorization server granted no refresh token (offline_access missing)".into(),
            ));
        };
        self.kvs.set_token(owner, &user_refresh(&account_id), refresh, None).await.map_err(store_err)?;
        self.keep_access(owner, &user_access(&account_id), &granted).await?;
        Ok(Authorized {
            account_id,
            cloud_ids,
            scopes: granted.scope.split_whitespace().map(str::to_owned).collect(),
        })
    }

    /// Set the Data Center personal access token of the app's account
    /// (`account` None) or of one user.
    pub async fn set_personal_access_token(
        &self,
        owner: &str,
        account: Option<&str>,
        token: &str,
    ) -> Result<(), ProductError> {
        let name = match account {
            None => APP_PAT.to_owned(),
            Some(a) => {
                check_account(a)?;
                user_pat(a)
            }
        };
        if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(ProductError::BadRequest(
                "a personal access token is one word of printable characters".into(),
            ));
        }
        self.kvs.set_token(owner, &name, token, None).await.map_err(store_err)
    }

    /// Forget everything held for one user (their consent ended).
    pub async fn forget_user(&self, owner: &str, account: &str) -> Result<(), ProductError> {
        check_account(account)?;
        for name in [user_access(account), user_refresh(account), user_pat(account)] {
            self.kvs.delete_token(owner, &name).await.map_err(store_err)?;
        }
        Ok(())
    }
}
