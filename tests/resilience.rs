//! Redis going away and coming back, against a Redis of the test's own on another port:
//! requests answer 503 `unavailable` at once instead of hanging, and service resumes by itself.
//! And a manifest narrowed by an operator: the host refuses what it no longer allows.

use e2e::{AUDIENCE, Client, Gateway, ISSUER, RedisServer, claims, free_port, manage_key_at, new_org, redis_url, root, rs256};
use std::time::{Duration, Instant};

#[tokio::test]
async fn redis_down_is_503_and_service_resumes_when_it_returns() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let redis = RedisServer::start_on(port);
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

    let _redis = RedisServer::start_on(port);
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
    let address = reqwest::Url::parse(&redis).unwrap();
    let only_redis = narrowed_manifest(&format!("\"redis://{}:{}\"", address.host_str().unwrap(), address.port().unwrap_or(6379)));
    let jwks = e2e::jwks();
    let gateway = Gateway::start_with_manifest(
        &only_redis,
        &redis,
        &[("jwt_issuer", ISSUER), ("jwt_audience", AUDIENCE), ("jwks_url", &jwks.url), ("jwks_allow_http", "true")],
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

/// The first line a process writes to standard error, as JSON.
fn first_log_line(command: &mut std::process::Command) -> serde_json::Value {
    use std::io::BufRead;
    let mut child = command.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let line = std::io::BufReader::new(child.stderr.take().unwrap()).lines().next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
}

#[tokio::test]
async fn logs_are_json_lines_when_asked() {
    let redis = RedisServer::start();
    let host = first_log_line(std::process::Command::new(root().join("target/release/gateway-host"))
        .args(["--manifest", &root().join("spin.toml").to_string_lossy(), "--listen", "127.0.0.1:0", "--stop-on-stdin-close"])
        .env("SPIN_VARIABLE_REDIS_URL", &redis.url)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info"));
    assert!(host["level"].is_string(), "{host}");
    assert!(host["fields"]["message"].is_string() && host["timestamp"].is_string(), "{host}");
    let data = root().join("target/e2e").join(format!("json-logs-{}", ulid::Ulid::new()));
    let daemon = first_log_line(std::process::Command::new(root().join("target/release/connector-daemon"))
        .args(["--stop-on-stdin-close", "--data-dir", &data.to_string_lossy()])
        .env("REDIS_URL", &redis.url)
        .env("BACKEND", "simulator")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info"));
    assert_eq!(daemon["fields"]["message"], "connector-daemon starting", "{daemon}");
    assert_eq!(daemon["fields"]["backend"], "Simulator", "{daemon}");
    let _ = std::fs::remove_dir_all(data);
}
