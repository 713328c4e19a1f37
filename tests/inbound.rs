//! Receiving end to end: simulated phones send a paired session messages through the simulated
//! WhatsApp server; the session stores each once, announces it on the event stream, lists it,
//! and sends read receipts when it reads automatically.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use e2e::{Stack, api_key_at, new_org};
use serde_json::{Value, json};
use shared::auth::Capability;
use std::time::{Duration, Instant};

const SOON: Duration = Duration::from_secs(10);

/// A phone (`from`) sends the number `to` a message with these fields.
async fn phone_sends(stack: &Stack, to: &str, from: &str, fields: &[(&str, &str)]) {
    let mut all = vec![("to", to), ("from", from)];
    all.extend_from_slice(fields);
    stack.phone("message", &all).await;
}

/// The organization's logged events of `kind`, oldest first, once there are `count` of them.
async fn logged(stack: &Stack, org: &str, kind: &str, count: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let events: Vec<Value> = stack.events(org).await.into_iter().filter(|e| e["type"] == kind).collect();
        if events.len() >= count {
            return events;
        }
        assert!(Instant::now() < deadline, "{} of {count} {kind} events; saw {events:#?}", events.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn list(stack: &Stack, key: &str, session_id: &str, query: &str) -> Value {
    let reply = stack.client.get(&stack.session_url(session_id, &format!("/messages?{query}")), key).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    reply.body
}

fn texts(page: &Value) -> Vec<&str> {
    page["data"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap_or("")).collect()
}

async fn records(stack: &Stack, key: &str) -> Vec<Value> {
    let records: Vec<String> = redis::AsyncCommands::lrange(&mut stack.redis().await, key, 0, -1).await.unwrap();
    records.iter().map(|r| serde_json::from_str(r).unwrap()).collect()
}

/// The simulator's records under `key` that `keep` admits, once there are `count` of them (or
/// as they stand after [`SOON`]: the caller asserts on them).
async fn records_until(stack: &Stack, key: &str, count: usize, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + SOON;
    loop {
        let kept: Vec<Value> = records(stack, key).await.into_iter().filter(|r| keep(r)).collect();
        if kept.len() >= count || Instant::now() > deadline {
            return kept;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_message_arrives_as_message_received_with_phone_and_lid() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, row) = stack.paired_session(&key, "628111100001").await;
    let me = "628111100001";
    phone_sends(&stack, me, "628333100001", &[("id", "3A0000000000000000001"), ("text", "hello gateway"), ("push_name", "Budi")]).await;
    phone_sends(&stack, me, "628333100002", &[("text", "by lid"), ("addressing", "lid")]).await;
    phone_sends(&stack, me, "628333100001", &[("type", "location"), ("latitude", "-6.1754"), ("longitude", "106.8272"), ("name", "Monas")]).await;
    phone_sends(&stack, me, "628333100001", &[("type", "image"), ("mime", "image/jpeg"), ("caption", "look"), ("size", "2048")]).await;
    phone_sends(&stack, me, "628333100001", &[("type", "audio"), ("mime", "audio/ogg; codecs=opus"), ("voice_note", "true")]).await;
    phone_sends(&stack, me, "628333100001", &[("type", "document"), ("mime", "application/pdf"), ("file_name", "invoice.pdf")]).await;
    phone_sends(&stack, me, "628333100003", &[("text", "in the group"), ("group", "120363000000000001@g.us")]).await;
    phone_sends(&stack, me, "628333100001", &[("type", "poll")]).await;
    phone_sends(&stack, me, "628333100001", &[("text", "a reply"), ("quote", "3A0000000000000000001"), ("quote_from", "628333100001@s.whatsapp.net"), ("mentions", "628111100001")]).await;

    let received = logged(&stack, &org, "message.received", 9, SOON).await;
    assert_eq!(received.len(), 9, "each once: {received:#?}");
    let data: Vec<&Value> = received.iter().map(|e| &e["data"]).collect();
    for (event, message) in received.iter().zip(&data) {
        assert_eq!(event["sessionId"], id.as_str());
        assert_eq!((&message["direction"], &message["status"], &message["to"]), (&json!("inbound"), &json!("received"), &row["waJid"]));
        assert!(message["receivedAt"].is_i64() && message["waMessageId"].is_string(), "{message}");
    }
    let text = data[0];
    assert_eq!((&text["type"], &text["text"], &text["waMessageId"]), (&json!("text"), &json!("hello gateway"), &json!("3A0000000000000000001")));
    assert_eq!((&text["chat"], &text["from"]), (&json!("628333100001@s.whatsapp.net"), &json!("628333100001@s.whatsapp.net")));
    assert_eq!(text["sender"], json!({"phoneJid": "628333100001@s.whatsapp.net", "lid": "9628333100001@lid", "pushName": "Budi"}));
    let by_lid = data[1];
    assert_eq!((&by_lid["chat"], &by_lid["from"]), (&json!("9628333100002@lid"), &json!("9628333100002@lid")));
    assert_eq!(by_lid["sender"]["phoneJid"], "628333100002@s.whatsapp.net", "the phone number beside the LID");
    assert_eq!(data[2]["location"], json!({"latitude": -6.1754, "longitude": 106.8272, "name": "Monas", "address": null}));
    assert_eq!((&data[3]["type"], &data[3]["media"]["mimeType"], &data[3]["media"]["caption"]), (&json!("image"), &json!("image/jpeg"), &json!("look")));
    assert_eq!(data[3]["media"]["size"], 2048);
    assert_eq!((&data[4]["type"], &data[4]["media"]["voiceNote"]), (&json!("audio"), &json!(true)));
    assert_eq!(data[5]["media"]["fileName"], "invoice.pdf");
    let group = data[6];
    assert_eq!((&group["chat"], &group["from"]), (&json!("120363000000000001@g.us"), &json!("628333100003@s.whatsapp.net")), "the group and the member who wrote");
    assert_eq!(data[7]["type"], "unsupported");
    let reply = data[8];
    assert_eq!(reply["quoted"], json!({"waMessageId": "3A0000000000000000001", "participant": "628333100001@s.whatsapp.net"}));
    assert_eq!(reply["replyTo"], text["id"], "the quoted message is one the gateway has");
    assert_eq!(reply["mentions"], json!(["628111100001@s.whatsapp.net"]));

    let stored = stack.client.get(&stack.session_url(&id, &format!("/messages/{}", text["id"].as_str().unwrap())), &key).await;
    assert_eq!(stored.status, 200);
    assert_eq!(&stored.body, text, "the API shows what the event carried");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reaction_to_a_sent_message_arrives_as_message_reaction() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628111100002").await;
    let sent = stack.client.post(&stack.session_url(&id, "/messages"), &key, r#"{"to": "628333100010", "text": "rate us"}"#).await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let ours = sent.body["id"].as_str().unwrap();
    let status = logged(&stack, &org, "message.status", 2, SOON).await;
    let wa_id = status.iter().find_map(|e| e["data"]["waMessageId"].as_str()).unwrap().to_owned();

    let me = "628111100002@s.whatsapp.net";
    phone_sends(&stack, "628111100002", "628333100010", &[("type", "reaction"), ("target", &wa_id), ("target_from", me), ("emoji", "👍")]).await;
    phone_sends(&stack, "628111100002", "628333100010", &[("type", "reaction"), ("target", &wa_id), ("emoji", "")]).await;
    let reactions = logged(&stack, &org, "message.reaction", 2, SOON).await;
    assert_eq!(reactions[0]["data"]["reaction"], json!({"waMessageId": wa_id, "messageId": ours, "participant": me, "emoji": "👍"}));
    assert_eq!(reactions[1]["data"]["reaction"]["emoji"], "", "an empty emoji takes the reaction back");
    assert!(stack.events(&org).await.iter().all(|e| e["type"] != "message.received"), "a reaction is not a received message");
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_read_sends_read_receipts_only_for_sessions_that_ask() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (reader, _) = stack.paired_session_with(&key, r#"{"start": true, "autoRead": true}"#, "628111100003").await;
    let (other, _) = stack.paired_session(&key, "628111100004").await;
    // The contact answers with the very WhatsApp id of a message the session sent it (ids are
    // the sender's to choose): reading the answer must not mark the sent message read.
    let sent = stack.client.post(&stack.session_url(&reader, "/messages"), &key, r#"{"to": "628333100020", "text": "hello"}"#).await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let sent_url = stack.session_url(&reader, &format!("/messages/{}", sent.body["id"].as_str().unwrap()));
    let deadline = Instant::now() + SOON;
    let same_id = loop {
        let now = stack.client.get(&sent_url, &key).await.body;
        if let Some(id) = now["waMessageId"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "not sent: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    phone_sends(&stack, "628111100003", "628333100020", &[("id", &same_id), ("text", "read me")]).await;
    phone_sends(&stack, "628111100003", "628333100021", &[("id", "3A0000000000000000021"), ("text", "in a group"), ("group", "120363000000000002@g.us")]).await;
    phone_sends(&stack, "628111100004", "628333100020", &[("text", "leave me unread")]).await;
    // A contact's status post is no chat message: not kept, and never marked viewed.
    phone_sends(&stack, "628111100003", "628333100022", &[("text", "my holiday"), ("status", "true")]).await;
    logged(&stack, &org, "message.received", 3, SOON).await;

    let receipts = records_until(&stack, &shared::keys::simulator_read_receipts(), 2, |_| true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let receipts_now = records(&stack, &shared::keys::simulator_read_receipts()).await;
    assert_eq!(receipts, receipts_now, "no more receipts came");
    assert_eq!(logged(&stack, &org, "message.received", 3, SOON).await.len(), 3, "the status post was not kept");
    assert!(texts(&list(&stack, &key, &reader, "").await).iter().all(|t| *t != "my holiday"));
    let seen: Vec<(&str, &str, &str, Value)> = receipts
        .iter()
        .map(|r| (r["session"].as_str().unwrap(), r["chat"].as_str().unwrap(), r["sender"].as_str().unwrap(), r["ids"].clone()))
        .collect();
    assert_eq!(seen.len(), 2, "{receipts:#?}");
    assert!(seen.contains(&(reader.as_str(), "628333100020@s.whatsapp.net", "628333100020@s.whatsapp.net", json!([same_id]))));
    assert!(seen.contains(&(reader.as_str(), "120363000000000002@g.us", "628333100021@s.whatsapp.net", json!(["3A0000000000000000021"]))));
    assert!(seen.iter().all(|r| r.0 != other), "the session without autoRead sent none");

    // What the session read is `read` (announced), with no send time; the rest stays `received`.
    let received = logged(&stack, &org, "message.received", 3, SOON).await;
    let read: Vec<Value> = records_of_status(&stack, &org, "read", 2).await;
    for event in &received {
        let message = &event["data"];
        let url = stack.session_url(message["sessionId"].as_str().unwrap(), &format!("/messages/{}", message["id"].as_str().unwrap()));
        let now = stack.client.get(&url, &key).await.body;
        let announced = read.iter().any(|e| e["data"]["messageId"] == message["id"] && e["data"]["status"] == "read");
        if message["sessionId"] == json!(reader) {
            assert_eq!((&now["status"], announced, &now["sentAt"]), (&json!("read"), true, &Value::Null), "{now}");
            assert!(now["readAt"].as_i64().unwrap() >= now["receivedAt"].as_i64().unwrap(), "{now}");
        } else {
            assert_eq!((&now["status"], announced, &now["readAt"]), (&json!("received"), false, &Value::Null), "{now}");
        }
    }
    let mine = stack.client.get(&sent_url, &key).await.body;
    assert!(mine["status"] != "read" && mine["readAt"].is_null(), "the sent message was not read: {mine}");
}

/// The organization's `message.status` events of `status`, once there are `count` of them.
async fn records_of_status(stack: &Stack, org: &str, status: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + SOON;
    loop {
        let events: Vec<Value> = stack.events(org).await.into_iter().filter(|e| e["type"] == "message.status" && e["data"]["status"] == status).collect();
        if events.len() >= count || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_list_pages_both_ways_newest_first_filtered_by_chat_and_direction() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628111100005").await;
    let me = "628111100005";
    for (i, (from, text)) in [("628333100030", "in 1"), ("628333100031", "other 1"), ("628333100030", "in 2")].iter().enumerate() {
        phone_sends(&stack, me, from, &[("text", text)]).await;
        logged(&stack, &org, "message.received", i + 1, SOON).await;
    }
    for text in ["out 1", "out 2"] {
        let sent = stack.client.post(&stack.session_url(&id, "/messages"), &key, &json!({"to": "628333100030", "text": text}).to_string()).await;
        assert_eq!(sent.status, 202, "{}", sent.body);
    }

    let first = list(&stack, &key, &id, "limit=2").await;
    assert_eq!(texts(&first), ["out 2", "out 1"], "newest first");
    let cursor = first["nextCursor"].as_str().expect("more follow");
    let second = list(&stack, &key, &id, &format!("limit=2&cursor={cursor}")).await;
    assert_eq!(texts(&second), ["in 2", "other 1"]);
    let third = list(&stack, &key, &id, &format!("limit=2&cursor={}", second["nextCursor"].as_str().unwrap())).await;
    assert_eq!(texts(&third), ["in 1"]);
    assert_eq!(third["nextCursor"], Value::Null);

    assert_eq!(texts(&list(&stack, &key, &id, "chat=%2B628333100030").await), ["out 2", "out 1", "in 2", "in 1"]);
    assert_eq!(texts(&list(&stack, &key, &id, "chat=628333100031%40s.whatsapp.net").await), ["other 1"]);
    assert_eq!(texts(&list(&stack, &key, &id, "direction=inbound").await), ["in 2", "other 1", "in 1"]);
    assert_eq!(texts(&list(&stack, &key, &id, "direction=outbound&chat=628333100030").await), ["out 2", "out 1"]);
    let inbound_page = list(&stack, &key, &id, "direction=inbound&limit=1").await;
    let rest = list(&stack, &key, &id, &format!("direction=inbound&limit=5&cursor={}", inbound_page["nextCursor"].as_str().unwrap())).await;
    assert_eq!((texts(&inbound_page), texts(&rest)), (vec!["in 2"], vec!["other 1", "in 1"]));

    for (query, field) in [("direction=sideways", "direction"), ("chat=nobody", "chat"), ("cursor=%%%", "cursor"), ("limit=0", "limit"), ("colour=red", "colour")] {
        let reply = stack.client.get(&stack.session_url(&id, &format!("/messages?{query}")), &key).await;
        assert_eq!(reply.expect_error(400, "validation_error")["field"], field, "{query}");
    }

    // Another organization sees no such session; a `read` key may list, a `send` key may not.
    let stranger = stack.key(&new_org()).await;
    stack.client.get(&stack.session_url(&id, "/messages"), &stranger).await.expect_error(404, "not_found");
    let (reader, _) = api_key_at(&stack.redis.url, &org, &[Capability::Read]).await;
    assert_eq!(texts(&list(&stack, &reader, &id, "limit=1").await), ["out 2"]);
    let (sender, _) = api_key_at(&stack.redis.url, &org, &[Capability::Send]).await;
    stack.client.get(&stack.session_url(&id, "/messages"), &sender).await.expect_error(403, "forbidden");
}

/// kill -9 while batches of received messages are being stored and acknowledged: what was
/// stored but not yet acknowledged comes again, and is logged once; what was not stored comes
/// again and is stored. Messages that arrive while the session is stopped wait for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_mid_batch_loses_nothing_and_logs_nothing_twice() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SIM_INBOUND_ACK_MS", "150"), ("SIM_INBOUND_BATCH", "4")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628111100006").await;
    for i in 0..40 {
        phone_sends(&stack, "628111100006", "628333100040", &[("text", &format!("m{i:02}"))]).await;
    }
    logged(&stack, &org, "message.received", 8, SOON).await;
    stack.daemon.kill();
    stack.daemon.restart();
    stack.status_until(&key, &id, "working", Duration::from_secs(30)).await;
    let received = logged(&stack, &org, "message.received", 40, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received_now: Vec<Value> = stack.events(&org).await.into_iter().filter(|e| e["type"] == "message.received").collect();
    assert_eq!(received_now.len(), received.len(), "nothing came twice later");
    let seen: Vec<&str> = received.iter().map(|e| e["data"]["text"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..40).map(|i| format!("m{i:02}")).collect();
    assert_eq!(seen, expected, "every message once, in order");
    let stored = list(&stack, &key, &id, "limit=100").await;
    assert_eq!(stored["data"].as_array().unwrap().len(), 40);

    let stop = stack.client.post(&stack.session_url(&id, ":stop"), &key, "").await;
    assert_eq!(stop.status, 200, "{}", stop.body);
    stack.status_until(&key, &id, "stopped", SOON).await;
    phone_sends(&stack, "628111100006", "628333100040", &[("text", "while stopped")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.events(&org).await.iter().filter(|e| e["type"] == "message.received").count(), 40, "not received while stopped");
    let start = stack.client.post(&stack.session_url(&id, ":start"), &key, "").await;
    assert_eq!(start.status, 200, "{}", start.body);
    let after = logged(&stack, &org, "message.received", 41, SOON).await;
    assert_eq!(after[40]["data"]["text"], "while stopped");
}

/// A reaction sent through the API goes to the message reacted to, in its chat; an empty emoji
/// takes it back. It must name a message of that chat of the session.
#[tokio::test(flavor = "multi_thread")]
async fn a_reaction_sent_through_the_api_reaches_the_message_reacted_to() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628111100007").await;
    phone_sends(&stack, "628111100007", "628333100050", &[("id", "3A0000000000000000050"), ("text", "order arrived")]).await;
    let received = logged(&stack, &org, "message.received", 1, SOON).await;
    let target = received[0]["data"]["id"].as_str().unwrap();
    let react = |emoji: &str, message: &str, to: &str| json!({"to": to, "reaction": {"messageId": message, "emoji": emoji}}).to_string();
    let url = stack.session_url(&id, "/messages");
    for emoji in ["🙏", ""] {
        let sent = stack.client.post(&url, &key, &react(emoji, target, "628333100050")).await;
        assert_eq!(sent.status, 202, "{}", sent.body);
        assert_eq!(sent.body["type"], "reaction");
    }
    let reactions = records_until(&stack, &shared::keys::simulator_delivered(), 2, |r| r["type"] == "reaction").await;
    let expected = |emoji: &str| json!({"waMessageId": "3A0000000000000000050", "messageId": target, "participant": "628333100050@s.whatsapp.net", "emoji": emoji});
    assert_eq!(reactions.iter().map(|r| r["reaction"].clone()).collect::<Vec<_>>(), [expected("🙏"), expected("")]);
    assert!(reactions.iter().all(|r| r["to"] == "628333100050@s.whatsapp.net"));

    let elsewhere = stack.client.post(&url, &key, &react("🙏", target, "628333100051")).await;
    assert_eq!(elsewhere.expect_error(404, "not_found")["field"], "reaction.messageId", "not a message of that chat");
    let unknown = stack.client.post(&url, &key, &react("🙏", "01K0000000000000000000000X", "628333100050")).await;
    assert_eq!(unknown.expect_error(404, "not_found")["field"], "reaction.messageId");
}

/// `GET …/media` of a received file: fetched from WhatsApp's media servers through the session
/// once, however many ask at the same time, then served from the cache, whose files stay
/// within the organization's budget (oldest out first). A file past MEDIA_MAX_BYTES is not
/// served (413); one WhatsApp gave no reference for is not found; a session that is not
/// connected cannot fetch (409).
#[tokio::test(flavor = "multi_thread")]
async fn a_received_file_is_fetched_from_whatsapp_once_then_cached() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("MEDIA_CACHE_MAX_BYTES", "60000"), ("MEDIA_MAX_BYTES", "65536")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628111100040").await;
    let me = "628111100040";
    let photo: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let data = BASE64.encode(&photo);
    phone_sends(&stack, me, "628333100040", &[("type", "image"), ("mime", "image/jpeg"), ("caption", "receipt"), ("data", &data)]).await;
    phone_sends(&stack, me, "628333100040", &[("type", "document"), ("mime", "application/pdf"), ("data", &BASE64.encode(b"%PDF"))]).await;
    phone_sends(&stack, me, "628333100040", &[("type", "video"), ("mime", "video/mp4")]).await;
    let sticker = vec![9u8; 20_000];
    phone_sends(&stack, me, "628333100040", &[("type", "sticker"), ("mime", "image/webp"), ("data", &BASE64.encode(&sticker))]).await;
    phone_sends(&stack, me, "628333100040", &[("type", "document"), ("mime", "application/zip"), ("data", &BASE64.encode(vec![0u8; 70_000]))]).await;
    let received = logged(&stack, &org, "message.received", 5, SOON).await;
    let ids: Vec<String> = received.iter().map(|e| e["data"]["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(received[0]["data"]["media"]["caption"], "receipt");

    // Ten readers at once: one fetch from WhatsApp.
    let path = format!("/messages/{}/media", ids[0]);
    let readers = (0..10).map(|_| stack.file(&key, &id, &path));
    for (status, content_type, body) in futures::future::join_all(readers).await {
        assert_eq!((status, content_type.as_str(), body.len()), (200, "image/jpeg", photo.len()));
        assert!(body == photo, "the very file the phone sent");
    }
    assert_eq!(stack.simulator_downloads().await, 1, "one fetch for ten readers");
    assert_eq!(stack.file(&key, &id, &path).await.2, photo);
    assert_eq!(stack.simulator_downloads().await, 1, "then from the cache");

    // The organization's cache holds 60,000 bytes: the sticker pushes the photo out.
    let fetch = async |message_id: &str| stack.file(&key, &id, &format!("/messages/{message_id}/media")).await;
    assert_eq!(fetch(&ids[1]).await, (200, "application/pdf".to_owned(), b"%PDF".to_vec()));
    assert_eq!(fetch(&ids[3]).await, (200, "image/webp".to_owned(), sticker.clone()));
    assert_eq!(stack.simulator_downloads().await, 3);
    let mut redis = stack.redis().await;
    let cached = |message_id: &str| shared::keys::message_media(&org, message_id);
    let photo_cached: bool = redis::AsyncCommands::exists(&mut redis, cached(&ids[0])).await.unwrap();
    assert!(!photo_cached, "the oldest file made room");
    assert_eq!(fetch(&ids[0]).await, (200, "image/jpeg".to_owned(), photo.clone()));
    assert_eq!(stack.simulator_downloads().await, 4, "fetched again once evicted");
    let total: i64 = redis::AsyncCommands::get(&mut redis, shared::keys::org_media_cache_total(&org)).await.unwrap();
    assert!(total <= 60_000, "the cache stays within its budget: {total}");

    // Past MEDIA_MAX_BYTES a file is not served.
    let huge = stack.client.get(&stack.session_url(&id, &format!("/messages/{}/media", ids[4])), &key).await;
    assert_eq!(huge.expect_error(413, "payload_too_large")["reason"], "too_large");

    // WhatsApp gave nothing to fetch the video with.
    let no_reference = stack.client.get(&stack.session_url(&id, &format!("/messages/{}/media", ids[2])), &key).await;
    assert_eq!(no_reference.expect_error(404, "not_found")["reason"], "no_reference");
    // Stopped, the session cannot reach WhatsApp's media servers.
    let stopped = stack.client.post(&stack.session_url(&id, ":stop"), &key, "").await;
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    stack.status_until(&key, &id, "stopped", SOON).await;
    let document = stack.client.get(&stack.session_url(&id, &format!("/messages/{}/media", ids[1])), &key).await;
    assert_eq!(document.expect_error(409, "conflict")["reason"], "not_connected");
    assert_eq!(stack.simulator_downloads().await, 4);
}

/// A message the session could not decrypt shows as such (`undecryptable`, announced) until
/// WhatsApp recovers it: the recovered copy fills in the same message, announced as received.
/// A contact's edit or deletion for everyone marks their message and is announced, once; one
/// made by someone else does not touch it.
#[tokio::test(flavor = "multi_thread")]
async fn undecryptable_messages_are_recovered_and_edits_and_deletions_are_announced() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628111100040").await;
    let me = "628111100040";
    // Undecryptable as addressed by LID; the phone's recovered copy names the sender by number.
    let recovery = [("addressing", "lid"), ("recover_addressing", "pn"), ("recover_ms", "1500")];
    let mut fields = vec![("id", "3A0000000000000000041"), ("text", "secret plans"), ("undecryptable", "true")];
    fields.extend(recovery);
    phone_sends(&stack, me, "628333100041", &fields).await;
    phone_sends(&stack, me, "628333100042", &[("id", "3A0000000000000000042"), ("text", "lost"), ("undecryptable", "true")]).await;
    let unreadable = logged(&stack, &org, "message.undecryptable", 2, SOON).await;
    let placeholder = unreadable.iter().find(|e| e["data"]["waMessageId"] == "3A0000000000000000041").expect("the first one").clone();
    assert_eq!((&placeholder["data"]["type"], &placeholder["data"]["text"]), (&json!("undecryptable"), &Value::Null), "{placeholder}");
    let message_id = placeholder["data"]["id"].as_str().unwrap().to_owned();
    let shown = stack.client.get(&stack.session_url(&id, &format!("/messages/{message_id}")), &key).await.body;
    assert_eq!(shown["type"], "undecryptable", "{shown}");

    let received = logged(&stack, &org, "message.received", 1, SOON).await;
    assert_eq!((&received[0]["data"]["id"], &received[0]["data"]["text"]), (&json!(message_id), &json!("secret plans")), "the same message, now readable");
    let page = list(&stack, &key, &id, "").await;
    let types: Vec<&str> = page["data"].as_array().unwrap().iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!((texts(&page), types), (vec!["", "secret plans"], vec!["undecryptable", "text"]), "one message each, the lost one still unreadable");

    // Edits and deletions of a message, by its author; a repeat and an impostor change nothing.
    phone_sends(&stack, me, "628333100043", &[("id", "3A0000000000000000043"), ("text", "meet at 5")]).await;
    let original = logged(&stack, &org, "message.received", 2, SOON).await[1]["data"]["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        phone_sends(&stack, me, "628333100043", &[("id", "3A0000000000000000044"), ("type", "edit"), ("target", "3A0000000000000000043"), ("text", "meet at 6")]).await;
    }
    phone_sends(&stack, me, "628333100049", &[("id", "3A0000000000000000045"), ("type", "edit"), ("target", "3A0000000000000000043"), ("text", "meet never")]).await;
    let edits = logged(&stack, &org, "message.edited", 2, SOON).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let edits_now = logged(&stack, &org, "message.edited", 2, SOON).await;
    assert_eq!(edits.len(), edits_now.len());
    assert_eq!(edits.len(), 2, "the repeat is announced once: {edits:#?}");
    let by_author = edits.iter().find(|e| e["data"]["text"] == "meet at 6").expect("the author's edit");
    assert_eq!(by_author["data"]["messageId"], json!(original), "{by_author}");
    let impostor = edits.iter().find(|e| e["data"]["text"] == "meet never").expect("the impostor's edit");
    assert_eq!(impostor["data"]["messageId"], Value::Null, "names no message of ours: {impostor}");
    phone_sends(&stack, me, "628333100043", &[("id", "3A0000000000000000046"), ("type", "revoke"), ("target", "3A0000000000000000043")]).await;
    let revoked = logged(&stack, &org, "message.revoked", 1, SOON).await;
    assert_eq!((&revoked[0]["data"]["messageId"], &revoked[0]["data"]["by"]), (&json!(original), &json!("628333100043@s.whatsapp.net")));
    let marked = stack.client.get(&stack.session_url(&id, &format!("/messages/{original}")), &key).await.body;
    assert!(marked["editedAt"].is_i64() && marked["revokedAt"].is_i64(), "{marked}");
    assert_eq!(marked["text"], "meet at 5", "the text as it arrived (the edit comes with its event)");
}
