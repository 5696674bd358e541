//! Rows behind scheduled triggers and trigger deliveries: which node runs
//! an installation's scheduled trigger for a slot (`scheduled_runs`), how
//! far the lifecycle poller has read `installation_events`
//! (`trigger_cursors`), and the installation reads the scheduler and the
//! event router need.
//!
//! A run is claimed by inserting its (installation, module, slot) row with
//! a lease; the primary key lets exactly one node win. A lease that runs
//! out before the run finished (the node died) may be taken over, a
//! bounded number of times. When and whether to run is the server's to
//! decide; this module only makes the claim atomic on both backends.

use crate::{EventKind, EventRecord, InstallationRecord, Millis, StoreError, Tx, TxInner, on_conn};
use kiln_types::{Product, SiteUrl};

/// What a claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunClaim {
    /// This node holds the run now; `attempt` is 1 for a fresh run and
    /// more for a takeover of a lease that ran out.
    Claimed { attempt: i64 },
    /// Another node (or this one, earlier) holds a lease that has not run
    /// out; ask again after `lease_until`.
    Held { lease_until: Millis },
    /// The run finished (or was abandoned after too many takeovers): it is
    /// never run again.
    Finished,
}

/// One claim's question.
#[derive(Debug, Clone, Copy)]
pub struct RunSlot<'a> {
    pub installation_id: i64,
    pub module_key: &'a str,
    /// The start of the interval the run belongs to (unix ms).
    pub slot: Millis,
}

/// An `installation_events` row as read: id, installation, at, kind,
/// from and to versions, detail.
type EventRow = (i64, i64, i64, String, Option<i64>, i64, String);

/// Longest outcome text kept per run; an app's failure message can be
/// anything, and the row is not the place for it.
pub const MAX_OUTCOME_LEN: usize = 200;

impl Tx {
    /// Claim `run` for `node` until `lease_until`: insert its row, or take
    /// it over if it is unfinished and its lease ran out before `now`. A
    /// run whose lease ran out `max_attempts` times is marked abandoned
    /// instead (a run that kills its node every time must not take the
    /// cluster down one node at a time).
    pub async fn claim_scheduled_run(
        &mut self,
        run: RunSlot<'_>,
        node: &str,
        now: Millis,
        lease_until: Millis,
        max_attempts: i64,
    ) -> Result<RunClaim, StoreError> {
        let RunSlot { installation_id, module_key, slot } = run;
        let inserted = on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO scheduled_runs (installation_id, module_key, slot, state, attempts, lease_owner, lease_until, started_at)
                 VALUES ($1, $2, $3, 'running', 1, $4, $5, $6)
                 ON CONFLICT (installation_id, module_key, slot) DO NOTHING",
            )
            .bind(installation_id)
            .bind(module_key)
            .bind(slot)
            .bind(node)
            .bind(lease_until)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        if inserted == 1 {
            return Ok(RunClaim::Claimed { attempt: 1 });
        }
        // Give up on a run that has already had its attempts.
        on_conn!(self, |c| {
            sqlx::query(
                "UPDATE scheduled_runs SET state = 'abandoned', finished_at = $4, outcome = 'ABANDONED'
                 WHERE installation_id = $1 AND module_key = $2 AND slot = $3
                   AND finished_at IS NULL AND lease_until < $4 AND attempts >= $5",
            )
            .bind(installation_id)
            .bind(module_key)
            .bind(slot)
            .bind(now)
            .bind(max_attempts)
            .execute(c)
            .await
            .map(drop)
        })?;
        // Take over an expired lease. On PostgreSQL a concurrent taker
        // waits for this row lock and then finds the lease live again, so
        // at most one update succeeds.
        let taken = on_conn!(self, |c| {
            sqlx::query(
                "UPDATE scheduled_runs SET attempts = attempts + 1, lease_owner = $4, lease_until = $5, started_at = $6
                 WHERE installation_id = $1 AND module_key = $2 AND slot = $3
                   AND finished_at IS NULL AND lease_until < $6 AND attempts < $7",
            )
            .bind(installation_id)
            .bind(module_key)
            .bind(slot)
            .bind(node)
            .bind(lease_until)
            .bind(now)
            .bind(max_attempts)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        let row: Option<(i64, i64, Option<i64>)> = on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT CAST(attempts AS BIGINT), lease_until, finished_at FROM scheduled_runs
                 WHERE installation_id = $1 AND module_key = $2 AND slot = $3",
            )
            .bind(installation_id)
            .bind(module_key)
            .bind(slot)
            .fetch_optional(c)
            .await
        })?;
        let Some((attempts, lease, finished)) = row else {
            return Err(StoreError::corrupt("scheduled_runs", "a claimed row vanished"));
        };
        Ok(match (taken, finished) {
            (1, _) => RunClaim::Claimed { attempt: attempts },
            (_, Some(_)) => RunClaim::Finished,
            _ => RunClaim::Held { lease_until: lease },
        })
    }

    /// Record how `run` ended. Only the lease holder's word counts: false
    /// if `node` no longer holds it (its lease ran out and another node
    /// took the run over) or it had already finished.
    pub async fn finish_scheduled_run(
        &mut self,
        run: RunSlot<'_>,
        node: &str,
        now: Millis,
        outcome: &str,
    ) -> Result<bool, StoreError> {
        let outcome: String = outcome.chars().take(MAX_OUTCOME_LEN).collect();
        let done = on_conn!(self, |c| {
            sqlx::query(
                "UPDATE scheduled_runs SET state = 'finished', finished_at = $5, outcome = $6
                 WHERE installation_id = $1 AND module_key = $2 AND slot = $3
                   AND lease_owner = $4 AND finished_at IS NULL",
            )
            .bind(run.installation_id)
            .bind(run.module_key)
            .bind(run.slot)
            .bind(node)
            .bind(now)
            .bind(&outcome)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// The latest finished (or abandoned) slot of each of an
    /// installation's scheduled trigger modules, by module key.
    pub async fn latest_finished_slots(
        &mut self,
        installation_id: i64,
    ) -> Result<Vec<(String, Millis)>, StoreError> {
        Ok(on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT module_key, MAX(slot) FROM scheduled_runs
                 WHERE installation_id = $1 AND finished_at IS NOT NULL
                 GROUP BY module_key ORDER BY module_key",
            )
            .bind(installation_id)
            .fetch_all(c)
            .await
        })?)
    }

    /// Forget finished runs of slots before `before`; how many went.
    /// Unfinished rows stay, so a claim never sees a live run vanish.
    pub async fn prune_scheduled_runs(&mut self, before: Millis) -> Result<u64, StoreError> {
        Ok(on_conn!(self, |c| {
            sqlx::query("DELETE FROM scheduled_runs WHERE slot < $1 AND finished_at IS NOT NULL")
                .bind(before)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?)
    }

    /// Every installation of every app, by row id.
    pub async fn all_installations(&mut self) -> Result<Vec<InstallationRecord>, StoreError> {
        self.installations_where("ORDER BY i.id", &[]).await
    }

    /// The installations of any app in `product` on `site`, by row id.
    pub async fn installations_on_site(
        &mut self,
        site: &SiteUrl,
        product: Product,
    ) -> Result<Vec<InstallationRecord>, StoreError> {
        self.installations_where(
            "WHERE i.site = $1 AND i.product = $2 ORDER BY i.id",
            &[site.as_str(), product.as_str()],
        )
        .await
    }

    /// Installation events of every installation with an id above
    /// `after`, oldest first, at most `limit`.
    pub async fn installation_events_after(
        &mut self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows: Vec<EventRow> = on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT id, installation_id, at, kind, from_version_id, to_version_id, detail
                 FROM installation_events WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(c)
            .await
        })?;
        rows.into_iter()
            .map(|(id, installation_id, at, kind, from, to, detail)| {
                let what = format!("installation event {id}");
                Ok(EventRecord {
                    id,
                    installation_id,
                    at,
                    kind: EventKind::parse(&kind).ok_or_else(|| StoreError::corrupt(&what, kind))?,
                    from_version_id: from,
                    to_version_id: to,
                    detail: serde_json::from_str(&detail).map_err(|e| StoreError::corrupt(&what, e))?,
                })
            })
            .collect()
    }

    /// Where the poller `name` got to (0 before it ever moved).
    pub async fn trigger_cursor(&mut self, name: &str) -> Result<i64, StoreError> {
        let seen: Option<i64> = on_conn!(self, |c| {
            sqlx::query_scalar("SELECT seen_id FROM trigger_cursors WHERE name = $1")
                .bind(name)
                .fetch_optional(c)
                .await
        })?;
        Ok(seen.unwrap_or(0))
    }

    /// Move the poller `name` forward to `seen` (never back: a slower node
    /// that read less does not undo a faster one's progress).
    pub async fn advance_trigger_cursor(&mut self, name: &str, seen: i64) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO trigger_cursors (name, seen_id) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET seen_id = excluded.seen_id
                 WHERE trigger_cursors.seen_id < excluded.seen_id",
            )
            .bind(name)
            .bind(seen)
            .execute(c)
            .await
            .map(drop)
        })?;
        Ok(())
    }
}
