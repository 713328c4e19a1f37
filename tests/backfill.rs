//! The super_admin backfill and the session directory (contacts, groups) end to end: real host,
//! components and daemon, the simulator standing in for WhatsApp with an address book of
//! `SIM_CONTACTS` contacts and `SIM_GROUPS` groups.

use e2e::{AUDIENCE, ISSUER, Stack, claims, new_org, now, rs256};
use serde_json::{Value, json};
use shared::auth::Capability;
use std::time::Duration;

const SOON: Duration = Duration::from_secs(10);
const CONTACTS: usize = 30;
const GROUPS: usize = 25;

fn stack() -> Stack {
    Stack::start_with(&[
        ("BACKEND", "simulator"),
        ("SIM_CONTACTS", "30"),
        ("SIM_GROUPS", "25"),
        // Long enough for a second request to find the job running.
        ("SIM_GROUPS_FETCH_MS", "1500"),
    ])
}

/// A platform super_admin's login token: no organization, only the platform role.
fn super_admin() -> String {
    rs256(&json!({
        "sub": "operator-1", "platform_role": "super_admin",
        "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 3600,
    }))
}

fn backfill_url(stack: &Stack, session: &str) -> String {
    stack.gateway.url(&format!("/api/v1/admin/sessions/{session}/backfill"))
}

/// Every page of `/contacts` or `/groups`, `limit` at a time.
async fn all_pages(stack: &Stack, key: &str, session: &str, kind: &str, limit: u32) -> (Vec<Value>, usize) {
    let (mut items, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit={limit}&cursor={c}"),
            None => format!("?limit={limit}"),
        };
        let page = stack.client.get(&stack.session_url(session, &format!("/{kind}{query}")), key).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let data = page.body["data"].as_array().unwrap();
        assert!(data.len() <= limit as usize);
        items.extend(data.iter().cloned());
        pages += 1;
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (items, pages),
        }
    }
}

fn jids(items: &[Value]) -> Vec<&str> {
    items.iter().map(|i| i["jid"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_runs_reports_progress_and_fills_the_groups() {
    let stack = stack();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "6281111111111").await;
    let mut events = stack.subscribe(Some(&key), &format!("session={id}&types=backfill.*"), None).await.unwrap();
    let admin = super_admin();

    let started = stack.client.post(&backfill_url(&stack, &id), &admin, "").await;
    assert_eq!(started.status, 202, "{}", started.body);
    let job = &started.body;
    assert_eq!((job["status"].as_str(), job["sessionId"].as_str()), (Some("running"), Some(id.as_str())));
    assert_eq!(job["id"].as_str().unwrap().len(), 26);
    assert!(job["startedAt"].as_i64().is_some() && job["finishedAt"].is_null() && job["error"].is_null());

    // One at a time: a second start is refused, not merged.
    let second = stack.client.post(&backfill_url(&stack, &id), &admin, "").await;
    assert_eq!(second.expect_error(409, "conflict")["jobId"], job["id"]);

    let seen = events.until(SOON, |e| e.kind != "backfill.progress").await;
    let (progress, outcome) = seen.split_at(seen.len() - 1);
    assert_eq!(outcome[0].kind, "backfill.completed", "{seen:#?}");
    assert!(progress.len() >= 1 + GROUPS.div_ceil(10), "one event for contacts, one per batch of groups: {progress:#?}");
    let counts = |e: &e2e::SseEvent| (e.data["data"]["groups"]["done"].as_u64(), e.data["data"]["groups"]["total"].as_u64());
    assert!(progress.windows(2).all(|w| counts(&w[0]).0 <= counts(&w[1]).0), "progress only grows");
    let done = &outcome[0].data["data"];
    assert_eq!(done["id"], job["id"]);
    assert_eq!(done["contacts"], json!({"done": CONTACTS, "total": CONTACTS}));
    assert_eq!(done["groups"], json!({"done": GROUPS, "total": GROUPS}));

    let polled = stack.client.get(&backfill_url(&stack, &id), &admin).await;
    assert_eq!(polled.status, 200, "{}", polled.body);
    assert_eq!((polled.body["status"].as_str(), &polled.body["groups"]), (Some("completed"), &done["groups"]));
    assert!(polled.body["finishedAt"].as_i64() >= polled.body["startedAt"].as_i64());

    // The groups are readable, with their members, a page at a time.
    let (groups, pages) = all_pages(&stack, &key, &id, "groups", 10).await;
    assert_eq!((groups.len(), pages), (GROUPS, 3));
    let mut sorted = jids(&groups);
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, jids(&groups), "unique and in a stable order");
    let participants = groups[0]["participants"].as_array().unwrap();
    assert!(participants.iter().any(|p| p["jid"] == "6281111111111@s.whatsapp.net" && p["role"] == "superadmin"));
    assert_eq!(groups[0]["size"], participants.len());

    // A finished job does not block the next one.
    let again = stack.client.post(&backfill_url(&stack, &id), &admin, "").await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_ne!(again.body["id"], job["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn contacts_are_kept_as_they_arrive_and_paginated() {
    let stack = stack();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "6282222222222").await;

    // The phone's address book arrives after login; no backfill needed to read it.
    let deadline = std::time::Instant::now() + SOON;
    let (contacts, pages) = loop {
        let (contacts, pages) = all_pages(&stack, &key, &id, "contacts", 7).await;
        if contacts.len() == CONTACTS || std::time::Instant::now() > deadline {
            break (contacts, pages);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((contacts.len(), pages), (CONTACTS, CONTACTS.div_ceil(7)));
    let contact = contacts.iter().find(|c| c["jid"] == "628990000001@s.whatsapp.net").expect("contact 1");
    assert_eq!((contact["name"].as_str(), contact["pushName"].as_str()), (Some("Contact 1"), Some("Push 1")));
    assert_eq!(contact["phoneNumber"], "628990000001");

    // Paging is validated.
    let contacts_url = |query: &str| stack.session_url(&id, &format!("/contacts{query}"));
    for (query, field) in [("?limit=0", "limit"), ("?limit=501", "limit"), ("?limit=x", "limit"), ("?cursor=%25%25", "cursor"), ("?page=2", "page")] {
        let refused = stack.client.get(&contacts_url(query), &key).await;
        assert_eq!(refused.expect_error(400, "validation_error")["field"], field, "{query}");
    }
    let first = stack.client.get(&contacts_url(""), &key).await;
    assert_eq!((first.body["data"].as_array().unwrap().len(), &first.body["nextCursor"]), (CONTACTS, &Value::Null));

    // Scoped like every session resource; `read` is the capability.
    let stranger = stack.key(&new_org()).await;
    stack.client.get(&contacts_url(""), &stranger).await.expect_error(404, "not_found");
    stack.client.get(&stack.session_url(&id, "/groups"), &stranger).await.expect_error(404, "not_found");
    let (reader, _) = e2e::api_key_at(&stack.redis.url, &org, &[Capability::Read]).await;
    assert_eq!(stack.client.get(&contacts_url(""), &reader).await.status, 200);
    let (manager, _) = e2e::api_key_at(&stack.redis.url, &org, &[Capability::Manage]).await;
    stack.client.get(&contacts_url(""), &manager).await.expect_error(403, "forbidden");
    stack.client.post(&contacts_url(""), &key, "{}").await.expect_error(405, "method_not_allowed");

    // Logging out unlinks the number: its contacts and groups go with it.
    let out = stack.client.post(&stack.session_url(&id, ":logout"), &key, "").await;
    assert_eq!(out.status, 200, "{}", out.body);
    let after = stack.client.get(&contacts_url(""), &key).await;
    assert_eq!(after.body["data"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_platform_super_admin_may_backfill() {
    let stack = stack();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "6283333333333").await;
    let url = backfill_url(&stack, &id);

    // Api-keys and organization roles, even the highest, are refused.
    stack.client.post(&url, &key, "").await.expect_error(403, "forbidden");
    stack.client.get(&url, &key).await.expect_error(403, "forbidden");
    for role in ["owner", "admin"] {
        stack.client.post(&url, &rs256(&claims(&org, role)), "").await.expect_error(403, "forbidden");
    }
    let mut org_admin_claiming_more = claims(&org, "admin");
    org_admin_claiming_more["platform_role"] = json!("admin");
    stack.client.post(&url, &rs256(&org_admin_claiming_more), "").await.expect_error(403, "forbidden");
    stack.client.post(&url, "", "").await.expect_error(401, "unauthorized");

    let admin = super_admin();
    // Platform-wide: the super_admin belongs to no organization and still sees this session.
    stack.client.get(&url, &admin).await.expect_error(404, "not_found");
    let unknown = backfill_url(&stack, &ulid::Ulid::new().to_string());
    stack.client.post(&unknown, &admin, "").await.expect_error(404, "not_found");
    stack.client.get(&unknown, &admin).await.expect_error(404, "not_found");
    stack.client.send("DELETE", &url, Some(&admin), None).await.expect_error(405, "method_not_allowed");

    // Nothing to pull without a number, or without a connection.
    let unpaired = stack.create(&key, "{}").await["id"].as_str().unwrap().to_owned();
    stack.client.post(&backfill_url(&stack, &unpaired), &admin, "").await.expect_error(501, "not_implemented");
    let stopped = stack.client.post(&stack.session_url(&id, ":stop"), &key, "").await;
    assert_eq!(stopped.body["status"], "stopped", "{}", stopped.body);
    let refused = stack.client.post(&url, &admin, "").await;
    assert_eq!(refused.expect_error(409, "conflict")["reason"], "not_connected");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_fails_when_its_connection_or_its_gateway_goes() {
    let stack = stack();
    let org = new_org();
    let key = stack.key(&org).await;
    let (id, _) = stack.paired_session(&key, "6284444444444").await;
    let mut events = stack.subscribe(Some(&key), &format!("session={id}&types=backfill.*"), None).await.unwrap();
    let admin = super_admin();
    let url = backfill_url(&stack, &id);

    // The connection drops while WhatsApp is still answering the groups query.
    assert_eq!(stack.client.post(&url, &admin, "").await.status, 202);
    stack.phone("drop", &[("session", &id)]).await;
    let seen = events.until(SOON, |e| e.kind != "backfill.progress").await;
    let failed = seen.last().unwrap();
    assert_eq!(failed.kind, "backfill.failed", "{seen:#?}");
    assert!(failed.data["data"]["error"].as_str().unwrap().contains("connection ended"), "{failed:?}");
    let polled = stack.client.get(&url, &admin).await;
    assert_eq!((polled.body["status"].as_str(), polled.body["finishedAt"].is_i64()), (Some("failed"), true));

    // The session reconnects by itself; then its gateway dies mid-job. Once the gateway's
    // heartbeat has lapsed the job reads as failed, so it does not block the next one forever.
    stack.status_until(&key, &id, "working", SOON).await;
    assert_eq!(stack.client.post(&url, &admin, "").await.status, 202);
    stack.daemon.kill();
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let settled = stack.client.get(&url, &admin).await;
    assert_eq!(settled.body["status"], "failed", "{}", settled.body);
    assert_eq!(settled.body["error"], "the gateway running this backfill stopped");
}
