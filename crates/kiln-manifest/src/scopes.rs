//! The OAuth scopes a manifest may request.
//!
//! The product scopes are those Atlassian's published API documents name
//! (extracted by `tools/kiln-datagen` into `data/scopes.txt`); the platform
//! scopes are Forge's own, which no product API document lists.

use std::collections::BTreeSet;
use std::sync::OnceLock;

/// Product scopes, generated from Atlassian's OpenAPI documents.
const PRODUCT_SCOPES: &str = include_str!("../data/scopes.txt");

/// Forge platform scopes: they guard Forge services rather than product REST
/// APIs. `read:me` and `read:account` are the identity scopes that need
/// interactive user consent.
pub const PLATFORM_SCOPES: [&str; 7] = [
    "storage:app",
    "read:app-system-token",
    "read:app-user-token",
    "report:personal-data",
    "read:chat:rovo",
    "read:me",
    "read:account",
];

fn known() -> &'static BTreeSet<&'static str> {
    static KNOWN: OnceLock<BTreeSet<&'static str>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        PRODUCT_SCOPES
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .chain(PLATFORM_SCOPES)
            .collect()
    })
}

/// Is this a scope Kiln knows?
pub fn is_known(scope: &str) -> bool {
    known().contains(scope)
}

/// Every known scope, sorted.
pub fn all() -> impl Iterator<Item = &'static str> {
    known().iter().copied()
}

/// Up to three known scopes closest to a misspelt one, nearest first.
pub fn nearest(scope: &str) -> Vec<&'static str> {
    let limit = (scope.len() / 4).clamp(2, 6);
    let mut scored: Vec<(usize, &'static str)> =
        known().iter().map(|k| (strsim::levenshtein(scope, k), *k)).filter(|(d, _)| *d <= limit).collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_granular_and_platform_scopes_are_known() {
        for s in [
            "read:jira-work",
            "write:jira-work",
            "read:issue:jira",
            "read:page:confluence",
            "read:confluence-content.summary",
            "storage:app",
            "read:app-user-token",
            // Forge's Jira Software DevOps scopes, from the generator's supplement.
            "write:build-info:jira",
            "delete:build-info:jira",
            "read:deployment-info:jira",
            "write:deployment-info:jira",
            "delete:deployment-info:jira",
        ] {
            assert!(is_known(s), "{s}");
        }
        assert!(!is_known("read:jira-wrk"));
        assert!(!is_known("admin:everything"));
        assert!(all().count() > 250);
    }

    #[test]
    fn misspellings_suggest_the_intended_scope() {
        assert_eq!(nearest("read:jira-wrk").first(), Some(&"read:jira-work"));
        assert_eq!(nearest("storage:apps").first(), Some(&"storage:app"));
        assert!(nearest("completely-unrelated-words-here").is_empty());
    }

    /// The committed list must match what the generator extracts from the
    /// documents; skipped where the documents are not beside the checkout.
    #[test]
    fn committed_scope_list_matches_the_openapi_documents() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/atlassian-openapi");
        if !dir.exists() {
            eprintln!("skipped: {} not present", dir.display());
            return;
        }
        let fresh = kiln_datagen::scopes_file(&dir).unwrap();
        assert_eq!(
            fresh, PRODUCT_SCOPES,
            "data/scopes.txt is stale: run cargo run -p kiln-datagen -- scopes ../shared/data/atlassian-openapi > crates/kiln-manifest/data/scopes.txt"
        );
    }
}
