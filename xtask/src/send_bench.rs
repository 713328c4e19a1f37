//! The messaging half of `cargo xtask bench`, on a session paired with a simulator-backed daemon:
//!
//! - send latency with an idle queue: one `POST …/messages` at a time, from the moment the
//!   request starts to the moment the simulated WhatsApp server holds the message (a blocking
//!   pop of its delivery record);
//! - inbound latency: a simulated phone sends the session a message (an entry on the
//!   simulator's control stream) until an SSE client of `GET /api/v1/events` has parsed its
//!   `message.received`, one at a time;
//! - accepted sends per second through the host: `POST …/messages` over keep-alive connections
//!   while the session is stopped, so the outbox only fills (the host runs with a raised cap).

use crate::Result;
use crate::bench::{Probe, Stats, load, ms};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Messages sent one at a time for the latency figure (within the session's 1,000 a minute).
const LATENCY_MESSAGES: usize = 200;
const SPACING: Duration = Duration::from_millis(5);
/// The number the bench's session pairs with.
const PHONE: &str = "6281100000000";

/// The daemon's settings for the bench: the gateway's own latency, no deliberate pause
/// between sends to one chat.
const SETTINGS: &[(&str, &str)] = &[("SIM_CONNECT_MS", "20"), ("SEND_CHAT_GAP_MS", "0"), ("SEND_JITTER_MS", "0")];

pub async fn run(host: &str, redis_url: &str, redis: &ConnectionManager, org: &str, key: &str, seconds: u64, baseline: Option<&std::path::Path>) -> Result {
    let client = Http { host: host.to_owned(), key: key.to_owned() };
    // The bench measures how fast the gateway accepts, not the organization's quota.
    shared::quota::set(redis, org, shared::quota::MESSAGES_PER_MINUTE, Some(0)).await?;
    let current = crate::prereq::root().join("target/release/connector-daemon");
    // Rounds alternate the builds, so the machine's noise weighs on both alike.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..crate::bench::ROUNDS {
        for (binary, latencies) in [(Some(current.as_path()), &mut ours), (baseline, &mut theirs)] {
            let Some(binary) = binary else { continue };
            let daemon = crate::bench::BenchDaemon::start_at(binary, redis_url, SETTINGS)?;
            let measured = send_latencies(&client, redis, org, LATENCY_MESSAGES / crate::bench::ROUNDS).await;
            daemon.stop(redis).await?;
            latencies.extend(measured?);
        }
    }
    let stats = Stats::of(&mut ours, Duration::ZERO);
    println!("send latency, POST → simulated WhatsApp server, idle queue, {} messages: p50 {}, p99 {}", ours.len(), ms(stats.p50), ms(stats.p99));
    if !theirs.is_empty() {
        let base = Stats::of(&mut theirs, Duration::ZERO);
        println!("  baseline daemon, same rounds, {} messages: p50 {}, p99 {}", theirs.len(), ms(base.p50), ms(base.p99));
        println!("  ratio (this build / baseline): p50 {:.2}, p99 {:.2}", stats.p50.as_secs_f64() / base.p50.as_secs_f64(), stats.p99.as_secs_f64() / base.p99.as_secs_f64());
    }
    let daemon = crate::bench::BenchDaemon::start(redis_url, SETTINGS)?;
    let outcome = measure(host, &client, redis, seconds).await;
    daemon.stop(redis).await?;
    redis.clone().del::<_, ()>(shared::keys::simulator_delivered()).await?;
    outcome
}

/// `count` sends, one at a time, on a session paired with the daemon now running: each from
/// the request's start to the simulated server holding the message.
async fn send_latencies(client: &Http, redis: &ConnectionManager, org: &str, count: usize) -> Result<Vec<Duration>> {
    let session = paired_session(client, redis).await?;
    let messages = format!("/api/v1/sessions/{session}/messages");
    let mut redis = redis.clone();
    redis.del::<_, ()>(shared::keys::simulator_delivered()).await?;
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        let (status, body) = client.call("POST", &messages, &json!({"to": "6281200000000", "text": format!("latency {i}")})).await?;
        if status != 202 {
            return Err(format!("a send answered {status}: {body}").into());
        }
        let popped: Option<(String, String)> = redis.blpop(shared::keys::simulator_delivered(), 5.0).await?;
        if popped.is_none() {
            return Err("a message did not reach the simulated server within 5 s".into());
        }
        latencies.push(started.elapsed());
        idle_outbox(&mut redis, org, &session).await?;
        tokio::time::sleep(SPACING).await;
    }
    Ok(latencies)
}

/// Inbound latency and accepted sends per second, on a session paired with the daemon now running.
async fn measure(host: &str, client: &Http, redis: &ConnectionManager, seconds: u64) -> Result {
    let session = paired_session(client, redis).await?;
    let messages = format!("/api/v1/sessions/{session}/messages");
    let mut redis = redis.clone();
    let mut latencies = inbound_latencies(client, &mut redis, &session).await?;
    let stats = Stats::of(&mut latencies, Duration::ZERO);
    println!("inbound latency, phone → SSE client (message.received), {LATENCY_MESSAGES} messages: p50 {}, p99 {}", ms(stats.p50), ms(stats.p99));

    let (status, body) = client.call("POST", &format!("/api/v1/sessions/{session}:stop"), &Value::Null).await?;
    if status != 200 {
        return Err(format!(":stop answered {status}: {body}").into());
    }
    let probe = Probe { method: "POST", path: messages, body: json!({"to": "6281200000000", "text": "throughput"}).to_string(), expect: 202 };
    let elapsed = Duration::from_secs(seconds.max(1));
    let mut accepted = load(host, &client.key, elapsed, &probe).await?;
    let stats = Stats::of(&mut accepted, elapsed);
    println!("accepted sends through the host (session stopped, outbox filling): {:.0}/s, p50 {}, p99 {}", stats.rps, ms(stats.p50), ms(stats.p99));
    Ok(())
}

/// One message at a time from a simulated phone to the session, each timed until the event
/// stream delivered it.
async fn inbound_latencies(client: &Http, redis: &mut ConnectionManager, session: &str) -> Result<Vec<Duration>> {
    let query = format!("session={session}&types=message.received");
    let number = |e: &Value| e["data"]["text"].as_str()?.strip_prefix("inbound ")?.parse::<u64>().ok();
    let (mut arrivals, reader) = crate::event_latency::stamped_events(&client.host, &client.key, &query, number).await?;
    let mut latencies = Vec::with_capacity(LATENCY_MESSAGES);
    for i in 0..LATENCY_MESSAGES {
        let text = format!("inbound {i}");
        let entry = [("action", "message"), ("to", PHONE), ("from", "6281300000000"), ("text", text.as_str())];
        let sent = Instant::now();
        redis.xadd::<_, _, _, _, ()>(shared::keys::simulator_control(), "*", &entry).await?;
        match tokio::time::timeout(Duration::from_secs(5), arrivals.recv()).await {
            Ok(Some((n, at))) if n == i => latencies.push(at - sent),
            Ok(Some((n, _))) => return Err(format!("inbound message {n} arrived while {i} was awaited").into()),
            _ => return Err(format!("inbound message {i} did not reach the event stream within 5 s").into()),
        }
        tokio::time::sleep(SPACING).await;
    }
    reader.abort();
    Ok(latencies)
}

/// Waits until WhatsApp's (simulated) server acknowledged what was sent, so the next message
/// finds the queue idle.
async fn idle_outbox(redis: &mut ConnectionManager, org: &str, session: &str) -> Result {
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.llen::<_, usize>(shared::keys::session_outbox(org, session)).await? > 0 {
        if Instant::now() > deadline {
            return Err("a sent message was not acknowledged within 5 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// A session created to start, paired by scanning its first QR code on the simulated phone.
/// Without `presenceTyping`: its deliberate pause before a text is not the gateway's latency.
async fn paired_session(client: &Http, redis: &ConnectionManager) -> Result<String> {
    let body = json!({"start": true, "ratePerMin": 1000, "ratePerHour": 60000, "presenceTyping": false});
    let (status, created) = client.call("POST", "/api/v1/sessions", &body).await?;
    if status != 201 {
        return Err(format!("creating the session answered {status}: {created}").into());
    }
    let id = created["id"].as_str().ok_or("no session id")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut scanned = false;
    while Instant::now() < deadline {
        if !scanned {
            let (status, qr) = client.call("GET", &format!("/api/v1/sessions/{id}/qr"), &Value::Null).await?;
            if let (200, Some(code)) = (status, qr["code"].as_str()) {
                let entry = [("action", "scan"), ("code", code), ("phone", PHONE)];
                redis.clone().xadd::<_, _, _, _, ()>(shared::keys::simulator_control(), "*", &entry).await?;
                scanned = true;
            }
        }
        let (_, row) = client.call("GET", &format!("/api/v1/sessions/{id}"), &Value::Null).await?;
        if row["status"] == "working" {
            return Ok(id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the bench session did not pair within 20 s".into())
}

/// One request at a time over a fresh connection: setting up the bench, not measured.
struct Http {
    host: String,
    key: String,
}

impl Http {
    async fn call(&self, method: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(&self.host).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.host)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.key))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}
