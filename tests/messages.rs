//! Messaging end to end: a paired session sends through the API and the simulated WhatsApp
//! server records what reached it, acknowledges it and answers with receipts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use e2e::{FileServer, Reply, Stack, api_key_at, new_org};
use serde_json::{Value, json};
use shared::auth::Capability;
use std::time::{Duration, Instant};

const SOON: Duration = Duration::from_secs(10);

/// `POST …/messages` with an optional `Idempotency-Key`.
async fn send(stack: &Stack, key: &str, session_id: &str, body: &Value, idempotency: Option<&str>) -> Reply {
    let mut request = stack.client.0.post(stack.session_url(session_id, "/messages")).bearer_auth(key).json(body);
    if let Some(idempotency) = idempotency {
        request = request.header("idempotency-key", idempotency);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
    Reply { status, headers, body }
}

async fn accepted(stack: &Stack, key: &str, session_id: &str, body: Value) -> Value {
    let reply = send(stack, key, session_id, &body, None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body
}

/// Polls a message until `done` holds.
async fn message_until(stack: &Stack, key: &str, session_id: &str, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let reply = stack.client.get(&stack.session_url(session_id, &format!("/messages/{id}")), key).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if done(&reply.body) {
            return reply.body;
        }
        assert!(Instant::now() < deadline, "condition not reached; last: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the simulated WhatsApp server took from sessions, oldest first.
async fn delivered(stack: &Stack) -> Vec<Value> {
    let records: Vec<String> = redis::AsyncCommands::lrange(&mut stack.redis().await, shared::keys::simulator_delivered(), 0, -1).await.unwrap();
    records.iter().map(|r| serde_json::from_str(r).unwrap()).collect()
}

/// A lifecycle action (`:stop`, `:start`, `:logout`) that must be accepted.
async fn act(stack: &Stack, key: &str, session_id: &str, action: &str) {
    let reply = stack.client.post(&stack.session_url(session_id, action), key, "").await;
    assert_eq!(reply.status, 200, "{action}: {}", reply.body);
}

/// A paired session, stopped: what is sent to it waits in its outbox.
async fn stopped_session(stack: &Stack, key: &str, phone: &str) -> String {
    let (id, _) = stack.paired_session(key, phone).await;
    act(stack, key, &id, ":stop").await;
    stack.status_until(key, &id, "stopped", SOON).await;
    id
}

async fn backlog(stack: &Stack, key: &str, session_id: &str) -> Value {
    let reply = stack.client.get(&stack.session_url(session_id, "/outbox"), key).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn outbox_len(stack: &Stack, org: &str, session_id: &str) -> usize {
    redis::AsyncCommands::llen(&mut stack.redis().await, shared::keys::session_outbox(org, session_id)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_reaches_whatsapp_once_and_is_acknowledged_delivered_and_read() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SIM_READ_MS", "300")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, row) = stack.paired_session(&key, "628111000001").await;
    let message = accepted(&stack, &key, &id, json!({"to": "+628222000001", "text": "Halo from the API"})).await;
    assert_eq!(message["status"], "queued");
    assert_eq!(message["direction"], "outbound");
    assert_eq!(message["chat"], "628222000001@s.whatsapp.net");
    assert_eq!(message["from"], row["waJid"]);
    assert_eq!(message["type"], "text");
    assert_eq!(message["waMessageId"], Value::Null, "no WhatsApp id before WhatsApp took it");
    let message_id = message["id"].as_str().unwrap();

    let read = message_until(&stack, &key, &id, message_id, SOON, |m| m["status"] == "read").await;
    let wa_id = read["waMessageId"].as_str().expect("the WhatsApp id once sent").to_owned();
    let at = |field: &str| read[field].as_i64().unwrap_or_else(|| panic!("{field} in {read}"));
    assert!(at("queuedAt") <= at("sentAt") && at("sentAt") <= at("deliveredAt") && at("deliveredAt") <= at("readAt"), "{read}");
    assert_eq!(read["error"], Value::Null);

    let records = delivered(&stack).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!((&records[0]["waMessageId"], &records[0]["text"], &records[0]["to"]), (&json!(wa_id), &json!("Halo from the API"), &json!("628222000001@s.whatsapp.net")));
    assert_eq!(records[0]["from"], row["waJid"]);

    let steps: Vec<String> = stack.events(&org).await.iter()
        .filter(|e| e["type"] == "message.status" && e["data"]["messageId"] == message_id)
        .map(|e| e["data"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(steps, ["queued", "sent", "delivered", "read"]);
    assert_eq!(outbox_len(&stack, &org, &id).await, 0, "a sent message leaves the outbox");
}

#[tokio::test(flavor = "multi_thread")]
async fn locations_and_quoted_replies_with_mentions() {
    let stack = Stack::start();
    let key = stack.key(&new_org()).await;
    let (id, row) = stack.paired_session(&key, "628111000002").await;
    let place = json!({"to": "628222000002", "location": {"latitude": -6.1754, "longitude": 106.8272, "name": "Monas", "address": "Jakarta"}});
    let first = accepted(&stack, &key, &id, place).await;
    let first = message_until(&stack, &key, &id, first["id"].as_str().unwrap(), SOON, |m| m["status"] == "delivered").await;
    assert_eq!((&first["type"], &first["location"]["name"]), (&json!("location"), &json!("Monas")));
    let reply = json!({"to": "628222000002", "text": "See you there @628333000003", "replyTo": first["id"], "mentions": ["628333000003"]});
    let second = accepted(&stack, &key, &id, reply).await;
    assert_eq!(second["replyTo"], first["id"]);
    message_until(&stack, &key, &id, second["id"].as_str().unwrap(), SOON, |m| m["status"] == "delivered").await;
    let records = delivered(&stack).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["location"]["latitude"], json!(-6.1754));
    assert_eq!(records[1]["quote"]["waMessageId"], first["waMessageId"]);
    // A reply carries a copy of what it quotes, which is what the phone shows above it.
    assert_eq!((&records[1]["quote"]["type"], &records[1]["quote"]["participant"]), (&json!("location"), &row["waJid"]), "{}", records[1]);
    assert_eq!(records[1]["mentions"], json!(["628333000003@s.whatsapp.net"]));
    let third = accepted(&stack, &key, &id, json!({"to": "628222000002", "text": "On my way", "replyTo": second["id"]})).await;
    message_until(&stack, &key, &id, third["id"].as_str().unwrap(), SOON, |m| m["status"] == "delivered").await;
    let records = delivered(&stack).await;
    assert_eq!(records[2]["quote"]["text"], "See you there @628333000003", "{}", records[2]);
    let unknown = send(&stack, &key, &id, &json!({"to": "628222000002", "text": "x", "replyTo": "01JUNKNOWN"}), None).await;
    assert_eq!(unknown.expect_error(404, "not_found")["field"], "replyTo");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_name_their_field_and_queue_nothing() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628111000003").await;
    for (body, field) in [
        (json!({"text": "no recipient"}), "to"),
        (json!({"to": "not-a-number", "text": "x"}), "to"),
        (json!({"to": "628222000003"}), "text"),
        (json!({"to": "628222000003", "text": ""}), "text"),
        (json!({"to": "628222000003", "text": "x".repeat(4097)}), "text"),
        (json!({"to": "628222000003", "text": "x", "location": {"latitude": 1, "longitude": 1}}), "location"),
        (json!({"to": "628222000003", "text": "x", "priority": "high"}), "priority"),
        (json!({"to": "628222000003", "location": {"latitude": 100, "longitude": 1}}), "location.latitude"),
        (json!({"to": "628222000003", "text": "x", "mentions": "628"}), "mentions"),
    ] {
        let reply = send(&stack, &key, &id, &body, None).await;
        assert_eq!(reply.expect_error(400, "validation_error")["field"], field, "{body}");
    }
    for (body, field) in [
        (json!({"to": "628222000003", "image": {"url": "https://example.com/a.jpg"}}), "image.mimeType"),
        (json!({"to": "628222000003", "image": {"mimeType": "image/jpeg"}}), "image.url"),
        (json!({"to": "628222000003", "image": {"url": "file:///etc/passwd", "mimeType": "image/jpeg"}}), "image.url"),
        (json!({"to": "628222000003", "sticker": {"data": "AAAA", "mimeType": "image/png"}}), "sticker.mimeType"),
        (json!({"to": "628222000003", "document": {"data": "%%%", "mimeType": "application/pdf"}}), "document.data"),
        (json!({"to": "628222000003", "audio": {"data": "AAAA", "mimeType": "audio/ogg", "caption": "x"}}), "audio.caption"),
    ] {
        let reply = send(&stack, &key, &id, &body, None).await;
        assert_eq!(reply.expect_error(400, "validation_error")["field"], field, "{body}");
    }
    let not_json = stack.client.post(&stack.session_url(&id, "/messages"), &key, "{").await;
    not_json.expect_error(400, "validation_error");
    let bad_key = send(&stack, &key, &id, &json!({"to": "628222000003", "text": "x"}), Some("has spaces")).await;
    assert_eq!(bad_key.expect_error(400, "validation_error")["field"], "Idempotency-Key");

    // An unpaired session cannot send.
    let unpaired = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    let refused = send(&stack, &key, &unpaired, &json!({"to": "628222000003", "text": "x"}), None).await;
    assert_eq!(refused.expect_error(409, "conflict")["reason"], "not_paired");

    assert_eq!(outbox_len(&stack, &org, &id).await + outbox_len(&stack, &org, &unpaired).await, 0);
    assert!(delivered(&stack).await.is_empty());
    // Wrong methods and unknown message paths.
    let put = stack.client.send("PUT", &stack.session_url(&id, "/messages"), Some(&key), Some("{}")).await;
    put.expect_error(405, "method_not_allowed");
    stack.client.post(&stack.session_url(&id, "/messages/01J"), &key, "{}").await.expect_error(405, "method_not_allowed");
    stack.client.get(&stack.session_url(&id, "/messages/01JNOSUCHMESSAGE"), &key).await.expect_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_answers_the_first_message_and_never_sends_twice() {
    let stack = Stack::start();
    let key = stack.key(&new_org()).await;
    let (id, _) = stack.paired_session(&key, "628111000004").await;
    let body = json!({"to": "628222000004", "text": "order #17 confirmed"});
    let first = send(&stack, &key, &id, &body, Some("order-17")).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let again = send(&stack, &key, &id, &body, Some("order-17")).await;
    assert_eq!((again.status, &again.body["id"]), (202, &first.body["id"]));
    let other = send(&stack, &key, &id, &json!({"to": "628222000004", "text": "something else"}), Some("order-17")).await;
    assert_eq!(other.expect_error(409, "conflict")["reason"], "idempotency_key_reused");
    message_until(&stack, &key, &id, first.body["id"].as_str().unwrap(), SOON, |m| m["status"] == "delivered").await;
    let after = send(&stack, &key, &id, &body, Some("order-17")).await;
    assert_eq!((&after.body["id"], &after.body["status"]), (&first.body["id"], &json!("delivered")));
    assert_eq!(delivered(&stack).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_session_queues_messages_that_can_be_canceled_until_sent() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let id = stopped_session(&stack, &key, "628111000005").await;

    let canceled = accepted(&stack, &key, &id, json!({"to": "628222000005", "text": "never mind"})).await;
    let kept = accepted(&stack, &key, &id, json!({"to": "628222000005", "text": "still wanted"})).await;
    assert_eq!(backlog(&stack, &key, &id).await, json!({"depth": 2, "oldestQueuedAt": canceled["queuedAt"]}));
    let canceled_url = stack.session_url(&id, &format!("/messages/{}", canceled["id"].as_str().unwrap()));
    let reply = stack.client.delete(&canceled_url, &key).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let gone = stack.client.get(&canceled_url, &key).await;
    assert_eq!((&gone.body["status"], &gone.body["error"]["code"]), (&json!("failed"), &json!("canceled")));
    assert_eq!(stack.client.delete(&canceled_url, &key).await.expect_error(409, "conflict")["reason"], "not_queued");
    assert_eq!(outbox_len(&stack, &org, &id).await, 1);
    assert_eq!(backlog(&stack, &key, &id).await, json!({"depth": 1, "oldestQueuedAt": kept["queuedAt"]}));

    // Started again, the session sends what is still queued, and only that.
    act(&stack, &key, &id, ":start").await;
    let sent = message_until(&stack, &key, &id, kept["id"].as_str().unwrap(), SOON, |m| m["status"] == "delivered").await;
    let records = delivered(&stack).await;
    assert_eq!(records.iter().map(|r| r["text"].clone()).collect::<Vec<_>>(), [json!("still wanted")]);
    assert_eq!(backlog(&stack, &key, &id).await, json!({"depth": 0, "oldestQueuedAt": null}));
    let kept_url = stack.session_url(&id, &format!("/messages/{}", sent["id"].as_str().unwrap()));
    assert_eq!(stack.client.delete(&kept_url, &key).await.expect_error(409, "conflict")["status"], "delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_organizations_get_not_found_and_capabilities_hold() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628111000006").await;
    let message = accepted(&stack, &key, &id, json!({"to": "628222000006", "text": "mine"})).await;
    let message_url = stack.session_url(&id, &format!("/messages/{}", message["id"].as_str().unwrap()));
    let body = json!({"to": "628222000006", "text": "theirs"});

    let stranger = stack.key(&new_org()).await;
    send(&stack, &stranger, &id, &body, None).await.expect_error(404, "not_found");
    stack.client.get(&message_url, &stranger).await.expect_error(404, "not_found");
    stack.client.delete(&message_url, &stranger).await.expect_error(404, "not_found");
    stack.client.get(&stack.session_url(&id, "/outbox"), &stranger).await.expect_error(404, "not_found");
    // A message id under another session of the same organization is not found either.
    let (other, _) = stack.paired_session(&key, "628111000007").await;
    let elsewhere = stack.session_url(&other, &format!("/messages/{}", message["id"].as_str().unwrap()));
    stack.client.get(&elsewhere, &key).await.expect_error(404, "not_found");

    let (reader, _) = api_key_at(&stack.redis.url, &org, &[Capability::Read]).await;
    send(&stack, &reader, &id, &body, None).await.expect_error(403, "forbidden");
    stack.client.delete(&message_url, &reader).await.expect_error(403, "forbidden");
    assert_eq!(stack.client.get(&message_url, &reader).await.status, 200);
    let (sender, _) = api_key_at(&stack.redis.url, &org, &[Capability::Send]).await;
    assert_eq!(send(&stack, &sender, &id, &body, None).await.status, 202);
    stack.client.get(&message_url, &sender).await.expect_error(403, "forbidden");
    stack.client.get(&stack.session_url(&id, "/outbox"), &sender).await.expect_error(403, "forbidden");
    assert_eq!(stack.client.get(&stack.session_url(&id, "/outbox"), &reader).await.status, 200);
    send(&stack, "", &id, &body, None).await.expect_error(401, "unauthorized");

    // A message's file: the organization's readers only.
    let image = accepted(&stack, &key, &id, json!({"to": "628222000006", "image": {"data": BASE64.encode(b"png bytes"), "mimeType": "image/png"}})).await;
    let image_id = image["id"].as_str().unwrap();
    message_until(&stack, &key, &id, image_id, SOON, |m| m["status"] == "delivered").await;
    let media_path = format!("/messages/{image_id}/media");
    assert_eq!(stack.file(&reader, &id, &media_path).await, (200, "image/png".to_owned(), b"png bytes".to_vec()));
    stack.client.get(&stack.session_url(&id, &media_path), &stranger).await.expect_error(404, "not_found");
    stack.client.get(&stack.session_url(&other, &media_path), &key).await.expect_error(404, "not_found");
    stack.client.get(&stack.session_url(&id, &media_path), &sender).await.expect_error(403, "forbidden");
    stack.client.get(&stack.session_url(&id, &media_path), "").await.expect_error(401, "unauthorized");
    let text_media = format!("/messages/{}/media", message["id"].as_str().unwrap());
    assert_eq!(stack.client.get(&stack.session_url(&id, &text_media), &key).await.expect_error(404, "not_found")["reason"], "no_media");
    stack.client.post(&stack.session_url(&id, &media_path), &key, "").await.expect_error(405, "method_not_allowed");
}

/// The issue's bar: at ten a minute, a burst of 25 never puts more than ten sends in any 60 s
/// window, and what goes out goes out in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_of_ten_a_minute_holds_over_a_burst_of_twenty_five() {
    let stack = Stack::start();
    let key = stack.key(&new_org()).await;
    let (id, _) = stack.paired_session_with(&key, r#"{"start": true, "ratePerMin": 10, "ratePerHour": 600, "presenceTyping": false}"#, "628111000008").await;
    let mut ids = Vec::new();
    let started = Instant::now();
    for i in 0..25 {
        ids.push(accepted(&stack, &key, &id, json!({"to": "628222000008", "text": format!("burst {i:02}")})).await["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_secs(70).saturating_sub(started.elapsed())).await;
    let records: Vec<Value> = delivered(&stack).await.into_iter().filter(|r| r["session"] == id.as_str()).collect();
    let times: Vec<i64> = records.iter().map(|r| r["at"].as_i64().unwrap()).collect();
    let texts: Vec<String> = records.iter().map(|r| r["text"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = (0..records.len()).map(|i| format!("burst {i:02}")).collect();
    assert_eq!(texts, expected, "in order, each once");
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().filter(|u| **u < t + 60_000).count();
        assert!(in_window <= 10, "{in_window} sends within 60 s from send {i}: {times:?}");
    }
    assert_eq!(records.len(), 20, "ten at once, ten more a minute later, the rest still waiting: {times:?}");
    let waiting = stack.client.get(&stack.session_url(&id, &format!("/messages/{}", ids[24])), &key).await;
    assert_eq!(waiting.body["status"], "queued");
}

/// kill -9 while a burst of texts and files is going out: when the daemon is back, every
/// message went out exactly once and in order, each file as it was given.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_mid_burst_loses_and_repeats_nothing() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SIM_ACK_MS", "40")]);
    let key = stack.key(&new_org()).await;
    let (id, _) = stack.paired_session_with(&key, r#"{"start": true, "ratePerMin": 1000, "ratePerHour": 60000, "presenceTyping": false}"#, "628111000010").await;
    // Every third message carries a file, kept in Redis until WhatsApp took it.
    let body = |i: usize| match i % 3 {
        2 => json!({"to": "628222000010", "image": {"data": BASE64.encode(format!("file {i:02}")), "mimeType": "image/png", "caption": format!("m{i:02}")}}),
        _ => json!({"to": "628222000010", "text": format!("m{i:02}")}),
    };
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(accepted(&stack, &key, &id, body(i)).await["id"].as_str().unwrap().to_owned());
    }
    let deadline = Instant::now() + SOON;
    while delivered(&stack).await.len() < 8 {
        assert!(Instant::now() < deadline, "the burst did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.daemon.kill();
    stack.daemon.restart();
    for message in &ids {
        message_until(&stack, &key, &id, message, Duration::from_secs(30), |m| m["sentAt"].is_i64()).await;
    }
    let records = delivered(&stack).await;
    let (firsts, again): (Vec<&Value>, Vec<&Value>) = records.iter().partition(|r| r["copy"] == 1);
    let texts: Vec<&str> = firsts.iter().map(|r| r["text"].as_str().or(r["media"]["caption"].as_str()).unwrap()).collect();
    let expected: Vec<String> = (0..30).map(|i| format!("m{i:02}")).collect();
    assert_eq!(texts, expected, "every message, in order");
    // WhatsApp cannot tell whether a copy written just before the daemon died reached it: that
    // one message is sent again, and may show twice. Nothing else is.
    assert!(again.len() <= 1, "only the message in flight at the kill goes again: {again:?}");
    for (i, record) in firsts.iter().enumerate().filter(|(i, _)| i % 3 == 2) {
        assert_eq!(record["media"]["sha256"], json!(shared::secret::sha256_hex(format!("file {i:02}"))), "{record}");
    }
}

/// Send failures are told apart as WhatsApp means them: a refusal fails the message at once
/// and the outbox goes on; another failure is counted and tried again after a growing pause,
/// then fails with its cause; a refusal in the server's acknowledgement worth retrying is
/// retried with the same id, its file not uploaded again. A number not on WhatsApp is found out
/// before anything is sent
/// (once: the answer is kept), instead of a message WhatsApp takes and delivers to nobody.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_fail_at_once_other_failures_are_retried_and_numbers_not_on_whatsapp_are_found_out() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SEND_RETRY_BASE_MS", "100")]);
    let key = stack.key(&new_org()).await;
    let (id, _) = stack.paired_session_with(&key, r#"{"start": true, "presenceTyping": false, "ratePerMin": 100}"#, "628111000030").await;
    let refuse = async |chat: &str, error: &str| stack.phone("refuse_sends", &[("chat", chat), ("error", error)]).await;
    let usync = async || redis::AsyncCommands::get::<_, Option<i64>>(&mut stack.redis().await, shared::keys::simulator_usync_queries()).await.unwrap().unwrap_or(0);
    let group = "120363000000000031@g.us";
    refuse(group, "forbidden").await;
    refuse("628222000032@s.whatsapp.net", "encryption").await;
    refuse("628222000033@s.whatsapp.net", "ack:479").await;
    refuse("628222000034@s.whatsapp.net", "ack:500").await;
    refuse("628222000037@s.whatsapp.net", "undeliverable").await;
    stack.phone("unregister", &[("phone", "628222000035")]).await;
    let mut ids = Vec::new();
    for body in [
        json!({"to": group, "text": "left the group"}),
        json!({"to": "628222000032", "text": "cannot be encrypted"}),
        json!({"to": "628222000033", "text": "badly formed"}),
        json!({"to": "628222000034", "image": {"data": BASE64.encode("a picture"), "mimeType": "image/png", "caption": "server busy"}}),
        json!({"to": "628222000035", "text": "nobody there"}),
        json!({"to": "628222000035", "text": "nobody there either"}),
        json!({"to": "628222000036", "text": "fine"}),
        json!({"to": "628222000036", "text": "fine again"}),
        json!({"to": "628222000037", "text": "to a device that cannot take it"}),
    ] {
        ids.push(accepted(&stack, &key, &id, body).await["id"].as_str().unwrap().to_owned());
    }
    let settled = async |i: usize| message_until(&stack, &key, &id, &ids[i], Duration::from_secs(20), |m| m["status"] == "failed" || m["sentAt"].is_i64()).await;
    let left = settled(0).await;
    assert_eq!((&left["status"], &left["error"]["code"]), (&json!("failed"), &json!("rejected")), "{left}");
    let unencrypted = settled(1).await;
    assert_eq!(unencrypted["error"]["code"], "send_failed", "{unencrypted}");
    assert!(unencrypted["error"]["message"].as_str().unwrap().contains("after 5 attempts: encryption failed"), "{unencrypted}");
    let malformed = settled(2).await;
    assert_eq!(malformed["error"]["code"], "server_refused", "{malformed}");
    // The busy server is retried with the same id; it takes the message once it recovers.
    refuse("628222000034@s.whatsapp.net", "").await;
    let busy = message_until(&stack, &key, &id, &ids[3], SOON, |m| m["status"] == "delivered" || m["status"] == "failed").await;
    assert_eq!(busy["status"], "delivered", "{busy}");
    for i in [4, 5] {
        let nobody = settled(i).await;
        assert_eq!(nobody["error"]["code"], "not_on_whatsapp", "{nobody}");
    }
    settled(7).await;
    // Taken by WhatsApp, then refused by the recipient's device: a visible failure.
    let refused = message_until(&stack, &key, &id, &ids[8], SOON, |m| m["status"] == "failed").await;
    assert_eq!(refused["error"]["code"], "undeliverable", "{refused}");
    assert!(refused["sentAt"].is_i64(), "{refused}");
    let records = delivered(&stack).await;
    let texts: Vec<&str> = records.iter().map(|r| r["text"].as_str().or(r["media"]["caption"].as_str()).unwrap()).collect();
    assert_eq!(texts, ["server busy", "fine", "fine again"], "the outbox went on past each failure, and nothing reached nobody");
    assert_eq!(records[0]["media"]["sha256"], json!(shared::secret::sha256_hex("a picture")));
    let uploads: Option<i64> = redis::AsyncCommands::get(&mut stack.redis().await, shared::keys::simulator_uploads()).await.unwrap();
    assert_eq!(uploads, Some(1), "the file was uploaded once, however many times its message was sent");
    assert_eq!(usync().await, 6, "each of the six numbers was looked up once");
}

/// A message is sent again only when the connection that carried it ended before WhatsApp
/// answered: a slow acknowledgement is waited for (a resend is encrypted anew and could show
/// twice), and a copy written into a silent socket goes again on the next connection, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_goes_again_only_when_its_connection_ended_before_the_acknowledgement() {
    // The recipient's phone sends no receipt (one would answer for a late acknowledgement).
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SIM_KEEPALIVE_MS", "1000"), ("SIM_DELIVERED_MS", "0")]);
    let key = stack.key(&new_org()).await;
    let (id, _) = stack.paired_session_with(&key, r#"{"start": true, "presenceTyping": false}"#, "628111000040").await;
    stack.phone("delay_acks", &[("session", &id), ("ms", "11000")]).await;
    let slow = accepted(&stack, &key, &id, json!({"to": "628222000041", "text": "slow"})).await;
    let slow_id = slow["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let waiting = message_until(&stack, &key, &id, slow_id, SOON, |_| true).await;
    assert_eq!((&waiting["status"], &waiting["error"]), (&json!("queued"), &Value::Null), "still waiting for the answer: {waiting}");
    message_until(&stack, &key, &id, slow_id, SOON, |m| m["sentAt"].is_i64()).await;
    stack.phone("delay_acks", &[("session", &id), ("ms", "5")]).await;

    stack.phone("stall", &[("session", &id)]).await;
    let lost = accepted(&stack, &key, &id, json!({"to": "628222000041", "text": "into the void"})).await;
    message_until(&stack, &key, &id, lost["id"].as_str().unwrap(), SOON, |m| m["sentAt"].is_i64()).await;
    let records = delivered(&stack).await;
    let copies: Vec<(&str, i64)> = records.iter().map(|r| (r["text"].as_str().unwrap(), r["copy"].as_i64().unwrap())).collect();
    assert_eq!(copies, [("slow", 1), ("into the void", 1)], "each shown once");
}

/// A recipient WhatsApp keeps refusing never endangers the number: each attempt waits longer
/// (SEND_RETRY_BASE_MS doubling) and takes a place in the rate windows like any send, the
/// message fails with the cause after the last one, and the outbox goes on, within the rates.
#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_send_error_backs_off_within_the_rates_then_fails_and_the_outbox_goes_on() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SEND_RETRY_BASE_MS", "200")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session_with(&key, r#"{"start": true, "presenceTyping": false, "ratePerMin": 6}"#, "628111000050").await;
    stack.phone("refuse_sends", &[("chat", "628222000051@s.whatsapp.net"), ("error", "encryption")]).await;
    let refused = accepted(&stack, &key, &id, json!({"to": "628222000051", "text": "never taken"})).await;
    let next = accepted(&stack, &key, &id, json!({"to": "628222000052", "text": "taken"})).await;
    let held = accepted(&stack, &key, &id, json!({"to": "628222000053", "text": "held by the rates"})).await;
    let failed = message_until(&stack, &key, &id, refused["id"].as_str().unwrap(), Duration::from_secs(20), |m| m["status"] == "failed").await;
    assert_eq!(failed["error"]["code"], "send_failed", "{failed}");
    let took = failed["failedAt"].as_i64().unwrap() - failed["queuedAt"].as_i64().unwrap();
    assert!(took >= 3_000, "waits of 200, 400, 800 and 1,600 ms between the five attempts: {took} ms");
    message_until(&stack, &key, &id, next["id"].as_str().unwrap(), SOON, |m| m["status"] == "delivered").await;
    // Five attempts and one send filled the minute's six places: the third message waits.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let waiting = message_until(&stack, &key, &id, held["id"].as_str().unwrap(), SOON, |_| true).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    let places: i64 = redis::AsyncCommands::zcard(&mut stack.redis().await, shared::keys::session_sends(&org, &id)).await.unwrap();
    assert_eq!(places, 6, "each attempt took a place");
    let texts: Vec<Value> = delivered(&stack).await.iter().map(|r| r["text"].clone()).collect();
    assert_eq!(texts, [json!("taken")]);
}

/// A message whose copy went out but was never acknowledged (its connection ended first) still
/// expires after `message_max_queued_secs`, rather than going out late; a message the gateway
/// cannot read fails as `unreadable`; either way the outbox goes on.
#[tokio::test(flavor = "multi_thread")]
async fn an_unacknowledged_message_expires_and_an_unreadable_one_fails_and_the_outbox_goes_on() {
    let stack = Stack::start_configured(&[("BACKEND", "simulator"), ("SIM_DELIVERED_MS", "0")], &[("message_max_queued_secs", "2")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session_with(&key, r#"{"start": true, "presenceTyping": false}"#, "628111000060").await;
    stack.phone("delay_acks", &[("session", &id), ("ms", "60000")]).await;
    let stale = accepted(&stack, &key, &id, json!({"to": "628222000061", "text": "your code is 123456"})).await;
    let stale_id = stale["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stack.phone("delay_acks", &[("session", &id), ("ms", "5")]).await;
    stack.phone("drop", &[("session", &id)]).await;
    let expired = message_until(&stack, &key, &id, stale_id, SOON, |m| m["status"] == "failed").await;
    assert_eq!(expired["error"]["code"], "expired", "{expired}");

    act(&stack, &key, &id, ":stop").await;
    stack.status_until(&key, &id, "stopped", SOON).await;
    let broken = accepted(&stack, &key, &id, json!({"to": "628222000062", "text": "damaged"})).await;
    let partial = accepted(&stack, &key, &id, json!({"to": "628222000062", "text": "half there"})).await;
    let fine = accepted(&stack, &key, &id, json!({"to": "628222000062", "text": "fine"})).await;
    let (broken_id, partial_id) = (broken["id"].as_str().unwrap(), partial["id"].as_str().unwrap());
    let mut redis = stack.redis().await;
    let _: () = redis::AsyncCommands::hset(&mut redis, shared::keys::message(&org, broken_id), "doc", "{\"id\": 12").await.unwrap();
    let _: () = redis::AsyncCommands::hset(&mut redis, shared::keys::message(&org, partial_id), "doc", r#"{"chat": "628222000062@s.whatsapp.net"}"#).await.unwrap();
    act(&stack, &key, &id, ":start").await;
    message_until(&stack, &key, &id, fine["id"].as_str().unwrap(), SOON, |m| m["sentAt"].is_i64()).await;
    let events = stack.events(&org).await;
    for damaged in [broken_id, partial_id] {
        let failed = events.iter().find(|e| e["type"] == "message.status" && e["data"]["messageId"] == damaged && e["data"]["status"] == "failed");
        assert_eq!(failed.map(|e| e["data"]["error"]["code"].clone()), Some(json!("unreadable")), "{damaged}: {events:#?}");
    }
}

/// WhatsApp's answers to what the session sends reach the sender straight from the client: an
/// acknowledgement never waits behind the session's other work, such as the thousands of
/// contact updates of the first sync after a pairing.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledgements_never_wait_behind_a_contact_sync() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SIM_CONTACTS", "5000")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session_with(&key, r#"{"start": true, "presenceTyping": false}"#, "628111000070").await;
    let message = accepted(&stack, &key, &id, json!({"to": "628222000071", "text": "while the contacts sync"})).await;
    message_until(&stack, &key, &id, message["id"].as_str().unwrap(), SOON, |m| m["sentAt"].is_i64()).await;
    let index = shared::keys::session_directory_index(&org, &id, "contacts");
    let synced: i64 = redis::AsyncCommands::zcard(&mut stack.redis().await, &index).await.unwrap();
    assert!(synced < 5_000, "the message was acknowledged while the sync was under way, not after it: {synced} contacts kept by then");
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis::AsyncCommands::zcard::<_, i64>(&mut stack.redis().await, &index).await.unwrap() < 5_000 {
        assert!(Instant::now() < deadline, "the contacts never all arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Messages accepted for one number never go out from another: after a logout and a pairing
/// with a new number, what was still queued fails instead.
#[tokio::test(flavor = "multi_thread")]
async fn queued_messages_never_leave_from_a_number_paired_later() {
    let stack = Stack::start();
    let key = stack.key(&new_org()).await;
    let id = stopped_session(&stack, &key, "628111000011").await;
    let queued = accepted(&stack, &key, &id, json!({"to": "628222000011", "text": "for the first number"})).await;
    act(&stack, &key, &id, ":logout").await;
    stack.row_until(&key, &id, SOON, |row| row["waJid"].is_null() && row["status"] == "stopped").await;

    act(&stack, &key, &id, ":start").await;
    let qr = stack.qr_until(&key, &id, None, SOON).await;
    stack.phone("scan", &[("code", qr["code"].as_str().unwrap()), ("phone", "628111000012")]).await;
    stack.status_until(&key, &id, "working", SOON).await;
    let failed = message_until(&stack, &key, &id, queued["id"].as_str().unwrap(), SOON, |m| m["status"] == "failed").await;
    assert_eq!(failed["error"]["code"], "number_changed");
    assert!(delivered(&stack).await.is_empty(), "nothing went out from the new number");
}

/// A message that waited queued past `message_max_queued_secs` fails as `expired`, announced,
/// even while nobody runs its session (every daemon sweeps the outboxes' deadlines), rather than
/// arriving late or vanishing when its stored copy lapses; a failed or canceled message is then
/// kept an hour, not its whole retention.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_queued_too_long_expires_even_while_its_session_is_stopped() {
    let stack = Stack::start_configured(&[("BACKEND", "simulator")], &[("message_max_queued_secs", "1")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let id = stopped_session(&stack, &key, "628111000013").await;
    let canceled = accepted(&stack, &key, &id, json!({"to": "628222000013", "text": "never mind"})).await;
    let canceled_id = canceled["id"].as_str().unwrap();
    assert_eq!(stack.client.delete(&stack.session_url(&id, &format!("/messages/{canceled_id}")), &key).await.status, 204);
    let stale = accepted(&stack, &key, &id, json!({"to": "628222000013", "text": "your code is 123456"})).await;
    let stale_id = stale["id"].as_str().unwrap();
    assert!(stale["expiresAt"].as_i64().unwrap() <= stale["createdAt"].as_i64().unwrap() + 1_000, "{stale}");
    let failed = message_until(&stack, &key, &id, stale_id, Duration::from_secs(10), |m| m["status"] == "failed").await;
    assert_eq!(failed["error"]["code"], "expired");
    assert_eq!(stack.client.get(&stack.session_url(&id, ""), &key).await.body["status"], "stopped", "nobody ran the session");
    let announced = stack.events(&org).await.into_iter()
        .filter(|e| e["type"] == "message.status" && e["data"]["messageId"] == stale_id && e["data"]["status"] == "failed")
        .count();
    assert_eq!(announced, 1);
    let mut redis = stack.redis().await;
    for message in [stale_id, canceled_id] {
        let ttl: i64 = redis::AsyncCommands::pttl(&mut redis, shared::keys::message(&org, message)).await.unwrap();
        assert!(0 < ttl && ttl <= shared::outbox::FAILED_KEEP_MS, "{message} is kept {ttl} ms");
    }
    act(&stack, &key, &id, ":start").await;
    let fresh = accepted(&stack, &key, &id, json!({"to": "628222000013", "text": "your new code is 654321"})).await;
    let sent = message_until(&stack, &key, &id, fresh["id"].as_str().unwrap(), SOON, |m| m["status"] == "delivered").await;
    let ttl: i64 = redis::AsyncCommands::pttl(&mut redis, shared::keys::message(&org, sent["id"].as_str().unwrap())).await.unwrap();
    assert!(ttl > shared::outbox::FAILED_KEEP_MS, "a sent message is kept its retention: {ttl} ms");
    let texts: Vec<Value> = delivered(&stack).await.iter().map(|r| r["text"].clone()).collect();
    assert_eq!(texts, [json!("your new code is 654321")]);
}

/// With `presenceTyping` (on by default), "typing…" shows in the chat before a text goes out, for longer the
/// longer the text; without it, nothing shows.
#[tokio::test(flavor = "multi_thread")]
async fn presence_typing_shows_typing_in_the_chat_before_a_text() {
    let stack = Stack::start();
    let key = stack.key(&new_org()).await;
    let (typist, _) = stack.paired_session_with(&key, r#"{"start": true, "presenceTyping": true}"#, "628111000014").await;
    let (plain, _) = stack.paired_session_with(&key, r#"{"start": true, "presenceTyping": false}"#, "628111000015").await;
    let text = "Thanks for waiting, your parcel left the warehouse this morning";
    let typed = accepted(&stack, &key, &typist, json!({"to": "628222000014", "text": text})).await;
    let untyped = accepted(&stack, &key, &plain, json!({"to": "628222000015", "text": "no typing"})).await;
    for (session, message) in [(&typist, &typed), (&plain, &untyped)] {
        message_until(&stack, &key, session, message["id"].as_str().unwrap(), SOON, |m| m["sentAt"].is_i64()).await;
    }
    let states: Vec<String> = redis::AsyncCommands::lrange(&mut stack.redis().await, shared::keys::simulator_chat_states(), 0, -1).await.unwrap();
    let states: Vec<Value> = states.iter().map(|s| serde_json::from_str(s).unwrap()).collect();
    assert_eq!(states.len(), 1, "typing once, for the session that asks: {states:#?}");
    assert_eq!((&states[0]["session"], &states[0]["chat"], &states[0]["state"]), (&json!(typist), &json!("628222000014@s.whatsapp.net"), &json!("composing")));
    let arrived = delivered(&stack).await.into_iter().find(|r| r["session"] == typist.as_str()).unwrap();
    let shown_for = arrived["at"].as_i64().unwrap() - states[0]["at"].as_i64().unwrap();
    let expected = 500 + 30 * text.chars().count() as i64;
    assert!((expected..expected + 2_000).contains(&shown_for), "typing showed {shown_for} ms before the text, expected about {expected}");
}

/// Anti-ban pacing: two sends to one chat are at least `SEND_CHAT_GAP_MS` apart, first in,
/// first out (a message to another chat queued behind waits its turn, no longer); sends in a
/// run leave at uneven intervals (`SEND_JITTER_MS`).
#[tokio::test(flavor = "multi_thread")]
async fn sends_to_one_chat_keep_their_gap_and_runs_of_sends_are_uneven() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SEND_CHAT_GAP_MS", "1500"), ("SEND_JITTER_MS", "400")]);
    let key = stack.key(&new_org()).await;
    let body = r#"{"start": true, "ratePerMin": 1000, "ratePerHour": 60000, "presenceTyping": false}"#;
    let (id, _) = stack.paired_session_with(&key, body, "628111000016").await;
    let order = [("628222000016", "a1"), ("628222000017", "b1"), ("628222000016", "a2"), ("628222000018", "c1"), ("628222000016", "a3")];
    let mut ids = Vec::new();
    for (to, text) in order {
        ids.push(accepted(&stack, &key, &id, json!({"to": to, "text": text})).await["id"].as_str().unwrap().to_owned());
    }
    for message in &ids {
        message_until(&stack, &key, &id, message, Duration::from_secs(20), |m| m["sentAt"].is_i64()).await;
    }
    let records = delivered(&stack).await;
    let texts: Vec<&str> = records.iter().map(|r| r["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["a1", "b1", "a2", "c1", "a3"], "first in, first out");
    let at = |text: &str| records.iter().find(|r| r["text"] == text).unwrap()["at"].as_i64().unwrap();
    // The gap holds between the sender's decisions; the phone stamps arrivals, each a few ms later.
    assert!(at("a2") - at("a1") >= 1_450 && at("a3") - at("a2") >= 1_450, "{records:#?}");
    assert!(at("a2") - at("a1") < 1_500 + 400 + 1_000, "no longer than the gap, the jitter and some slack: {records:#?}");
    let gaps: Vec<i64> = records.windows(2).map(|w| w[1]["at"].as_i64().unwrap() - w[0]["at"].as_i64().unwrap()).collect();
    assert!(gaps[0] <= 400 + 300 && gaps[2] <= 400 + 300, "another chat is not held back by the gap: {gaps:?}");
}

/// Every kind of file reaches the phone, given inline or by URL, and comes back through
/// `GET …/media`: from the cache right after sending, then from WhatsApp's media servers once
/// the cache lost it, and from the cache again after that. What the gateway kept only to send
/// (the inline file) is gone once sent.
#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_file_reaches_the_phone_and_comes_back() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("MEDIA_MAX_BYTES", "65536")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628111000020").await;
    let photo: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let server = FileServer::start(vec![("/photo.jpg", photo.clone()), ("/huge.bin", vec![7; 70_000])]);
    let inline = |bytes: &[u8]| BASE64.encode(bytes);
    let sends = [
        ("image", json!({"url": format!("{}/photo.jpg", server.url), "mimeType": "image/jpeg", "caption": "the view"}), photo.clone()),
        ("video", json!({"data": inline(b"video bytes"), "mimeType": "video/mp4", "caption": "clip"}), b"video bytes".to_vec()),
        ("audio", json!({"data": inline(b"opus bytes"), "mimeType": "audio/ogg; codecs=opus", "voiceNote": true}), b"opus bytes".to_vec()),
        ("document", json!({"data": inline(b"%PDF-1.7"), "mimeType": "application/pdf", "fileName": "invoice.pdf", "caption": "Q3"}), b"%PDF-1.7".to_vec()),
        ("sticker", json!({"data": inline(b"RIFFWEBP"), "mimeType": "image/webp"}), b"RIFFWEBP".to_vec()),
    ];
    let mut sent = Vec::new();
    for (kind, media, bytes) in &sends {
        let message = accepted(&stack, &key, &id, json!({"to": "628222000020", kind.to_string(): media})).await;
        assert_eq!((&message["type"], &message["media"]["mimeType"]), (&json!(kind), &media["mimeType"]), "{message}");
        sent.push((message["id"].as_str().unwrap().to_owned(), bytes.clone(), media["mimeType"].as_str().unwrap().to_owned()));
    }
    for (message_id, ..) in &sent {
        message_until(&stack, &key, &id, message_id, SOON, |m| m["status"] == "delivered").await;
    }
    let records = delivered(&stack).await;
    assert_eq!(records.len(), sends.len(), "{records:?}");
    for ((kind, media, bytes), record) in sends.iter().zip(&records) {
        assert_eq!(record["type"], json!(kind), "{record}");
        assert_eq!(record["media"]["sha256"], json!(shared::secret::sha256_hex(bytes)), "the phone got the very file: {record}");
        assert_eq!(record["media"]["size"], json!(bytes.len()), "{record}");
        assert_eq!((&record["media"]["mimeType"], &record["media"]["caption"]), (&media["mimeType"], &media.get("caption").cloned().unwrap_or(Value::Null)), "{record}");
    }
    assert_eq!((&records[2]["media"]["voiceNote"], &records[3]["media"]["fileName"]), (&json!(true), &json!("invoice.pdf")));
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 1, "the URL is fetched once, when the message goes out");

    let mut redis = stack.redis().await;
    for (message_id, bytes, mime) in &sent {
        let uploads: bool = redis::AsyncCommands::exists(&mut redis, shared::keys::message_upload(&org, message_id)).await.unwrap();
        assert!(!uploads, "an inline file is kept only until its message is sent");
        let path = format!("/messages/{message_id}/media");
        assert_eq!(stack.file(&key, &id, &path).await, (200, mime.clone(), bytes.clone()), "from the cache");
    }
    // The cache lost the image: it comes from WhatsApp's media servers, once.
    let (image_id, photo_bytes, _) = &sent[0];
    let () = redis::AsyncCommands::del(&mut redis, shared::keys::message_media(&org, image_id)).await.unwrap();
    let path = format!("/messages/{image_id}/media");
    assert_eq!(stack.file(&key, &id, &path).await, (200, "image/jpeg".to_owned(), photo_bytes.clone()));
    assert_eq!(stack.file(&key, &id, &path).await.2, *photo_bytes);
    assert_eq!(stack.simulator_downloads().await, 1, "fetched from WhatsApp once, then cached");

    // A URL that fails, and one past MEDIA_MAX_BYTES: the message fails and says why.
    for (file_path, why) in [("/missing.jpg", "404"), ("/huge.bin", "larger than 65536")] {
        let body = json!({"to": "628222000020", "document": {"url": format!("{}{file_path}", server.url), "mimeType": "application/octet-stream"}});
        let message = accepted(&stack, &key, &id, body).await;
        let failed = message_until(&stack, &key, &id, message["id"].as_str().unwrap(), SOON, |m| m["status"] == "failed").await;
        assert_eq!(failed["error"]["code"], "media_unavailable", "{failed}");
        assert!(failed["error"]["message"].as_str().unwrap().contains(why), "{failed}");
    }
    assert_eq!(delivered(&stack).await.len(), sends.len(), "nothing half-sent reached the phone");
}

/// By default a media URL cannot reach into the gateway's own network (loopback here), so a
/// message cannot make the gateway fetch internal services.
#[tokio::test(flavor = "multi_thread")]
async fn media_urls_inside_the_network_are_refused_by_default() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("MEDIA_FETCH_ALLOW_PRIVATE", "false")]);
    let key = stack.key(&new_org()).await;
    let (id, _) = stack.paired_session(&key, "628111000021").await;
    let server = FileServer::start(vec![("/secret.png", b"internal".to_vec())]);
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    for url in [format!("{}/secret.png", server.url), format!("http://localhost:{port}/secret.png"), format!("http://[::1]:{port}/secret.png")] {
        let message = accepted(&stack, &key, &id, json!({"to": "628222000021", "image": {"url": url, "mimeType": "image/png"}})).await;
        let failed = message_until(&stack, &key, &id, message["id"].as_str().unwrap(), SOON, |m| m["status"] == "failed").await;
        assert_eq!(failed["error"]["code"], "media_unavailable", "{url}: {failed}");
    }
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 0, "no request reached the internal server");
    assert!(delivered(&stack).await.is_empty());
}

/// Inline files are bounded: each by `media_max_bytes` (413 past the body limit, 400 past the
/// file limit), and what one session's queued messages hold by `media_queue_max_bytes` (429
/// until some go out or are canceled).
#[tokio::test(flavor = "multi_thread")]
async fn inline_files_are_bounded_per_message_and_per_session() {
    let variables = [("media_max_bytes", "8192"), ("media_queue_max_bytes", "12000")];
    let stack = Stack::start_configured(&[("BACKEND", "simulator")], &variables);
    let org = new_org();
    let key = stack.key(&org).await;
    let id = stopped_session(&stack, &key, "628111000022").await;
    let document = |size: usize| json!({"to": "628222000022", "document": {"data": BASE64.encode(vec![1u8; size]), "mimeType": "application/pdf"}});
    assert_eq!(send(&stack, &key, &id, &document(8193), None).await.expect_error(400, "validation_error")["field"], "document.data");
    send(&stack, &key, &id, &document(60_000), None).await.expect_error(413, "payload_too_large");
    let first = accepted(&stack, &key, &id, document(8000)).await;
    let full = send(&stack, &key, &id, &document(8000), None).await;
    assert_eq!(full.expect_error(429, "rate_limited")["scope"], "outbox_files");
    accepted(&stack, &key, &id, json!({"to": "628222000022", "text": "text still goes"})).await;
    let canceled = stack.client.delete(&stack.session_url(&id, &format!("/messages/{}", first["id"].as_str().unwrap())), &key).await;
    assert_eq!(canceled.status, 204, "{}", canceled.body);
    let uploads: bool = redis::AsyncCommands::exists(&mut stack.redis().await, shared::keys::message_upload(&org, first["id"].as_str().unwrap())).await.unwrap();
    assert!(!uploads, "a canceled message's file is dropped");
    let second = accepted(&stack, &key, &id, document(8000)).await;
    // Queued, the file is served from what the gateway keeps to send it.
    let path = format!("/messages/{}/media", second["id"].as_str().unwrap());
    assert_eq!(stack.file(&key, &id, &path).await, (200, "application/pdf".to_owned(), vec![1u8; 8000]));
    act(&stack, &key, &id, ":start").await;
    message_until(&stack, &key, &id, second["id"].as_str().unwrap(), SOON, |m| m["status"] == "delivered").await;
    assert_eq!(stack.file(&key, &id, &path).await.2, vec![1u8; 8000]);

    // A file that went away by itself (lapsed) no longer counts against the session.
    act(&stack, &key, &id, ":stop").await;
    stack.status_until(&key, &id, "stopped", SOON).await;
    let third = accepted(&stack, &key, &id, document(8000)).await;
    send(&stack, &key, &id, &document(8000), None).await.expect_error(429, "rate_limited");
    let () = redis::AsyncCommands::del(&mut stack.redis().await, shared::keys::message_upload(&org, third["id"].as_str().unwrap())).await.unwrap();
    accepted(&stack, &key, &id, document(8000)).await;
}
