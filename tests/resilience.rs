//! Redis going away and coming back, against a Redis of the test's own on another port:
//! requests answer 503 `unavailable` at once instead of hanging, and service resumes by itself.
//! And a manifest narrowed by an operator: the host refuses what it no longer allows.

use e2e::{AUDIENCE, Client, Gateway, ISSUER, claims, manage_key_at, new_org, redis_url, root, rs256};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A redis-server of the test's own, stopped when dropped (also when the test fails).
struct RedisServer(Child);

impl RedisServer {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_redis(port: u16) -> RedisServer {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    RedisServer(child)
}

#[tokio::test]
async fn redis_down_is_503_and_service_resumes_when_it_returns() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut redis = start_redis(port);
    let gateway = Gateway::start(&url, &[]);
    let client = Client::default();
    let list = gateway.url("/api/v1/sessions");

    let key = manage_key_at(&url, "resilience").await;
    assert_eq!(client.post(&list, &key, "{}").await.status, 201);

    redis.stop();
    let started = Instant::now();
    client.get(&list, &key).await.expect_error(503, "unavailable");
    client.post(&list, &key, "{}").await.expect_error(503, "unavailable");
    assert!(started.elapsed() < Duration::from_secs(10), "answered promptly, took {:?}", started.elapsed());

    let _redis = start_redis(port);
    // A fresh, empty Redis: the old key is gone, so mint one in it.
    let key = manage_key_at(&url, "resilience").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = client.get(&list, &key).await;
        if reply.status == 200 {
            assert_eq!(reply.body["data"], serde_json::json!([]));
            break;
        }
        reply.expect_error(503, "unavailable");
        assert!(Instant::now() < deadline, "service did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// spin.toml as an operator would narrow it: one Redis, no outbound HTTP at all.
fn narrowed_manifest(allowed: &str) -> std::path::PathBuf {
    let root = root();
    let manifest = std::fs::read_to_string(root.join("spin.toml")).unwrap();
    let start = manifest.find("allowed_outbound_hosts").unwrap();
    let end = start + manifest[start..].find('\n').unwrap();
    let narrowed = format!("{}allowed_outbound_hosts = [{allowed}]{}", &manifest[..start], &manifest[end..])
        .replace("source = \"target/", &format!("source = \"{}/target/", root.display()));
    let path = std::env::temp_dir().join(format!("spin-narrowed-{}.toml", ulid::Ulid::new()));
    std::fs::write(&path, narrowed).unwrap();
    path
}

#[tokio::test]
async fn narrowed_outbound_hosts_are_enforced() {
    let redis = redis_url();
    let only_redis = narrowed_manifest(&format!("\"{redis}\""));
    let jwks = e2e::jwks();
    let gateway = Gateway::start_with_manifest(
        &only_redis,
        &redis,
        &[("jwt_issuer", ISSUER), ("jwt_audience", AUDIENCE), ("jwks_url", &jwks.url)],
    );
    let client = Client::default();
    let list = gateway.url("/api/v1/sessions");
    let org = new_org();
    let key = manage_key_at(&redis, &org).await;
    assert_eq!(client.get(&list, &key).await.status, 200, "the allowed Redis is reachable");
    // The JWKS host is not allowed: the login cannot be verified, and nothing is fetched.
    let before = jwks.fetches.load(std::sync::atomic::Ordering::SeqCst);
    client.get(&list, &rs256(&claims(&org, "owner"))).await.expect_error(503, "unavailable");
    assert_eq!(jwks.fetches.load(std::sync::atomic::Ordering::SeqCst), before);

    let no_redis = narrowed_manifest("\"redis://127.0.0.1:1\"");
    let gateway = Gateway::start_with_manifest(&no_redis, &redis, &[]);
    client.get(&gateway.url("/api/v1/sessions"), &key).await.expect_error(503, "unavailable");
    for path in [only_redis, no_redis] {
        let _ = std::fs::remove_file(path);
    }
}
