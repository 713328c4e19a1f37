//! The end-to-end harness: the real `gateway-host` binary serving the real components from
//! spin.toml, a real Redis, real HTTP. Login JWTs are signed with the fixture keys and verified
//! by the gateway against a JWKS it fetches over HTTP from a server in the test process.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use shared::auth::Capability;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub const ISSUER: &str = "https://login.test";
pub const AUDIENCE: &str = "whatsapp-gateway";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures").join(name)).unwrap()
}

/// A JWKS endpoint whose document a test may change, counting how often it was fetched.
pub struct JwksServer {
    pub url: String,
    pub document: Arc<Mutex<String>>,
    pub fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    pub fn start() -> JwksServer {
        let document = Arc::new(Mutex::new(String::from_utf8(fixture("jwks.json")).unwrap()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let (doc, count) = (document.clone(), fetches.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (doc, count) = (doc.clone(), count.clone());
                    let service = hyper::service::service_fn(move |_req| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().unwrap().clone();
                        async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)))) }
                    });
                    tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service));
                }
            });
        });
        JwksServer { url, document, fetches }
    }
}

/// A running gateway host. Dropping it (or the test process ending) stops it.
pub struct Gateway {
    pub url: String,
    child: Child,
}

impl Gateway {
    /// Starts a host against `redis_url`, with extra `SPIN_VARIABLE_*` settings.
    pub fn start(redis_url: &str, variables: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_manifest(&root().join("spin.toml"), redis_url, variables)
    }

    /// The same, serving another manifest (for example an operator's narrowed copy).
    pub fn start_with_manifest(manifest: &Path, redis_url: &str, variables: &[(&str, &str)]) -> Gateway {
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
        let mut child = command.spawn().expect("gateway-host binary (run through `cargo xtask test`)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = lines
            .find_map(|line| line.ok()?.strip_prefix("gateway-host listening on ").map(str::to_owned))
            .expect("gateway-host did not start");
        std::thread::spawn(move || lines.for_each(drop));
        Gateway { url, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host most tests share, configured for login JWTs from [`jwks`].
pub fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        Gateway::start(
            &redis_url(),
            &[
                ("jwt_issuer", ISSUER),
                ("jwt_audience", AUDIENCE),
                ("jwks_url", &jwks().url),
                ("jwks_refetch_secs", "3600"),
                ("max_body_bytes", "4096"),
            ],
        )
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
    let key = shared::apikey::native::mint();
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
pub struct Client(reqwest::Client);

impl Default for Client {
    fn default() -> Self {
        Client(reqwest::Client::new())
    }
}

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
