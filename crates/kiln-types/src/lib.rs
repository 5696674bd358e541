//! Domain identifiers shared by every Kiln crate.
//!
//! Each type here is parsed once, at the boundary where it enters Kiln (a
//! command-line flag, a manifest, a database row), and is valid from then on:
//! code that holds an [`AppId`] or a [`SiteUrl`] never re-checks it.
//!
//! This crate deliberately holds no I/O, no cryptography and no policy; it
//! only names things.

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value could not become one of the identifiers in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "app id {0:?} is not a Forge app ARI; expected ari:cloud:ecosystem::app/<id> where <id> uses letters, digits, '-', '_' or '.' (at most {MAX_APP_ID_SUFFIX} characters)"
    )]
    AppId(String),
    #[error(
        "environment {0:?} is not valid; use development, staging, production, or a custom name of lower-case letters, digits and '-' (at most {MAX_ENVIRONMENT_LEN} characters, starting with a letter)"
    )]
    Environment(String),
    #[error("site {value:?} is not valid: {reason}")]
    Site { value: String, reason: &'static str },
    #[error("product {0:?} is not supported; use jira or confluence")]
    Product(String),
    #[error("version {0:?} is not valid; expected MAJOR.MINOR.0 such as 2.1.0")]
    Version(String),
    #[error("installation id {0:?} is not valid")]
    InstallationId(String),
}

/// Longest app id suffix accepted after `ari:cloud:ecosystem::app/`.
/// Forge issues UUIDs (36 characters); the bound keeps identifiers out of
/// the megabyte range in logs and database keys.
pub const MAX_APP_ID_SUFFIX: usize = 128;

/// A Forge app identifier, `ari:cloud:ecosystem::app/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppId(String);

const APP_ARI_PREFIX: &str = "ari:cloud:ecosystem::app/";

impl AppId {
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let suffix = value.strip_prefix(APP_ARI_PREFIX).ok_or_else(|| IdError::AppId(value.to_owned()))?;
        let well_formed = !suffix.is_empty()
            && suffix.len() <= MAX_APP_ID_SUFFIX
            && suffix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !suffix.starts_with('.');
        if well_formed { Ok(Self(value.to_owned())) } else { Err(IdError::AppId(value.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after `app/`, usually a UUID.
    pub fn suffix(&self) -> &str {
        self.0.get(APP_ARI_PREFIX.len()..).unwrap_or_default()
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AppId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<AppId> for String {
    fn from(value: AppId) -> Self {
        value.0
    }
}

/// Longest custom environment name.
pub const MAX_ENVIRONMENT_LEN: usize = 30;

/// A deployment environment of an app: `development` (the default),
/// `staging`, `production`, or a custom development environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Environment(String);

impl Environment {
    pub const DEVELOPMENT: &'static str = "development";
    pub const STAGING: &'static str = "staging";
    pub const PRODUCTION: &'static str = "production";

    pub fn parse(value: &str) -> Result<Self, IdError> {
        let mut bytes = value.bytes();
        let starts_with_letter = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
        let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if starts_with_letter && rest_ok && value.len() <= MAX_ENVIRONMENT_LEN {
            Ok(Self(value.to_owned()))
        } else {
            Err(IdError::Environment(value.to_owned()))
        }
    }

    pub fn development() -> Self {
        Self(Self::DEVELOPMENT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Production is where Kiln refuses anything marked insecure.
    pub fn is_production(&self) -> bool {
        self.0 == Self::PRODUCTION
    }
}

impl Default for Environment {
    fn default() -> Self {
        Self::development()
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Environment {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Environment {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Environment> for String {
    fn from(value: Environment) -> Self {
        value.0
    }
}

/// Longest site URL accepted, in bytes.
pub const MAX_SITE_URL_LEN: usize = 2048;

/// The site an app is installed on, normalised to an `https://host[:port]`
/// origin so that `Example.atlassian.net/` and `https://example.atlassian.net`
/// name the same installation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SiteUrl(String);

impl SiteUrl {
    /// Accepts `https://host[:port][/]` or a bare `host[:port]`. Anything that
    /// would make the identity ambiguous (user info, a path, a query, a
    /// fragment) or that would weaken transport security (`http:`) is refused.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let bad = |reason| IdError::Site { value: value.to_owned(), reason };
        if value.len() > MAX_SITE_URL_LEN {
            return Err(bad("it is longer than 2048 bytes"));
        }
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(bad("it is empty; pass the site's address, e.g. https://example.atlassian.net"));
        }
        let with_scheme =
            if trimmed.contains("://") { trimmed.to_owned() } else { format!("https://{trimmed}") };
        let url = url::Url::parse(&with_scheme)
            .map_err(|_| bad("it is not a URL; use e.g. https://example.atlassian.net"))?;
        if url.scheme() != "https" {
            return Err(bad("sites are reached over HTTPS only; use an https:// address"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("it carries user info; remove the 'user@' part"));
        }
        if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
            return Err(bad("it has a path, query or fragment; give only the site's origin"));
        }
        let host = url.host_str().ok_or_else(|| bad("it has no host name"))?;
        let origin = match url.port() {
            Some(port) => format!("https://{host}:{port}"),
            None => format!("https://{host}"),
        };
        Ok(Self(origin))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SiteUrl {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SiteUrl {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<SiteUrl> for String {
    fn from(value: SiteUrl) -> Self {
        value.0
    }
}

/// The product an installation lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    Jira,
    Confluence,
}

impl Product {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jira => "jira",
            Self::Confluence => "confluence",
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Product {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jira" => Ok(Self::Jira),
            "confluence" => Ok(Self::Confluence),
            other => Err(IdError::Product(other.to_owned())),
        }
    }
}

/// An app version. Kiln, like Forge, numbers versions `MAJOR.MINOR.0`:
/// a major version changes what the app may do and needs consent, a minor
/// version only changes code and rolls out by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    pub const FIRST: Version = Version { major: 1, minor: 0 };

    pub fn next_minor(self) -> Self {
        Self { major: self.major, minor: self.minor.saturating_add(1) }
    }

    pub fn next_major(self) -> Self {
        Self { major: self.major.saturating_add(1), minor: 0 }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.0", self.major, self.minor)
    }
}

impl FromStr for Version {
    type Err = IdError;
    /// Accepts `M`, `M.m` and `M.m.0`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdError::Version(s.to_owned());
        let mut parts = s.split('.');
        let number = |part: Option<&str>| -> Result<Option<u32>, IdError> {
            match part {
                None => Ok(None),
                Some(p) if !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().map(Some).map_err(|_| bad())
                }
                Some(_) => Err(bad()),
            }
        };
        let major = number(parts.next())?.ok_or_else(bad)?;
        let minor = number(parts.next())?.unwrap_or(0);
        match number(parts.next())? {
            None | Some(0) => {}
            Some(_) => return Err(bad()),
        }
        if parts.next().is_some() || major == 0 {
            return Err(bad());
        }
        Ok(Self { major, minor })
    }
}

/// A stable public identifier for one installation of an app.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstallationId(String);

impl InstallationId {
    /// Installation ids are lower-case hyphenated UUIDs.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let ok = value.len() == 36
            && value.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
            });
        if ok { Ok(Self(value.to_owned())) } else { Err(IdError::InstallationId(value.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for InstallationId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<InstallationId> for String {
    fn from(value: InstallationId) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_id_accepts_forge_uuid_aris_only() {
        assert!(AppId::parse("ari:cloud:ecosystem::app/4b4b3e2c-8a47-4d39-9b0c-0f5c3f0e8d11").is_ok());
        for bad in [
            "",
            "ari:cloud:ecosystem::app/",
            "ari:cloud:ecosystem::app/../etc",
            "ari:cloud:ecosystem::app/a b",
            "ari:cloud:jira::site/123",
            "4b4b3e2c-8a47-4d39-9b0c-0f5c3f0e8d11",
        ] {
            assert!(AppId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("{APP_ARI_PREFIX}{}", "a".repeat(MAX_APP_ID_SUFFIX + 1));
        assert!(AppId::parse(&long).is_err());
    }

    #[test]
    fn site_urls_normalise_to_https_origins() {
        let cases = [
            ("example.atlassian.net", "https://example.atlassian.net"),
            ("https://Example.Atlassian.net/", "https://example.atlassian.net"),
            ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
            ("https://[::1]:8443/", "https://[::1]:8443"),
        ];
        for (input, want) in cases {
            assert_eq!(SiteUrl::parse(input).map(|s| s.0), Ok(want.to_owned()), "{input}");
        }
        for bad in [
            "http://example.atlassian.net",
            "https://user@example.atlassian.net",
            "https://example.atlassian.net/wiki",
            "https://example.atlassian.net/?a=b",
            "javascript:alert(1)",
            "",
            "   ",
        ] {
            assert!(SiteUrl::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn versions_parse_in_the_three_forms_forge_prints() {
        let v: Version = "2.3.0".parse().unwrap_or(Version::FIRST);
        assert_eq!(v, Version { major: 2, minor: 3 });
        assert_eq!("4".parse::<Version>(), Ok(Version { major: 4, minor: 0 }));
        assert_eq!("4.1".parse::<Version>(), Ok(Version { major: 4, minor: 1 }));
        for bad in ["0.1.0", "1.2.3", "1..0", "a.b", "1.2.0.0", "", "99999999999"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert_eq!(Version::FIRST.next_minor().to_string(), "1.1.0");
        assert_eq!(Version { major: 1, minor: 7 }.next_major().to_string(), "2.0.0");
    }

    #[test]
    fn environments_follow_forge_naming() {
        for good in ["development", "staging", "production", "feature-x1"] {
            assert!(Environment::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "Dev", "1dev", "dev env", "dev_env", &"a".repeat(31)] {
            assert!(Environment::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_round_trip_through_serde_and_refuse_bad_input() {
        let id = AppId::parse("ari:cloud:ecosystem::app/abc").ok();
        let json = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(json, "\"ari:cloud:ecosystem::app/abc\"");
        assert!(serde_json::from_str::<AppId>("\"nope\"").is_err());
        assert!(serde_json::from_str::<SiteUrl>("\"http://x.example\"").is_err());
        assert!(InstallationId::parse("0f0e0d0c-0b0a-4908-8706-050403020100").is_ok());
        assert!(InstallationId::parse("0F0E0D0C-0B0A-4908-8706-050403020100").is_err());
    }
}
