//! Whether an app may send a request to a URL: the name check made before
//! anything is resolved. (The address check, [`crate::addr`], follows it on
//! every resolved address.)

use kiln_manifest::{EgressTarget, is_strict_subdomain};

/// The ports Forge lets apps reach.
pub const ALLOWED_PORTS: [u16; 10] = [80, 8080, 443, 8443, 8444, 7990, 8089, 8090, 8085, 8060];

/// A request's destination, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Lower case, IDNA-encoded; an IP literal without brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, as sent.
    pub path_and_query: String,
    /// Whether the host is an IP literal rather than a name.
    pub ip_literal: bool,
}

/// Why a destination is refused before anything is resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0:?} is not a URL: {1}")]
    NotAUrl(String, String),
    #[error("only https URLs may be fetched, not {0}:")]
    Scheme(String),
    #[error("URLs with a user name or password are refused; send credentials in headers")]
    UserInfo,
    #[error("the host {0:?} has an empty label; write the name as api.example.com")]
    EmptyLabel(String),
    #[error(
        "port {0} is not one apps may reach (allowed: 80, 8080, 443, 8443, 8444, 7990, 8089, 8090, 8085, 8060)"
    )]
    Port(u16),
    #[error("URL not included in the external fetch backend permissions: {0}")]
    NotDeclared(String),
}

impl Destination {
    /// Parse `url`: https only, no user-info (not even an empty one), a
    /// host without empty labels, an allowed port.
    pub fn parse(url: &str) -> Result<Destination, Refused> {
        let parsed = url::Url::parse(url)
            .map_err(|e| Refused::NotAUrl(url.chars().take(200).collect(), e.to_string()))?;
        if parsed.scheme() != "https" {
            return Err(Refused::Scheme(parsed.scheme().to_owned()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() || authority_has_at(url) {
            return Err(Refused::UserInfo);
        }
        let (host, ip_literal) = match parsed.host() {
            Some(url::Host::Domain(d)) => {
                // One trailing dot is the absolute form of the same name;
                // any other empty label is not a name DNS can hold, yet
                // `a..example.com` would pass a `*.example.com` suffix test.
                let name = d.strip_suffix('.').unwrap_or(d);
                if name.split('.').any(str::is_empty) {
                    return Err(Refused::EmptyLabel(d.chars().take(200).collect()));
                }
                (name.to_ascii_lowercase(), false)
            }
            Some(url::Host::Ipv4(a)) => (a.to_string(), true),
            Some(url::Host::Ipv6(a)) => (a.to_string(), true),
            None => return Err(Refused::NotAUrl(url.chars().take(200).collect(), "no host".into())),
        };
        let port = parsed.port_or_known_default().unwrap_or(443);
        if !ALLOWED_PORTS.contains(&port) {
            return Err(Refused::Port(port));
        }
        let path_and_query = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        Ok(Destination { host, port, path_and_query, ip_literal })
    }

    /// Whether the installation's consented egress allows this host.
    /// Remotes and schemes are not fetch backends and never match; an IP
    /// literal matches only `*` (which still never opens a non-public
    /// address: that is the address check's to refuse).
    pub fn allowed_by(&self, consented: &[EgressTarget]) -> Result<(), Refused> {
        let ok = consented.iter().any(|t| match t {
            EgressTarget::Any => true,
            EgressTarget::Host(h) => {
                !self.ip_literal && h.trim_end_matches('.').eq_ignore_ascii_case(&self.host)
            }
            EgressTarget::Subdomains(d) => {
                !self.ip_literal
                    && is_strict_subdomain(&self.host, &d.trim_end_matches('.').to_ascii_lowercase())
            }
            EgressTarget::Remote(_) | EgressTarget::Scheme(_) => false,
        });
        if ok { Ok(()) } else { Err(Refused::NotDeclared(self.host.clone())) }
    }
}

/// Whether the authority of the https URL `raw`, found as the URL parser
/// finds it, holds an `@`. The parser drops an empty user-info
/// (`https://@host/`, `https://:@host/`) without a trace, but such a URL
/// is still one with user-info, and is refused like the others.
fn authority_has_at(raw: &str) -> bool {
    // The parser skips tabs and newlines anywhere; in a special scheme a
    // backslash is a slash, so the authority ends at the first of `/ \ ? #`.
    let cleaned: String = raw.chars().filter(|c| !matches!(c, '\t' | '\n' | '\r')).collect();
    let Some((_scheme, rest)) = cleaned.split_once(':') else {
        return false;
    };
    let authority = rest.trim_start_matches(['/', '\\']);
    authority.split(['/', '\\', '?', '#']).next().is_some_and(|a| a.contains('@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> EgressTarget {
        EgressTarget::Host(h.into())
    }

    #[test]
    fn only_https_urls_to_allowed_ports_without_credentials_parse() {
        let d = Destination::parse("https://API.Example.com./v1/x?y=1").unwrap();
        assert_eq!(
            (d.host.as_str(), d.port, d.path_and_query.as_str()),
            ("api.example.com", 443, "/v1/x?y=1")
        );
        assert_eq!(Destination::parse("https://example.com:8443/").unwrap().port, 8443);
        assert_eq!(Destination::parse("https://bücher.example/").unwrap().host, "xn--bcher-kva.example");
        assert!(Destination::parse("https://[::1]/").unwrap().ip_literal);
        // A backslash ends the authority, so the `@` is in the path, not user-info.
        assert_eq!(Destination::parse("https://example.com\\@evil.test/").unwrap().host, "example.com");
        assert_eq!(Destination::parse("https://example.com/a@b?c@d").unwrap().host, "example.com");
        for (bad, want) in [
            ("http://example.com/", "only https"),
            ("ftp://example.com/", "only https"),
            ("file:///etc/passwd", "only https"),
            ("https://user:pw@example.com/", "user name or password"),
            ("https://user@example.com/", "user name or password"),
            ("https://@example.com/", "user name or password"),
            ("https://:@example.com/", "user name or password"),
            ("https://.example.com/", "empty label"),
            ("https://a..example.com/", "empty label"),
            ("https://example.com../", "empty label"),
            ("https://example.com:22/", "port 22"),
            ("https://example.com:6379/", "port 6379"),
            ("not a url", "not a URL"),
            ("https://", "not a URL"),
        ] {
            let err = Destination::parse(bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn hosts_match_as_forge_declares_them() {
        let consented = [host("api.example.com"), EgressTarget::Subdomains("hooks.example.org".into())];
        let allowed = |url: &str| Destination::parse(url).unwrap().allowed_by(&consented);
        assert!(allowed("https://api.example.com/x").is_ok());
        assert!(allowed("https://API.EXAMPLE.COM/x").is_ok());
        assert!(allowed("https://a.hooks.example.org/").is_ok());
        assert!(allowed("https://a.b.hooks.example.org/").is_ok());
        for refused in [
            "https://hooks.example.org/",        // *.domain is subdomains only
            "https://example.com/",              // not the parent
            "https://api.example.com.evil.net/", // suffix tricks
            "https://evilapi.example.com/",
            "https://xhooks.example.org/",
            "https://93.184.215.14/", // an IP literal is not a declared name
        ] {
            let err = allowed(refused).unwrap_err();
            assert!(matches!(err, Refused::NotDeclared(_)), "{refused}");
        }
        assert!(Destination::parse("https://1.2.3.4/").unwrap().allowed_by(&[EgressTarget::Any]).is_ok());
        assert!(
            Destination::parse("https://x.com/")
                .unwrap()
                .allowed_by(&[EgressTarget::Remote("x".into())])
                .is_err()
        );
        assert!(Destination::parse("https://x.com/").unwrap().allowed_by(&[]).is_err());
    }
}
