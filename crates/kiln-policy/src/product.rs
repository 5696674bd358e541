//! Which OAuth scopes a product API call needs: the route table generated
//! from Atlassian's OpenAPI documents (`data/routes.tsv`, by
//! `kiln-datagen routes`), and the matcher the product gateway asks.
//!
//! A call passes if the installation's consented scopes hold every scope of
//! any one alternative the document lists for the matched route (the
//! classic set or the granular set). A route the documents do not know, or
//! one they give no OAuth scope, is refused; refusals name the route and
//! the scopes that would allow it. Jira's `/rest/api/2/...` is served with
//! the scopes of the same `/rest/api/3/...` route.

use std::collections::BTreeSet;
use std::sync::LazyLock;

/// The committed table.
const ROUTES: &str = include_str!("../data/routes.tsv");

/// One route: method, template segments, and the scope alternatives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRoute {
    pub method: String,
    /// The template as the document writes it, e.g. `/rest/api/3/issue/{issueIdOrKey}`.
    pub template: String,
    segments: Vec<Segment>,
    /// Each alternative is a set of scopes that together suffice; empty
    /// when the document names none.
    pub alternatives: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeRefusal {
    #[error("{method} {path} is not a product API route Kiln knows; it is refused")]
    Unmapped { method: String, path: String },
    #[error("{method} {template} has no OAuth scope in Atlassian's documents, so apps cannot call it")]
    NoScope { method: String, template: String },
    #[error("{method} {template} needs one of: {}; the installation has not consented to any of them", alternatives.join(" or "))]
    Missing { method: String, template: String, alternatives: Vec<String> },
}

fn parse_segments(template: &str) -> Vec<Segment> {
    template
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                Segment::Param
            } else {
                Segment::Literal(s.to_owned())
            }
        })
        .collect()
}

/// The table, parsed once.
pub static TABLE: LazyLock<Vec<ProductRoute>> = LazyLock::new(|| {
    ROUTES
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let mut cols = line.split('\t');
            let (method, template, alts) = (cols.next()?, cols.next()?, cols.next()?);
            let alternatives = if alts == "-" {
                Vec::new()
            } else {
                alts.split(" | ").map(|a| a.split(',').map(str::to_owned).collect()).collect()
            };
            Some(ProductRoute {
                method: method.to_owned(),
                template: template.to_owned(),
                segments: parse_segments(template),
                alternatives,
            })
        })
        .collect()
});

/// The route `method path` matches: the one with the most literal segments
/// among those of the same method and length (`/issue/createmeta` before
/// `/issue/{issueIdOrKey}`). The query string is ignored.
pub fn find(method: &str, path: &str) -> Option<&'static ProductRoute> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let aliased;
    let path = match path.strip_prefix("/rest/api/2/") {
        Some(rest) => {
            aliased = format!("/rest/api/3/{rest}");
            aliased.as_str()
        }
        None => path,
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // A path that could mean another path once a server normalises it
    // matches nothing.
    let lower = path.to_ascii_lowercase();
    if parts.iter().any(|p| *p == "." || *p == "..")
        || path.contains('\\')
        || ["%2e", "%2f", "%5c", "%00"].iter().any(|e| lower.contains(e))
    {
        return None;
    }
    let method = method.to_ascii_uppercase();
    TABLE
        .iter()
        .filter(|r| r.method == method && r.segments.len() == parts.len())
        .filter(|r| {
            r.segments.iter().zip(&parts).all(|(seg, part)| match seg {
                Segment::Literal(l) => l == part,
                Segment::Param => !part.is_empty(),
            })
        })
        .max_by_key(|r| r.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count())
}

/// May an installation that consented to `consented` make this call?
pub fn check(
    method: &str,
    path: &str,
    consented: &BTreeSet<String>,
) -> Result<&'static ProductRoute, ScopeRefusal> {
    let Some(route) = find(method, path) else {
        return Err(ScopeRefusal::Unmapped {
            method: method.to_ascii_uppercase(),
            path: path.split('?').next().unwrap_or_default().chars().take(300).collect(),
        });
    };
    if route.alternatives.is_empty() {
        return Err(ScopeRefusal::NoScope { method: route.method.clone(), template: route.template.clone() });
    }
    if route.alternatives.iter().any(|alt| alt.iter().all(|s| consented.contains(s))) {
        return Ok(route);
    }
    Err(ScopeRefusal::Missing {
        method: route.method.clone(),
        template: route.template.clone(),
        alternatives: route.alternatives.iter().map(|a| a.join(" + ")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    /// The committed table must match what the generator extracts from the
    /// documents; skipped where the documents are not beside the checkout.
    #[test]
    fn the_committed_table_matches_the_openapi_documents() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/atlassian-openapi");
        if !dir.exists() {
            eprintln!("skipped: {} not present", dir.display());
            return;
        }
        let fresh = kiln_datagen::routes_file(&dir).unwrap();
        assert!(
            fresh == ROUTES,
            "data/routes.tsv is stale: run cargo run -p kiln-datagen -- routes ../shared/data/atlassian-openapi > crates/kiln-policy/data/routes.tsv"
        );
    }

    #[test]
    fn the_table_is_whole() {
        assert!(TABLE.len() > 1000, "{}", TABLE.len());
        assert!(TABLE.iter().all(|r| r.template.starts_with('/')));
    }

    #[test]
    fn a_call_passes_with_either_the_classic_or_the_whole_granular_set() {
        let classic = scopes(&["read:jira-work"]);
        assert_eq!(
            check("GET", "/rest/api/3/issue/KILN-1", &classic).unwrap().template,
            "/rest/api/3/issue/{issueIdOrKey}"
        );
        assert!(
            check("get", "/rest/api/2/issue/KILN-1?fields=summary", &classic).is_ok(),
            "v2 is served with v3's scopes"
        );
        let granular = scopes(&[
            "read:avatar:jira",
            "read:field-configuration:jira",
            "read:issue-meta:jira",
            "read:issue-security-level:jira",
            "read:issue.changelog:jira",
            "read:issue.vote:jira",
            "read:issue:jira",
            "read:status:jira",
            "read:user:jira",
        ]);
        assert!(check("GET", "/rest/api/3/issue/KILN-1", &granular).is_ok());
        let mut partial = granular.clone();
        partial.remove("read:user:jira");
        let err = check("GET", "/rest/api/3/issue/KILN-1", &partial).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("GET /rest/api/3/issue/{issueIdOrKey} needs one of:")
                && text.contains("read:jira-work"),
            "{text}"
        );
        // Reading does not allow writing.
        assert!(matches!(
            check("PUT", "/rest/api/3/issue/KILN-1", &classic),
            Err(ScopeRefusal::Missing { .. })
        ));
        assert!(check("PUT", "/rest/api/3/issue/KILN-1", &scopes(&["write:jira-work"])).is_ok());
    }

    #[test]
    fn literal_segments_win_over_parameters() {
        let r = find("GET", "/rest/api/3/issue/createmeta").unwrap();
        assert_eq!(r.template, "/rest/api/3/issue/createmeta");
        assert_eq!(
            find("GET", "/rest/api/3/issue/KILN-7").unwrap().template,
            "/rest/api/3/issue/{issueIdOrKey}"
        );
    }

    #[test]
    fn confluence_and_agile_routes_are_known() {
        let page = check("GET", "/wiki/api/v2/pages/123", &scopes(&["read:page:confluence"])).unwrap();
        assert_eq!(page.template, "/wiki/api/v2/pages/{id}");
        assert!(
            check("GET", "/wiki/rest/api/content/123", &scopes(&["read:confluence-content.summary"])).is_ok()
        );
        assert!(find("GET", "/rest/agile/1.0/board").is_some());
    }

    /// The DevOps APIs (builds, deployments, ...) live under `/rest` and take
    /// Forge's DevOps scopes from the generator's supplement; before it they
    /// were listed without the prefix and with no scope, so every call was
    /// refused.
    #[test]
    fn devops_routes_have_their_rest_prefix_and_forge_scopes() {
        let write = scopes(&["write:build-info:jira"]);
        assert_eq!(check("POST", "/rest/builds/0.1/bulk", &write).unwrap().template, "/rest/builds/0.1/bulk");
        assert!(find("POST", "/builds/0.1/bulk").is_none());
        assert_eq!(
            check("DELETE", "/rest/builds/0.1/bulkByProperties?cloudId=c", &write).unwrap_err(),
            ScopeRefusal::Missing {
                method: "DELETE".into(),
                template: "/rest/builds/0.1/bulkByProperties".into(),
                alternatives: vec!["delete:build-info:jira".into()],
            }
        );
        let gating = "/rest/deployments/0.1/pipelines/p/environments/e/deployments/7/gating-status";
        assert_eq!(
            check("GET", gating, &scopes(&["read:deployment-info:jira"])).unwrap().template,
            "/rest/deployments/0.1/pipelines/{pipelineId}/environments/{environmentId}/deployments/{deploymentSequenceNumber}/gating-status"
        );
        assert!(
            check("POST", "/rest/deployments/0.1/bulk", &scopes(&["write:deployment-info:jira"])).is_ok()
        );
        assert!(check("POST", "/rest/devinfo/0.10/bulk", &scopes(&["write:dev-info:jira"])).is_ok());
    }

    #[test]
    fn unknown_routes_are_refused_and_named() {
        let all = scopes(&["read:jira-work", "write:jira-work", "manage:jira-configuration"]);
        for (method, path) in [
            ("GET", "/rest/api/3/not-a-route"),
            ("GET", "/rest/api/3/issue/KILN-1/../../serverInfo"),
            ("GET", "/rest/api/3/issue/%2e%2e/serverInfo"),
            ("GET", "/rest/api/3/issue/a%2Fb"),
            ("GET", "/rest/api/3/issue/.\\x"),
            ("GET", "/rest/internal/2/anything"),
            ("TRACE", "/rest/api/3/issue/KILN-1"),
            ("GET", "/"),
        ] {
            let err = check(method, path, &all).unwrap_err();
            assert!(matches!(err, ScopeRefusal::Unmapped { .. }), "{method} {path}: {err}");
        }
    }
}
