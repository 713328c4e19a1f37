//! Pairing and lifecycle end to end, through the HTTP API only: the real host and components, a
//! real Redis of the test's own, and the real daemon with its simulator backend standing in for
//! WhatsApp. The test plays the phone through the simulator's control stream.

use e2e::{Stack, new_org};
use serde_json::Value;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(10);

fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn qr_pairing_and_the_whole_lifecycle() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let session = stack.create(&key, r#"{"start": true, "label": "Support"}"#).await;
    let id = session["id"].as_str().unwrap();
    assert_eq!(session["status"], "starting");

    // Pairing has started but no code exists yet.
    stack.client.get(&stack.session_url(id, "/qr"), &key).await.expect_error(404, "not_found");
    let first = stack.qr_until(&key, id, None, SOON).await;
    let code = first["code"].as_str().unwrap();
    assert_eq!(code.split(',').count(), 4, "WhatsApp's ref,key,key,key shape: {code}");
    assert!(first["expiresAt"].as_i64().unwrap() > shared::time::now_millis());
    stack.status_until(&key, id, "scan_qr_code", SOON).await;

    // The same code as a picture: PNG by `?format=`, SVG by `Accept`; never cached (it rotates).
    let (status, content_type, png) = stack.file(&key, id, "/qr?format=png").await;
    assert_eq!((status, content_type.as_str()), (200, "image/png"));
    let current = stack.qr_until(&key, id, None, SOON).await;
    let scanned = e2e::decode_qr_png(&png).expect("a QR code in the PNG");
    assert!(scanned == code || scanned == current["code"], "the image holds the code: {scanned}");
    let svg = stack.client.0.get(stack.session_url(id, "/qr")).bearer_auth(&key).header("accept", "image/svg+xml").send().await.unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert_eq!(svg.headers()["cache-control"], "no-store");
    assert!(svg.text().await.unwrap().contains("<svg"));
    let details = stack.client.get(&stack.session_url(id, "/qr?format=gif"), &key).await.expect_error(400, "validation_error").clone();
    assert_eq!(details["field"], "format");

    // The code rotates, each with a later expiry.
    let second = stack.qr_until(&key, id, Some(code), SOON).await;
    assert!(second["expiresAt"].as_i64() > first["expiresAt"].as_i64());

    // The phone scans the current code.
    stack.phone("scan", &[("code", second["code"].as_str().unwrap()), ("phone", "6281234567890")]).await;
    let working = stack.status_until(&key, id, "working", SOON).await;
    assert_eq!(working["waJid"], "6281234567890@s.whatsapp.net");
    assert_eq!(working["phoneNumber"], "6281234567890");
    assert!(working["waLid"].as_str().unwrap().ends_with("@lid"));
    assert_eq!(working["gatewayId"], stack.daemon.gateway_id.as_str());
    let connected_at = working["lastConnectedAt"].as_i64().unwrap();

    // WhatsApp restarted the stream after the pairing: the session logged in again at once on
    // the same client, showing no reconnect, and that client ran the first full sync (the
    // address book arrives), which a new client would not.
    let events = stack.events(&org).await;
    let after_pairing: Vec<&Value> = events.iter().skip_while(|e| e["type"] != "auth.paired").collect();
    assert!(
        !after_pairing.iter().any(|e| e["type"] == "session.status" && e["data"]["status"] == "starting"),
        "the restart after the pairing is no reconnect: {after_pairing:?}"
    );
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let page = stack.client.get(&stack.session_url(id, "/contacts"), &key).await;
        if page.body["data"].as_array().is_some_and(|d| d.len() == 12) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the first sync's address book never arrived: {}", page.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client announced itself online at login and again with the first sync; the session
    // put it back offline, as it asks by default, so the phone keeps its notifications.
    let presence = stack
        .presence_until(id, SOON, |records| records.len() >= 3 && records.last().is_some_and(|r| r["presence"] == "unavailable"))
        .await;
    assert!(presence.iter().any(|r| r["presence"] == "available"), "{presence:?}");

    let me = stack.client.get(&stack.session_url(id, "/me"), &key).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["connected"], true);
    assert_eq!(me.body["sessionId"], id);
    assert_eq!(me.body["status"], "working");
    assert_eq!(me.body["waJid"], working["waJid"]);
    assert_eq!(me.body["waLid"], working["waLid"]);
    assert_eq!(me.body["phoneNumber"], "6281234567890");
    let details = stack.client.get(&stack.session_url(id, "/qr"), &key).await.expect_error(400, "validation_error").clone();
    assert_eq!(details["reason"], "already_paired");
    assert!(stack.daemon.session_dir(id).exists(), "the session's store is on disk");

    // :stop keeps the pairing.
    let stopped = stack.client.post(&stack.session_url(id, ":stop"), &key, "").await;
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert_eq!(stopped.body["status"], "stopped");
    assert_eq!(stopped.body["waJid"], working["waJid"]);
    let me = stack.client.get(&stack.session_url(id, "/me"), &key).await;
    assert_eq!((me.status, &me.body["connected"]), (200, &Value::Bool(false)));

    // :start reconnects with the stored pairing: no scan.
    let started = stack.client.post(&stack.session_url(id, ":start"), &key, "").await;
    assert_eq!(started.status, 200, "{}", started.body);
    assert_ne!(started.body["status"], "stopped");
    let working = stack.status_until(&key, id, "working", SOON).await;
    assert_eq!(working["waJid"], "6281234567890@s.whatsapp.net");

    // :restart reconnects, keeping the pairing.
    let restarted = stack.client.post(&stack.session_url(id, ":restart"), &key, "").await;
    assert_eq!(restarted.status, 200, "{}", restarted.body);
    let working = stack
        .row_until(&key, id, SOON, |row| row["status"] == "working" && row["lastConnectedAt"].as_i64() > Some(connected_at))
        .await;
    let connected_at = working["lastConnectedAt"].as_i64().unwrap();

    // A dropped connection recovers by itself.
    stack.phone("drop", &[("session", id)]).await;
    stack
        .row_until(&key, id, SOON, |row| row["status"] == "working" && row["lastConnectedAt"].as_i64() > Some(connected_at))
        .await;
    let reconnecting = stack.events(&org).await;
    assert!(
        events_of(&reconnecting, "session.status").iter().any(|e| e["data"]["reason"].as_str().is_some_and(|r| r.contains("connection dropped"))),
        "the drop is announced with its reason"
    );

    // :logout unpairs and keeps the row; a second :logout changes nothing.
    let logged_out = stack.client.post(&stack.session_url(id, ":logout"), &key, "").await;
    assert_eq!(logged_out.status, 200, "{}", logged_out.body);
    assert_eq!(logged_out.body["waJid"], Value::Null);
    assert_eq!(logged_out.body["waLid"], Value::Null);
    assert_eq!(logged_out.body["status"], "stopped");
    assert!(!stack.daemon.session_dir(id).exists(), "logout wipes the store");
    let again = stack.client.post(&stack.session_url(id, ":logout"), &key, "").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, logged_out.body, "a second logout is a no-op");
    stack.client.get(&stack.session_url(id, "/me"), &key).await.expect_error(404, "not_found");

    // Every step was published to the organization's log, identity included where known.
    let events = stack.events(&org).await;
    for event in &events {
        assert_eq!(event["organizationId"], org.as_str());
        assert_eq!(event["sessionId"], id);
        assert!(event["id"].is_string() && event["timestamp"].is_i64(), "{event}");
    }
    assert!(events_of(&events, "auth.qr").len() >= 2);
    let paired = events_of(&events, "auth.paired");
    assert_eq!(paired.len(), 1);
    assert_eq!(paired[0]["data"]["phoneNumber"], "6281234567890");
    assert!(paired[0]["data"]["waLid"].as_str().unwrap().ends_with("@lid"));
    let statuses: Vec<&str> = events_of(&events, "session.status").iter().map(|e| e["data"]["status"].as_str().unwrap()).collect();
    for status in ["scan_qr_code", "working", "stopped", "starting"] {
        assert!(statuses.contains(&status), "a session.status {status} event in {statuses:?}");
    }
    let working_event = events_of(&events, "session.status").into_iter().find(|e| e["data"]["status"] == "working").unwrap();
    assert_eq!(working_event["data"]["phoneNumber"], "6281234567890");
    assert!(working_event["data"]["waLid"].is_string());
    let logout = events_of(&events, "session.logged_out");
    assert_eq!(logout.len(), 1);
    assert_eq!(logout[0]["data"]["phoneNumber"], "6281234567890");
    assert!(logout[0]["data"]["waLid"].is_string());

    // DELETE removes the row and the store.
    assert_eq!(stack.client.delete(&stack.session_url(id, ""), &key).await.status, 204);
    stack.client.get(&stack.session_url(id, ""), &key).await.expect_error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn pairing_code_path_with_its_validation() {
    let stack = Stack::start();
    let org = new_org();
    let key = stack.key(&org).await;
    let session = stack.create(&key, "{}").await;
    let id = session["id"].as_str().unwrap();
    let url = stack.session_url(id, "/pairing-code");

    for (body, field) in [
        ("{}", "phone"),
        (r#"{"phone": "+628123456789"}"#, "phone"),
        (r#"{"phone": "62 812 3456"}"#, "phone"),
        (r#"{"phone": 628123456789}"#, "phone"),
        (r#"{"phone": "12"}"#, "phone"),
        (r#"{"phone": "628123456789", "name": "x"}"#, "name"),
        ("{", "body"),
    ] {
        let reply = stack.client.post(&url, &key, body).await;
        assert_eq!(reply.expect_error(400, "validation_error")["field"], field, "{body}");
    }
    assert_eq!(stack.client.get(&stack.session_url(id, ""), &key).await.body["status"], "stopped", "bad input starts nothing");

    let reply = stack.client.post(&url, &key, r#"{"phone": "628123456789"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let code = reply.body["code"].as_str().unwrap().to_owned();
    assert!(
        code.len() == 9 && code.as_bytes()[4] == b'-' && code.chars().filter(|c| *c != '-').all(|c| c.is_ascii_alphanumeric()),
        "ABCD-1234 shape: {code}"
    );

    stack.phone("enter_code", &[("code", &code), ("phone", "628123456789")]).await;
    let working = stack.status_until(&key, id, "working", SOON).await;
    assert_eq!(working["phoneNumber"], "628123456789");
    assert_eq!(working["waJid"], "628123456789@s.whatsapp.net");

    let again = stack.client.post(&url, &key, r#"{"phone": "628123456789"}"#).await;
    assert_eq!(again.expect_error(400, "validation_error")["reason"], "already_paired");

    let events = stack.events(&org).await;
    let issued = events_of(&events, "auth.pairing_code");
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["data"]["code"], code.as_str());

    // Unlinked from the phone: the pairing is void and the session says why.
    stack.phone("phone_logout", &[("phone", "628123456789")]).await;
    let failed = stack.status_until(&key, id, "failed", SOON).await;
    assert_eq!(failed["waJid"], Value::Null);
    let events = stack.events(&org).await;
    let logged_out = events_of(&events, "session.logged_out");
    assert_eq!(logged_out.len(), 1);
    assert!(logged_out[0]["data"]["reason"].as_str().unwrap().contains("unlinked from the phone"));
    assert_eq!(logged_out[0]["data"]["phoneNumber"], "628123456789");

    // DELETE removes the row and the store the daemon kept.
    assert_eq!(stack.client.delete(&stack.session_url(id, ""), &key).await.status, 204);
    stack.client.get(&stack.session_url(id, ""), &key).await.expect_error(404, "not_found");
    let deadline = std::time::Instant::now() + SOON;
    while stack.daemon.session_dir(id).exists() {
        assert!(std::time::Instant::now() < deadline, "the store was not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_working_session_stops_it_and_removes_its_store() {
    let stack = Stack::start();
    let key = stack.key(&new_org()).await;
    let (id, _) = stack.paired_session(&key, "447700900123").await;
    assert!(stack.daemon.session_dir(&id).exists());

    assert_eq!(stack.client.delete(&stack.session_url(&id, ""), &key).await.status, 204);
    let deadline = std::time::Instant::now() + SOON;
    while stack.daemon.session_dir(&id).exists() {
        assert!(std::time::Instant::now() < deadline, "the store was not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_during_pairing_resumes_and_keeps_paired_numbers() {
    let stack = Stack::start();
    let key = stack.key(&new_org()).await;
    let pairing = stack.create(&key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();
    let (paired, _) = stack.paired_session(&key, "4915112345678").await;
    let before = stack.qr_until(&key, &pairing, None, SOON).await;

    stack.daemon.kill();
    stack.daemon.restart();

    // The unpaired session shows fresh codes again, and the scan completes the pairing.
    let after = stack.qr_until(&key, &pairing, before["code"].as_str(), SOON).await;
    stack.phone("scan", &[("code", after["code"].as_str().unwrap()), ("phone", "4915187654321")]).await;
    stack.status_until(&key, &pairing, "working", SOON).await;
    // The paired session is back with its number, without a scan.
    let row = stack.status_until(&key, &paired, "working", SOON).await;
    assert_eq!(row["phoneNumber"], "4915112345678");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_sent_while_no_daemon_runs_is_carried_out_when_one_starts() {
    let stack = Stack::start();
    stack.daemon.kill();
    let key = stack.key(&new_org()).await;
    let id = stack.create(&key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.client.get(&stack.session_url(&id, "/qr"), &key).await.expect_error(404, "not_found");
    assert_eq!(stack.client.get(&stack.session_url(&id, ""), &key).await.body["status"], "starting");

    stack.daemon.restart();
    stack.qr_until(&key, &id, None, SOON).await;
    stack.status_until(&key, &id, "scan_qr_code", SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn another_organizations_session_is_not_found_on_every_endpoint() {
    let stack = Stack::start();
    let owner = stack.key(&new_org()).await;
    let stranger = stack.key(&new_org()).await;
    let id = stack.create(&owner, "{}").await["id"].as_str().unwrap().to_owned();

    for (method, suffix, body) in [
        ("GET", "/qr", None),
        ("POST", "/pairing-code", Some(r#"{"phone": "628123456789"}"#)),
        ("POST", ":start", Some("")),
        ("POST", ":stop", Some("")),
        ("POST", ":restart", Some("")),
        ("POST", ":logout", Some("")),
        ("GET", "/me", None),
        ("GET", "", None),
        ("DELETE", "", None),
    ] {
        let reply = stack.client.send(method, &stack.session_url(&id, suffix), Some(&stranger), body).await;
        reply.expect_error(404, "not_found");
    }
    let row = stack.client.get(&stack.session_url(&id, ""), &owner).await;
    assert_eq!(row.body["status"], "stopped", "nothing was started for the stranger: {}", row.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_routes_refuse_wrong_methods_and_unknown_actions() {
    let stack = Stack::start();
    let key = stack.key(&new_org()).await;
    let id = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    let reply = stack.client.get(&stack.session_url(&id, ":start"), &key).await;
    reply.expect_error(405, "method_not_allowed");
    assert_eq!(reply.headers["allow"], "POST");
    stack.client.post(&stack.session_url(&id, ":explode"), &key, "").await.expect_error(404, "not_found");
    stack.client.post(&stack.session_url(&id, "/qr"), &key, "").await.expect_error(405, "method_not_allowed");
    stack.client.get(&stack.session_url(&id, "/pairing-code"), &key).await.expect_error(405, "method_not_allowed");
    stack.client.get(&stack.session_url(&id, "/nope"), &key).await.expect_error(404, "not_found");
}

/// The real backend against a WhatsApp endpoint that refuses connections: the session stays
/// `starting`, saying why and when it tries next, and tries again on WhatsApp Web's growing
/// backoff for as long as it takes, never `failed` (an outage is no reason to give a number up).
#[tokio::test(flavor = "multi_thread")]
async fn the_whatsapp_backend_keeps_retrying_an_unreachable_endpoint() {
    let closed = format!("ws://127.0.0.1:{}/ws/chat", e2e::free_port());
    let stack = Stack::start_with(&[("BACKEND", "whatsapp"), ("WHATSAPP_URL", &closed), ("RECONNECT_BASE_MS", "100")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let id = stack.create(&key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = stack.events(&org).await;
        if e2e::reconnect_waits(&events).len() >= 6 {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "not retrying: {events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!events_of(&events, "session.status").iter().any(|e| e["data"]["status"] == "failed"), "an unreachable WhatsApp fails nothing");
    let row = stack.client.get(&stack.session_url(&id, ""), &key).await.body;
    assert_eq!(row["status"], "starting", "{row}");
    assert!(row["statusReason"].as_str().unwrap().starts_with("reconnecting: "), "{row}");
    let waits = e2e::reconnect_waits(&events);
    assert!(waits[5] >= 400, "the backoff grows (100, 100, 200, 300, 500 … ms): {waits:?}");

    // :restart starts over on a new client (the store passes from the old one to it), and
    // :stop ends the retrying.
    let before = e2e::reconnect_waits(&stack.events(&org).await).len();
    let restarted = stack.client.post(&stack.session_url(&id, ":restart"), &key, "").await;
    assert_eq!(restarted.status, 200, "{}", restarted.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while e2e::reconnect_waits(&stack.events(&org).await).len() <= before + 1 {
        assert!(std::time::Instant::now() < deadline, "the new client did not try within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = stack.client.post(&stack.session_url(&id, ":stop"), &key, "").await;
    assert_eq!(stopped.body["status"], "stopped", "{}", stopped.body);
}

/// SIGTERM: the sessions stop working and say so, and the daemon keeps its leases for one lease
/// period. Restarted within it, it resumes every session itself, without a scan, although a
/// peer daemon (with a data directory of its own, so an adoption would lose the pairing) runs.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_pauses_sessions_truthfully_and_a_quick_restart_resumes_them_with_peers_running() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("LEASE_MS", "6000")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "628777000111").await;
    let _peer = e2e::Daemon::start_with(&stack.redis.url, &[("BACKEND", "simulator"), ("LEASE_MS", "6000")]);
    let codes_shown = |events: &[Value]| events.iter().filter(|e| e["type"] == "auth.qr").count();
    let before = codes_shown(&stack.events(&org).await);

    let took = stack.daemon.terminate();
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    // Not working any more, and says so; the lease is kept for the restart.
    let row = stack.client.get(&stack.session_url(&id, ""), &key).await.body;
    assert_eq!((&row["status"], &row["statusReason"]), (&"starting".into(), &"gateway_shutdown".into()), "{row}");
    assert_eq!(row["waJid"], "628777000111@s.whatsapp.net", "the pairing is kept");
    let events = stack.events(&org).await;
    assert_eq!(events.last().unwrap()["data"]["reason"], "gateway_shutdown");
    let mut redis = stack.redis().await;
    let lease: Option<String> = redis::AsyncCommands::get(&mut redis, shared::keys::session_lease(&org, &id)).await.unwrap();
    assert!(lease.is_some_and(|l| l.starts_with(&stack.daemon.gateway_id)), "the lease waits for the restart");

    stack.daemon.restart();
    let row = stack.status_until(&key, &id, "working", SOON).await;
    assert_eq!(row["phoneNumber"], "628777000111");
    assert_eq!(row["gatewayId"], stack.daemon.gateway_id.as_str(), "resumed by its own gateway, not adopted");
    assert_eq!(codes_shown(&stack.events(&org).await), before, "no new pairing: no QR code was shown again");
}

/// A placement command delivered to a daemon that then died (its heartbeat is gone) is claimed
/// by a live daemon and carried out.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_daemon_claims_the_commands_a_dead_one_left_pending() {
    let stack = Stack::start();
    stack.daemon.kill();
    let key = stack.key(&new_org()).await;
    let id = stack.create(&key, r#"{"start": true}"#).await["id"].as_str().unwrap().to_owned();

    // A daemon "gw-dead" read the start command and died before acknowledging it.
    let mut redis = stack.redis().await;
    let stream = shared::keys::unplaced_commands();
    // The group may not exist yet if the first daemon was killed before it got to it.
    let _: redis::RedisResult<()> =
        redis::AsyncCommands::xgroup_create_mkstream(&mut redis, &stream, shared::keys::COMMAND_GROUP, "0").await;
    let read: redis::streams::StreamReadReply = redis::AsyncCommands::xread_options(
        &mut redis,
        &[&stream],
        &[">"],
        &redis::streams::StreamReadOptions::default().group(shared::keys::COMMAND_GROUP, "gw-dead").count(100),
    )
    .await
    .unwrap();
    assert_eq!(read.keys[0].ids.len(), 1, "the dead daemon holds the command");

    stack.daemon.restart();
    stack.qr_until(&key, &id, None, SOON).await;
    let pending: redis::streams::StreamPendingReply =
        redis::AsyncCommands::xpending(&mut redis, &stream, shared::keys::COMMAND_GROUP).await.unwrap();
    assert_eq!(pending.count(), 0, "claimed, carried out and acknowledged");
}

/// Two daemons; the one running a paired session dies for good. The other adopts the session
/// once the dead one's heartbeat lapses, and it is back to `working` without a scan.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_daemon_adopts_the_sessions_of_a_dead_gateway() {
    let stack = Stack::start();
    let second = stack.daemon.start_beside();
    let key = stack.key(&new_org()).await;
    let (id, row) = stack.paired_session(&key, "5511999990000").await;
    let holder = row["gatewayId"].as_str().unwrap().to_owned();
    let survivor = if holder == stack.daemon.gateway_id {
        stack.daemon.kill();
        second.gateway_id.clone()
    } else {
        second.kill();
        stack.daemon.gateway_id.clone()
    };

    let row = stack
        .row_until(&key, &id, Duration::from_secs(20), |row| row["status"] == "working" && row["gatewayId"] == survivor.as_str())
        .await;
    assert_eq!(row["phoneNumber"], "5511999990000", "adopted with its pairing");
}

/// `GET /qr` on a stopped, unpaired session starts pairing; codes that run out build a new
/// client a bounded number of times, then the session stops and says why.
#[tokio::test(flavor = "multi_thread")]
async fn qr_starts_pairing_and_unscanned_codes_end_in_stopped() {
    let stack = Stack::start_with(&[
        ("BACKEND", "simulator"),
        ("SIM_FIRST_QR_MS", "400"),
        ("SIM_NEXT_QR_MS", "200"),
        ("SIM_QR_COUNT", "2"),
        ("PAIRING_ROUNDS", "2"),
    ]);
    let org = new_org();
    let key = stack.key(&org).await;
    let id = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    stack.client.get(&stack.session_url(&id, "/qr"), &key).await.expect_error(404, "not_found");
    stack.qr_until(&key, &id, None, SOON).await;

    stack.status_until(&key, &id, "stopped", SOON).await;
    let events = stack.events(&org).await;
    assert_eq!(events_of(&events, "auth.qr").len(), 4, "two clients of two codes each");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "session.status");
    assert_eq!((&last["data"]["status"], &last["data"]["reason"]), (&"stopped".into(), &"qr_codes_exhausted".into()));

    // Asking for a code again is the user still pairing: it starts over.
    stack.client.get(&stack.session_url(&id, "/qr"), &key).await.expect_error(404, "not_found");
    stack.qr_until(&key, &id, None, SOON).await;
}

/// A phone code asked for as the session starts waits for WhatsApp's socket (a request before
/// it is up is refused at once); the code stays valid when the QR codes run out meanwhile, since
/// the client keeps its socket up for it; a code WhatsApp voids is announced. A session that asks
/// to be shown online stays so after WhatsApp's own announcements.
#[tokio::test(flavor = "multi_thread")]
async fn a_phone_code_waits_for_the_socket_and_outlives_the_qr_codes() {
    let stack = Stack::start_with(&[
        ("BACKEND", "simulator"),
        ("SIM_CONNECT_MS", "1500"),
        ("SIM_FIRST_QR_MS", "300"),
        ("SIM_QR_COUNT", "1"),
    ]);
    let org = new_org();
    let key = stack.key(&org).await;
    let id = stack.create(&key, r#"{"alwaysOnline": true}"#).await["id"].as_str().unwrap().to_owned();
    assert_eq!(stack.client.get(&stack.session_url(&id, ""), &key).await.body["alwaysOnline"], true);
    let reply = stack.client.post(&stack.session_url(&id, "/pairing-code"), &key, r#"{"phone": "628123450001"}"#).await;
    assert_eq!(reply.status, 200, "asked before the socket is up, the code comes once it is: {}", reply.body);
    let code = reply.body["code"].as_str().unwrap().to_owned();

    let waiting = stack.row_until(&key, &id, SOON, |row| row["statusReason"] == "waiting_for_pairing_code").await;
    assert_eq!(waiting["status"], "scan_qr_code", "{waiting}");
    stack.client.get(&stack.session_url(&id, "/qr"), &key).await.expect_error(404, "not_found");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.phone("enter_code", &[("code", &code), ("phone", "628123450001")]).await;
    let working = stack.status_until(&key, &id, "working", SOON).await;
    assert_eq!(working["phoneNumber"], "628123450001");
    stack.presence_until(&id, SOON, |records| records.len() >= 3 && records.iter().all(|r| r["presence"] == "available")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let presence = stack.simulator_records(&shared::keys::simulator_presence(), &id).await;
    assert!(presence.iter().all(|r| r["presence"] == "available"), "shown online, as asked: {presence:?}");

    // A code WhatsApp voids is announced, and typing it links nothing.
    let other = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    let reply = stack.client.post(&stack.session_url(&other, "/pairing-code"), &key, r#"{"phone": "628123450002"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    stack.phone("refresh_code", &[("session", &other)]).await;
    let mut stream = stack.subscribe(Some(&key), &format!("session={other}&types=auth.pairing_failed"), Some("0-0")).await.unwrap();
    let failed = stream.until(SOON, |e| e.kind == "auth.pairing_failed").await;
    assert!(failed[0].data["data"]["reason"].as_str().unwrap().starts_with("code_expired"), "{:?}", failed[0]);
    stack.phone("enter_code", &[("code", reply.body["code"].as_str().unwrap()), ("phone", "628123450002")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(stack.client.get(&stack.session_url(&other, ""), &key).await.body["status"], "working");
}

/// A phone-code request that a `:stop` overtakes is a conflict with what the session was told,
/// not an outage: 409 `interrupted`, and nothing is left waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_phone_code_overtaken_by_a_stop_is_a_conflict() {
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SIM_CONNECT_MS", "3000")]);
    let key = stack.key(&new_org()).await;
    let id = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    let asking = {
        let (client, url, key) = (e2e::Client::default(), stack.session_url(&id, "/pairing-code"), key.clone());
        tokio::spawn(async move { client.post(&url, &key, r#"{"phone": "628123450009"}"#).await })
    };
    stack.row_until(&key, &id, SOON, |row| row["status"] == "starting").await;
    let stopped = stack.client.post(&stack.session_url(&id, ":stop"), &key, "").await;
    assert_eq!(stopped.body["status"], "stopped", "{}", stopped.body);
    let answer = asking.await.unwrap();
    assert_eq!(answer.expect_error(409, "conflict")["reason"], "interrupted");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pairing_page_follows_the_live_qr_in_a_browser_and_turns_to_connected() {
    // The first code lasts 4 s, the next a minute: the page is seen following one rotation, and
    // the code a screenshot shows is still the one to scan.
    let stack = Stack::start_with(&[("BACKEND", "simulator"), ("SIM_FIRST_QR_MS", "4000"), ("SIM_NEXT_QR_MS", "60000")]);
    let org = new_org();
    let key = stack.key(&org).await;
    let id = stack.create(&key, r#"{"label": "Shop"}"#).await["id"].as_str().unwrap().to_owned();
    let other = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();

    let link = stack.client.post(&stack.session_url(&id, "/pairing-link"), &key, "").await;
    assert_eq!(link.status, 201, "{}", link.body);
    let path = link.body["url"].as_str().unwrap();
    let token = path.split_once("?token=").unwrap().1;
    assert!(path.starts_with(&format!("/pair/{id}?token=wgp_")), "{path}");
    assert!(link.body["expiresAt"].as_i64().unwrap() > shared::time::now_millis());

    // The link opens this session's page and nothing else.
    stack.client.get(&stack.session_url(&id, ""), token).await.expect_error(401, "unauthorized");
    stack.client.send("GET", &stack.gateway.url(&format!("/pair/{other}/state?token={token}")), None, None).await.expect_error(404, "not_found");
    stack.client.send("GET", &stack.gateway.url(&format!("/pair/{id}/state?token=wgp_forged")), None, None).await.expect_error(401, "unauthorized");
    stack.client.send("GET", &stack.gateway.url(&format!("/pair/{id}/state")), None, None).await.expect_error(401, "unauthorized");
    let tokenless = stack.client.send("GET", &stack.gateway.url(&format!("/pair/{id}")), None, None).await;
    assert_eq!(tokenless.expect_error(400, "validation_error")["field"], "token");
    stack.client.send("DELETE", &stack.gateway.url(&format!("/pair/{id}")), None, None).await.expect_error(405, "method_not_allowed");
    let (read_key, _) = e2e::api_key_at(&stack.redis.url, &org, &[shared::auth::Capability::Read]).await;
    stack.client.post(&stack.session_url(&id, "/pairing-link"), &read_key, "").await.expect_error(403, "forbidden");


    // Minting the link started pairing; a browser shows the live code.
    let first = stack.qr_until(&key, &id, None, SOON).await["code"].as_str().unwrap().to_owned();

    // The link streams this session's pairing events, codes included (what the page follows),
    // and nothing else.
    let mut pairing = stack.subscribe(None, &format!("token={token}&session={id}&types=message.*"), Some("0-0")).await.unwrap();
    let seen = pairing.until(SOON, |e| e.kind == "auth.qr").await;
    assert_eq!(seen.last().unwrap().data["data"]["code"], first.as_str(), "unredacted for the page");
    assert!(seen.iter().all(|e| e.data["sessionId"] == id.as_str() && (e.kind.starts_with("auth.") || e.kind == "session.status")), "{seen:?}");
    let refused = stack.subscribe(None, &format!("token={token}&session={other}"), None).await.err().unwrap();
    refused.expect_error(404, "not_found");
    let refused = stack.subscribe(None, &format!("token={token}"), None).await.err().unwrap();
    assert_eq!(refused.expect_error(400, "validation_error")["field"], "session");
    let mut browser = e2e::Browser::open(&stack.gateway.url(path)).await;
    browser.text_until(SOON, |text| text.contains("Scan this code")).await;
    let shown = e2e::decode_qr_png(&browser.screenshot().await).expect("a QR code on the page");
    let current = stack.qr_until(&key, &id, None, SOON).await;
    assert!(shown == first || shown == current["code"], "the page shows the live code: {shown}");

    // The code rotates and the open page follows it at once, told by the event stream (its
    // fallback poll is every 15 s); a phone scans the screen.
    let second = stack.qr_until(&key, &id, Some(&first), SOON).await["code"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while e2e::decode_qr_png(&browser.screenshot().await).as_deref() != Some(second.as_str()) {
        assert!(std::time::Instant::now() < deadline, "the page did not follow the rotation");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.phone("scan", &[("code", &second), ("phone", "628777000001")]).await;
    stack.status_until(&key, &id, "working", SOON).await;
    // The link's stream shows the connection, then ends at once (not at its next credential
    // check, a minute away): the link is spent.
    let connected = std::time::Instant::now();
    let mut shown = Vec::new();
    while let Some(event) = pairing.next(Duration::from_secs(10)).await {
        shown.push(event);
    }
    assert!(connected.elapsed() < Duration::from_secs(5), "the link's stream went on after the session connected");
    assert!(shown.iter().any(|e| e.kind == "session.status" && e.data["data"]["status"] == "working"), "{shown:?}");

    // The same page turns to say so, with the number.
    browser.text_until(SOON, |text| text.contains("Connected: +628777000001")).await;

    // The link did its job: it still shows the outcome, but streams and pairs nothing more, so
    // a later logout cannot hand the number to whoever kept it.
    let spent = stack.subscribe(None, &format!("token={token}&session={id}"), None).await.err().unwrap();
    spent.expect_error(401, "unauthorized");
    let code = stack.client.send("POST", &stack.gateway.url(&format!("/pair/{id}/pairing-code?token={token}")), None, Some(r#"{"phone": "628777000001"}"#)).await;
    code.expect_error(401, "unauthorized");
    let state = stack.client.send("GET", &stack.gateway.url(&format!("/pair/{id}/state?token={token}")), None, None).await;
    assert_eq!((state.body["status"].as_str(), &state.body["qr"]), (Some("working"), &Value::Null), "{}", state.body);
    stack.client.post(&stack.session_url(&id, "/pairing-link"), &key, "").await.expect_error(400, "validation_error");

    // Revoked (a link sent to the wrong person, say), it shows nothing more. Only a manager of
    // the session's organization revokes.
    let (read_key, _) = e2e::api_key_at(&stack.redis.url, &org, &[shared::auth::Capability::Read]).await;
    stack.client.delete(&stack.session_url(&id, "/pairing-link"), &read_key).await.expect_error(403, "forbidden");
    stack.client.delete(&stack.session_url(&id, "/pairing-link"), &stack.key(&new_org()).await).await.expect_error(404, "not_found");
    assert_eq!(stack.client.delete(&stack.session_url(&id, "/pairing-link"), &key).await.status, 204);
    let state = stack.client.send("GET", &stack.gateway.url(&format!("/pair/{id}/state?token={token}")), None, None).await;
    state.expect_error(401, "unauthorized");
}
