//! Lifecycle events: when the command line installs an app or upgrades an
//! installation to a new major version, the installation's trigger modules
//! subscribed to `avi:forge:installed:app` or `avi:forge:upgraded:app`
//! get the event, once.
//!
//! - **Where they come from.** `kiln-apps` records every installation
//!   change in `installation_events`, in the transaction that makes it.
//!   This poller reads that table past a cursor (`trigger_cursors`,
//!   'lifecycle') and queues deliveries. `installed` becomes
//!   `avi:forge:installed:app`; `upgraded` becomes
//!   `avi:forge:upgraded:app` when the major version changed (Forge sends
//!   it for major upgrades only). Minor roll-outs (`auto-upgraded`) and
//!   rollbacks (which Forge does not have) send nothing.
//! - **Once across nodes.** Every node may poll. Each delivery's event id
//!   is `lifecycle:<installation event id>`, so the jobs table's unique key
//!   drops a second copy whichever node queued the first; the cursor only
//!   saves re-reading. A node that stops between queueing and moving the
//!   cursor leaves work another poll redoes, harmlessly.
//! - **Which modules.** Those of the version the event installed or
//!   upgraded to, subscribed to the event; no scope is needed (they are
//!   the app's own events). A filter `expression`, `payload` options or an
//!   `endpoint` target are not supported: the module gets nothing and the
//!   log says so.
//! - **Payload.** Forge's: `{id, app: {id, version}, environment: {id}}`
//!   plus `eventType` and `context: {moduleKey, cloudId}` (`cloudId` when
//!   the site has one configured). `installerAccountId` /
//!   `upgraderAccountId` are left out: Kiln's installs are made by an
//!   operator, who has no account on the site.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kiln_store::{EventKind, EventRecord, InstallationRecord, Millis, Store, StoreError, VersionRecord};
use kiln_types::SiteUrl;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::events::{Enqueue, TriggerDelivery, Verdict, VersionCache, subscribers};

/// The cursor's name in `trigger_cursors`.
pub const CURSOR: &str = "lifecycle";

/// Installation events read per poll.
pub const BATCH: i64 = 100;

pub const INSTALLED: &str = "avi:forge:installed:app";
pub const UPGRADED: &str = "avi:forge:upgraded:app";

/// How the poller runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Between polls when there was nothing new.
    pub poll: Duration,
    /// Each site's cloud id, for `context.cloudId`.
    pub cloud_ids: BTreeMap<SiteUrl, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { poll: Duration::from_secs(2), cloud_ids: BTreeMap::new() }
    }
}

/// Why a poll stopped early (the next one carries on from the cursor).
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    #[error("the queue: {0}")]
    Queue(String),
}

/// What one poll did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollReport {
    /// Installation events read.
    pub read: usize,
    pub queued: u64,
    pub duplicates: u64,
    /// Modules that did not get an event for a feature Kiln lacks.
    pub unsupported: u64,
}

/// Poll every `settings.poll` until `shutdown` turns true (or its sender
/// is dropped).
pub fn spawn(
    store: Store,
    queue: Arc<dyn Enqueue>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let poll = settings.poll;
    let poller = LifecyclePoller::new(store, queue, settings);
    tokio::spawn(async move {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let more = match poller.poll_once(kiln_store::now_millis()).await {
                Ok(report) => i64::try_from(report.read).is_ok_and(|n| n >= BATCH),
                Err(e) => {
                    tracing::warn!(error = %e, "lifecycle events: this poll stopped early; the next one carries on");
                    false
                }
            };
            if more {
                continue;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep(poll) => {}
            }
        }
    })
}

/// Reads installation events and queues lifecycle deliveries.
pub struct LifecyclePoller {
    store: Store,
    queue: Arc<dyn Enqueue>,
    settings: Settings,
    versions: VersionCache,
}

impl std::fmt::Debug for LifecyclePoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecyclePoller").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl LifecyclePoller {
    pub fn new(store: Store, queue: Arc<dyn Enqueue>, settings: Settings) -> Self {
        LifecyclePoller { store, queue, settings, versions: VersionCache::default() }
    }

    /// Queue the deliveries of up to [`BATCH`] events past the cursor and
    /// move it past those handled.
    pub async fn poll_once(&self, now: Millis) -> Result<PollReport, LifecycleError> {
        let mut tx = self.store.begin_read().await?;
        let cursor = tx.trigger_cursor(CURSOR).await?;
        let events = tx.installation_events_after(cursor, BATCH).await?;
        tx.commit().await?;
        let mut report = PollReport { read: events.len(), ..PollReport::default() };
        let mut handled = cursor;
        let mut result = Ok(());
        for event in &events {
            if let Err(e) = self.deliver(event, now, &mut report).await {
                result = Err(e);
                break;
            }
            handled = event.id;
        }
        if handled > cursor {
            let mut tx = self.store.begin().await?;
            tx.advance_trigger_cursor(CURSOR, handled).await?;
            tx.commit().await?;
        }
        result.map(|()| report)
    }

    async fn deliver(
        &self,
        event: &EventRecord,
        now: Millis,
        report: &mut PollReport,
    ) -> Result<(), LifecycleError> {
        let mut tx = self.store.begin_read().await?;
        let Some(event_type) = self.event_type(&mut tx, event).await? else { return Ok(()) };
        let Some(installation) = tx.installation_by_id(event.installation_id).await? else { return Ok(()) };
        let Some(version) = self.versions.get(&mut tx, event.to_version_id).await? else { return Ok(()) };
        tx.commit().await?;
        let event_id = format!("lifecycle:{}", event.id);
        for module in subscribers(&version, event_type) {
            match module.verdict(None, None) {
                Verdict::Deliver | Verdict::IgnoredSelf => {}
                Verdict::Unsupported(what) => {
                    report.unsupported += 1;
                    tracing::error!(
                        app = %installation.app,
                        installation = %installation.public_id,
                        module = %module.trigger.key,
                        event = event_type,
                        unsupported = what,
                        "lifecycle event NOT DELIVERED to this trigger module: it uses something Kiln does not support"
                    );
                    continue;
                }
            }
            let body = self.payload(event_type, &installation, &version, module.trigger.key.as_str());
            let delivery = TriggerDelivery {
                installation: &installation,
                module_key: module.trigger.key.as_str(),
                event_id: &event_id,
                body: &body,
                run_at: now,
            };
            if self.queue.enqueue(delivery).await.map_err(LifecycleError::Queue)? {
                report.queued += 1;
            } else {
                report.duplicates += 1;
            }
        }
        Ok(())
    }

    /// The lifecycle event an installation event is, if any.
    async fn event_type(
        &self,
        tx: &mut kiln_store::Tx,
        event: &EventRecord,
    ) -> Result<Option<&'static str>, StoreError> {
        Ok(match event.kind {
            EventKind::Installed => Some(INSTALLED),
            EventKind::Upgraded => {
                let to = self.versions.get(tx, event.to_version_id).await?;
                let from = match event.from_version_id {
                    Some(id) => self.versions.get(tx, id).await?,
                    None => None,
                };
                let major = |v: &Option<Arc<VersionRecord>>| v.as_ref().map(|v| v.version.major);
                (major(&from) != major(&to)).then_some(UPGRADED)
            }
            EventKind::AutoUpgraded | EventKind::RolledBack => None,
        })
    }

    fn payload(
        &self,
        event_type: &str,
        installation: &InstallationRecord,
        version: &VersionRecord,
        module_key: &str,
    ) -> Value {
        let mut context = serde_json::Map::new();
        context.insert("moduleKey".into(), json!(module_key));
        if let Some(cloud_id) = self.settings.cloud_ids.get(&installation.site) {
            context.insert("cloudId".into(), json!(cloud_id));
        }
        json!({
            "eventType": event_type,
            "id": installation.public_id.as_str(),
            "app": { "id": installation.app.suffix(), "version": version.version.to_string() },
            "environment": { "id": installation.environment.as_str() },
            "context": Value::Object(context),
        })
    }
}
