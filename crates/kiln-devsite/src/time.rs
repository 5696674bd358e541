//! Wall-clock time and the two ISO-8601 forms Atlassian's APIs print:
//! Jira's `2026-11-29T12:00:00.000+0000` and Confluence's
//! `2026-11-29T12:00:00.000Z`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    now_millis() / 1000
}

/// Jira's form: `2026-11-29T12:00:00.000+0000`.
pub(crate) fn jira(millis: u64) -> String {
    format!("{}+0000", utc(millis))
}

/// Confluence's form: `2026-11-29T12:00:00.000Z`.
pub(crate) fn confluence(millis: u64) -> String {
    format!("{}Z", utc(millis))
}

/// `YYYY-MM-DDTHH:MM:SS.mmm` in UTC.
fn utc(millis: u64) -> String {
    let secs = millis / 1000;
    let ms = millis % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_match_jira_and_confluence() {
        assert_eq!(jira(0), "1970-01-01T00:00:00.000+0000");
        assert_eq!(jira(1_795_953_600_000), "2026-11-29T12:00:00.000+0000");
        assert_eq!(confluence(1_795_953_600_123), "2026-11-29T12:00:00.123Z");
        // A leap day and the last millisecond of a year.
        assert_eq!(jira(951_782_400_000), "2000-02-29T00:00:00.000+0000");
        assert_eq!(jira(1_767_225_599_999), "2025-12-31T23:59:59.999+0000");
    }
}
