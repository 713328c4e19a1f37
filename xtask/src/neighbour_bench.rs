//! The noisy-neighbour part of `cargo xtask bench`: organization B's ordinary reads (`GET
//! /api/v1/sessions` from two keep-alive connections) while nothing else runs, then while
//! organization A floods the same host for as long: a send-and-cancel loop at full speed from
//! 8 connections, and 16 connections posting sends with the largest inline file. A runs with
//! the deployment's default quotas, as a tenant would. Printed: B's p50 and p99 quiet and
//! during the flood with their ratios, what A's requests were answered, and how Redis memory
//! and the host's resident memory grew during the flood.

use crate::Result;
use crate::bench::{Probe, Stats, load_with, ms};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use redis::aio::ConnectionManager;
use shared::auth::Capability;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const B_CONNECTIONS: usize = 2;
const SEND_CANCEL_CONNECTIONS: usize = 8;
const FILE_CONNECTIONS: usize = 16;
/// The largest inline file a send takes by default (`media_max_bytes`, 16 MiB; the base64 of
/// `FILE_BYTES / 3 * 4` characters decodes to just under it).
const FILE_BYTES: usize = 16 * 1024 * 1024;

pub async fn run(host: &str, host_pid: u32, redis: &ConnectionManager, b_key: &str, seconds: u64) -> Result {
    let a_org = format!("bench-a-{}", ulid::Ulid::new().to_string().to_lowercase());
    let a_key = shared::apikey::mint();
    shared::apikey::create(redis, &a_key, &a_org, vec![Capability::Manage, Capability::Send, Capability::Read], Some("bench flood".into())).await?;
    // A session that reads as paired: nobody runs it, so what A sends only queues (and is canceled).
    let mut session = shared::validate::new_session(br#"{"label": "flood"}"#)?.into_session(&a_org, None, shared::time::now_millis());
    session.wa_jid = Some("6281100000099@s.whatsapp.net".to_owned());
    session.phone_number = Some("+6281100000099".to_owned());
    shared::store::create(redis, &session, u64::MAX, None, shared::event_log::Retention::default()).await?;

    let duration = Duration::from_secs(seconds.max(2));
    let list = Probe { method: "GET", path: "/api/v1/sessions".to_owned(), body: String::new(), expect: 200 };
    load_with(host, b_key, Duration::from_millis(500), &list, B_CONNECTIONS).await?;
    let mut quiet = load_with(host, b_key, duration, &list, B_CONNECTIONS).await?;
    let (memory_before, rss_before) = (used_memory(redis).await?, resident_kib(host_pid));
    let flood = tokio::spawn(flood(host.to_owned(), a_key, session.id.clone(), duration));
    let mut loud = load_with(host, b_key, duration, &list, B_CONNECTIONS).await?;
    let answers = flood.await?.map_err(|e| e.to_string())?;
    let (memory_after, rss_after) = (used_memory(redis).await?, resident_kib(host_pid));
    crate::bench::cleanup(redis, &a_org).await?;

    let (quiet, loud) = (Stats::of(&mut quiet, duration), Stats::of(&mut loud, duration));
    println!("noisy neighbour: B's GET /api/v1/sessions on {B_CONNECTIONS} connections, {duration:?} quiet, then {duration:?} while A floods");
    println!("  quiet: p50 {}, p99 {}; during A's flood: p50 {}, p99 {}; ratios p50 {:.2}, p99 {:.2}",
        ms(quiet.p50), ms(quiet.p99), ms(loud.p50), ms(loud.p99),
        loud.p50.as_secs_f64() / quiet.p50.as_secs_f64(), loud.p99.as_secs_f64() / quiet.p99.as_secs_f64());
    for (what, statuses) in &answers {
        let shown: Vec<String> = statuses.iter().map(|(status, n)| format!("{status}×{n}")).collect();
        println!("  A's {what}: {}", shown.join(", "));
    }
    println!("  during the flood: Redis used_memory {:+.1} MiB, host RSS {}",
        (memory_after as f64 - memory_before as f64) / 1_048_576.0,
        match (rss_before, rss_after) {
            (Some(before), Some(after)) => format!("{:+.1} MiB ({:.1} → {:.1} MiB)", (after as f64 - before as f64) / 1024.0, before as f64 / 1024.0, after as f64 / 1024.0),
            _ => "unknown".to_owned(),
        });
    Ok(())
}

/// A's statuses per kind of request.
type Answers = BTreeMap<&'static str, BTreeMap<u16, usize>>;

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn flood(host: String, key: String, session: String, duration: Duration) -> std::result::Result<Answers, Failure> {
    let deadline = Instant::now() + duration;
    let text = Bytes::from_static(br#"{"to": "628222000101", "text": "flood"}"#);
    let file = Bytes::from(format!(
        r#"{{"to": "628222000101", "document": {{"data": "{}", "mimeType": "application/pdf", "fileName": "big.pdf"}}}}"#,
        "A".repeat(FILE_BYTES / 3 * 4)
    ));
    let path = format!("/api/v1/sessions/{session}/messages");
    let mut workers = Vec::new();
    for i in 0..SEND_CANCEL_CONNECTIONS + FILE_CONNECTIONS {
        let (host, key, path, text, file) = (host.clone(), key.clone(), path.clone(), text.clone(), file.clone());
        workers.push(tokio::spawn(async move {
            let mut answers = Answers::new();
            let mut connection = Connection::open(&host, &key).await?;
            while Instant::now() < deadline {
                if i < SEND_CANCEL_CONNECTIONS {
                    let (status, body) = connection.send("POST", &path, text.clone()).await?;
                    *answers.entry("sends").or_default().entry(status).or_default() += 1;
                    let id = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["id"].as_str().map(str::to_owned));
                    if let (202, Some(id)) = (status, id) {
                        let (status, _) = connection.send("DELETE", &format!("{path}/{id}"), Bytes::new()).await?;
                        *answers.entry("cancels").or_default().entry(status).or_default() += 1;
                    }
                } else {
                    let (status, _) = connection.send("POST", &path, file.clone()).await?;
                    *answers.entry("16 MiB file sends").or_default().entry(status).or_default() += 1;
                    if status != 202 {
                        // Refused from its headers: the connection may be closed mid-body.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        connection = Connection::open(&host, &key).await?;
                    }
                }
            }
            Ok::<_, Failure>(answers)
        }));
    }
    let mut all = Answers::new();
    for worker in workers {
        for (what, statuses) in worker.await?.map_err(|e| e.to_string())? {
            for (status, n) in statuses {
                *all.entry(what).or_default().entry(status).or_default() += n;
            }
        }
    }
    Ok(all)
}

/// One keep-alive connection of A's.
struct Connection {
    host: String,
    key: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(host: &str, key: &str) -> std::result::Result<Connection, Failure> {
        let stream = tokio::net::TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection { host: host.to_owned(), key: key.to_owned(), sender })
    }

    async fn send(&mut self, method: &str, path: &str, body: Bytes) -> std::result::Result<(u16, Bytes), Failure> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.host)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        match self.sender.send_request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                Ok((status, response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default()))
            }
            // The host answered before the body was all sent and closed: counted as what it
            // answered is unknown here, so as 0, and the connection is opened again.
            Err(_) => {
                *self = Connection::open(&self.host, &self.key).await?;
                Ok((0, Bytes::new()))
            }
        }
    }
}

async fn used_memory(redis: &ConnectionManager) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut redis.clone()).await?;
    Ok(info.lines().find_map(|line| line.strip_prefix("used_memory:")?.trim().parse().ok()).unwrap_or(0))
}

/// The process's resident memory (KiB), from /proc.
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
}
