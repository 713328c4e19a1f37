//! The event stream end to end: `GET /api/v1/events` read by a standard SSE client over real
//! HTTP, with the real host, components, daemon (simulator backend) and a Redis of the test's own.

use e2e::{SseEvent, Stack, claims, new_org, rs256};
use serde_json::Value;
use shared::auth::Capability;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(10);

fn ids(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

fn position(id: &str) -> (u64, u64) {
    shared::event_log::position(id).unwrap_or_else(|| panic!("not a log position: {id}"))
}

fn status_of(event: &SseEvent) -> &Value {
    &event.data["data"]["status"]
}

async fn mint(stack: &Stack, key: &str) -> e2e::Reply {
    stack.client.send("POST", &stack.gateway.url("/api/v1/events/token"), Some(key), None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_recommended_pairing_pattern() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    // Subscribe first, then create with start: true, then follow the codes.
    let mut events = stack.subscribe(Some(&key), "", None).await.unwrap();
    assert_eq!(events.headers["content-type"], "text/event-stream");
    let id = stack.create(&key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();

    let mut seen = events.until(SOON, |e| e.kind == "auth.qr").await;
    assert_eq!((seen[0].kind.as_str(), status_of(&seen[0])), ("session.status", &Value::from("starting")));
    let first = seen.last().unwrap().data["data"].clone();
    seen.extend(events.until(SOON, |e| e.kind == "auth.qr").await);
    let rotated = seen.last().unwrap().data["data"].clone();
    assert_ne!(rotated["code"], first["code"], "codes rotate");
    assert!(rotated["expiresAt"].as_i64() > first["expiresAt"].as_i64());

    stack.phone("scan", &[("code", rotated["code"].as_str().unwrap()), ("phone", "6281234567890")]).await;
    let rest = events.until(SOON, |e| e.kind == "session.status" && status_of(e) == "working").await;
    let paired = rest.iter().find(|e| e.kind == "auth.paired").expect("auth.paired before working");
    assert_eq!(paired.data["data"]["phoneNumber"], "6281234567890");
    assert_eq!(rest.last().unwrap().data["data"]["waJid"], "6281234567890@s.whatsapp.net");
    seen.extend(rest);

    for event in &seen {
        assert_eq!(event.data["type"], event.kind.as_str(), "the SSE event name is the event's type");
        assert_eq!((event.data["sessionId"].as_str(), event.data["organizationId"].as_str()), (Some(id.as_str()), Some(org.as_str())));
    }
    assert!(seen.windows(2).all(|w| position(&w[0].id) < position(&w[1].id)), "ids follow the log: {:?}", ids(&seen));
    // What the stream delivered is exactly the log, from the subscription on.
    let log = stack.log(&org).await;
    assert_eq!(ids(&seen), ids(&log[..seen.len()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_after_a_dropped_stream_has_no_gap_and_no_duplicate() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let mut first = stack.subscribe(Some(&key), "", None).await.unwrap();
    for _ in 0..2 {
        stack.create(&key, r#"{"start": true}"#).await;
    }
    let mut before = Vec::new();
    while before.len() < 3 {
        before.push(first.next(SOON).await.expect("events while subscribed"));
    }
    drop(first);
    let last_seen = before.last().unwrap().id.clone();

    // Events keep coming while the client is away: new sessions, QR codes rotating.
    for _ in 0..2 {
        stack.create(&key, r#"{"start": true}"#).await;
    }
    let missed_while_away = |log: &[SseEvent]| log.iter().filter(|e| position(&e.id) > position(&last_seen)).count();
    let deadline = std::time::Instant::now() + SOON;
    while missed_while_away(&stack.log(&org).await) < 6 {
        assert!(std::time::Instant::now() < deadline, "the daemon produced too few events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Resume with the standard header.
    let log = stack.log(&org).await;
    let expected: Vec<&SseEvent> = log.iter().filter(|e| position(&e.id) > position(&last_seen)).collect();
    let mut resumed = stack.subscribe(Some(&key), "", Some(&last_seen)).await.unwrap();
    let goal = expected.last().unwrap().id.clone();
    let after = resumed.until(SOON, |e| e.id == goal).await;
    assert_eq!(ids(&after), expected.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_eq!(ids(&before), ids(&log[..3]));
    drop(resumed);

    // A browser reconnecting with a fresh stream token passes the position in the URL instead.
    let token = mint(&stack, &key).await.body["token"].as_str().unwrap().to_owned();
    let mut by_query = stack.subscribe(None, &format!("token={token}&lastEventId={last_seen}"), None).await.unwrap();
    let again = by_query.until(SOON, |e| e.id == goal).await;
    assert_eq!(ids(&again), ids(&after));
}

#[tokio::test(flavor = "multi_thread")]
async fn session_and_type_filters() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let a = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    let b = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    let mut filtered = stack.subscribe(Some(&key), &format!("session={a}&types=auth.*,session.logged_out"), None).await.unwrap();
    let mut everything = stack.subscribe(Some(&key), "", None).await.unwrap();
    for id in [&a, &b] {
        let started = stack.client.post(&stack.session_url(id, ":start"), &key, "").await;
        assert_eq!(started.status, 200, "{}", started.body);
    }

    // Both sessions show codes; codes rotate every second, so each produces a stream of events.
    let all = everything.until(SOON, |e| e.kind == "auth.qr" && e.data["sessionId"] == b.as_str()).await;
    assert!(all.iter().any(|e| e.kind == "session.status"), "the unfiltered stream has status events");
    let mut only_a = filtered.until(SOON, |e| e.kind == "auth.qr").await;
    while let Some(event) = filtered.next(Duration::from_millis(2500)).await {
        only_a.push(event);
    }
    assert!(only_a.len() >= 2, "rotating codes of session a: {only_a:#?}");
    for event in &only_a {
        assert_eq!(event.data["sessionId"], a.as_str(), "{event:?}");
        assert!(event.kind.starts_with("auth."), "{event:?}");
    }

    // Filters are validated, each error naming what to fix.
    for (query, field) in [
        ("types=auth.nope", "types"),
        ("types=nope.*", "types"),
        ("session=..%2Fx", "session"),
        ("since=1", "since"),
    ] {
        let refused = stack.subscribe(Some(&key), query, None).await.err().expect(query);
        assert_eq!(refused.expect_error(400, "validation_error")["field"], field, "{query}");
    }
    let refused = stack.subscribe(Some(&key), "", Some("not-a-position")).await.err().unwrap();
    assert_eq!(refused.expect_error(400, "validation_error")["field"], "Last-Event-ID");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_organizations_events_never_appear() {
    let stack = Stack::start();
    let (ours, theirs) = (new_org(), new_org());
    let (our_key, their_key) = (stack.key(&ours).await, stack.key(&theirs).await);
    let mut stream = stack.subscribe(Some(&our_key), "", None).await.unwrap();
    let their_session = stack.create(&their_key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();
    // Naming their session in a filter reaches nothing either.
    let mut aimed = stack.subscribe(Some(&our_key), &format!("session={their_session}"), None).await.unwrap();
    stack.qr_until(&their_key, &their_session, None, SOON).await;

    let ours_now = stack.create(&our_key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();
    let first = stream.next(SOON).await.expect("our own event");
    assert_eq!((first.data["organizationId"].as_str(), first.data["sessionId"].as_str()), (Some(ours.as_str()), Some(ours_now.as_str())));
    let mut more = stream.until(SOON, |e| e.kind == "auth.qr").await;
    while let Some(event) = stream.next(Duration::from_millis(1500)).await {
        more.push(event);
    }
    assert!(more.iter().all(|e| e.data["organizationId"] == ours.as_str()), "{more:#?}");
    assert_eq!(aimed.next(Duration::from_millis(500)).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_tokens_are_single_use_short_lived_and_only_for_the_stream() {
    let stack = Stack::start_configured(&[("BACKEND", "simulator")], &[("stream_token_ttl_secs", "2")]);
    let org = new_org();
    let key = stack.key(&org).await;

    let minted = mint(&stack, &key).await;
    assert_eq!(minted.status, 201, "{}", minted.body);
    let token = minted.body["token"].as_str().unwrap().to_owned();
    let expires_in = minted.body["expiresAt"].as_i64().unwrap() - shared::time::now_millis();
    assert!((1_000..=2_000).contains(&expires_in), "expires in {expires_in} ms");

    let mut stream = stack.subscribe(None, &format!("token={token}"), None).await.unwrap();
    let id = stack.create(&key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();
    assert_eq!(stream.next(SOON).await.unwrap().data["sessionId"], id.as_str());
    // Used once: spent.
    stack.subscribe(None, &format!("token={token}"), None).await.err().unwrap().expect_error(401, "unauthorized");
    // Unused, but past its lifetime.
    let late = mint(&stack, &key).await.body["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stack.subscribe(None, &format!("token={late}"), None).await.err().unwrap().expect_error(401, "unauthorized");

    // Nothing else is accepted from a URL, and a stream token opens nothing else.
    stack.subscribe(None, &format!("token={key}"), None).await.err().unwrap().expect_error(401, "unauthorized");
    let jwt = rs256(&claims(&org, "admin"));
    stack.subscribe(None, &format!("token={jwt}"), None).await.err().unwrap().expect_error(401, "unauthorized");
    let fresh = mint(&stack, &key).await.body["token"].as_str().unwrap().to_owned();
    let sessions = stack.gateway.url("/api/v1/sessions");
    stack.client.get(&sessions, &fresh).await.expect_error(401, "unauthorized");
    stack.subscribe(None, "", None).await.err().unwrap().expect_error(401, "unauthorized");

    // Minting and streaming need `read` (or `manage`), like the stream itself.
    let (reader, _) = e2e::api_key_at(&stack.redis.url, &org, &[Capability::Read]).await;
    assert_eq!(mint(&stack, &reader).await.status, 201);
    assert!(stack.subscribe(Some(&reader), "", None).await.is_ok());
    let viewer = rs256(&claims(&org, "viewer"));
    assert_eq!(mint(&stack, &viewer).await.status, 201);
    let (sender, _) = e2e::api_key_at(&stack.redis.url, &org, &[Capability::Send]).await;
    mint(&stack, &sender).await.expect_error(403, "forbidden");
    stack.subscribe(Some(&sender), "", None).await.err().unwrap().expect_error(403, "forbidden");

    // Methods.
    stack.client.get(&stack.gateway.url("/api/v1/events/token"), &key).await.expect_error(405, "method_not_allowed");
    stack.client.post(&stack.gateway.url("/api/v1/events"), &key, "").await.expect_error(405, "method_not_allowed");
}

/// The stream's raw text, read until it contains `needle`.
async fn raw_until(response: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = tokio::time::timeout(SOON, response.chunk()).await.unwrap().unwrap().expect("the stream stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text
}

/// How many Redis connections last ran XREAD: blocked stream readers.
async fn stream_readers(stack: &Stack) -> usize {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut stack.redis().await).await.unwrap();
    list.lines().filter(|line| line.contains(" cmd=xread ")).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alives_a_retry_hint_and_nothing_left_behind_when_the_client_goes() {
    let stack = Stack::start_configured(&[("BACKEND", "simulator")], &[("event_keepalive_ms", "300"), ("event_retry_ms", "2500")]);
    let key = stack.key(&new_org()).await;
    // The daemon has blocked readers of its own (the simulator's control stream).
    let baseline = stream_readers(&stack).await;
    let mut response = stack.client.0.get(stack.gateway.url("/api/v1/events")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let started = std::time::Instant::now();
    let text = raw_until(&mut response, ": keep-alive").await;
    assert!(text.starts_with("retry: 2500\n\n"), "{text:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "the first keep-alive waits for the interval");
    // Between two blocking reads the stream renews its slot, so its connection is seen blocked
    // again shortly after the keep-alive, and never more than once.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let readers = stream_readers(&stack).await;
        assert!(readers <= baseline + 1, "one blocked reader for the open stream, not {}", readers - baseline);
        if readers == baseline + 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the open stream never blocked on a read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    drop(response);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while stream_readers(&stack).await > baseline {
        assert!(std::time::Instant::now() < deadline, "the stream's Redis connection outlived its client");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_keeps_the_last_n_events_or_the_recent_ones_whichever_is_more_up_to_its_cap() {
    use shared::event::{Event, EventType};
    use shared::event_log::Retention;
    use shared::store::{self, Update};
    let stack = Stack::start_configured(&[("BACKEND", "simulator")], &[("event_log_max_len", "100")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let id = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    let redis = shared::redis::native::connect(&stack.redis.url).await.unwrap();
    let write = async |retention: Retention| {
        for _ in 0..20 {
            let event = Event::new(EventType::SessionStatus, &org, &id, serde_json::json!({}));
            let update = Update { retention, ..Update::default() }.event(event);
            store::update(&redis, &org, &id, update).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    // All recent: every one is kept although there are more than `count`.
    write(Retention { count: 5, max_age_ms: 3_600_000, max_len: 0 }).await;
    assert_eq!(stack.log(&org).await.len(), 20);
    // Older than the age limit: only the newest `count` stay.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(Retention { count: 5, max_age_ms: 10, max_len: 0 }).await;
    let log = stack.log(&org).await;
    assert!((5..=6).contains(&log.len()), "kept {}", log.len());

    // A client resuming from before what is kept is told that it missed events, then gets the rest.
    let mut response = stack.client.0.get(stack.gateway.url("/api/v1/events")).bearer_auth(&key).header("last-event-id", "1-0").send().await.unwrap();
    let text = raw_until(&mut response, &log.last().unwrap().id).await;
    assert!(text.contains(&format!(": events before {} are no longer retained", log[0].id)), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("id: ")).count(), log.len(), "{text}");
    drop(response);

    // However young its events, the log stays within its cap (give or take a stream node of
    // 100 entries), whoever writes: here the API, each accepted message logging `queued`.
    let (paired, _) = stack.paired_session_with(&key, r#"{"start": true}"#, "628999000077").await;
    for i in 0..300 {
        let reply = stack.client.post(&stack.session_url(&paired, "/messages"), &key, &format!(r#"{{"to": "628222000001", "text": "{i}"}}"#)).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let log = stack.log(&org).await;
    assert!((100..=200).contains(&log.len()), "kept {} of 300 young events", log.len());
}

/// The example consumer of `examples/event-consumer` (docs/redis-contract.md), its printed events
/// collected as they come.
struct Consumer {
    child: std::process::Child,
    printed: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Consumer {
    fn start(redis_url: &str, org: &str) -> Consumer {
        use std::io::BufRead;
        let mut child = std::process::Command::new(e2e::root().join("target/release/event-consumer"))
            .args([redis_url, org, "crm-bridge", "worker-1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = printed.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(serde_json::from_str(&line).unwrap());
            }
        });
        Consumer { child, printed }
    }

    /// Waits until it printed `n` events; returns their log positions.
    async fn until(&self, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + SOON;
        loop {
            let printed = self.printed.lock().unwrap().clone();
            if printed.len() >= n {
                return printed.iter().map(|p| p["position"].as_str().unwrap().to_owned()).collect();
            }
            assert!(std::time::Instant::now() < deadline, "{} of {n} events printed", printed.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_service_beside_the_gateway_reads_the_log_with_its_own_consumer_group() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let consumer = Consumer::start(&stack.redis.url, &org);
    let (session_id, _) = stack.paired_session(&key, "628999000001").await;
    let logged = stack.log(&org).await;
    consumer.until(logged.len()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = consumer.until(0).await;
    assert_eq!(consumer.printed.lock().unwrap()[0]["event"], logged[0].data, "the event as logged");

    // Killed, then events while it is away, then started again: it goes on where it stopped.
    drop(consumer);
    let stopped = stack.client.post(&stack.session_url(&session_id, ":stop"), &key, "").await;
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all: Vec<String> = stack.log(&org).await.into_iter().map(|e| e.id).collect();
    assert!(all.len() > before.len(), "the stop logged events");
    let again = Consumer::start(&stack.redis.url, &org);
    again.until(all.len() - before.len()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = again.until(0).await;
    assert_eq!([before, after].concat(), all, "every event once, in the log's order, across the restart");
}

/// A sample's value in a Prometheus text page (`name{labels} value`), if the page has it.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Scrapes `url` until `done` holds for the page, failing with the page after `within`.
async fn scrape_until(url: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let page = reqwest::get(url).await.unwrap().text().await.unwrap();
        if done(&page) {
            return page;
        }
        assert!(std::time::Instant::now() < deadline, "{url}: condition not reached:\n{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn metrics_count_requests_streams_sessions_sends_and_deliveries() {
    let (port, host_port) = (e2e::free_port(), e2e::free_port());
    let stack = Stack::on_with_host_env(
        e2e::RedisServer::start(),
        &[("BACKEND", "simulator"), ("METRICS_LISTEN", &format!("127.0.0.1:{port}"))],
        &[],
        &[("GATEWAY_METRICS_TOKEN", "operator-token"), ("GATEWAY_METRICS_LISTEN", &format!("127.0.0.1:{host_port}"))],
    );
    let receiver = e2e::Receiver::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let hook = stack.client.post(&stack.gateway.url("/api/v1/webhooks"), &key, &format!(r#"{{"url": "{}/hook"}}"#, receiver.url)).await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    let (session_id, _) = stack.paired_session_with(&key, r#"{"start": true, "presenceTyping": false}"#, "628999000002").await;
    let sent = stack.client.post(&stack.session_url(&session_id, "/messages"), &key, r#"{"to": "628222000001", "text": "hi"}"#).await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    stack.client.get(&stack.gateway.url("/api/v1/nowhere"), &key).await.expect_error(404, "not_found");
    let _stream = stack.subscribe(Some(&key), "", None).await.unwrap();

    // On the API's listener the page takes the operator's token, and an api-key is not one.
    let on_api = |token: &str| reqwest::Client::new().get(stack.gateway.url("/metrics")).bearer_auth(token).send();
    for refused in ["", key.as_str()] {
        let answer = on_api(refused).await.unwrap();
        assert_eq!(answer.status(), 401);
        assert_eq!(answer.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    }
    let page = on_api("operator-token").await.unwrap().text().await.unwrap();
    assert!(page.contains("gateway_http_requests_total"), "{page}");
    let host = scrape_until(&format!("http://127.0.0.1:{host_port}/metrics"), SOON, |page| sample(page, "gateway_open_event_streams") == Some(1.0)).await;
    assert!(sample(&host, r#"gateway_http_requests_total{route="/api/v1/webhooks",status="201"}"#) >= Some(1.0), "{host}");
    assert!(sample(&host, r#"gateway_http_requests_total{route="/api/v1/sessions/:session/messages",status="202"}"#) >= Some(1.0), "{host}");
    assert!(sample(&host, r#"gateway_http_requests_total{route="/...",status="404"}"#) >= Some(1.0), "{host}");
    assert!(sample(&host, r#"gateway_http_request_duration_seconds_count{route="/api/v1/sessions/..."}"#) >= Some(2.0), "{host}");
    assert!(host.contains(r#"gateway_http_request_duration_seconds_bucket{route="/api/v1/sessions/...",le="0.005"}"#), "{host}");
    assert!(sample(&host, r#"gateway_instances_idle{component="sessions"}"#) >= Some(1.0), "{host}");

    let daemon = scrape_until(&format!("http://127.0.0.1:{port}/metrics"), Duration::from_secs(15), |page| {
        sample(page, r#"daemon_sessions{status="working"}"#) == Some(1.0)
            && sample(page, r#"daemon_messages_total{outcome="sent"}"#) == Some(1.0)
            && sample(page, r#"daemon_webhook_deliveries_total{outcome="delivered"}"#) >= Some(1.0)
    }).await;
    assert!(sample(&daemon, r#"daemon_commands_total{kind="start"}"#) >= Some(1.0), "{daemon}");
    assert_eq!(sample(&daemon, "daemon_outbox_depth"), Some(0.0), "{daemon}");
    assert_eq!(sample(&daemon, r#"daemon_sessions{status="failed"}"#), Some(0.0), "{daemon}");
}
