//! One tenant cannot hurt another: every resource a caller can hold or trigger is bounded, with
//! a clear 429 or 503 in the envelope. Event streams per caller, organization and deployment,
//! their lifetime and credential re-checks, pairing secrets kept from viewers, pairing-code
//! rate limits, session quotas, JWT leeway and JWKS fetching, and the host's own limits.

use e2e::{Client, Gateway, JwksServer, Stack, borrowed, claims, new_org, root, rs256};
use serde_json::{Value, json};
use shared::auth::Capability;
use std::time::{Duration, Instant};

const SOON: Duration = Duration::from_secs(10);

fn retry_after(reply: &e2e::Reply) -> u64 {
    reply.headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or_else(|| panic!("no Retry-After: {reply:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_caller_opening_streams_until_refused_leaves_other_organizations_untouched() {
    let stack = Stack::start_configured(
        &[("BACKEND", "simulator")],
        &[("event_streams_per_caller", "3"), ("event_streams_per_org", "5"), ("event_streams_total", "8"), ("event_keepalive_ms", "500")],
    );
    let (ours, theirs) = (new_org(), new_org());
    let (reader, _) = e2e::api_key_at(&stack.redis.url, &ours, &[Capability::Read]).await;
    let (second_reader, _) = e2e::api_key_at(&stack.redis.url, &ours, &[Capability::Read]).await;
    let their_key = stack.key(&theirs).await;

    // A hostile reader opens streams in a loop: the fourth is refused, and so is every later one.
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..50 {
        match stack.subscribe(Some(&reader), "", None).await {
            Ok(stream) => held.push(stream),
            Err(reply) => {
                refused = Some(reply);
                break;
            }
        }
    }
    assert_eq!(held.len(), 3, "the caller's cap");
    let refused = refused.unwrap();
    assert_eq!(refused.expect_error(429, "rate_limited")["scope"], "caller");
    assert!(retry_after(&refused) >= 1);

    // The organization's cap binds its other callers.
    held.push(stack.subscribe(Some(&second_reader), "", None).await.unwrap());
    held.push(stack.subscribe(Some(&second_reader), "", None).await.unwrap());
    let full = stack.subscribe(Some(&second_reader), "", None).await.err().unwrap();
    assert_eq!(full.expect_error(429, "rate_limited")["scope"], "organization");

    // Another organization works throughout: requests, and streams up to the deployment's cap.
    let id = stack.create(&their_key, "{}").await["id"].as_str().unwrap().to_owned();
    for _ in 0..20 {
        assert_eq!(stack.client.get(&stack.session_url(&id, ""), &their_key).await.status, 200);
        assert_eq!(stack.client.get(&stack.gateway.url("/api/v1/sessions"), &their_key).await.status, 200);
    }
    let mut theirs_held = Vec::new();
    for _ in 0..3 {
        theirs_held.push(stack.subscribe(Some(&their_key), "", None).await.unwrap());
    }
    let (their_second, _) = e2e::api_key_at(&stack.redis.url, &theirs, &[Capability::Read]).await;
    let everyone = stack.subscribe(Some(&their_second), "", None).await.err().unwrap();
    assert_eq!(everyone.expect_error(429, "rate_limited")["scope"], "gateway");

    // Their open streams still carry their events.
    let other = stack.create(&their_key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();
    assert_eq!(theirs_held[0].next(SOON).await.unwrap().data["sessionId"], other.as_str());

    // Streams whose clients went away give their slots back within the slot's lifetime.
    drop(held);
    let deadline = Instant::now() + SOON;
    while stack.subscribe(Some(&reader), "", None).await.is_err() {
        assert!(Instant::now() < deadline, "the slots of closed streams were never freed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The stream's raw text until it ends, or `None` when it is still open after `within`.
async fn text_until_end(mut response: reqwest::Response, within: Duration) -> Option<String> {
    let mut text = String::new();
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            Ok(_) => return Some(text),
            Err(_) => return None,
        }
    }
}

async fn open(stack: &Stack, query: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = stack.client.0.get(stack.gateway.url(&format!("/api/v1/events{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_end_at_their_lifetime_and_when_their_credential_stops_holding() {
    let stack = Stack::start_configured(
        &[("BACKEND", "simulator")],
        &[("event_stream_max_secs", "2"), ("event_recheck_secs", "1"), ("event_keepalive_ms", "500"), ("jwt_leeway_secs", "0")],
    );
    let org = new_org();
    let key = stack.key(&org).await;

    let started = Instant::now();
    let text = text_until_end(open(&stack, "", Some(&key)).await, SOON).await.expect("the stream ends");
    assert!(started.elapsed() >= Duration::from_millis(1900), "ended after {:?}", started.elapsed());
    assert!(text.contains("maximum lifetime"), "{text}");

    // A revoked api-key ends its streams, and those its stream tokens opened, within the re-check.
    let (doomed, doomed_id) = e2e::api_key_at(&stack.redis.url, &org, &[Capability::Read]).await;
    let minted = stack.client.send("POST", &stack.gateway.url("/api/v1/events/token"), Some(&doomed), None).await;
    let token = minted.body["token"].as_str().unwrap().to_owned();
    let by_key = open(&stack, "", Some(&doomed)).await;
    let by_token = open(&stack, &format!("?token={token}"), None).await;
    let redis = shared::redis::native::connect(&stack.redis.url).await.unwrap();
    assert!(shared::apikey::revoke(&redis, &org, &doomed_id).await.unwrap());
    let revoked = Instant::now();
    for response in [by_key, by_token] {
        let text = text_until_end(response, Duration::from_millis(1800)).await.expect("ended by the revocation");
        assert!(text.contains("credential no longer holds"), "{text}");
    }
    assert!(revoked.elapsed() < Duration::from_millis(1800));

    // A login token's stream ends when the token expires.
    let mut short = claims(&org, "viewer");
    short["exp"] = json!(e2e::now() + 1);
    let text = text_until_end(open(&stack, "", Some(&rs256(&short))).await, Duration::from_secs(4)).await.expect("ended at expiry");
    assert!(text.contains("credential no longer holds"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewers_stream_never_carries_a_pairing_code() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (reader, _) = e2e::api_key_at(&stack.redis.url, &org, &[Capability::Read]).await;
    let viewer = rs256(&claims(&org, "viewer"));
    let mut watchers = vec![
        stack.subscribe(Some(&reader), "types=auth.*", None).await.unwrap(),
        stack.subscribe(Some(&viewer), "types=auth.*", None).await.unwrap(),
    ];
    let mut manager = stack.subscribe(Some(&key), "types=auth.*", None).await.unwrap();

    let id = stack.create(&key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();
    let shown = stack.qr_until(&key, &id, None, SOON).await["code"].as_str().unwrap().to_owned();
    let code = stack.client.post(&stack.session_url(&stack.create(&key, "{}").await["id"].as_str().unwrap(), "/pairing-code"), &key, r#"{"phone": "628123450000"}"#).await;
    assert_eq!(code.status, 200, "{}", code.body);

    let seen = manager.until(SOON, |e| e.kind == "auth.pairing_code").await;
    assert!(seen.iter().any(|e| e.data["data"]["code"] == shown.as_str()), "a manager sees the live code");
    for watcher in &mut watchers {
        let seen = watcher.until(SOON, |e| e.kind == "auth.pairing_code").await;
        assert!(seen.iter().any(|e| e.kind == "auth.qr"), "pairing is still announced");
        for event in &seen {
            assert_eq!((&event.data["data"]["code"], &event.data["data"]["redacted"]), (&Value::Null, &Value::Bool(true)), "{event:?}");
            assert!(!event.data.to_string().contains(&shown), "{event:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pairing_codes_are_rate_limited_per_session_and_per_phone() {
    let stack = Stack::start_configured(
        &[("BACKEND", "simulator")],
        &[("pairing_codes_per_session_per_hour", "2"), ("pairing_codes_per_phone_per_hour", "3")],
    );
    let key = stack.key(&new_org()).await;
    let ask = async |id: &str, phone: &str| {
        stack.client.post(&stack.session_url(id, "/pairing-code"), &key, &format!(r#"{{"phone": "{phone}"}}"#)).await
    };
    let first = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    for phone in ["447700900001", "447700900002"] {
        assert_eq!(ask(&first, phone).await.status, 200);
    }
    let third = ask(&first, "447700900003").await;
    assert_eq!(third.expect_error(429, "rate_limited")["scope"], "pairing_code_session");
    assert!((1..=3600).contains(&retry_after(&third)));

    // One phone number cannot be prompted from session after session.
    for _ in 0..2 {
        let other = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
        assert_eq!(ask(&other, "447700900001").await.status, 200);
    }
    let fresh = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    let refused = ask(&fresh, "447700900001").await;
    assert_eq!(refused.expect_error(429, "rate_limited")["scope"], "pairing_code_phone");
    assert_eq!(ask(&fresh, "447700900009").await.status, 200, "other numbers are not held up");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_beyond_the_quota_are_a_conflict() {
    let stack = Stack::start_configured(&[("BACKEND", "simulator")], &[("max_sessions_per_org", "3")]);
    let (key, other) = (stack.key(&new_org()).await, stack.key(&new_org()).await);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned());
    }
    let refused = stack.client.post(&stack.gateway.url("/api/v1/sessions"), &key, r#"{"start": true}"#).await;
    let details = refused.expect_error(409, "conflict");
    assert_eq!((&details["reason"], &details["limit"]), (&"session_quota".into(), &3.into()));
    assert_eq!(stack.client.get(&stack.gateway.url("/api/v1/sessions"), &key).await.body["data"].as_array().unwrap().len(), 3);
    stack.create(&other, "{}").await;

    assert_eq!(stack.client.delete(&stack.session_url(&ids[0], ""), &key).await.status, 204);
    stack.create(&key, "{}").await;
}

/// An organization's sessions accept `org_messages_per_minute` messages a minute together,
/// or what its own override says (`cargo xtask quota`); past it, 429 `organization_messages`
/// with a `Retry-After` to the next minute, answered from the headers without reading the body,
/// and other organizations send on.
#[tokio::test(flavor = "multi_thread")]
async fn messages_past_the_organizations_quota_are_refused_from_the_headers() {
    let stack = Stack::start_configured(&[("BACKEND", "simulator")], &[("org_messages_per_minute", "3")]);
    let (org, other) = (new_org(), new_org());
    let (key, other_key) = (stack.key(&org).await, stack.key(&other).await);
    // Near a minute's end the window turns over mid-test: start at the beginning of one.
    let into_minute = shared::time::now_millis().rem_euclid(60_000);
    if into_minute > 40_000 {
        tokio::time::sleep(Duration::from_millis((60_000 - into_minute) as u64 + 100)).await;
    }
    let (first, _) = stack.paired_session_with(&key, r#"{"start": true}"#, "628111000101").await;
    let (second, _) = stack.paired_session_with(&key, r#"{"start": true}"#, "628111000102").await;
    let (theirs, _) = stack.paired_session_with(&other_key, r#"{"start": true}"#, "628111000103").await;
    let send = |session: &str, key: &str| {
        let (url, key) = (stack.session_url(session, "/messages"), key.to_owned());
        let client = &stack.client;
        async move { client.post(&url, &key, r#"{"to": "628222000101", "text": "hello"}"#).await }
    };
    for session in [&first, &second, &first] {
        assert_eq!(send(session, &key).await.status, 202);
    }
    let refused = send(&second, &key).await;
    let details = refused.expect_error(429, "rate_limited");
    assert_eq!((&details["scope"], &details["limit"]), (&json!("organization_messages"), &json!(3)));
    assert!((1..=60).contains(&retry_after(&refused)), "{refused:?}");
    assert_eq!(send(&theirs, &other_key).await.status, 202, "another organization sends on");

    // A full quota refuses a 16 MB send from its headers: the answer comes with no body sent.
    let address = stack.gateway.url.trim_start_matches("http://").to_owned();
    let path = format!("/api/v1/sessions/{first}/messages");
    let answer = tokio::task::block_in_place(|| {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(&address).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: 16000000\r\n\r\n");
        raw.write_all(head.as_bytes()).unwrap();
        let mut buffer = [0u8; 4096];
        let read = raw.read(&mut buffer).unwrap_or(0);
        String::from_utf8_lossy(&buffer[..read]).into_owned()
    });
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");

    let redis = shared::redis::native::connect(&stack.redis.url).await.unwrap();
    shared::quota::set(&redis, &org, shared::quota::MESSAGES_PER_MINUTE, Some(5)).await.unwrap();
    assert_eq!(send(&second, &key).await.status, 202, "the organization's override raised its quota");
}

/// A gateway whose login tokens are checked against `jwks`, with these extra settings.
fn gateway_with_jwks(stack: &Stack, jwks: &JwksServer, extra: &[(&'static str, &str)]) -> Gateway {
    let mut variables = vec![
        ("jwt_issuer", e2e::ISSUER.to_owned()),
        ("jwt_audience", e2e::AUDIENCE.to_owned()),
        ("jwks_url", jwks.url.clone()),
    ];
    variables.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Gateway::start(&stack.redis.url, &borrowed(&variables))
}

#[tokio::test(flavor = "multi_thread")]
async fn login_tokens_with_leeway_and_a_bounded_jwks_that_outlives_its_issuers_outage() {
    let stack = Stack::start();
    let org = new_org();
    let client = Client::default();
    let sessions = |gateway: &Gateway| gateway.url("/api/v1/sessions");
    let expired_by = |secs: i64| {
        let mut c = claims(&org, "admin");
        c["exp"] = json!(e2e::now() - secs);
        rs256(&c)
    };

    // Plain http is refused unless the operator opts in.
    let jwks = JwksServer::start();
    let insecure = gateway_with_jwks(&stack, &jwks, &[]);
    let refused = client.get(&sessions(&insecure), &rs256(&claims(&org, "admin"))).await;
    assert_eq!(refused.expect_error(503, "unavailable")["reason"], "insecure_jwks_url");

    // The default leeway (60 s) absorbs clock skew, no more.
    let gateway = gateway_with_jwks(&stack, &jwks, &[("jwks_allow_http", "true"), ("jwks_cache_secs", "1"), ("jwks_refetch_secs", "1"), ("jwks_fetch_timeout_ms", "500")]);
    assert_eq!(client.get(&sessions(&gateway), &expired_by(30)).await.status, 200);
    client.get(&sessions(&gateway), &expired_by(90)).await.expect_error(401, "unauthorized");

    // The issuer goes down: the cached keys keep serving past the cache period.
    jwks.status.store(500, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(client.get(&sessions(&gateway), &rs256(&claims(&org, "admin"))).await.status, 200, "served from the stale cache");
    assert!(jwks.fetches.load(std::sync::atomic::Ordering::SeqCst) >= 2, "a refetch was tried");

    // A JWKS endpoint that stalls or sends too much is given up on, quickly.
    let stalled = JwksServer::start();
    stalled.delay_ms.store(30_000, std::sync::atomic::Ordering::SeqCst);
    let waits = gateway_with_jwks(&stack, &stalled, &[("jwks_allow_http", "true"), ("jwks_fetch_timeout_ms", "500")]);
    let started = Instant::now();
    client.get(&sessions(&waits), &rs256(&claims(&org, "admin"))).await.expect_error(503, "unavailable");
    assert!(started.elapsed() < Duration::from_secs(3), "gave up after {:?}", started.elapsed());
    let bloated = JwksServer::start();
    *bloated.document.lock().unwrap() = format!(r#"{{"keys":[],"padding":"{}"}}"#, "x".repeat(100_000));
    let big = gateway_with_jwks(&stack, &bloated, &[("jwks_allow_http", "true")]);
    let refused = client.get(&sessions(&big), &rs256(&claims(&org, "admin"))).await;
    assert!(refused.expect_error(503, "unavailable")["reason"].as_str().unwrap().contains("exceeds"), "{:?}", refused.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_answers_503_in_the_envelope_when_out_of_instances_or_connections() {
    let stack = Stack::start();
    let key = stack.key(&new_org()).await;
    let host = |env: &[(&str, &str)]| Gateway::start_full(&root().join("spin.toml"), &stack.redis.url, &[], env);

    // Each open event stream holds an instance; past the pool, requests are 503 with Retry-After.
    let small = host(&[("GATEWAY_MAX_INSTANCES", "3")]);
    let client = Client::default();
    let mut streams = Vec::new();
    let mut busy = None;
    for _ in 0..5 {
        match e2e::Sse::open(&client, &small.url("/api/v1/events"), Some(&key), None).await {
            Ok(stream) => streams.push(stream),
            Err(reply) => {
                busy = Some(reply);
                break;
            }
        }
    }
    let busy = busy.expect("the pool ran out");
    busy.expect_error(503, "unavailable");
    assert!(retry_after(&busy) >= 1);
    client.get(&small.url("/api/v1/sessions"), &key).await.expect_error(503, "unavailable");
    drop(streams);
    let deadline = Instant::now() + SOON;
    while client.get(&small.url("/api/v1/sessions"), &key).await.status != 200 {
        assert!(Instant::now() < deadline, "instances were not returned when the streams closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Connections past the cap get one 503 and are closed; a silent client is cut off.
    let capped = host(&[("GATEWAY_MAX_CONNECTIONS", "2"), ("GATEWAY_HEADER_READ_TIMEOUT_MS", "500")]);
    let address = capped.url.trim_start_matches("http://").to_owned();
    let idle: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = std::net::TcpStream::connect(&address).unwrap();
    let answer = tokio::task::block_in_place(|| {
        use std::io::{Read, Write};
        extra.write_all(b"GET /api/v1/sessions HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = extra.read_to_string(&mut text);
        text
    });
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"unavailable""#) && answer.to_ascii_lowercase().contains("retry-after"), "{answer}");
    let closed = tokio::task::block_in_place(|| {
        use std::io::Read;
        let mut silent = idle.into_iter().next().unwrap();
        silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let read = silent.read(&mut [0u8; 64]);
        (matches!(read, Ok(0)) || read.is_err(), started.elapsed())
    });
    assert!(closed.0 && closed.1 < Duration::from_secs(3), "a client that sends no headers is closed after the timeout: {closed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_with_files_beyond_the_organizations_share_are_refused_from_the_headers() {
    let stack = Stack::start_configured(&[("BACKEND", "simulator")], &[("large_requests_per_org", "1")]);
    let (org, other) = (new_org(), new_org());
    let (key, other_key) = (stack.key(&org).await, stack.key(&other).await);
    let mine = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    let theirs = stack.create(&other_key, "{}").await["id"].as_str().unwrap().to_owned();
    let address = stack.gateway.url.trim_start_matches("http://").to_owned();
    // A send with a file whose body is still arriving holds the organization's one slot.
    let head = |session: &str, key: &str, length: usize| {
        format!("POST /api/v1/sessions/{session}/messages HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n")
    };
    let mut uploading = std::net::TcpStream::connect(&address).unwrap();
    std::io::Write::write_all(&mut uploading, format!("{}{{\"to\": \"628222000101\", ", head(&mine, &key, 1_000_000)).as_bytes()).unwrap();
    let file = format!(r#"{{"to": "628222000101", "image": {{"data": "{}", "mimeType": "image/png"}}}}"#, "A".repeat(200_000));
    // Once the host has handed the upload to an instance, which holds the slot while it reads:
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut redis = stack.redis().await;
    while redis::AsyncCommands::zcard::<_, u64>(&mut redis, shared::keys::org_large_requests(&org)).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "the upload took no slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = stack.client.post(&stack.session_url(&mine, "/messages"), &key, &file).await;
    let details = refused.expect_error(429, "rate_limited");
    assert_eq!((&details["scope"], &details["limit"]), (&json!("organization_large_requests"), &json!(1)));
    assert!(retry_after(&refused) >= 1, "{refused:?}");
    // Refused before a byte of the body: the answer comes with nothing sent after the headers.
    let answer = tokio::task::block_in_place(|| {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(&address).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(head(&mine, &key, 16_000_000).as_bytes()).unwrap();
        let mut buffer = [0u8; 4096];
        let read = raw.read(&mut buffer).unwrap_or(0);
        String::from_utf8_lossy(&buffer[..read]).into_owned()
    });
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    // Another organization's files are read as usual, and a send without a file needs no slot
    // (the sessions are not paired: 409, not 429).
    stack.client.post(&stack.session_url(&theirs, "/messages"), &other_key, &file).await.expect_error(409, "conflict");
    let text = r#"{"to": "628222000101", "text": "hi"}"#;
    stack.client.post(&stack.session_url(&mine, "/messages"), &key, text).await.expect_error(409, "conflict");
    // The upload given up on, its slot comes back.
    drop(uploading);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = stack.client.post(&stack.session_url(&mine, "/messages"), &key, &file).await;
        if reply.status == 409 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slot did not come back: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
