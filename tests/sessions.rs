//! The session endpoints over real HTTP: shapes and status codes against the API reference,
//! organization scoping, validation, and the commands left for the daemon.

use e2e::{Client, gateway, manage_key, new_org, redis_url};
use serde_json::Value;
use std::time::Duration;

/// The reference's fields, and the one this gateway adds (`statusReason`); never anything it
/// keeps for itself on the stored row.
const FIELDS: [&str; 19] = [
    "alwaysOnline", "autoRead", "createdAt", "createdByUserId", "gatewayId", "id", "isAdminSession", "label",
    "lastConnectedAt", "organizationId", "phoneNumber", "presenceTyping", "ratePerHour",
    "ratePerMin", "status", "statusReason", "updatedAt", "waJid", "waLid",
];

fn sessions() -> String {
    gateway().url("/api/v1/sessions")
}

fn session(id: &str) -> String {
    gateway().url(&format!("/api/v1/sessions/{id}"))
}

/// The commands queued on a stream, as JSON.
async fn stream_entries(stream: &str) -> Vec<Value> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    reply.ids.iter().map(|entry| serde_json::from_str(&entry.get::<String>("command").unwrap()).unwrap()).collect()
}

fn command_for(entries: &[Value], session_id: &str) -> Option<String> {
    entries.iter().find(|c| c["sessionId"] == session_id).map(|c| c["type"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn create_answers_201_with_the_full_row() {
    let (client, org) = (Client::default(), new_org());
    let key = manage_key(&org).await;
    let body = r#"{"label":"Support line","autoRead":true,"presenceTyping":false,"ratePerMin":30,"ratePerHour":900}"#;
    let reply = client.post(&sessions(), &key, body).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let row = reply.body.as_object().unwrap();
    let mut fields: Vec<&str> = row.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, FIELDS);
    assert_eq!(row["organizationId"], org.as_str());
    assert_eq!(row["label"], "Support line");
    assert_eq!(row["status"], "stopped");
    assert_eq!((row["autoRead"].clone(), row["presenceTyping"].clone()), (Value::Bool(true), Value::Bool(false)));
    assert_eq!((row["ratePerMin"].as_u64(), row["ratePerHour"].as_u64()), (Some(30), Some(900)));
    assert_eq!(row["id"].as_str().unwrap().len(), 26, "a ULID");
    assert!(row["createdByUserId"].as_str().unwrap().starts_with("apikey:"));
    for unknown in ["gatewayId", "phoneNumber", "waJid", "waLid", "lastConnectedAt", "statusReason"] {
        assert!(row[unknown].is_null(), "{unknown} is null until known");
    }
    assert_eq!(row["createdAt"], row["updatedAt"]);

    let again = client.post(&sessions(), &key, body).await;
    assert_ne!(again.body["id"], reply.body["id"], "not idempotent: each call creates a session");
}

#[tokio::test]
async fn defaults_apply_and_start_true_asks_a_daemon_to_start() {
    let (client, org) = (Client::default(), new_org());
    let key = manage_key(&org).await;
    let stopped = client.post(&sessions(), &key, "").await;
    assert_eq!(stopped.status, 201);
    assert_eq!(stopped.body["status"], "stopped");
    assert_eq!((stopped.body["ratePerMin"].as_u64(), stopped.body["ratePerHour"].as_u64()), (Some(20), Some(600)));
    assert_eq!(stopped.body["presenceTyping"], true);

    let started = client.post(&sessions(), &key, r#"{"start":true}"#).await;
    assert_eq!(started.body["status"], "starting");
    let queued = stream_entries(&shared::keys::unplaced_commands()).await;
    let id = started.body["id"].as_str().unwrap();
    assert_eq!(command_for(&queued, id).as_deref(), Some("start"));
    assert_eq!(command_for(&queued, stopped.body["id"].as_str().unwrap()), None, "a stopped session queues nothing");
}

#[tokio::test]
async fn get_answers_the_row() {
    let (client, org) = (Client::default(), new_org());
    let key = manage_key(&org).await;
    let created = client.post(&sessions(), &key, r#"{"label":"A"}"#).await.body;
    let reply = client.get(&session(created["id"].as_str().unwrap()), &key).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, created);
}

#[tokio::test]
async fn list_is_scoped_to_the_callers_organization() {
    let client = Client::default();
    let (org_a, org_b) = (new_org(), new_org());
    let (key_a, key_b) = (manage_key(&org_a).await, manage_key(&org_b).await);
    let first = client.post(&sessions(), &key_a, r#"{"label":"first"}"#).await.body;
    let second = client.post(&sessions(), &key_a, r#"{"label":"second"}"#).await.body;
    client.post(&sessions(), &key_b, r#"{"label":"other org"}"#).await;

    let reply = client.get(&sessions(), &key_a).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.as_object().unwrap().len(), 2, "exactly data and nextCursor");
    assert!(reply.body["nextCursor"].is_null());
    assert_eq!(reply.body["data"], serde_json::json!([first, second]), "oldest first, only org A");

    // With `limit`, pages of that size, each naming the next; a page size outside 1 to 500 or a
    // cursor this endpoint never gave is refused.
    let page = client.get(&format!("{}?limit=1", sessions()), &key_a).await.body;
    assert_eq!(page["data"], serde_json::json!([first]));
    let next = page["nextCursor"].as_str().expect("a cursor to the second page");
    let rest = client.get(&format!("{}?limit=1&cursor={next}", sessions()), &key_a).await.body;
    assert_eq!(rest["data"], serde_json::json!([second]));
    let after = client.get(&format!("{}?limit=5&cursor={next}", sessions()), &key_a).await.body;
    assert_eq!((&after["data"], &after["nextCursor"]), (&serde_json::json!([second]), &serde_json::Value::Null));
    for bad in ["limit=0", "limit=501", "limit=x", "cursor=", "cursor=%2B%2B", "cursor=YWJj", "page=2"] {
        client.get(&format!("{}?{bad}", sessions()), &key_a).await.expect_error(400, "validation_error");
    }

    let empty = client.get(&sessions(), &manage_key(&new_org()).await).await;
    assert_eq!(empty.body["data"], serde_json::json!([]));
}

#[tokio::test]
async fn another_organizations_session_is_not_found() {
    let client = Client::default();
    let owner = manage_key(&new_org()).await;
    let stranger = manage_key(&new_org()).await;
    let id = client.post(&sessions(), &owner, "{}").await.body["id"].as_str().unwrap().to_owned();

    client.get(&session(&id), &stranger).await.expect_error(404, "not_found");
    client.delete(&session(&id), &stranger).await.expect_error(404, "not_found");
    assert_eq!(client.get(&session(&id), &owner).await.status, 200, "a stranger's DELETE removed nothing");
}

#[tokio::test]
async fn delete_removes_the_row_and_queues_cleanup() {
    let (client, org) = (Client::default(), new_org());
    let key = manage_key(&org).await;
    let id = client.post(&sessions(), &key, "{}").await.body["id"].as_str().unwrap().to_owned();

    let reply = client.delete(&session(&id), &key).await;
    assert_eq!(reply.status, 204);
    assert!(reply.body.is_null(), "204 has no body");
    client.get(&session(&id), &key).await.expect_error(404, "not_found");
    client.delete(&session(&id), &key).await.expect_error(404, "not_found");
    assert_eq!(client.get(&sessions(), &key).await.body["data"], serde_json::json!([]));
    let queued = stream_entries(&shared::keys::unplaced_commands()).await;
    assert_eq!(command_for(&queued, &id).as_deref(), Some("delete"));
}

#[tokio::test]
async fn unknown_session_ids_are_not_found() {
    let key = manage_key(&new_org()).await;
    let client = Client::default();
    for id in ["01J9ZX8K2QHV0M3T6R7P4N5W8C", "no-such-session", "%7Bbrace%7D"] {
        client.get(&session(id), &key).await.expect_error(404, "not_found");
    }
    // Unless the operator exposes them, the host's metrics are no page of the API.
    client.get(&gateway().url("/metrics"), &key).await.expect_error(404, "not_found");
}

#[tokio::test]
async fn invalid_bodies_are_400_naming_the_field_and_create_nothing() {
    let (client, org) = (Client::default(), new_org());
    let key = manage_key(&org).await;
    let cases = [
        ("{\"label\": ", "body"),
        ("[1,2]", "body"),
        (r#"{"start":"yes"}"#, "start"),
        (r#"{"autoRead":1}"#, "autoRead"),
        (r#"{"label":42}"#, "label"),
        (r#"{"label":""}"#, "label"),
        (r#"{"colour":"blue"}"#, "colour"),
        (r#"{"ratePerMin":0}"#, "ratePerMin"),
        (r#"{"ratePerMin":5000}"#, "ratePerMin"),
        (r#"{"ratePerMin":2.5}"#, "ratePerMin"),
        (r#"{"ratePerHour":-1}"#, "ratePerHour"),
        (r#"{"ratePerHour":"600"}"#, "ratePerHour"),
        (r#"{"isAdminSession":null,"presenceTyping":"no"}"#, "presenceTyping"),
    ];
    for (body, field) in cases {
        let reply = client.post(&sessions(), &key, body).await;
        let details = reply.expect_error(400, "validation_error");
        assert_eq!(details["field"], field, "body {body}");
    }
    assert_eq!(client.get(&sessions(), &key).await.body["data"], serde_json::json!([]));
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let key = manage_key(&new_org()).await;
    let body = format!(r#"{{"label":"{}"}}"#, "x".repeat(5000));
    Client::default().post(&sessions(), &key, &body).await.expect_error(413, "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_the_envelope() {
    let key = manage_key(&new_org()).await;
    let client = Client::default();
    client.get(&gateway().url("/api/v1/nothing-here"), &key).await.expect_error(404, "not_found");
    client.get(&gateway().url("/"), &key).await.expect_error(404, "not_found");
    client.get(&gateway().url("/api/v1/sessions/a/b/c"), &key).await.expect_error(404, "not_found");

    let put = client.send("PUT", &sessions(), Some(&key), Some("{}")).await;
    put.expect_error(405, "method_not_allowed");
    assert_eq!(put.headers["allow"], "GET, POST");
    let patch = client.send("PATCH", &session("01J9ZX8K2QHV0M3T6R7P4N5W8C"), Some(&key), None).await;
    patch.expect_error(405, "method_not_allowed");
    assert_eq!(patch.headers["allow"], "GET, DELETE");
}

/// The host keeps instances warm between requests. Whatever one request left behind (another
/// organization's rows, a refused caller, a rejected body) must not change what the next sees.
#[tokio::test]
async fn warm_instances_answer_each_organization_as_fresh_ones_would() {
    let client = Client::default();
    let orgs = [new_org(), new_org()];
    let keys = [manage_key(&orgs[0]).await, manage_key(&orgs[1]).await];
    let rows = [
        client.post(&sessions(), &keys[0], r#"{"label":"only A"}"#).await.body,
        client.post(&sessions(), &keys[1], r#"{"label":"only B"}"#).await.body,
    ];
    // Several rounds of four requests on four connections at once: more requests than one
    // instance serves, more callers than one instance.
    let url = sessions();
    for round in 0..150 {
        let (a, b, refused, rejected) = tokio::join!(
            client.get(&url, &keys[round % 2]),
            client.get(&url, &keys[(round + 1) % 2]),
            client.get(&url, "wgk_not-a-key"),
            client.post(&url, &keys[round % 2], r#"{"label":"x","ratePerMin":-1}"#),
        );
        assert_eq!(a.body["data"], serde_json::json!([rows[round % 2]]), "round {round}");
        assert_eq!(b.body["data"], serde_json::json!([rows[(round + 1) % 2]]), "round {round}");
        refused.expect_error(401, "unauthorized");
        assert_eq!(rejected.expect_error(400, "validation_error")["field"], "ratePerMin", "round {round}");
    }
}

#[tokio::test]
async fn the_api_document_is_served_and_rendered_by_the_gateway_alone() {
    let gateway = e2e::gateway();
    let document = reqwest::get(gateway.url("/api/v1/openapi.json")).await.unwrap();
    assert_eq!(document.status(), 200);
    let document: serde_json::Value = document.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    for path in ["/api/v1/sessions", "/api/v1/sessions/{session}/messages", "/api/v1/webhooks/{webhook}:replay", "/api/v1/events"] {
        assert!(document["paths"][path].is_object(), "{path} is documented");
    }
    let page = reqwest::get(gateway.url("/docs")).await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "every asset is the gateway's own");
    // A browser renders every operation from the document.
    let mut browser = e2e::Browser::open(&gateway.url("/docs")).await;
    let summaries = ["Register a webhook endpoint", "Send a message (queued; 202)", "The pairing page (HTML)"];
    browser.text_until(Duration::from_secs(10), |text| summaries.iter().all(|s| text.contains(s))).await;
    let client = e2e::Client::default();
    client.send("POST", &gateway.url("/docs"), None, None).await.expect_error(405, "method_not_allowed");
}
