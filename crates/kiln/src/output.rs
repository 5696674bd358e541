//! How outcomes are shown: readable text by default, JSON with `--format json`.

use std::fmt::Write;

use kiln_apps::{DeployOutcome, InstallOutcome, UpgradePlan, VersionListing};
use kiln_manifest::{Grants, VersionChange};
use kiln_store::VersionOrigin;
use serde::Serialize;

/// A notice about something Kiln did on its own (made a key file, a
/// certificate): on standard error, or as a log event once a command
/// (`kiln serve`) writes its output as logs, so that every line there
/// stays one log record.
pub(crate) fn notice(message: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::info!("{message}");
    } else {
        eprintln!("notice: {message}");
    }
}

/// A warning that does not stop the command; see [`notice`].
pub(crate) fn warning(message: &str) {
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{message}");
    } else {
        eprintln!("warning: {message}");
    }
}

/// Write command output on standard output (what `say!` and `say_raw!`
/// expand to). A closed pipe (`kiln audit log | head`) ends the process
/// quietly with status 0, as SIGPIPE ends other command-line tools, instead
/// of the panic `println!` gives. Kiln does not restore SIGPIPE itself: the
/// server must outlive a worker's closed socket.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| if newline { out.write_all(b"\n") } else { Ok(()) });
    if let Err(e) = written.and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for command output; see [`write_stdout`].
macro_rules! say {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*), true) };
}

/// `print!` for command output; see [`write_stdout`].
macro_rules! say_raw {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*), false) };
}

pub(crate) use {say, say_raw};

pub(crate) fn json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => say!("{text}"),
        Err(e) => eprintln!("error: cannot encode the result as JSON: {e}"),
    }
}

pub(crate) fn deploy(o: &DeployOutcome) -> String {
    let mut s = String::new();
    let kind = match &o.origin {
        VersionOrigin::Initial => "the first version".to_owned(),
        VersionOrigin::Change { change: VersionChange::Minor } => {
            "minor: the permissions are unchanged, so it rolls out automatically".to_owned()
        }
        VersionOrigin::Change { change: VersionChange::Major(_) } => {
            "major: the permissions change, so each site's admin must consent".to_owned()
        }
    };
    let verb = if o.stored { "Deployed" } else { "Dry run: would deploy" };
    let _ = writeln!(s, "{verb} version {} of {} to {} ({kind}).", o.version, o.app, o.environment);
    if let VersionOrigin::Change { change: VersionChange::Major(reasons) } = &o.origin {
        let previous = o.previous.map(|v| v.to_string()).unwrap_or_default();
        let _ = writeln!(s, "  Major because, compared with {previous}, the manifest:");
        for r in reasons {
            let _ = writeln!(s, "    - {r}");
        }
    }
    let _ = writeln!(s, "  Bundle {} ({} modules, {})", o.bundle, o.modules, size(o.source_bytes));
    if o.stored {
        if !o.rolled_out.is_empty() {
            let _ = writeln!(s, "  Rolled out automatically to:");
            for m in &o.rolled_out {
                let _ = writeln!(s, "    - {} ({}): {} -> {}", m.site, m.product, m.from, m.to);
            }
        }
    } else if !o.rolled_out.is_empty() {
        let _ = writeln!(s, "  Would roll out automatically to {} installation(s).", o.rolled_out.len());
    }
    if !o.pending.is_empty() {
        let _ = writeln!(
            s,
            "  Needs 'kiln upgrade --site SITE -e {}' and the admin's consent on:",
            o.environment
        );
        for p in &o.pending {
            let _ = writeln!(s, "    - {} ({}), running {}", p.site, p.product, p.version);
        }
    }
    if !o.stored {
        let _ = writeln!(s, "Nothing was stored.");
    }
    s
}

pub(crate) fn install(o: &InstallOutcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Installed version {} of {} on {} ({}) in {}.",
        o.version, o.app, o.site, o.product, o.environment
    );
    let _ = writeln!(s, "  Installation id: {}", o.installation);
    let _ = write!(s, "{}", grants(&o.grants, "  "));
    s
}

pub(crate) fn upgrade_plan(p: &UpgradePlan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Upgrade {} ({}) from {} to {}.", p.site, p.product, p.from, p.to);
    if !p.changes.is_empty() {
        let _ = writeln!(s, "  Permission changes:");
        for c in &p.changes {
            let _ = writeln!(s, "    - {c}");
        }
    }
    if p.needs_consent.is_empty() {
        let _ = writeln!(s, "  No new permissions are needed.");
    } else {
        let _ = writeln!(s, "  New permissions that need the admin's consent:");
        for c in &p.needs_consent {
            let _ = writeln!(s, "    - {c}");
        }
    }
    s
}

pub(crate) fn versions(l: &VersionListing) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} in {}", l.app, l.environment);
    let _ = writeln!(
        s,
        "{:<9} {:<7} {:<20} {:<14} INSTALLATIONS",
        "VERSION", "CHANGE", "DEPLOYED (UTC)", "BUNDLE"
    );
    for v in &l.versions {
        let change = match &v.origin {
            VersionOrigin::Initial => "first",
            VersionOrigin::Change { change: VersionChange::Minor } => "minor",
            VersionOrigin::Change { change: VersionChange::Major(_) } => "major",
        };
        let installs = if v.installations.is_empty() {
            "-".to_owned()
        } else {
            v.installations
                .iter()
                .map(|i| match i.pending {
                    Some(p) => format!("{} ({}) [upgrade to {p} pending]", i.site, i.product),
                    None => format!("{} ({})", i.site, i.product),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "{:<9} {:<7} {:<20} {:<14} {installs}",
            v.version.to_string(),
            change,
            utc(v.created_at),
            v.bundle.short()
        );
    }
    s
}

fn grants(g: &Grants, indent: &str) -> String {
    let mut s = String::new();
    let scopes: Vec<String> = g
        .scopes
        .iter()
        .map(
            |(k, v)| {
                if v.allow_impersonation { format!("{k} (offline impersonation)") } else { k.to_string() }
            },
        )
        .collect();
    let scopes = if scopes.is_empty() { "none".to_owned() } else { scopes.join(", ") };
    let _ = writeln!(s, "{indent}Consented scopes: {scopes}");
    for (kind, entries) in &g.egress {
        let list: Vec<String> = entries.iter().map(|e| e.target.to_string()).collect();
        let _ = writeln!(s, "{indent}Consented {}: {}", kind.manifest_path(), list.join(", "));
    }
    for (key, remote) in &g.remotes {
        let urls: Vec<&str> = remote.base_urls.iter().map(String::as_str).collect();
        let _ = writeln!(s, "{indent}Consented remote {key}: {}", urls.join(", "));
    }
    s
}

fn size(bytes: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "an approximate size for display")]
    let kib = bytes as f64 / 1024.0;
    if kib < 1024.0 { format!("{kib:.1} KiB") } else { format!("{:.1} MiB", kib / 1024.0) }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC from unix milliseconds.
pub(crate) fn utc(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_926_896_000), "2026-11-29 04:34:56");
    }
}
