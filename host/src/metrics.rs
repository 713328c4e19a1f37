//! `GET /metrics` of the embedded host, in Prometheus's text format (the `metrics` facade and
//! its Prometheus exporter): requests by route and status, their latency to the response head,
//! requests in flight, open event streams, idle warm instances per component. Spin has its own
//! telemetry.
//!
//! Never open to whoever reaches the API: the page is served only on an address of its own
//! (`GATEWAY_METRICS_LISTEN`, for a private network) and/or on the API's listener to a bearer
//! token (`GATEWAY_METRICS_TOKEN`). With neither set, nothing is recorded and `/metrics` is an
//! unknown path.
//!
//! Every handle is made once (per route, per status on first use), so counting a request costs
//! a few atomic operations, not a registry lookup with labels built for it.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

/// Latency buckets (seconds): sub-millisecond answers up to the 30 s response timeout.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// The route label of a request no route matched.
pub const NO_ROUTE: &str = "-";

/// Where the page is served: its own listen address, and the token that opens it on the API's
/// listener.
#[derive(Debug, Clone, Default)]
pub struct Exposure {
    pub listen: Option<String>,
    pub token: Option<String>,
}

impl Exposure {
    pub fn from_env() -> Exposure {
        let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Exposure { listen: set("GATEWAY_METRICS_LISTEN"), token: set("GATEWAY_METRICS_TOKEN") }
    }

    pub fn is_served(&self) -> bool {
        self.listen.is_some() || self.token.is_some()
    }
}

pub struct Metrics {
    handle: PrometheusHandle,
    /// The token's hash: comparing hashes takes the same time wherever a wrong guess differs.
    token_hash: Option<[u8; 32]>,
    routes: HashMap<String, Route>,
    in_flight: Gauge,
    open_streams: Gauge,
}

/// One route's handles: its latency, and a counter per status code (made on first use).
struct Route {
    duration: Histogram,
    answers: Vec<OnceLock<Counter>>,
}

impl Metrics {
    /// Installs the process's recorder, with handles for each of `routes`. Histograms are
    /// drained into their buckets every few seconds (and on every scrape).
    pub fn install<'a>(routes: impl Iterator<Item = &'a str>, token: Option<&str>) -> wasmtime::Result<Metrics> {
        let handle = PrometheusBuilder::new().set_buckets(BUCKETS)?.install_recorder()?;
        let upkeep = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        let route = |name: &str| Route {
            duration: histogram!("gateway_http_request_duration_seconds", "route" => name.to_owned()),
            answers: (100..600).map(|_| OnceLock::new()).collect(),
        };
        let routes = routes.chain([NO_ROUTE]).map(|name| (name.to_owned(), route(name))).collect();
        Ok(Metrics {
            handle,
            // Trimmed as a presented token is: a secret file's trailing newline must not lock out.
            token_hash: token.map(|token| shared::secret::sha256(token.trim())),
            routes,
            in_flight: gauge!("gateway_http_requests_in_flight"),
            open_streams: gauge!("gateway_open_event_streams"),
        })
    }

    /// A request answered: `route` is the manifest's route that matched ([`NO_ROUTE`] for none).
    pub fn answered(&self, route: &str, status: u16, elapsed: Duration) {
        let Some(handles) = self.routes.get(route) else { return };
        handles.duration.record(elapsed.as_secs_f64());
        if let Some(slot) = handles.answers.get(usize::from(status).wrapping_sub(100)) {
            slot.get_or_init(|| counter!("gateway_http_requests_total", "route" => route.to_owned(), "status" => status.to_string())).increment(1);
        }
    }

    /// Counts a request while it is being handled (until the guard drops).
    pub fn in_flight(&self) -> Held {
        Held::new(self.in_flight.clone())
    }

    /// Counts an event stream for as long as the guard (owned by its body) lives.
    pub fn open_stream(&self) -> Held {
        Held::new(self.open_streams.clone())
    }

    /// The text a scrape answers, with the instance gauges read now.
    /// Whether the API's listener serves the page to a request with these headers: `None` when
    /// it does not serve it at all (no token configured), else whether the bearer token is right.
    pub fn opens_to(&self, headers: &http::HeaderMap) -> Option<bool> {
        let expected = self.token_hash?;
        let given = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        Some(given.is_some_and(|token| shared::secret::sha256(token.trim()) == expected))
    }

    pub fn render(&self, idle_instances: impl Iterator<Item = (String, usize)>) -> String {
        for (component, idle) in idle_instances {
            gauge!("gateway_instances_idle", "component" => component).set(idle as f64);
        }
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// One unit of a gauge, given back when dropped.
pub struct Held(Gauge);

impl Held {
    fn new(gauge: Gauge) -> Held {
        gauge.increment(1.0);
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
