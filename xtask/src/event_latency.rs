//! The event-latency half of `cargo xtask bench`: from the moment the daemon's write path
//! (`store::update`, the call the supervisor makes) begins publishing an event to the moment an
//! SSE client of `GET /api/v1/events`, connected through the embedded host, has parsed it.
//! Events go out one at a time, spaced, so the figure is latency, not queueing.

use crate::Result;
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use http_body_util::{BodyStream, Empty};
use hyper_util::rt::TokioIo;
use redis::aio::ConnectionManager;
use shared::event::{Event, EventType};
use shared::event_log::Retention;
use shared::store::{self, Update};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const EVENTS: usize = 1_000;
const SPACING: Duration = Duration::from_millis(2);

/// Arrivals of numbered events on an event stream: `(number, when it was parsed)`.
pub type Arrivals = mpsc::UnboundedReceiver<(usize, Instant)>;

/// Opens `GET /api/v1/events?<query>` through the host and stamps each event as a client
/// parses it, for every event `number` finds a number in. Stamping stops when the handle drops.
pub async fn stamped_events(host: &str, key: &str, query: &str, number: fn(&serde_json::Value) -> Option<u64>) -> Result<(Arrivals, tokio::task::JoinHandle<()>)> {
    let stream = tokio::net::TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("/api/v1/events?{query}"))
        .header(http::header::HOST, host)
        .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if response.status() != 200 {
        return Err(format!("the event stream answered {}", response.status()).into());
    }
    let frames = BodyStream::new(response.into_body()).filter_map(|frame| async { frame.map(|f| f.into_data().ok()).transpose() });
    let mut events = Box::pin(frames.eventsource());

    let (arrived, arrivals) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            let seq = serde_json::from_str::<serde_json::Value>(&event.data).ok().and_then(|e| number(&e));
            if let Some(seq) = seq {
                if arrived.send((seq as usize, Instant::now())).is_err() {
                    break;
                }
            }
        }
    });
    Ok((arrivals, reader))
}

/// Latencies of `EVENTS` events published for `session` and read back through the host.
pub async fn measure(host: &str, key: &str, redis: &ConnectionManager, org: &str, session: &str) -> Result<Vec<Duration>> {
    let (mut arrivals, reader) = stamped_events(host, key, &format!("session={session}"), |e| e["data"]["seq"].as_u64()).await?;

    let retention = Retention::default();
    let mut sent = Vec::with_capacity(EVENTS);
    for seq in 0..EVENTS {
        let event = Event::new(EventType::SessionStatus, org, session, serde_json::json!({ "seq": seq }));
        let update = Update { retention, ..Update::default() }.event(event);
        sent.push(Instant::now());
        store::update(redis, org, session, update).await?;
        tokio::time::sleep(SPACING).await;
    }
    let mut latencies = vec![None; EVENTS];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut received = 0;
    while received < EVENTS {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some((seq, at))) if seq < EVENTS && latencies[seq].is_none() => {
                latencies[seq] = Some(at - sent[seq]);
                received += 1;
            }
            Ok(Some(_)) => return Err("an event arrived twice".into()),
            _ => return Err(format!("only {received} of {EVENTS} events arrived").into()),
        }
    }
    reader.abort();
    Ok(latencies.into_iter().flatten().collect())
}
