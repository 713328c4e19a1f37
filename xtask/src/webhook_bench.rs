//! The webhook half of `cargo xtask bench`: a simulator-backed daemon delivers to a receiver in
//! this process, through an endpoint registered over the API.
//!
//! - latency: from the moment the daemon's write path (`store::update`) begins logging an event
//!   to the moment the receiver has the POST's body, events spaced so it is not queueing;
//! - deliveries per second to one endpoint: a burst of events over the bench's sessions, from
//!   the first logged to the last received (one delivery at a time per session, as ordering
//!   requires, so sessions deliver side by side).

use crate::Result;
use crate::bench::{Stats, ms};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use redis::aio::ConnectionManager;
use shared::event::{Event, EventType};
use shared::store::{self, Update};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const LATENCY_EVENTS: usize = 500;
const SPACING: Duration = Duration::from_millis(4);
const BURST_EVENTS: usize = 5_000;

pub async fn run(host: &str, redis_url: &str, redis: &ConnectionManager, org: &str, key: &str) -> Result {
    let daemon = crate::bench::BenchDaemon::start(redis_url, &[("WEBHOOK_ALLOW_PRIVATE", "true")])?;
    let outcome = measure(host, redis, org, key).await;
    daemon.stop(redis).await?;
    outcome
}

async fn measure(host: &str, redis: &ConnectionManager, org: &str, key: &str) -> Result {
    let (receiver, mut arrivals) = receive().await?;
    let webhook = register(host, key, &format!("http://{receiver}/hook")).await?;
    // The bench's own idle sessions only: one the messages bench paired is held by a daemon,
    // whose fencing token refuses these writes.
    let sessions: Vec<String> = store::list(redis, org).await?.into_iter()
        .filter(|s| s.label.as_deref().is_some_and(|l| l.starts_with("bench ")))
        .map(|s| s.id)
        .collect();
    let outcome = async {
        let mut latencies = Vec::with_capacity(LATENCY_EVENTS);
        for seq in 0..LATENCY_EVENTS {
            let logged = Instant::now();
            publish(redis, org, &sessions[0], seq).await?;
            let (number, at) = next(&mut arrivals).await?;
            if number != seq {
                return Err(format!("event {number} arrived while {seq} was awaited").into());
            }
            latencies.push(at - logged);
            tokio::time::sleep(SPACING).await;
        }
        let stats = Stats::of(&mut latencies, Duration::ZERO);
        println!(
            "webhook latency, logged → receiver through a daemon, {LATENCY_EVENTS} events: p50 {}, p99 {}, max {}",
            ms(stats.p50), ms(stats.p99), ms(*latencies.last().unwrap_or(&Duration::ZERO)),
        );

        let started = Instant::now();
        for seq in 0..BURST_EVENTS {
            publish(redis, org, &sessions[seq % sessions.len()], LATENCY_EVENTS + seq).await?;
        }
        for _ in 0..BURST_EVENTS {
            next(&mut arrivals).await?;
        }
        let elapsed = started.elapsed();
        println!(
            "webhook deliveries to one endpoint, {BURST_EVENTS} events over {} sessions: {:.0}/s ({} from the first logged to the last received)",
            sessions.len(), BURST_EVENTS as f64 / elapsed.as_secs_f64(), ms(elapsed),
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    shared::webhook::delete(redis, org, &webhook).await.map_err(|e| e.message)?;
    outcome
}

async fn publish(redis: &ConnectionManager, org: &str, session: &str, seq: usize) -> Result {
    let event = Event::new(EventType::SessionStatus, org, session, serde_json::json!({ "seq": seq }));
    store::update(redis, org, session, Update::default().event(event)).await?;
    Ok(())
}

async fn next(arrivals: &mut mpsc::UnboundedReceiver<(usize, Instant)>) -> Result<(usize, Instant)> {
    match tokio::time::timeout(Duration::from_secs(10), arrivals.recv()).await {
        Ok(Some(arrival)) => Ok(arrival),
        _ => Err("no webhook delivery within 10 s".into()),
    }
}

/// `POST /api/v1/webhooks` through the host; returns the endpoint's id.
async fn register(host: &str, key: &str, url: &str) -> Result<String> {
    let stream = tokio::net::TcpStream::connect(host).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let body = serde_json::json!({ "url": url, "events": ["session.status"] }).to_string();
    let request = hyper::Request::post("/api/v1/webhooks")
        .header(http::header::HOST, host)
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body: serde_json::Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    match body["id"].as_str() {
        Some(id) if status == 201 => Ok(id.to_owned()),
        _ => Err(format!("registering the webhook answered {status}: {body}").into()),
    }
}

/// A receiver on a loopback port: each delivery's `data.seq` and when its body was read.
async fn receive() -> Result<(std::net::SocketAddr, mpsc::UnboundedReceiver<(usize, Instant)>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (arrived, arrivals) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let arrived = arrived.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let arrived = arrived.clone();
                async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let at = Instant::now();
                    let seq = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|e| e["data"]["seq"].as_u64());
                    if let Some(seq) = seq {
                        let _ = arrived.send((seq as usize, at));
                    }
                    let mut response = hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                    *response.status_mut() = hyper::StatusCode::NO_CONTENT;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok((address, arrivals))
}
