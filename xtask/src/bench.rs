//! `cargo xtask bench [--seconds N] [--only requests|events|messages|webhooks|neighbours] [--baseline-daemon PATH]`:
//!
//! - requests: `GET /api/v1/sessions` (one organization, 10 sessions, api-key auth) over
//!   keep-alive connections, through the embedded host and through a native server that runs
//!   the same `shared` auth and store code without WASM. The two alternate in rounds within one
//!   run, so machine noise hits both alike.
//! - events: publish → SSE receive latency through the host (see [`crate::event_latency`]).
//! - messages: send latency and accepted sends per second (see [`crate::send_bench`]); with
//!   `--baseline-daemon`, the send latency of that build of the daemon too (the previous
//!   commit's, say), in alternating rounds within the run, and the ratio.
//! - webhooks: delivery latency and deliveries per second to one endpoint (see
//!   [`crate::webhook_bench`]).
//! - neighbours: another organization's reads while one floods the host (see
//!   [`crate::neighbour_bench`]).

use crate::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use shared::auth::{Capability, Fetch};
use shared::config::Variables;
use std::convert::Infallible;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const CONNECTIONS: usize = 16;
const SESSIONS: usize = 10;
pub const ROUNDS: usize = 3;
const PATH: &str = "/api/v1/sessions";

pub async fn run(args: &[String]) -> Result {
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(6);
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).map(String::as_str);
    let baseline = args.iter().position(|a| a == "--baseline-daemon").and_then(|i| args.get(i + 1)).map(std::path::PathBuf::from);
    let redis_url = crate::prereq::redis_url();
    crate::prereq::ensure_redis(&redis_url).await?;
    crate::prereq::build()?;

    let redis = shared::redis::native::connect(&redis_url).await?;
    let org = format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase());
    let key = seed(&redis, &org).await?;

    let host_addr = free_addr().await?;
    let mut host = crate::prereq::host_command(&redis_url, &host_addr)
        .env("RUST_LOG", "warn")
        // The throughput of sends fills one outbox for the whole run.
        .env("SPIN_VARIABLE_MESSAGE_QUEUE_MAX", "100000000")
        // The webhook receiver listens on a loopback port of this process.
        .env("SPIN_VARIABLE_WEBHOOK_ALLOW_PRIVATE", "true")
        .spawn()?;
    crate::prereq::wait_for_port(&host_addr).await?;
    let wants = |part: &str| only.is_none_or(|o| o == part);
    if wants("requests") {
        requests(&redis_url, &host_addr, &key, seconds).await?;
    }
    if wants("events") {
        let session = shared::store::list(&redis, &org).await?.remove(0).id;
        let mut latencies = crate::event_latency::measure(&host_addr, &key, &redis, &org, &session).await?;
        let stats = Stats::of(&mut latencies, Duration::ZERO);
        println!(
            "event latency, publish → SSE client through the host, {} events: p50 {}, p99 {}, max {}",
            latencies.len(), ms(stats.p50), ms(stats.p99), ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        );
    }
    if wants("messages") {
        let sender = shared::apikey::mint();
        shared::apikey::create(&redis, &sender, &org, vec![Capability::Manage, Capability::Send, Capability::Read], Some("bench".into())).await?;
        crate::send_bench::run(&host_addr, &redis_url, &redis, &org, &sender, seconds, baseline.as_deref()).await?;
    }
    if wants("webhooks") {
        crate::webhook_bench::run(&host_addr, &redis_url, &redis, &org, &key).await?;
    }
    if wants("neighbours") {
        crate::neighbour_bench::run(&host_addr, host.id(), &redis, &key, seconds).await?;
    }
    host.kill()?;
    host.wait()?;
    cleanup(&redis, &org).await?;
    Ok(())
}

/// The host against the native baseline, alternating rounds.
async fn requests(redis_url: &str, host_addr: &str, key: &str, seconds: u64) -> Result {
    // The baseline runs in its own process, like the host, so neither shares the load
    // generator's runtime.
    let native_addr = free_addr().await?;
    // The binary `build` just linked (this running one may have been replaced by it).
    let mut native = std::process::Command::new(crate::prereq::root().join("target/release/xtask"))
        .args(["native-baseline", &native_addr])
        .env("REDIS_URL", redis_url)
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    crate::prereq::wait_for_port(&native_addr).await?;

    let round = Duration::from_secs(seconds.max(ROUNDS as u64) / ROUNDS as u64);
    println!("GET {PATH}: {SESSIONS} sessions, {CONNECTIONS} keep-alive connections, {ROUNDS} alternating rounds of {round:?} per side");
    let (mut host_lat, mut native_lat) = (Vec::new(), Vec::new());
    let (mut host_time, mut native_time) = (Duration::ZERO, Duration::ZERO);
    let list = Probe { method: "GET", path: PATH.to_owned(), body: String::new(), expect: 200 };
    load(host_addr, key, Duration::from_millis(500), &list).await?; // warm both before measuring
    load(&native_addr, key, Duration::from_millis(500), &list).await?;
    for _ in 0..ROUNDS {
        host_lat.extend(load(host_addr, key, round, &list).await?);
        host_time += round;
        native_lat.extend(load(&native_addr, key, round, &list).await?);
        native_time += round;
    }
    native.kill()?;
    native.wait()?;

    let host_stats = Stats::of(&mut host_lat, host_time);
    let native_stats = Stats::of(&mut native_lat, native_time);
    println!("{:<18}{:>10}{:>12}{:>12}", "", "req/s", "p50", "p99");
    host_stats.print("embedded host");
    native_stats.print("native baseline");
    println!(
        "host/native: throughput {:.2}, p50 {:.2}x, p99 {:.2}x",
        host_stats.rps / native_stats.rps,
        host_stats.p50.as_secs_f64() / native_stats.p50.as_secs_f64(),
        host_stats.p99.as_secs_f64() / native_stats.p99.as_secs_f64(),
    );
    Ok(())
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub struct Stats {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Stats {
    pub fn of(latencies: &mut [Duration], elapsed: Duration) -> Stats {
        latencies.sort();
        let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or_default();
        Stats { rps: latencies.len() as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE), p50: at(0.50), p99: at(0.99) }
    }

    fn print(&self, name: &str) {
        println!("{name:<18}{:>10.0}{:>12}{:>12}", self.rps, ms(self.p50), ms(self.p99));
    }
}

async fn seed(redis: &ConnectionManager, org: &str) -> Result<String> {
    for i in 0..SESSIONS {
        let new = shared::validate::new_session(format!(r#"{{"label":"bench {i}"}}"#).as_bytes())?;
        shared::store::create(redis, &new.into_session(org, None, shared::time::now_millis()), u64::MAX, None, shared::event_log::Retention::default()).await?;
    }
    let key = shared::apikey::mint();
    shared::apikey::create(redis, &key, org, vec![Capability::Manage], Some("bench".into())).await?;
    Ok(key)
}

pub async fn cleanup(redis: &ConnectionManager, org: &str) -> Result {
    // Removed directly rather than through `store::delete`, which would queue cleanup commands
    // for a daemon: the bench's sessions never ran anywhere.
    let mut redis = redis.clone();
    for session in shared::store::list(&redis, org).await? {
        redis.del::<_, ()>(shared::keys::session_owner(&session.id)).await?;
    }
    for key in shared::apikey::list(&redis, org).await? {
        shared::apikey::revoke(&redis, org, &key.id).await?;
    }
    let mut org_keys: Vec<String> = Vec::new();
    let mut found = redis.scan_match::<_, String>(shared::keys::session(org, "*").replace(":session:*", ":*")).await?;
    while let Some(key) = found.next_item().await {
        org_keys.push(key);
    }
    drop(found);
    redis.del::<_, ()>(org_keys).await?;
    Ok(())
}

/// A simulator-backed connector daemon of the bench's own (its gateway id and data directory),
/// removed with what it kept in Redis when stopped.
pub struct BenchDaemon {
    gateway: String,
    data: std::path::PathBuf,
    child: std::process::Child,
}

impl BenchDaemon {
    pub fn start(redis_url: &str, settings: &[(&str, &str)]) -> Result<BenchDaemon> {
        BenchDaemon::start_at(&crate::prereq::root().join("target/release/connector-daemon"), redis_url, settings)
    }

    /// A daemon of the build at `binary`.
    pub fn start_at(binary: &std::path::Path, redis_url: &str, settings: &[(&str, &str)]) -> Result<BenchDaemon> {
        let gateway = format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase());
        let data = crate::prereq::root().join("target/bench").join(&gateway);
        let child = crate::prereq::daemon_command_at(binary, redis_url)
            .env("BACKEND", "simulator")
            .env("GATEWAY_ID", &gateway)
            .env("DATA_DIR", &data)
            .env("RUST_LOG", "warn")
            .envs(settings.iter().copied())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        Ok(BenchDaemon { gateway, data, child })
    }

    pub async fn stop(mut self, redis: &ConnectionManager) -> Result {
        self.child.kill()?;
        self.child.wait()?;
        let mut redis = redis.clone();
        let gateway = &self.gateway;
        redis.del::<_, ()>(&[shared::keys::gateway_alive(gateway), shared::keys::gateway_sessions(gateway), shared::keys::gateway_commands(gateway)]).await?;
        redis.srem::<_, _, ()>(shared::keys::gateways(), gateway).await?;
        let _ = std::fs::remove_dir_all(&self.data);
        Ok(())
    }
}

async fn free_addr() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?.to_string())
}

/// The baseline serves api-keys only: no JWKS to fetch, no settings to read.
struct ApiKeysOnly;

impl Fetch for ApiKeysOnly {
    async fn get_text(&self, _url: &str, _max_bytes: usize, _timeout_ms: u64) -> std::result::Result<String, String> {
        Err("the native baseline serves api-keys only".into())
    }
}

impl Variables for ApiKeysOnly {
    async fn get(&self, _name: &str) -> Option<String> {
        None
    }
}

/// The baseline: what the `sessions` component does for this endpoint, natively.
async fn list_natively(redis: &ConnectionManager, req: &hyper::Request<Incoming>) -> (u16, Vec<u8>) {
    let authorization = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let outcome = async {
        let caller = shared::auth::authenticate(redis, &ApiKeysOnly, &ApiKeysOnly, authorization).await?;
        let org = caller.org_with(Capability::Manage)?;
        let sessions = shared::store::list(redis, org).await?;
        Ok::<_, shared::ApiError>(shared::answer::Page { data: sessions, next_cursor: None })
    };
    match outcome.await {
        Ok(body) => (200, serde_json::to_vec(&body).unwrap_or_default()),
        Err(e) => (e.status(), e.to_json().to_string().into_bytes()),
    }
}

/// `xtask native-baseline ADDR`: the baseline server, run by `bench` as a child process.
pub async fn serve_native(args: &[String]) -> Result {
    let addr = args.first().ok_or("native-baseline needs an address")?;
    let redis = shared::redis::native::connect(&crate::prereq::redis_url()).await?;
    let listener = TcpListener::bind(addr).await?;
    // Like the host: stop when the parent `bench` goes away, however it ends.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    loop {
        let (stream, _) = listener.accept().await?;
        {
            let _ = stream.set_nodelay(true);
            let redis = redis.clone();
            let service = hyper::service::service_fn(move |req| {
                let redis = redis.clone();
                async move {
                    let (status, body) = list_natively(&redis, &req).await;
                    let response = hyper::Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(body)));
                    Ok::<_, Infallible>(response.unwrap_or_default())
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    }
}

/// The one request a load repeats, and the status it must answer.
pub struct Probe {
    pub method: &'static str,
    pub path: String,
    pub body: String,
    pub expect: u16,
}

/// Drives `CONNECTIONS` keep-alive connections for `duration`, each repeating `probe`; returns
/// every request's latency.
pub async fn load(addr: &str, key: &str, duration: Duration, probe: &Probe) -> Result<Vec<Duration>> {
    load_with(addr, key, duration, probe, CONNECTIONS).await
}

/// [`load`] over `connections` connections.
pub async fn load_with(addr: &str, key: &str, duration: Duration, probe: &Probe, connections: usize) -> Result<Vec<Duration>> {
    let deadline = Instant::now() + duration;
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (addr, auth) = (addr.to_owned(), format!("Bearer {key}"));
        let (method, path, body, expect) = (probe.method, probe.path.clone(), Bytes::from(probe.body.clone()), probe.expect);
        workers.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let request = hyper::Request::builder()
                    .method(method)
                    .uri(&path)
                    .header(http::header::HOST, &addr)
                    .header(http::header::AUTHORIZATION, &auth)
                    .body(Full::new(body.clone()))?;
                let started = Instant::now();
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                if status != expect {
                    return Err(format!("{addr} answered {status}").into());
                }
                latencies.push(started.elapsed());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies)
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await?.map_err(|e| e.to_string())?);
    }
    Ok(all)
}
