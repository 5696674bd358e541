//! Prometheus metrics: invocations by kind and outcome, their durations,
//! and how many run now. Rendered in the text exposition format by
//! [`Metrics::render`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the duration histogram's buckets.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's counters. One per process.
#[derive(Debug, Default)]
pub struct Metrics {
    in_flight: AtomicI64,
    /// (kind, outcome) → count; outcome is `ok` or the failure's code.
    invocations: Mutex<BTreeMap<(String, String), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::default()
    }

    pub fn invocation_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// `failure` is the failure's code, `None` for success.
    pub fn invocation_finished(&self, kind: &str, failure: Option<&str>, took: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let outcome = failure.unwrap_or("ok").to_owned();
        let mut counts = self.invocations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry((kind.to_owned(), outcome)).or_default() += 1;
        drop(counts);
        let secs = took.as_secs_f64();
        let mut durations = self.durations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = durations.entry(kind.to_owned()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound
                && let Some(c) = h.counts.get_mut(i)
            {
                *c += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Invocations running now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "# HELP kiln_invocations_in_flight Invocations running now.");
        let _ = writeln!(out, "# TYPE kiln_invocations_in_flight gauge");
        let _ = writeln!(out, "kiln_invocations_in_flight {}", self.in_flight());
        let _ = writeln!(out, "# HELP kiln_invocations_total Invocations finished, by module kind and outcome.");
        let _ = writeln!(out, "# TYPE kiln_invocations_total counter");
        let counts = self.invocations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((kind, outcome), n) in counts.iter() {
            let _ = writeln!(out, "kiln_invocations_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}");
        }
        drop(counts);
        let _ = writeln!(out, "# HELP kiln_invocation_duration_seconds How long invocations took, by module kind.");
        let _ = writeln!(out, "# TYPE kiln_invocation_duration_seconds histogram");
        let durations = self.durations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (kind, h) in durations.iter() {
            for (bound, n) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(out, "kiln_invocation_duration_seconds_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "kiln_invocation_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "kiln_invocation_duration_seconds_sum{{kind=\"{kind}\"}} {}", h.sum);
            let _ = writeln!(out, "kiln_invocation_duration_seconds_count{{kind=\"{kind}\"}} {}", h.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_buckets_appear_in_the_exposition() {
        let m = Metrics::new();
        m.invocation_started();
        m.invocation_finished("webtrigger", None, Duration::from_millis(3));
        m.invocation_started();
        m.invocation_finished("webtrigger", Some("TIME_OUT"), Duration::from_secs(2));
        m.invocation_started();
        let text = m.render();
        assert!(text.contains("kiln_invocations_in_flight 1"), "{text}");
        assert!(text.contains("kiln_invocations_total{kind=\"webtrigger\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("kiln_invocations_total{kind=\"webtrigger\",outcome=\"TIME_OUT\"} 1"), "{text}");
        assert!(text.contains("kiln_invocation_duration_seconds_bucket{kind=\"webtrigger\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("kiln_invocation_duration_seconds_bucket{kind=\"webtrigger\",le=\"5\"} 2"), "{text}");
        assert!(text.contains("kiln_invocation_duration_seconds_count{kind=\"webtrigger\"} 2"), "{text}");
    }
}
