//! Prometheus metrics, rendered in the text exposition format (0.0.4) by
//! [`Metrics::render_with`] and served by [`router`] at `GET /metrics`.
//!
//! What is counted:
//! - `kiln_invocations_in_flight`, `kiln_invocations_total{kind,outcome}`,
//!   `kiln_invocation_duration_seconds{kind}` (histogram): every call the
//!   [`Runner`](crate::runner::Runner) makes, whatever module type led to it.
//! - `kiln_http_requests_total{class}`: answers by status class (`2xx`...),
//!   counted by the [`count_http`] middleware.
//! - `kiln_webtrigger_rate_limited_total`: web trigger requests answered 429.
//! - `kiln_egress_decisions_total{outcome}` and
//!   `kiln_product_decisions_total{outcome}`: what `kiln-host` decided for
//!   app code's `fetch` hops and product calls (`allowed`/`denied`), read
//!   from its counters when scraped.
//! - `kiln_sandbox_pools`, `kiln_sandbox_workers{state}`: the worker pools
//!   (`busy`, `idle`), read from the sandbox when scraped;
//!   `kiln_sandbox_idle_workers{serving}`: the idle ones by how they serve
//!   (`reset`, `forked`, `in_place`: in place where a worker could not
//!   take its snapshot).
//! - `kiln_draining`: 1 once the server has been asked to stop.
//!
//! **Where it is served.** On a separate plain-HTTP listener that `kiln
//! serve --metrics-listen 127.0.0.1:9464` opens, loopback only (another
//! address needs `--insecure-metrics-listen-any`): that is how Prometheus
//! and its agents scrape by convention, with no TLS client setup and no
//! admin token to store in the scraper's configuration, while nothing off
//! the host can read it. The numbers are operational (counts by kind and
//! outcome, never an app's, an installation's or a user's identifiers, nor
//! any payload), but they still tell an observer how busy the node is and
//! how often apps are refused, so they are not put on the public HTTPS
//! listener.
//!
//! Label values are fixed strings chosen here or failure codes from the
//! sandbox's closed set; nothing an app or a caller says becomes a label,
//! so the series cannot grow without bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::runner::Runner;

/// Upper bounds (seconds) of the duration histogram's buckets.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// The status classes counted (1xx to 5xx).
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

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
    http: [AtomicU64; CLASSES.len()],
    webtrigger_rate_limited: AtomicU64,
    draining: AtomicBool,
    /// The product-event router's counters, when it runs.
    events: Mutex<Option<Arc<crate::events::EventStats>>>,
}

/// What other parts of the server report, read when the metrics are
/// scraped rather than pushed, so that they need no hook of ours.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sources<'a> {
    pub decisions: Option<&'a kiln_host::DecisionCounts>,
    pub pools: Option<kiln_sandbox::PoolStats>,
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

    /// Count `invocation` as in flight until the returned guard is
    /// finished or dropped; also writes its log line then. A guard dropped
    /// unfinished (its caller went away, e.g. a client hung up) counts as
    /// `CANCELLED`, so the gauge never leaks.
    pub fn start(&self, invocation: Invocation) -> InFlight<'_> {
        self.invocation_started();
        InFlight { metrics: self, invocation, started: Instant::now(), finished: false }
    }

    /// Invocations running now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// One HTTP answer with `status`.
    pub fn http_answered(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).saturating_sub(1);
        if let Some(counter) = self.http.get(class) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One web trigger request refused for its installation's rate limit.
    pub fn webtrigger_rate_limited(&self) {
        self.webtrigger_rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The server has been asked to stop and is finishing what it has.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The text exposition format, with this process's own counters only.
    pub fn render(&self) -> String {
        self.render_with(&Sources::default())
    }

    /// Include the product-event router's counters in every scrape.
    pub fn add_source(&self, events: Arc<crate::events::EventStats>) {
        *self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(events);
    }

    /// The text exposition format, with what `sources` report.
    pub fn render_with(&self, sources: &Sources<'_>) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        family(&mut out, "kiln_invocations_in_flight", "gauge", "Invocations running now.");
        let _ = writeln!(out, "kiln_invocations_in_flight {}", self.in_flight());
        family(
            &mut out,
            "kiln_invocations_total",
            "counter",
            "Invocations finished, by module kind and outcome.",
        );
        let counts = self.invocations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((kind, outcome), n) in counts.iter() {
            let (kind, outcome) = (label(kind), label(outcome));
            let _ = writeln!(out, "kiln_invocations_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}");
        }
        drop(counts);
        family(
            &mut out,
            "kiln_invocation_duration_seconds",
            "histogram",
            "How long invocations took, by module kind.",
        );
        let durations = self.durations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (kind, h) in durations.iter() {
            let kind = label(kind);
            for (bound, n) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "kiln_invocation_duration_seconds_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "kiln_invocation_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "kiln_invocation_duration_seconds_sum{{kind=\"{kind}\"}} {}", h.sum);
            let _ = writeln!(out, "kiln_invocation_duration_seconds_count{{kind=\"{kind}\"}} {}", h.count);
        }
        drop(durations);
        family(&mut out, "kiln_http_requests_total", "counter", "HTTP requests answered, by status class.");
        for (class, n) in CLASSES.iter().zip(self.http.iter()) {
            let _ =
                writeln!(out, "kiln_http_requests_total{{class=\"{class}\"}} {}", n.load(Ordering::Relaxed));
        }
        family(
            &mut out,
            "kiln_webtrigger_rate_limited_total",
            "counter",
            "Web trigger requests refused for their installation's rate limit.",
        );
        let _ = writeln!(
            out,
            "kiln_webtrigger_rate_limited_total {}",
            self.webtrigger_rate_limited.load(Ordering::Relaxed)
        );
        if let Some(d) = sources.decisions {
            let ((egress_ok, egress_no), (product_ok, product_no)) = (d.egress(), d.product());
            family(
                &mut out,
                "kiln_egress_decisions_total",
                "counter",
                "App fetch hops, allowed or denied by the egress policy.",
            );
            let _ = writeln!(out, "kiln_egress_decisions_total{{outcome=\"allowed\"}} {egress_ok}");
            let _ = writeln!(out, "kiln_egress_decisions_total{{outcome=\"denied\"}} {egress_no}");
            family(
                &mut out,
                "kiln_product_decisions_total",
                "counter",
                "App product calls, allowed or refused by the product gateway.",
            );
            let _ = writeln!(out, "kiln_product_decisions_total{{outcome=\"allowed\"}} {product_ok}");
            let _ = writeln!(out, "kiln_product_decisions_total{{outcome=\"denied\"}} {product_no}");
        }
        if let Some(p) = sources.pools {
            family(
                &mut out,
                "kiln_sandbox_pools",
                "gauge",
                "Worker pools (one per app, bundle and set of variables).",
            );
            let _ = writeln!(out, "kiln_sandbox_pools {}", p.pools);
            family(&mut out, "kiln_sandbox_workers", "gauge", "Sandbox workers, busy or idle.");
            let _ = writeln!(out, "kiln_sandbox_workers{{state=\"busy\"}} {}", p.busy());
            let _ = writeln!(out, "kiln_sandbox_workers{{state=\"idle\"}} {}", p.idle);
            family(
                &mut out,
                "kiln_sandbox_idle_workers",
                "gauge",
                "Idle sandbox workers by how they serve: reset (memory put back after each invocation, the default), forked (a process per invocation) or in_place (a fresh runtime each: a worker that could not reset).",
            );
            let _ = writeln!(out, "kiln_sandbox_idle_workers{{serving=\"reset\"}} {}", p.idle_reset);
            let _ = writeln!(out, "kiln_sandbox_idle_workers{{serving=\"forked\"}} {}", p.idle_forked);
            let _ = writeln!(out, "kiln_sandbox_idle_workers{{serving=\"in_place\"}} {}", p.idle_in_place());
        }
        family(&mut out, "kiln_draining", "gauge", "1 once the server has been asked to stop.");
        let _ = writeln!(out, "kiln_draining {}", u8::from(self.draining.load(Ordering::Relaxed)));
        let events = self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(events) = events {
            out.push_str(&events.render());
        }
        out
    }
}

/// What an invocation is, for its metrics and its log line.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub kind: &'static str,
    pub app: String,
    pub installation: String,
    pub function: String,
}

/// An invocation in flight; see [`Metrics::start`].
#[derive(Debug)]
#[must_use = "an invocation is counted as in flight until the guard is finished or dropped"]
pub struct InFlight<'a> {
    metrics: &'a Metrics,
    invocation: Invocation,
    started: Instant,
    finished: bool,
}

/// The outcome a call that was dropped before it finished counts as.
pub const CANCELLED: &str = "CANCELLED";

impl InFlight<'_> {
    /// The invocation ended: `failure` is the failure's code, `None` for
    /// success.
    pub fn finish(mut self, failure: Option<&str>) {
        self.finished = true;
        self.record(failure);
    }

    fn record(&self, failure: Option<&str>) {
        let took = self.started.elapsed();
        let i = &self.invocation;
        self.metrics.invocation_finished(i.kind, failure, took);
        crate::logging::invocation(
            i.kind,
            &i.app,
            &i.installation,
            &i.function,
            failure.unwrap_or("ok"),
            took,
        );
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.record(Some(CANCELLED));
        }
    }
}

/// A label value as the exposition format writes it.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `GET /metrics`: the runner's metrics, with the host's decisions and the
/// sandbox's pools.
pub fn router(runner: Arc<Runner>) -> Router {
    Router::new().route("/metrics", axum::routing::get(scrape)).with_state(runner)
}

async fn scrape(State(runner): State<Arc<Runner>>) -> Response {
    let sources =
        Sources { decisions: Some(runner.host.decisions()), pools: Some(runner.sandbox.pool_stats()) };
    let mut res = (StatusCode::OK, runner.metrics.render_with(&sources)).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    res
}

/// Middleware counting every answer by status class: add it to the
/// router whose answers count, with `from_fn_with_state(metrics, count_http)`.
pub async fn count_http(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    metrics.http_answered(res.status());
    res
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
        assert!(
            text.contains("kiln_invocations_total{kind=\"webtrigger\",outcome=\"TIME_OUT\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kiln_invocation_duration_seconds_bucket{kind=\"webtrigger\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kiln_invocation_duration_seconds_bucket{kind=\"webtrigger\",le=\"5\"} 2"),
            "{text}"
        );
        assert!(text.contains("kiln_invocation_duration_seconds_count{kind=\"webtrigger\"} 2"), "{text}");
    }

    #[test]
    fn http_classes_rate_limits_pools_and_draining_are_rendered() {
        let m = Metrics::new();
        m.http_answered(StatusCode::OK);
        m.http_answered(StatusCode::CREATED);
        m.http_answered(StatusCode::TOO_MANY_REQUESTS);
        m.webtrigger_rate_limited();
        let pools = kiln_sandbox::PoolStats { pools: 2, workers: 5, idle: 3, idle_reset: 1, idle_forked: 1 };
        let decisions = kiln_host::DecisionCounts::default();
        let text = m.render_with(&Sources { decisions: Some(&decisions), pools: Some(pools) });
        assert!(text.contains("kiln_http_requests_total{class=\"2xx\"} 2"), "{text}");
        assert!(text.contains("kiln_http_requests_total{class=\"4xx\"} 1"), "{text}");
        assert!(text.contains("kiln_http_requests_total{class=\"5xx\"} 0"), "{text}");
        assert!(text.contains("kiln_webtrigger_rate_limited_total 1"), "{text}");
        assert!(text.contains("kiln_egress_decisions_total{outcome=\"denied\"} 0"), "{text}");
        assert!(text.contains("kiln_product_decisions_total{outcome=\"allowed\"} 0"), "{text}");
        assert!(text.contains("kiln_sandbox_workers{state=\"busy\"} 2"), "{text}");
        assert!(text.contains("kiln_sandbox_workers{state=\"idle\"} 3"), "{text}");
        assert!(text.contains("kiln_sandbox_idle_workers{serving=\"reset\"} 1"), "{text}");
        assert!(text.contains("kiln_sandbox_idle_workers{serving=\"forked\"} 1"), "{text}");
        assert!(text.contains("kiln_sandbox_idle_workers{serving=\"in_place\"} 1"), "{text}");
        assert!(text.contains("kiln_draining 0"), "{text}");
        m.set_draining();
        assert!(m.render().contains("kiln_draining 1"));
        // Every sample line is `name{labels} value` under a TYPE line.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn an_invocation_dropped_unfinished_counts_as_cancelled_and_leaves_the_gauge() {
        let m = Metrics::new();
        let invocation = || Invocation {
            kind: "resolver",
            app: "a".into(),
            installation: "i".into(),
            function: "f".into(),
        };
        m.start(invocation()).finish(None);
        drop(m.start(invocation()));
        let text = m.render();
        assert!(text.contains("kiln_invocations_in_flight 0"), "{text}");
        assert!(text.contains("kiln_invocations_total{kind=\"resolver\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("kiln_invocations_total{kind=\"resolver\",outcome=\"CANCELLED\"} 1"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
