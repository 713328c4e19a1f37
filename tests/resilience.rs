//! Redis going away and coming back, against a Redis of the test's own on another port:
//! requests answer 503 `unavailable` at once instead of hanging, and service resumes by itself.

use e2e::{Client, Gateway, manage_key_at};
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
