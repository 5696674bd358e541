//! Web trigger URLs: the secret part of an installation's URL for a web
//! trigger module, made on first ask. The database holds only its SHA-256
//! (`webtriggers`); the secret is sealed in the installation's token
//! namespace, so the URL can be shown again (`kiln webtrigger`, and the
//! app's own `webTrigger.getUrl`). `kiln-server` serves the URLs.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kiln_crypto::Sha256;
use kiln_kvs::Kvs;
use kiln_store::{InstallationRecord, Store};

/// The KVS owner of an installation's storage, secrets and tokens.
pub fn owner(installation: &InstallationRecord) -> String {
    format!("installation:{}", installation.public_id)
}

fn token_name(module: &str) -> String {
    format!("webtrigger:{module}")
}

#[derive(Debug, thiserror::Error)]
pub enum WebtriggerError {
    #[error(
        "{app} has no web trigger module '{module}' in the version {site} runs; its web triggers are: {known}"
    )]
    NoSuchModule { app: String, site: String, module: String, known: String },
    #[error(
        "the web trigger URL for '{0}' exists but its secret cannot be read; another node may be making it \
         (try again), or the secret was lost"
    )]
    SecretMissing(String),
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    #[error("the token store failed: {0}")]
    Kvs(#[from] kiln_kvs::KvsError),
    #[error("{0}")]
    Crypto(String),
}

/// The secret part of the installation's URL for web trigger `module`,
/// made the first time it is asked for.
pub async fn token(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    module: &str,
) -> Result<String, WebtriggerError> {
    let version = store.begin_read().await?.version_by_id(installation.version_id).await?;
    let known: Vec<String> = version
        .as_ref()
        .map(|v| v.manifest.modules.webtriggers.iter().map(|w| w.key.to_string()).collect())
        .unwrap_or_default();
    if !known.iter().any(|k| k == module) {
        return Err(WebtriggerError::NoSuchModule {
            app: installation.app.to_string(),
            site: installation.site.to_string(),
            module: module.to_owned(),
            known: if known.is_empty() { "none".into() } else { known.join(", ") },
        });
    }
    let owner = owner(installation);
    let mut tx = store.begin().await?;
    if tx.webtrigger_exists(installation.id, module).await? {
        drop(tx);
        return kvs
            .get_token(&owner, &token_name(module))
            .await?
            .ok_or(WebtriggerError::SecretMissing(module.into()));
    }
    let mut secret = [0u8; 32];
    kiln_crypto::fill_random(&mut secret).map_err(|e| WebtriggerError::Crypto(e.to_string()))?;
    let token = URL_SAFE_NO_PAD.encode(secret);
    let hash = Sha256::of(token.as_bytes());
    let inserted =
        tx.webtrigger_insert(installation.id, module, hash.as_bytes(), kiln_store::now_millis()).await?;
    tx.commit().await?;
    if !inserted {
        // Another node made it between our check and our insert.
        return kvs
            .get_token(&owner, &token_name(module))
            .await?
            .ok_or(WebtriggerError::SecretMissing(module.into()));
    }
    kvs.set_token(&owner, &token_name(module), &token, None).await?;
    Ok(token)
}

fn signing_name(module: &str) -> String {
    format!("webtrigger-signing:{module}")
}

/// The key callers of a `hmacSharedSecret` web trigger sign requests with
/// (hex, 32 random bytes), made the first time it is asked for and sealed
/// in the installation's token namespace beside the URL's secret. Kept
/// apart from the URL so that a URL seen in a log or a browser history
/// does not let anyone sign. If two callers make it at the same moment the
/// later write wins; both are answered with what was stored last.
pub async fn signing_secret(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    module: &str,
) -> Result<String, WebtriggerError> {
    // The module must exist, and its URL too: a signing key alone opens nothing.
    token(store, kvs, installation, module).await?;
    let owner = owner(installation);
    if let Some(secret) = kvs.get_token(&owner, &signing_name(module)).await? {
        return Ok(secret);
    }
    let mut secret = [0u8; 32];
    kiln_crypto::fill_random(&mut secret).map_err(|e| WebtriggerError::Crypto(e.to_string()))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    kvs.set_token(&owner, &signing_name(module), &hex, None).await?;
    kvs.get_token(&owner, &signing_name(module)).await?.ok_or(WebtriggerError::SecretMissing(module.into()))
}

/// The signing key of the installation's web trigger `module`, if one was
/// made; the server never makes one on a request's behalf.
pub async fn existing_signing_secret(
    kvs: &Kvs,
    installation: &InstallationRecord,
    module: &str,
) -> Result<Option<String>, WebtriggerError> {
    Ok(kvs.get_token(&owner(installation), &signing_name(module)).await?)
}
