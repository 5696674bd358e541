//! Which consented scopes let a product event reach an app: the table Forge
//! ships in `@forge/manifest` (`data/event-scopes.tsv`, with its source in
//! its header), and the check the event router makes before it queues a
//! delivery.
//!
//! An event passes if the installation's consented scopes hold every scope
//! of any one alternative listed for it (the classic set or the granular
//! set), as Forge's own check at deploy accepts either. An event the table
//! does not list is refused: Kiln delivers no product data it cannot tie
//! to a consent. The app's own lifecycle events (`avi:forge:*`) need no
//! scope and are not product events; they do not go through this check.

use std::collections::BTreeSet;
use std::sync::LazyLock;

/// The committed table.
const EVENTS: &str = include_str!("../data/event-scopes.tsv");

/// One product event and the scope sets that each suffice for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductEvent {
    pub event_type: String,
    pub alternatives: Vec<Vec<String>>,
}

/// Why an event is not delivered to an installation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventRefusal {
    #[error("{0} is not a product event Kiln knows the scopes of; it is not delivered")]
    Unmapped(String),
    #[error("{event_type} needs one of: {}; the installation has not consented to any of them", alternatives.join(" or "))]
    Missing { event_type: String, alternatives: Vec<String> },
}

/// The table, parsed once.
pub static TABLE: LazyLock<Vec<ProductEvent>> = LazyLock::new(|| {
    EVENTS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (event_type, alts) = line.split_once('\t')?;
            let alternatives = alts
                .split(" | ")
                .map(|a| a.split(',').map(str::to_owned).collect::<Vec<_>>())
                .filter(|a| !a.is_empty())
                .collect();
            Some(ProductEvent { event_type: event_type.to_owned(), alternatives })
        })
        .collect()
});

/// The table's entry for `event_type`.
pub fn find(event_type: &str) -> Option<&'static ProductEvent> {
    TABLE.iter().find(|e| e.event_type == event_type)
}

/// May an installation that consented to `consented` receive `event_type`?
pub fn check(event_type: &str, consented: &BTreeSet<String>) -> Result<&'static ProductEvent, EventRefusal> {
    let shown: String = event_type.chars().take(255).collect();
    let Some(event) = find(event_type) else {
        return Err(EventRefusal::Unmapped(shown));
    };
    // An entry without alternatives would make `any` false: refused, as an
    // unmapped event is, rather than read as "needs nothing".
    if event.alternatives.iter().any(|alt| !alt.is_empty() && alt.iter().all(|s| consented.contains(s))) {
        return Ok(event);
    }
    Err(EventRefusal::Missing {
        event_type: shown,
        alternatives: event.alternatives.iter().map(|a| a.join(", ")).collect(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code: a panic is a failed test")]

    use super::*;

    fn scopes(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_table_holds_every_event_of_the_forge_mapping_with_at_least_one_scope_set() {
        assert_eq!(TABLE.len(), 155);
        assert!(
            TABLE.iter().all(|e| !e.alternatives.is_empty() && e.alternatives.iter().all(|a| !a.is_empty()))
        );
        let unique: BTreeSet<&str> = TABLE.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(unique.len(), TABLE.len(), "an event is listed twice");
    }

    #[test]
    fn the_classic_or_the_granular_set_suffices() {
        assert!(check("avi:jira:created:issue", &scopes(&["read:jira-work"])).is_ok());
        let granular = scopes(&[
            "read:issue:jira",
            "read:issue-type:jira",
            "read:user:jira",
            "read:project:jira",
            "read:status:jira",
        ]);
        assert!(check("avi:jira:created:issue", &granular).is_ok());
        // A granular set with a scope missing is no alternative.
        let mut partial = granular.clone();
        partial.remove("read:status:jira");
        assert!(matches!(check("avi:jira:created:issue", &partial), Err(EventRefusal::Missing { .. })));
    }

    #[test]
    fn an_event_that_needs_two_classic_scopes_needs_both() {
        let one = scopes(&["read:confluence-content.summary"]);
        assert!(check("avi:confluence:deleted:page", &one).is_err());
        let both = scopes(&["read:confluence-content.summary", "write:confluence-content"]);
        assert!(check("avi:confluence:deleted:page", &both).is_ok());
    }

    #[test]
    fn unknown_events_and_scopes_of_other_events_are_refused() {
        let all = scopes(&["read:jira-work", "manage:jira-configuration", "read:confluence-content.all"]);
        assert_eq!(
            check("avi:jira:exploded:issue", &all),
            Err(EventRefusal::Unmapped("avi:jira:exploded:issue".into()))
        );
        assert!(check("avi:forge:installed:app", &all).is_err(), "lifecycle events are not product events");
        assert!(check("avi:jira:created:issue", &scopes(&["read:confluence-content.summary"])).is_err());
    }
}
