//! Webhooks end to end: endpoints registered over the API, events delivered by the real daemon
//! to a receiver in the test process, signed the Standard Webhooks way, checked with the
//! specification's own library; retries, the dead letter, redelivery, replay, a worker killed
//! mid-delivery and two workers racing.

use e2e::{Received, Receiver, Reply, Stack, api_key_at, new_org};
use serde_json::{Value, json};
use shared::auth::Capability;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(10);
/// Sessions that send without the "typing…" pause, and fast: the tests wait on deliveries.
const QUICK_SESSION: &str = r#"{"start": true, "presenceTyping": false, "ratePerMin": 1000, "ratePerHour": 60000}"#;

async fn register(stack: &Stack, key: &str, body: Value) -> Value {
    let reply = stack.client.post(&stack.gateway.url("/api/v1/webhooks"), key, &body.to_string()).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

async fn webhook(stack: &Stack, key: &str, id: &str, suffix: &str) -> Reply {
    stack.client.get(&stack.gateway.url(&format!("/api/v1/webhooks/{id}{suffix}")), key).await
}

async fn action(stack: &Stack, key: &str, id: &str, action: &str, body: &str) -> Reply {
    stack.client.post(&stack.gateway.url(&format!("/api/v1/webhooks/{id}:{action}")), key, body).await
}

async fn update(stack: &Stack, key: &str, id: &str, body: Value) -> Reply {
    stack.client.send("PATCH", &stack.gateway.url(&format!("/api/v1/webhooks/{id}")), Some(key), Some(&body.to_string())).await
}

/// Texts `n` messages through the session; each logs `message.status` events as it moves.
async fn send_texts(stack: &Stack, key: &str, session_id: &str, n: usize) {
    for i in 0..n {
        let body = json!({"to": "+628222000001", "text": format!("hello {i}")}).to_string();
        let reply = stack.client.post(&stack.session_url(session_id, "/messages"), key, &body).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
}

/// The event each request carried.
fn events(requests: &[Received]) -> Vec<Value> {
    requests.iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect()
}

fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

/// Checks the Standard Webhooks headers of a request with the specification's library.
fn verify(request: &Received, secret: &str) {
    let signer = standardwebhooks::Webhook::new(secret).unwrap();
    signer.verify(&request.body, &request.headers).unwrap_or_else(|e| panic!("signature: {e}; headers {:?}", request.headers));
    let event: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(request.headers["webhook-id"], event["id"].as_str().unwrap());
    assert_eq!(request.headers["content-type"], "application/json");
}

/// The organization's logged events (after `after`, a log position) of the given session.
async fn logged(stack: &Stack, org: &str, session_id: &str, after: &str) -> Vec<Value> {
    let after = shared::event_log::position(after).unwrap();
    stack.log(org).await.into_iter()
        .filter(|e| shared::event_log::position(&e.id).unwrap() > after && e.data["sessionId"] == session_id)
        .map(|e| e.data)
        .collect()
}

async fn message_events(stack: &Stack, org: &str, session_id: &str, after: &str) -> Vec<Value> {
    logged(stack, org, session_id, after).await.into_iter().filter(|e| e["type"].as_str().unwrap().starts_with("message.")).collect()
}

#[tokio::test]
async fn events_arrive_signed_in_order_filtered_and_only_at_their_organization() {
    let stack = Stack::start();
    let receiver = Receiver::start();
    let (org, other_org) = (new_org(), new_org());
    let (key, other_key) = (stack.key(&org).await, stack.key(&other_org).await);
    let start = shared::event_log::last_id(&stack.redis().await, &org).await.unwrap();

    let all = register(&stack, &key, json!({"url": format!("{}/all", receiver.url), "description": "CRM"})).await;
    let secret = all["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{all}");
    assert_eq!((&all["enabled"], &all["events"], &all["sessions"], &all["health"]["backlog"]), (&json!(true), &json!([]), &json!([]), &json!(0)));
    let statuses = register(&stack, &key, json!({"url": format!("{}/statuses", receiver.url), "events": ["session.*"]})).await;
    let theirs = register(&stack, &other_key, json!({"url": format!("{}/theirs", receiver.url)})).await;

    let (session_id, _) = stack.paired_session_with(&key, QUICK_SESSION, "628111000001").await;
    send_texts(&stack, &key, &session_id, 5).await;
    let (their_session, _) = stack.paired_session(&other_key, "628111000002").await;

    // Everything the organization logged for the session since, in the log's order, once each.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected = logged(&stack, &org, &session_id, &start).await;
    assert!(expected.len() >= 10, "pairing and five messages log events: {expected:?}");
    let received = receiver.until("/all", SOON, |r| r.len() >= expected.len()).await;
    let received = &received[..expected.len()];
    assert_eq!(ids(&events(received)), ids(&expected), "in order, once each");
    assert_eq!(events(received), expected, "the body is the event as logged");
    for request in received {
        verify(request, &secret);
    }
    let wrong = standardwebhooks::Webhook::new(statuses["secret"].as_str().unwrap()).unwrap();
    assert!(wrong.verify(&received[0].body, &received[0].headers).is_err(), "another endpoint's secret does not verify");

    // A filter by family.
    let expected_statuses: Vec<Value> = expected.iter().filter(|e| e["type"].as_str().unwrap().starts_with("session.")).cloned().collect();
    let only_session = receiver.until("/statuses", SOON, |r| r.len() >= expected_statuses.len()).await;
    assert_eq!(events(&only_session[..expected_statuses.len()]), expected_statuses);
    assert!(events(&only_session).iter().all(|e| e["type"].as_str().unwrap().starts_with("session.")));

    // The other organization's endpoint gets its own events and nothing of ours.
    let their_events = events(&receiver.until("/theirs", SOON, |r| r.iter().any(|r| String::from_utf8_lossy(&r.body).contains("working"))).await);
    assert!(their_events.iter().all(|e| e["organizationId"] == other_org.as_str() && e["sessionId"] == their_session.as_str()), "{their_events:?}");
    assert!(events(&receiver.requests("/all")).iter().all(|e| e["organizationId"] == org.as_str()));

    // Health, and the secret is never shown again.
    let shown = webhook(&stack, &key, all["id"].as_str().unwrap(), "").await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert!(shown.body.get("secret").is_none(), "{}", shown.body);
    assert!(shown.body["health"]["lastSuccessAt"].as_i64().is_some(), "{}", shown.body);
    assert_eq!((&shown.body["health"]["backlog"], &shown.body["health"]["lastFailure"]), (&json!(0), &Value::Null));
    let listed = stack.client.get(&stack.gateway.url("/api/v1/webhooks"), &key).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 2, "{}", listed.body);

    // Another organization's endpoint is not found; a key without `manage` is refused.
    let their_id = theirs["id"].as_str().unwrap();
    webhook(&stack, &key, their_id, "").await.expect_error(404, "not_found");
    stack.client.delete(&stack.gateway.url(&format!("/api/v1/webhooks/{their_id}")), &key).await.expect_error(404, "not_found");
    action(&stack, &key, their_id, "redeliver", "").await.expect_error(404, "not_found");
    let (read_key, _) = api_key_at(&stack.redis.url, &org, &[Capability::Read, Capability::Send]).await;
    webhook(&stack, &read_key, all["id"].as_str().unwrap(), "").await.expect_error(403, "forbidden");
    stack.client.send("GET", &stack.gateway.url("/api/v1/webhooks"), None, None).await.expect_error(401, "unauthorized");

    // Hostile and malformed input: each a 400 naming its field.
    for (body, field) in [
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": format!("{}/x", receiver.url), "events": ["nope"]}), "events"),
        (json!({"url": format!("{}/x", receiver.url), "sessions": ["../../x"]}), "sessions"),
        (json!({"url": format!("{}/x", receiver.url), "secret": "mine"}), "secret"),
    ] {
        let reply = stack.client.post(&stack.gateway.url("/api/v1/webhooks"), &key, &body.to_string()).await;
        assert_eq!(reply.expect_error(400, "validation_error")["field"], field, "{body}");
    }
    stack.client.send("PUT", &stack.gateway.url("/api/v1/webhooks"), Some(&key), Some("{}")).await.expect_error(405, "method_not_allowed");
    action(&stack, &key, all["id"].as_str().unwrap(), "explode", "").await.expect_error(404, "not_found");

    // Deleted: nothing more arrives.
    let reply = stack.client.delete(&stack.gateway.url(&format!("/api/v1/webhooks/{}", all["id"].as_str().unwrap())), &key).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let before = receiver.requests("/all").len();
    send_texts(&stack, &key, &session_id, 2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.requests("/all").len(), before, "a deleted endpoint receives nothing");
}

#[tokio::test]
async fn failed_deliveries_are_retried_in_order_until_they_succeed() {
    let stack = Stack::start_with(&[
        ("BACKEND", "simulator"),
        ("WEBHOOK_RETRY_BASE_MS", "100"),
        ("WEBHOOK_RETRY_MAX_MS", "300"),
        ("WEBHOOK_TIMEOUT_MS", "500"),
    ]);
    let receiver = Receiver::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (session_id, _) = stack.paired_session_with(&key, QUICK_SESSION, "628111000003").await;
    let after_pairing = shared::event_log::last_id(&stack.redis().await, &org).await.unwrap();

    // An endpoint that fails with 500, then times out, then recovers: every event arrives, in
    // order, the first after several attempts with the same webhook-id.
    receiver.answer("/flaky", 500, 0);
    let flaky = register(&stack, &key, json!({"url": format!("{}/flaky", receiver.url), "events": ["message.*"]})).await;
    let flaky_id = flaky["id"].as_str().unwrap();
    send_texts(&stack, &key, &session_id, 3).await;
    receiver.until("/flaky", SOON, |r| r.len() >= 3).await;
    let health = webhook(&stack, &key, flaky_id, "").await.body["health"].clone();
    assert_eq!(health["lastFailure"], "status 500", "{health}");
    assert!(health["backlog"].as_u64().unwrap() >= 3, "{health}");
    receiver.answer("/flaky", 200, 900);
    receiver.until("/flaky", SOON, |r| r.len() >= 5).await;
    receiver.answer("/flaky", 200, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected = message_events(&stack, &org, &session_id, &after_pairing).await;
    let requests = receiver.until("/flaky", SOON, |r| {
        let mut seen = Vec::new();
        for event in events(r) {
            if seen.last() != Some(&event["id"]) {
                seen.push(event["id"].clone());
            }
        }
        seen.len() >= expected.len()
    }).await;
    let mut distinct = ids(&events(&requests));
    distinct.dedup();
    assert_eq!(distinct, ids(&expected), "in order: a retried event holds back the ones after it");
    for request in &requests {
        verify(request, flaky["secret"].as_str().unwrap());
    }
    let health = webhook(&stack, &key, flaky_id, "").await.body["health"].clone();
    assert_eq!(health["lastFailure"], "timeout", "{health}");
    assert!(health["lastSuccessAt"].as_i64() > health["lastFailureAt"].as_i64(), "{health}");
    assert_eq!((&health["backlog"], &health["deadLetters"]), (&json!(0), &json!(0)), "each delivered, none given up: {health}");

}

#[tokio::test]
async fn events_given_up_on_are_dead_lettered_then_redelivered_replayed_and_paused() {
    let stack = Stack::start_with(&[
        ("BACKEND", "simulator"),
        ("WEBHOOK_RETRY_BASE_MS", "100"),
        ("WEBHOOK_RETRY_MAX_MS", "300"),
        ("WEBHOOK_RETRY_PERIOD_SECS", "1"),
    ]);
    let receiver = Receiver::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (session_id, _) = stack.paired_session_with(&key, QUICK_SESSION, "628111000005").await;

    // An endpoint that never answers 2xx: dead-lettered after the retry period, with why.
    receiver.answer("/down", 503, 0);
    let down = register(&stack, &key, json!({"url": format!("{}/down", receiver.url), "events": ["message.status"]})).await;
    let down_id = down["id"].as_str().unwrap();
    let before_down = shared::event_log::last_id(&stack.redis().await, &org).await.unwrap();
    send_texts(&stack, &key, &session_id, 1).await;
    let dead = {
        // Each event is retried for its own second: a session's events wait behind the first.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let page = webhook(&stack, &key, down_id, "/dead-letters").await;
            assert_eq!(page.status, 200, "{}", page.body);
            let shown = webhook(&stack, &key, down_id, "").await.body;
            if page.body["data"].as_array().unwrap().len() >= 3 && shown["health"]["backlog"] == 0 {
                break page.body["data"].as_array().unwrap().clone();
            }
            assert!(std::time::Instant::now() < deadline, "not dead-lettered: {} {}", page.body, shown);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let expected_down: Vec<Value> = logged(&stack, &org, &session_id, &before_down).await;
    assert_eq!(dead.iter().map(|d| d["event"].clone()).collect::<Vec<_>>(), expected_down, "every event, in order");
    assert!(dead.iter().all(|d| d["reason"] == "status 503" && d["attempts"].as_u64().unwrap() >= 2), "{dead:?}");
    let paged = webhook(&stack, &key, down_id, "/dead-letters?limit=2").await.body;
    assert_eq!(paged["data"].as_array().unwrap().len(), 2);
    let rest = webhook(&stack, &key, down_id, &format!("/dead-letters?limit=100&cursor={}", paged["nextCursor"].as_str().unwrap())).await.body;
    assert_eq!(rest["data"].as_array().unwrap().len(), dead.len() - 2, "{rest}");

    // Redelivered with one call once the endpoint is back: all of them, in order.
    receiver.answer("/down", 204, 0);
    let attempts_before = receiver.requests("/down").len();
    let reply = action(&stack, &key, down_id, "redeliver", "").await;
    assert_eq!((reply.status, &reply.body["redelivered"]), (202, &json!(dead.len())), "{}", reply.body);
    let redelivered = receiver.until("/down", SOON, |r| r.len() >= attempts_before + dead.len()).await;
    assert_eq!(events(&redelivered[attempts_before..]), expected_down);
    assert_eq!(webhook(&stack, &key, down_id, "/dead-letters").await.body["data"], json!([]));

    // Replayed from a position of the log: the events since arrive again, in order.
    let reply = action(&stack, &key, down_id, "replay", &json!({"after": before_down}).to_string()).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let replayed = receiver.until("/down", SOON, |r| r.len() >= attempts_before + 2 * dead.len()).await;
    assert_eq!(events(&replayed[attempts_before + dead.len()..]), expected_down);
    action(&stack, &key, down_id, "replay", r#"{"after": "yesterday"}"#).await.expect_error(400, "validation_error");
    // From past the log's end: nothing again, and it goes on from the newest event, never past
    // it (it would skip what comes next).
    let newest = stack.log(&org).await.last().unwrap().id.clone();
    let future = action(&stack, &key, down_id, "replay", &json!({"since": shared::time::now_millis() + 3_600_000}).to_string()).await;
    assert_eq!(future.status, 202, "{}", future.body);
    let at = future.body["after"].as_str().unwrap().to_owned();
    let position = shared::event_log::position;
    assert!(position(&at) >= position(&newest), "{at} is not before the newest event {newest}");
    assert!(stack.log(&org).await.iter().any(|e| e.id == at), "{at} is an event of the log, not past its end");

    // Rotation: both secrets sign during the overlap.
    let rotated = action(&stack, &key, down_id, "rotate-secret", "").await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let before_rotation = receiver.requests("/down").len();
    send_texts(&stack, &key, &session_id, 1).await;
    let signed = receiver.until("/down", SOON, |r| r.len() >= before_rotation + 3).await;
    verify(&signed[before_rotation], rotated.body["secret"].as_str().unwrap());
    verify(&signed[before_rotation], down["secret"].as_str().unwrap());
    // The old secret is deleted by Redis itself when the overlap (a day) ends, delivery or not.
    let kept_ms: i64 = redis::AsyncCommands::pttl(&mut stack.redis().await, shared::keys::webhook_previous_secret(&org, down_id)).await.unwrap();
    assert!((86_000_000..=86_400_000).contains(&kept_ms), "the old secret expires with its overlap: {kept_ms} ms");

    // Disabled: nothing goes out; enabled again: it catches up from where it stopped.
    let patch = |body: Value| update(&stack, &key, down_id, body);
    assert_eq!(patch(json!({"enabled": false})).await.body["enabled"], false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paused_at = receiver.requests("/down").len();
    send_texts(&stack, &key, &session_id, 1).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(receiver.requests("/down").len(), paused_at, "a disabled endpoint receives nothing");
    assert_eq!(patch(json!({"enabled": true})).await.status, 200);
    receiver.until("/down", SOON, |r| r.len() >= paused_at + 3).await;
    patch(json!({"url": "gopher://x"})).await.expect_error(400, "validation_error");
}

#[tokio::test]
async fn a_worker_killed_mid_delivery_loses_nothing_and_two_workers_deliver_each_event_once() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("WEBHOOK_TIMEOUT_MS", "1500")]);
    let receiver = Receiver::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (session_id, _) = stack.paired_session_with(&key, QUICK_SESSION, "628111000004").await;
    let hook = register(&stack, &key, json!({"url": format!("{}/hook", receiver.url), "events": ["message.*"]})).await;
    let start = shared::event_log::last_id(&stack.redis().await, &org).await.unwrap();

    // The receiver holds the first delivery; the daemon dies with it in flight.
    receiver.answer("/hook", 200, 1_000);
    send_texts(&stack, &key, &session_id, 1).await;
    receiver.until("/hook", SOON, |r| !r.is_empty()).await;
    stack.daemon.kill();
    receiver.answer("/hook", 200, 0);
    stack.daemon.restart();
    let second = stack.daemon.start_beside();
    send_texts(&stack, &key, &session_id, 20).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected = {
        let deadline = std::time::Instant::now() + SOON;
        loop {
            let so_far = message_events(&stack, &org, &session_id, &start).await;
            // Each of the 21 messages is queued, sent and delivered; the receipt of the one sent
            // as the daemon died may be lost with the simulated phone that lived in it.
            if so_far.len() >= 62 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                break message_events(&stack, &org, &session_id, &start).await;
            }
            assert!(std::time::Instant::now() < deadline, "{} events logged: {so_far:?}", so_far.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    receiver.until("/hook", Duration::from_secs(20), |r| {
        let mut seen: Vec<String> = ids(&events(r));
        seen.sort();
        seen.dedup();
        seen.len() >= expected.len()
    }).await;
    // A receipt logged late is delivered late: compare with the log as it is now.
    let expected = message_events(&stack, &org, &session_id, &start).await;
    let requests = receiver.until("/hook", SOON, |r| r.len() > expected.len()).await;
    let delivered = ids(&events(&requests));
    let first = &delivered[0];
    assert_eq!(delivered.iter().filter(|id| *id == first).count(), 2, "the event in flight when the worker died came again");
    let mut after_kill = delivered[1..].to_vec();
    assert_eq!(after_kill.remove(0), *first, "first again, before any later event");
    assert_eq!(after_kill, ids(&expected)[1..], "then each once, in order, with two workers racing");
    for request in &requests {
        verify(request, hook["secret"].as_str().unwrap());
    }
    drop(second);
}

#[tokio::test]
async fn a_slow_endpoint_holds_only_its_own_share_of_the_delivery_slots() {
    // Four deliveries at once in the daemon: one endpoint may hold one, one organization two.
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("WEBHOOK_CONCURRENCY", "4"), ("WEBHOOK_TIMEOUT_MS", "15000")]);
    let receiver = Receiver::start();
    receiver.answer("/slow", 200, 8_000);
    let (a, b) = (new_org(), new_org());
    let (key_a, key_b) = (stack.key(&a).await, stack.key(&b).await);
    register(&stack, &key_a, json!({"url": format!("{}/slow", receiver.url), "events": ["session.status"]})).await;
    // Four sessions of A: four queues for the slow endpoint, enough to fill every slot at once.
    for _ in 0..4 {
        stack.create(&key_a, r#"{"start": true}"#).await;
    }
    receiver.until("/slow", SOON, |r| !r.is_empty()).await;
    register(&stack, &key_a, json!({"url": format!("{}/fast-a", receiver.url), "events": ["session.status"]})).await;
    register(&stack, &key_b, json!({"url": format!("{}/fast-b", receiver.url), "events": ["session.status"]})).await;
    let started = std::time::Instant::now();
    stack.create(&key_a, r#"{"start": true}"#).await;
    stack.create(&key_b, r#"{"start": true}"#).await;
    receiver.until("/fast-b", SOON, |r| !r.is_empty()).await;
    receiver.until("/fast-a", SOON, |r| !r.is_empty()).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "the other endpoints waited {waited:?} behind the slow one");
    assert_eq!(receiver.requests("/slow").len(), 1, "the slow endpoint got one delivery at a time");
}

#[tokio::test]
async fn a_deleted_sessions_queued_deliveries_go_with_it() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("WEBHOOK_RETRY_BASE_MS", "60000"), ("WEBHOOK_RETRY_MAX_MS", "60000")]);
    let receiver = Receiver::start();
    receiver.answer("/down", 503, 0);
    let org = new_org();
    let key = stack.key(&org).await;
    let hook = register(&stack, &key, json!({"url": format!("{}/down", receiver.url), "events": ["session.status", "auth.*"]})).await;
    let hook_id = hook["id"].as_str().unwrap();
    let session = stack.create(&key, r#"{"start": true}"#).await;
    let session_id = session["id"].as_str().unwrap();
    // The first attempt failed; the next is a minute away, the session's events wait queued.
    receiver.until("/down", SOON, |r| !r.is_empty()).await;
    let backlog = || async { webhook(&stack, &key, hook_id, "").await.body["health"]["backlog"].as_u64().unwrap() };
    assert!(backlog().await >= 1);
    let deleted = stack.client.delete(&stack.session_url(session_id, ""), &key).await;
    assert!(deleted.status < 300, "{}", deleted.body);
    let deadline = std::time::Instant::now() + SOON;
    while backlog().await > 0 {
        assert!(std::time::Instant::now() < deadline, "the deleted session's deliveries are still queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queue = format!("{}{session_id}", shared::keys::webhook_queue_prefix(&org, hook_id));
    let left: bool = redis::AsyncCommands::exists(&mut stack.redis().await, &queue).await.unwrap();
    assert!(!left, "the queue is gone with its session");
}

#[tokio::test]
async fn an_organization_with_many_slow_endpoints_holds_only_its_half() {
    // Four deliveries at once in the daemon, two for one organization.
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("WEBHOOK_CONCURRENCY", "4"), ("WEBHOOK_TIMEOUT_MS", "15000")]);
    let receiver = Receiver::start();
    let (a, b) = (new_org(), new_org());
    let (key_a, key_b) = (stack.key(&a).await, stack.key(&b).await);
    for i in 0..4 {
        receiver.answer(&format!("/slow-{i}"), 200, 8_000);
        register(&stack, &key_a, json!({"url": format!("{}/slow-{i}", receiver.url), "events": ["session.status"]})).await;
    }
    stack.create(&key_a, r#"{"start": true}"#).await;
    let slow = || (0..4).map(|i| receiver.requests(&format!("/slow-{i}")).len()).sum::<usize>();
    let deadline = std::time::Instant::now() + SOON;
    while slow() < 2 {
        assert!(std::time::Instant::now() < deadline, "A's deliveries did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    register(&stack, &key_b, json!({"url": format!("{}/fast-b", receiver.url), "events": ["session.status"]})).await;
    let started = std::time::Instant::now();
    stack.create(&key_b, r#"{"start": true}"#).await;
    receiver.until("/fast-b", SOON, |r| !r.is_empty()).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "B waited {waited:?} behind A's slow endpoints");
    assert_eq!(slow(), 2, "A had two deliveries at once, its half");
}
