//! The end-to-end harness: the real `gateway-host` binary serving the real components from
//! spin.toml, a real Redis, real HTTP. Login JWTs are signed with the fixture keys and verified
//! by the gateway against a JWKS it fetches over HTTP from a server in the test process.

mod openapi;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use shared::auth::Capability;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const ISSUER: &str = "https://login.test";
pub const AUDIENCE: &str = "whatsapp-gateway";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The tests' Redis: `REDIS_URL` as `cargo xtask test` sets it, else database 15 of the local
/// one, away from the database 0 that `cargo xtask up` serves.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".to_owned())
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures").join(name)).unwrap()
}

/// A JWKS endpoint whose document a test may change, counting how often it was fetched. A
/// test may also make it fail (`status`, e.g. 500) or answer only after `delay_ms`.
pub struct JwksServer {
    pub url: String,
    pub document: Arc<Mutex<String>>,
    pub fetches: Arc<AtomicUsize>,
    pub status: Arc<AtomicUsize>,
    pub delay_ms: Arc<AtomicUsize>,
}

impl JwksServer {
    pub fn start() -> JwksServer {
        let document = Arc::new(Mutex::new(String::from_utf8(fixture("jwks.json")).unwrap()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicUsize::new(200));
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let (doc, count, code, delay) = (document.clone(), fetches.clone(), status.clone(), delay_ms.clone());
        let address = serve(move |_path| {
            count.fetch_add(1, Ordering::SeqCst);
            let body = doc.lock().unwrap().clone().into_bytes();
            (code.load(Ordering::SeqCst) as u16, body, delay.load(Ordering::SeqCst) as u64)
        });
        JwksServer { url: format!("http://{address}/jwks"), document, fetches, status, delay_ms }
    }
}

/// Files over HTTP on a loopback port, as a media URL serves them; 404 for any other path.
pub struct FileServer {
    pub url: String,
    /// Requests served, whatever their path.
    pub requests: Arc<AtomicUsize>,
}

impl FileServer {
    pub fn start(files: Vec<(&'static str, Vec<u8>)>) -> FileServer {
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let files: std::collections::HashMap<&str, Vec<u8>> = files.into_iter().collect();
        let address = serve(move |request| {
            count.fetch_add(1, Ordering::SeqCst);
            match files.get(request.path.as_str()) {
                Some(file) => (200, file.clone(), 0),
                None => (404, b"no such file".to_vec(), 0),
            }
        });
        FileServer { url: format!("http://{address}"), requests }
    }
}

/// A request as a test server saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

/// Takes connections on a loopback port of its own, from a thread of its own (with a runtime of
/// its own, so a test's runtime never starves it), handing each to `each`.
fn listen<F: Future<Output = ()> + Send + 'static>(each: impl Fn(tokio::net::TcpStream) -> F + Send + 'static) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => drop(tokio::spawn(each(stream))),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
    });
    address
}

/// Serves HTTP/1 on a loopback port of its own: `answer` gives each request its status, body
/// and delay in ms.
fn serve(answer: impl Fn(Received) -> (u16, Vec<u8>, u64) + Send + Sync + 'static) -> std::net::SocketAddr {
    let answer = Arc::new(answer);
    listen(move |stream| {
        let answer = answer.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let answer = answer.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = http_body_util::BodyExt::collect(body).await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                let (code, body, delay) = answer(Received { path: parts.uri.path().to_owned(), headers: parts.headers, body });
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        async move {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        }
    })
}

/// A webhook receiver on a loopback port: records every request as it arrives (before it
/// answers), and answers each path as the test set it (200 at once unless told otherwise).
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<std::collections::HashMap<String, (u16, u64)>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let answers: Arc<Mutex<std::collections::HashMap<String, (u16, u64)>>> = Arc::default();
        let (log, rules) = (received.clone(), answers.clone());
        let address = serve(move |request| {
            let (status, delay) = rules.lock().unwrap().get(&request.path).copied().unwrap_or((200, 0));
            log.lock().unwrap().push(request);
            (status, Vec::new(), delay)
        });
        Receiver { url: format!("http://{address}"), received, answers }
    }

    /// How `path` answers from now on: `status` after `delay_ms`.
    pub fn answer(&self, path: &str, status: u16, delay_ms: u64) {
        self.answers.lock().unwrap().insert(path.to_owned(), (status, delay_ms));
    }

    /// Every request to `path` so far, in arrival order.
    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.received.lock().unwrap().iter().filter(|r| r.path == path).cloned().collect()
    }

    /// Waits until `done` holds for the requests to `path`, failing with what arrived after `within`.
    pub async fn until(&self, path: &str, within: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let requests = self.requests(path);
            if done(&requests) {
                return requests;
            }
            assert!(Instant::now() < deadline, "{path}: condition not reached; {} requests: {:?}", requests.len(),
                requests.iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect::<Vec<_>>());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The text of the QR code in a PNG (grayscale or colour), as a phone's camera would read it;
/// `None` when the picture holds none.
pub fn decode_qr_png(bytes: &[u8]) -> Option<String> {
    let mut reader = png::Decoder::new(bytes).read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buffer).unwrap();
    let (width, height) = (frame.width as usize, frame.height as usize);
    let channels = frame.color_type.samples();
    let gray = |x: usize, y: usize| buffer[(y * width + x) * channels];
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, gray);
    image.detect_grids().first()?.decode().ok().map(|(_, text)| text)
}

/// Debian's Chromium, headless, showing one page and driven over the DevTools protocol: a
/// test reads what the page shows and takes screenshots while the page lives on, as a person
/// watching it would. Closed (and its profile removed) when dropped.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    calls: u64,
}

impl Browser {
    pub async fn open(url: &str) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = root().join("target/e2e").join(format!("chromium-{}", ulid::Ulid::new()));
        let child = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--window-size=600,900"])
            .arg(format!("--user-data-dir={}", profile.display()))
            // Port 0: Chromium picks a free one and writes it to DevToolsActivePort.
            .arg("--remote-debugging-port=0")
            .arg(url)
            // A group of its own, so closing kills its helper processes too.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (Debian's package; `cargo xtask test` installs it)");
        let deadline = Instant::now() + Duration::from_secs(15);
        let port = loop {
            let written = std::fs::read_to_string(profile.join("DevToolsActivePort")).ok();
            if let Some(port) = written.as_deref().and_then(|w| w.lines().next()?.trim().parse::<u16>().ok()) {
                break port;
            }
            assert!(Instant::now() < deadline, "chromium did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let page = loop {
            let targets = async { reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await?.json::<Value>().await };
            if let Ok(targets) = targets.await {
                let page = targets.as_array().into_iter().flatten().find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with("http")));
                if let Some(socket) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                    break socket.to_owned();
                }
            }
            assert!(Instant::now() < deadline, "chromium did not open the page");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(page.as_str()).await.expect("DevTools socket");
        Browser { child, profile, socket, calls: 0 }
    }

    /// One DevTools call; its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        use futures::{SinkExt, StreamExt};
        self.calls += 1;
        let id = self.calls;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        let exchange = async {
            self.socket.send(tokio_tungstenite::tungstenite::Message::Text(message.into())).await.unwrap();
            while let Some(message) = self.socket.next().await {
                let Ok(tokio_tungstenite::tungstenite::Message::Text(text)) = message else { continue };
                let reply: Value = serde_json::from_str(&text).unwrap();
                if reply["id"] == id {
                    assert!(reply.get("error").is_none(), "{method}: {reply}");
                    return reply["result"].clone();
                }
            }
            panic!("the DevTools socket closed");
        };
        tokio::time::timeout(Duration::from_secs(15), exchange).await.unwrap_or_else(|_| panic!("{method}: no answer from chromium"))
    }

    /// The page's text as a reader sees it.
    pub async fn text(&mut self) -> String {
        let result = self.call("Runtime.evaluate", json!({"expression": "document.body.innerText"})).await;
        result["result"]["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the page's text satisfies `done`; returns it.
    pub async fn text_until(&mut self, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.text().await;
            if done(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "the page never showed it; it shows: {text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of what the page shows now.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let result = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        base64::engine::general_purpose::STANDARD.decode(result["data"].as_str().unwrap()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A running gateway host. Dropping it (or the test process ending) stops it.
pub struct Gateway {
    pub url: String,
    child: Child,
    /// Spin's state directory, when the host is Spin.
    spin_state: Option<PathBuf>,
}

impl Gateway {
    /// Starts a host against `redis_url`, with extra `SPIN_VARIABLE_*` settings.
    pub fn start(redis_url: &str, variables: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_manifest(&root().join("spin.toml"), redis_url, variables)
    }

    /// The same, serving another manifest (for example an operator's narrowed copy).
    pub fn start_with_manifest(manifest: &Path, redis_url: &str, variables: &[(&str, &str)]) -> Gateway {
        Gateway::start_full(manifest, redis_url, variables, &[])
    }

    /// A host with settings of its own too (`GATEWAY_*` environment variables, which only the
    /// embedded host reads). Under `E2E_HOST=spin` the host is a real `spin up` instead.
    pub fn start_full(manifest: &Path, redis_url: &str, variables: &[(&str, &str)], env: &[(&str, &str)]) -> Gateway {
        if host_is_spin() {
            return Gateway::start_spin(manifest, redis_url, variables);
        }
        let root = root();
        let mut command = Command::new(root.join("target/release/gateway-host"));
        command
            .arg("--manifest").arg(manifest)
            .arg("--listen").arg("127.0.0.1:0")
            .arg("--cache-dir").arg(root.join(".gateway/cache"))
            .arg("--stop-on-stdin-close")
            .env("SPIN_VARIABLE_REDIS_URL", redis_url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (name, value) in variables {
            command.env(format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()), value);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("gateway-host binary (run through `cargo xtask test`)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = lines
            .find_map(|line| line.ok()?.strip_prefix("gateway-host listening on ").map(str::to_owned))
            .expect("gateway-host did not start");
        std::thread::spawn(move || lines.for_each(drop));
        Gateway { url, child, spin_state: None }
    }

    /// Real Spin (`target/spin`, unpacked by `cargo xtask test`) serving the same manifest.
    fn start_spin(manifest: &Path, redis_url: &str, variables: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let state = root().join("target/e2e").join(format!("spin-{}", ulid::Ulid::new().to_string().to_lowercase()));
        // Spin has no stop-on-stdin-close: a shell runs it and stops it when its standard input
        // closes, so a test process that dies takes its Spin with it.
        let mut command = Command::new("sh");
        command
            .arg("-c").arg(r#""$0" "$@" & spin=$!; cat > /dev/null; kill $spin; wait $spin"#)
            .arg(root().join("target/spin"))
            .arg("up").arg("--from").arg(manifest)
            .arg("--listen").arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir").arg(&state)
            .env("SPIN_VARIABLE_REDIS_URL", redis_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (name, value) in variables {
            command.env(format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()), value);
        }
        let child = command.spawn().expect("target/spin (run through `cargo xtask test`)");
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "spin did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Gateway { url: format!("http://127.0.0.1:{port}"), child, spin_state: Some(state) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

/// Whether the tests run against real Spin (`E2E_HOST=spin`) rather than the embedded host.
pub fn host_is_spin() -> bool {
    std::env::var("E2E_HOST").is_ok_and(|host| host == "spin")
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if host_is_spin() {
            // Closing its input stops Spin (see `start_spin`).
            drop(self.child.stdin.take());
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(state) = &self.spin_state {
            let _ = std::fs::remove_dir_all(state);
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A redis-server of the test's own, stopped when dropped (also when the test fails).
pub struct RedisServer {
    pub url: String,
    port: u16,
    /// Where a durable server keeps its append-only file; `None` for one that keeps nothing.
    dir: Option<PathBuf>,
    /// Behind a lock so a test can kill and restart the server while requests use the stack.
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    pub fn start_on(port: u16) -> RedisServer {
        let server = RedisServer { url: format!("redis://127.0.0.1:{port}"), port, dir: None, child: Mutex::default() };
        server.restart();
        server
    }

    /// A server that writes every command to its append-only file before answering, so a
    /// `kill -9` and [`RedisServer::restart`] lose nothing, as a production Redis with AOF.
    pub fn start_durable() -> RedisServer {
        let port = free_port();
        let dir = root().join("target/e2e").join(format!("redis-{}", ulid::Ulid::new().to_string().to_lowercase()));
        std::fs::create_dir_all(&dir).unwrap();
        let server = RedisServer { url: format!("redis://127.0.0.1:{port}"), port, dir: Some(dir), child: Mutex::default() };
        server.restart();
        server
    }

    /// Starts the server (again, after [`RedisServer::stop`]) on the same port, with its data.
    pub fn restart(&self) {
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
        match &self.dir {
            Some(dir) => command.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"]).arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        *self.child.lock().unwrap() = Some(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: whatever was not written to disk is lost (nothing, for a durable server).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A relay in front of a Redis for one daemon's connections, which a test can cut: it then
/// carries nothing either way, the connections held open, as a network that drops everything
/// looks to the daemon (its peers, on Redis directly, carry on); mended, it delivers what it
/// held.
pub struct Partition {
    pub url: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Partition {
    pub fn start(redis_url: &str) -> Partition {
        let target = redis_url.trim_start_matches("redis://").split('/').next().unwrap().to_owned();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = cut.clone();
        let address = listen(move |client| {
            let (target, held) = (target.clone(), held.clone());
            async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                let ((client_in, client_out), (server_in, server_out)) = (client.into_split(), server.into_split());
                tokio::spawn(relay(client_in, server_out, held.clone()));
                relay(server_in, client_out, held).await;
            }
        });
        Partition { url: format!("redis://{address}"), cut }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies bytes one way, holding them while `cut`.
async fn relay(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, cut: Arc<std::sync::atomic::AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else { return };
        if read == 0 {
            return;
        }
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// A running `connector-daemon` with the simulator backend and quick test timings. Its gateway
/// id and data directory survive [`Daemon::kill`] and [`Daemon::restart`], as on a real machine.
pub struct Daemon {
    pub gateway_id: String,
    pub data_dir: PathBuf,
    redis_url: String,
    /// Settings on top of the test defaults, as environment variables.
    settings: Vec<(String, String)>,
    /// Behind a lock so a test can kill and restart the daemon while requests use the stack.
    child: Mutex<Option<Child>>,
}

impl Daemon {
    pub fn start(redis_url: &str) -> Daemon {
        Daemon::start_with(redis_url, &[("BACKEND", "simulator")])
    }

    /// A daemon with other settings (`connector-daemon --help` names them), e.g. the real backend.
    pub fn start_with(redis_url: &str, settings: &[(&str, &str)]) -> Daemon {
        let gateway_id = format!("e2e-{}", ulid::Ulid::new().to_string().to_lowercase());
        let data_dir = root().join("target/e2e").join(&gateway_id);
        let settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let daemon = Daemon { gateway_id, data_dir, redis_url: redis_url.to_owned(), settings, child: Mutex::default() };
        daemon.restart();
        daemon
    }

    /// A second daemon (its own gateway id) sharing this one's Redis and data directory, as
    /// two daemons on one machine would.
    pub fn start_beside(&self) -> Daemon {
        self.start_beside_via(&self.redis_url)
    }

    /// [`Daemon::start_beside`], reaching the Redis through `redis_url` (a [`Partition`]'s).
    pub fn start_beside_via(&self, redis_url: &str) -> Daemon {
        let daemon = Daemon {
            gateway_id: format!("e2e-{}", ulid::Ulid::new().to_string().to_lowercase()),
            data_dir: self.data_dir.clone(),
            redis_url: redis_url.to_owned(),
            settings: self.settings.clone(),
            child: Mutex::default(),
        };
        daemon.restart();
        daemon
    }

    /// Starts the daemon again (after [`Daemon::kill`]), with the same gateway id and data.
    pub fn restart(&self) {
        let mut child = Command::new(root().join("target/release/connector-daemon"))
            .arg("--stop-on-stdin-close")
            .arg("--gateway-id").arg(&self.gateway_id)
            .arg("--data-dir").arg(&self.data_dir)
            .arg("--redis-url").arg(&self.redis_url)
            .env("LEASE_MS", "3000")
            .env("RECONNECT_BASE_MS", "200")
            .env("SIM_CONNECT_MS", "300")
            .env("SIM_FIRST_QR_MS", "2000")
            .env("SIM_NEXT_QR_MS", "1000")
            // Anti-ban pacing off unless a test asks: bursts to one chat would take minutes.
            .env("SEND_CHAT_GAP_MS", "0")
            .env("SEND_JITTER_MS", "0")
            // The tests serve media URLs from 127.0.0.1.
            .env("MEDIA_FETCH_ALLOW_PRIVATE", "true")
            .env("WEBHOOK_ALLOW_PRIVATE", "true")
            // whatsapp-rust logs every refused dial at ERROR; the tests assert on the outcome instead.
            .env("RUST_LOG", std::env::var("DAEMON_LOG").unwrap_or_else(|_| "warn,whatsapp_rust=off".into()))
            .envs(self.settings.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("connector-daemon binary (run through `cargo xtask test`)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = format!("connector-daemon {} running", self.gateway_id);
        assert!(lines.any(|line| line.is_ok_and(|l| l == ready)), "connector-daemon did not start");
        std::thread::spawn(move || lines.for_each(drop));
        *self.child.lock().unwrap() = Some(child);
    }

    /// SIGTERM, then waits for the daemon to exit; returns how long that took.
    pub fn terminate(&self) -> Duration {
        let mut child = self.child.lock().unwrap().take().expect("a running daemon");
        let started = Instant::now();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert!(exit.success(), "a clean exit on SIGTERM: {exit}");
        started.elapsed()
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }

    /// `kill -9`: no shutdown, no cleanup, commands left as they were.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn session_dir(&self, session_id: &str) -> PathBuf {
        self.data_dir.join("sessions").join(session_id)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// How long the gateway said it would wait before its next attempt, for each reconnect it
/// announced in `events` (the log, oldest first): the `statusReason` names when, the event's
/// timestamp when it was said.
pub fn reconnect_waits(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e["type"] == "session.status")
        .filter_map(|e| Some(e["data"]["reason"].as_str()?.split_once("; next attempt at ")?.1.parse::<i64>().ok()? - e["timestamp"].as_i64()?))
        .collect()
}

/// What a phone does in the simulated WhatsApp: `phone_action(url, "scan", &[("code", c), ("phone", p)])`.
pub async fn phone_action(redis_url: &str, action: &str, fields: &[(&str, &str)]) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let mut entry = vec![("action", action)];
    entry.extend_from_slice(fields);
    let _: String = redis::AsyncCommands::xadd(&mut redis, shared::keys::simulator_control(), "*", &entry).await.unwrap();
}

/// The settings that make a host accept login JWTs signed with the fixture keys.
pub fn login_variables() -> Vec<(&'static str, String)> {
    vec![
        ("jwt_issuer", ISSUER.to_owned()),
        ("jwt_audience", AUDIENCE.to_owned()),
        ("jwks_url", jwks().url.clone()),
        ("jwks_refetch_secs", "3600".to_owned()),
        // The tests' JWKS server speaks plain http on loopback.
        ("jwks_allow_http", "true".to_owned()),
    ]
}

pub fn borrowed<'a>(variables: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    variables.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The host most tests share, configured for login JWTs from [`jwks`].
pub fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let mut variables = login_variables();
        variables.push(("max_body_bytes", "4096".to_owned()));
        Gateway::start(&redis_url(), &borrowed(&variables))
    })
}

pub fn jwks() -> &'static JwksServer {
    static JWKS: OnceLock<JwksServer> = OnceLock::new();
    JWKS.get_or_init(JwksServer::start)
}

/// A fresh organization id, so tests never see each other's data.
pub fn new_org() -> String {
    format!("org-{}", ulid::Ulid::new().to_string().to_lowercase())
}

pub async fn api_key(org: &str, permissions: &[Capability]) -> (String, String) {
    api_key_at(&redis_url(), org, permissions).await
}

pub async fn api_key_at(redis_url: &str, org: &str, permissions: &[Capability]) -> (String, String) {
    let redis = shared::redis::native::connect(redis_url).await.unwrap();
    let key = shared::apikey::mint();
    let record = shared::apikey::create(&redis, &key, org, permissions.to_vec(), Some("e2e".into())).await.unwrap();
    (key, record.id)
}

pub async fn manage_key(org: &str) -> String {
    manage_key_at(&redis_url(), org).await
}

pub async fn manage_key_at(redis_url: &str, org: &str) -> String {
    api_key_at(redis_url, org, &[Capability::Manage, Capability::Send, Capability::Read]).await.0
}

pub fn now() -> i64 {
    shared::time::now_secs() as i64
}

/// Standard claims for a login JWT: valid for an hour, for `org` with `role`.
pub fn claims(org: &str, role: &str) -> Value {
    json!({
        "sub": "user-1", "org_id": org, "org_role": role,
        "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 3600,
    })
}

pub fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, "rsa-1", &EncodingKey::from_rsa_pem(&fixture("rsa-signing.pem")).unwrap(), claims)
}

pub fn es256(claims: &Value) -> String {
    sign(Algorithm::ES256, "ec-1", &EncodingKey::from_ec_pem(&fixture("ec-signing.pem")).unwrap(), claims)
}

/// Signed with a key the JWKS does not hold, but claiming the JWKS's key id.
pub fn rs256_by_attacker(claims: &Value) -> String {
    sign(Algorithm::RS256, "rsa-1", &EncodingKey::from_rsa_pem(&fixture("rsa-attacker.pem")).unwrap(), claims)
}

/// The classic algorithm swap: HS256 "signed" with the RSA public key as the HMAC secret.
pub fn hs256_with_public_key(claims: &Value) -> String {
    sign(Algorithm::HS256, "rsa-1", &EncodingKey::from_secret(&fixture("rsa-signing.pub.pem")), claims)
}

/// `alg: none`, no signature.
pub fn unsigned(claims: &Value) -> String {
    use base64::Engine as _;
    let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    format!("{}.{}.", encode(r#"{"alg":"none","typ":"JWT"}"#), encode(&claims.to_string()))
}

pub fn sign_with_kid(kid: &str, claims: &Value) -> String {
    sign(Algorithm::RS256, kid, &EncodingKey::from_rsa_pem(&fixture("rsa-signing.pem")).unwrap(), claims)
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// An HTTP client and the error-envelope assertions every test needs.
pub struct Client(pub reqwest::Client);

impl Default for Client {
    fn default() -> Self {
        Client(reqwest::Client::new())
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts an error in the envelope with this status and code; returns its details.
    pub fn expect_error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body["error"]["code"], code, "body: {}", self.body);
        assert!(self.body["error"]["message"].is_string(), "body: {}", self.body);
        &self.body["error"]["details"]
    }
}

impl Client {
    pub async fn send(&self, method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        let mut request = self.0.request(method.parse().unwrap(), url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_owned());
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        openapi::conforms(method, url, status, content_type, &body);
        Reply { status, headers, body }
    }

    pub async fn get(&self, url: &str, token: &str) -> Reply {
        self.send("GET", url, Some(token), None).await
    }

    pub async fn post(&self, url: &str, token: &str, body: &str) -> Reply {
        self.send("POST", url, Some(token), Some(body)).await
    }

    pub async fn delete(&self, url: &str, token: &str) -> Reply {
        self.send("DELETE", url, Some(token), None).await
    }
}

/// A whole deployment of the test's own: a Redis, the host, and a simulator-backed daemon.
/// Nothing else shares its Redis, so its streams and events are the test's alone.
pub struct Stack {
    pub daemon: Daemon,
    pub gateway: Gateway,
    pub redis: RedisServer,
    pub client: Client,
}

impl Stack {
    pub fn start() -> Stack {
        Stack::start_with(&[("BACKEND", "simulator")])
    }

    /// A stack whose daemon runs with these settings.
    pub fn start_with(daemon_settings: &[(&str, &str)]) -> Stack {
        Stack::start_configured(daemon_settings, &[])
    }

    /// A stack whose daemon and host run with these settings. The host accepts login JWTs.
    pub fn start_configured(daemon_settings: &[(&str, &str)], host_variables: &[(&'static str, &str)]) -> Stack {
        Stack::on(RedisServer::start(), daemon_settings, host_variables)
    }

    /// A stack on a Redis of the caller's (a durable one, say).
    pub fn on(redis: RedisServer, daemon_settings: &[(&str, &str)], host_variables: &[(&'static str, &str)]) -> Stack {
        Stack::on_with_host_env(redis, daemon_settings, host_variables, &[])
    }

    /// The same, the embedded host also given `GATEWAY_*` environment variables.
    pub fn on_with_host_env(redis: RedisServer, daemon_settings: &[(&str, &str)], host_variables: &[(&'static str, &str)], host_env: &[(&str, &str)]) -> Stack {
        let mut variables = login_variables();
        variables.push(("pairing_code_wait_ms", "10000".to_owned()));
        // Webhook receivers run on loopback ports of the test process.
        variables.push(("webhook_allow_private", "true".to_owned()));
        variables.extend(host_variables.iter().map(|(k, v)| (*k, v.to_string())));
        let gateway = Gateway::start_full(&root().join("spin.toml"), &redis.url, &borrowed(&variables), host_env);
        let daemon = Daemon::start_with(&redis.url, daemon_settings);
        Stack { daemon, gateway, redis, client: Client::default() }
    }

    pub async fn key(&self, org: &str) -> String {
        manage_key_at(&self.redis.url, org).await
    }

    pub fn session_url(&self, session_id: &str, suffix: &str) -> String {
        self.gateway.url(&format!("/api/v1/sessions/{session_id}{suffix}"))
    }

    pub async fn create(&self, key: &str, body: &str) -> Value {
        let reply = self.client.post(&self.gateway.url("/api/v1/sessions"), key, body).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.body
    }

    /// Polls the session row until `done` holds, failing with the last row after `within`.
    pub async fn row_until(&self, key: &str, session_id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let reply = self.client.get(&self.session_url(session_id, ""), key).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            if done(&reply.body) {
                return reply.body;
            }
            assert!(Instant::now() < deadline, "condition not reached; last row: {}", reply.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status_until(&self, key: &str, session_id: &str, status: &str, within: Duration) -> Value {
        self.row_until(key, session_id, within, |row| row["status"] == status).await
    }

    /// Polls `GET /qr` until a code is there (404 meanwhile) and it differs from `other`.
    pub async fn qr_until(&self, key: &str, session_id: &str, other: Option<&str>, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let reply = self.client.get(&self.session_url(session_id, "/qr"), key).await;
            if reply.status == 200 && reply.body["code"].as_str() != other {
                return reply.body;
            }
            if reply.status != 200 {
                reply.expect_error(404, "not_found");
            }
            assert!(Instant::now() < deadline, "no new QR code; last reply: {} {}", reply.status, reply.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new session paired by scanning its first QR code as `phone`; returns its id and row.
    pub async fn paired_session(&self, key: &str, phone: &str) -> (String, Value) {
        self.paired_session_with(key, r#"{"start": true}"#, phone).await
    }

    /// [`Stack::paired_session`], created with `body` (which must start it).
    pub async fn paired_session_with(&self, key: &str, body: &str, phone: &str) -> (String, Value) {
        let within = Duration::from_secs(10);
        let id = self.create(key, body).await["id"].as_str().unwrap().to_owned();
        let qr = self.qr_until(key, &id, None, within).await;
        self.phone("scan", &[("code", qr["code"].as_str().unwrap()), ("phone", phone)]).await;
        let row = self.status_until(key, &id, "working", within).await;
        (id, row)
    }

    /// `GET` of a session's file (`path` under the session, e.g. `/messages/{id}/media`):
    /// status, content type, bytes.
    pub async fn file(&self, key: &str, session_id: &str, path: &str) -> (u16, String, Vec<u8>) {
        let response = self.client.0.get(self.session_url(session_id, path)).bearer_auth(key).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        (status, content_type, response.bytes().await.unwrap().to_vec())
    }

    /// How many files sessions downloaded from the simulated WhatsApp media servers.
    pub async fn simulator_downloads(&self) -> i64 {
        redis::AsyncCommands::get::<_, Option<i64>>(&mut self.redis().await, shared::keys::simulator_downloads()).await.unwrap().unwrap_or(0)
    }

    /// What the simulated WhatsApp server recorded under `key` (one of its `gw:simulator:*`
    /// lists) for `session`, oldest first.
    pub async fn simulator_records(&self, key: &str, session: &str) -> Vec<Value> {
        let records: Vec<String> = redis::AsyncCommands::lrange(&mut self.redis().await, key, 0, -1).await.unwrap();
        records.iter().map(|r| serde_json::from_str::<Value>(r).unwrap()).filter(|r| r["session"] == session).collect()
    }

    /// The presence the session last announced on the simulated server (`available`,
    /// `unavailable`), waiting `within` for `done` to hold of the records.
    pub async fn presence_until(&self, session: &str, within: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let records = self.simulator_records(&shared::keys::simulator_presence(), session).await;
            if done(&records) {
                return records;
            }
            assert!(Instant::now() < deadline, "presence records never matched: {records:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn phone(&self, action: &str, fields: &[(&str, &str)]) {
        phone_action(&self.redis.url, action, fields).await
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// The organization's durable event log, oldest first.
    pub async fn events(&self, org: &str) -> Vec<Value> {
        self.log(org).await.into_iter().map(|e| e.data).collect()
    }

    /// The organization's durable event log as (log position, event), oldest first.
    pub async fn log(&self, org: &str) -> Vec<SseEvent> {
        let log: redis::streams::StreamRangeReply =
            redis::AsyncCommands::xrange_all(&mut self.redis().await, shared::keys::org_events(org)).await.unwrap();
        log.ids
            .iter()
            .map(|e| {
                let data: Value = serde_json::from_str(&e.get::<String>("event").unwrap()).unwrap();
                SseEvent { id: e.id.clone(), kind: data["type"].as_str().unwrap().to_owned(), data }
            })
            .collect()
    }

    /// Opens `GET /api/v1/events?<query>` with a bearer `token` (or none: the query then carries
    /// a stream token), optionally resuming after `last_event_id`.
    pub async fn subscribe(&self, token: Option<&str>, query: &str, last_event_id: Option<&str>) -> Result<Sse, Reply> {
        Sse::open(&self.client, &self.gateway.url(&format!("/api/v1/events?{query}")), token, last_event_id).await
    }
}

/// One Server-Sent Event as a client parsed it.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: String,
    /// The SSE `event:` field: the event's type.
    pub kind: String,
    pub data: Value,
}

/// An open event stream, parsed by a standard SSE client (`eventsource-stream`).
pub struct Sse {
    events: std::pin::Pin<Box<dyn futures::Stream<Item = Result<eventsource_stream::Event, String>> + Send>>,
    pub headers: reqwest::header::HeaderMap,
}

impl Sse {
    /// `Err` carries the refusal (status and envelope) when the stream did not open.
    pub async fn open(client: &Client, url: &str, token: Option<&str>, last_event_id: Option<&str>) -> Result<Sse, Reply> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let mut request = client.0.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if status != 200 {
            let body = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
            return Err(Reply { status, headers, body });
        }
        let events = response.bytes_stream().eventsource().map(|e| e.map_err(|e| e.to_string()));
        Ok(Sse { events: Box::pin(events), headers })
    }

    /// The next event within `within`; `None` when none came (or the stream ended).
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        use futures::StreamExt;
        let event = tokio::time::timeout(within, self.events.next()).await.ok()??.expect("a well-formed event stream");
        Some(SseEvent { id: event.id, kind: event.event, data: serde_json::from_str(&event.data).expect("JSON data") })
    }

    /// Events until one satisfies `done` (included), failing after `within`.
    pub async fn until(&mut self, within: Duration, done: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.next(left).await.unwrap_or_else(|| panic!("no matching event within {within:?}; saw {seen:#?}"));
            let stop = done(&event);
            seen.push(event);
            if stop {
                return seen;
            }
        }
    }
}
