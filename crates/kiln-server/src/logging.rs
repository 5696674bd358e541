//! `kiln serve`'s logs: `tracing` events written to standard error, one
//! per line, as JSON (the default, for log shippers) or as text (for a
//! person at a terminal).
//!
//! A JSON line is `{"timestamp": RFC 3339 UTC, "level": "INFO", "fields":
//! {"message": ..., <the event's fields>}, "target": "kiln_server::..."}`.
//! Which events are written is `info` and above unless `KILN_LOG` says
//! otherwise, with `tracing_subscriber`'s target syntax
//! (`KILN_LOG=warn,kiln_server=debug`).
//!
//! What Kiln logs is identifiers, codes, counts and durations: never a
//! payload, a response body, a token, a secret or a variable's value.
//! [`invocation`] is the one line each invocation gets. An app's own
//! `console` output is the app's data and is not written here.
//!
//! This module does not rotate or ship logs (standard error goes where the
//! service manager sends it), and it installs nothing unless asked: the
//! library code only emits events.

use std::str::FromStr;
use std::time::Duration;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// One human-readable line per event.
    Text,
}

/// The environment variable naming which events to write.
pub const FILTER_ENV_VAR: &str = "KILN_LOG";

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error(
        "{FILTER_ENV_VAR}={value:?} is not a filter such as \"info\" or \"warn,kiln_server=debug\": {reason}"
    )]
    Filter { value: String, reason: String },
    #[error("logging is already set up in this process")]
    AlreadySet,
}

/// Write this process's events to standard error in `format`, filtered by
/// `filter` (the value of [`FILTER_ENV_VAR`], if set).
pub fn init(format: LogFormat, filter: Option<&str>) -> Result<(), LoggingError> {
    let targets = targets(filter)?;
    tracing::subscriber::set_global_default(subscriber(format, targets, std::io::stderr))
        .map_err(|_| LoggingError::AlreadySet)
}

fn targets(filter: Option<&str>) -> Result<Targets, LoggingError> {
    match filter.map(str::trim).filter(|f| !f.is_empty()) {
        None => Ok(Targets::new().with_default(tracing::Level::INFO)),
        Some(value) => Targets::from_str(value)
            .map_err(|e| LoggingError::Filter { value: value.to_owned(), reason: e.to_string() }),
    }
}

/// The subscriber [`init`] installs, writing to `writer`.
fn subscriber<W>(format: LogFormat, targets: Targets, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt().with_writer(writer).with_target(true);
    match format {
        LogFormat::Json => {
            // Spans are not used; their lists would only lengthen each line.
            Box::new(builder.json().with_current_span(false).with_span_list(false).finish().with(targets))
        }
        LogFormat::Text => Box::new(builder.finish().with(targets)),
    }
}

/// The one log line of a finished invocation: what ran and how it ended,
/// nothing of what it was given or returned.
pub fn invocation(kind: &str, app: &str, installation: &str, function: &str, outcome: &str, took: Duration) {
    let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    if outcome == "ok" {
        tracing::info!(target: "kiln::invocation", kind, app, installation, function, outcome, duration_ms, "invocation");
    } else {
        tracing::warn!(target: "kiln::invocation", kind, app, installation, function, outcome, duration_ms, "invocation");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code: a panic is a failed test")]

    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(format: LogFormat, filter: Option<&str>, emit: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = subscriber(format, targets(filter).unwrap(), buffer.clone());
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn json_lines_carry_time_level_target_message_and_fields() {
        let lines = lines(LogFormat::Json, None, || {
            invocation(
                "webtrigger",
                "ari:cloud:ecosystem::app/x",
                "inst-1",
                "hook-fn",
                "ok",
                Duration::from_millis(12),
            );
            tracing::debug!("not written at the default level");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{v}");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "kiln::invocation");
        let fields = &v["fields"];
        assert_eq!(fields["message"], "invocation");
        assert_eq!(fields["kind"], "webtrigger");
        assert_eq!(fields["installation"], "inst-1");
        assert_eq!(fields["function"], "hook-fn");
        assert_eq!(fields["outcome"], "ok");
        assert_eq!(fields["duration_ms"], 12);
    }

    #[test]
    fn failures_are_warnings_and_the_filter_chooses_what_is_written() {
        let lines = lines(LogFormat::Json, Some("warn"), || {
            invocation("resolver", "a", "i", "f", "ok", Duration::ZERO);
            invocation("resolver", "a", "i", "f", "TIME_OUT", Duration::from_secs(25));
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!((v["level"].as_str(), v["fields"]["outcome"].as_str()), (Some("WARN"), Some("TIME_OUT")));
        assert!(targets(Some("=nonsense=")).is_err());
    }

    #[test]
    fn text_lines_are_plain() {
        let lines = lines(LogFormat::Text, None, || tracing::info!(port = 8443, "listening"));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("INFO") && lines[0].contains("listening") && lines[0].contains("port=8443"),
            "{lines:?}"
        );
        assert!(!lines[0].contains('\u{1b}'), "no colour codes: {lines:?}");
    }
}
