//! The HTTP front: accepts connections, routes each request to its component, runs the guest
//! on a warm instance, and streams the guest's response body back as it is produced.

use crate::router::Router;
use crate::runtime::ComponentRuntime;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use shared::{ApiError, ErrorCode};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use wasmtime::Engine;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type HostBody = UnsyncBoxBody<Bytes, BoxError>;

pub struct App {
    pub engine: Engine,
    pub router: Router,
    pub components: HashMap<String, Arc<ComponentRuntime>>,
    /// How long a guest may take to produce response headers (not to finish streaming).
    pub response_timeout: Duration,
    pub limits: Limits,
    /// `/metrics`, unless turned off.
    pub metrics: Option<crate::metrics::Metrics>,
}

/// What one client may hold of the host: open connections beyond `max_connections` are
/// answered 503 and closed; a client gets `header_read_timeout` to send a request's headers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// The answer when the host has no room for a request (connections or instances): 503 in the
/// envelope, with `Retry-After`.
fn at_capacity(what: &str) -> hyper::Response<HostBody> {
    envelope(&ApiError::new(ErrorCode::Unavailable, format!("the gateway is at capacity ({what}); retry shortly")).with_detail("retryAfter", 1))
}

/// Serves until `shutdown` resolves, then stops accepting and gives open requests a grace period.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let reaper = tokio::spawn(drop_idle_instances(app.clone()));
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(app.limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY, small keep-alive responses wait ~40 ms on Nagle + delayed ACK.
        let _ = stream.set_nodelay(true);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(app.limits.header_read_timeout);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the cap: the answer is written at once, without waiting for a request, and the
            // connection closes, so refused clients hold nothing.
            tracing::warn!(%peer, "refusing a connection: {} are open", app.limits.max_connections);
            tokio::spawn(refuse_connection(stream));
            continue;
        };
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(req, peer).await) }
        });
        let connection = http.keep_alive(true).serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
            drop(permit);
        });
    }
    tracing::info!("shutting down: no new connections; waiting for open requests");
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("open requests did not finish within 10 s; closing them");
    }
    reaper.abort();
}

/// Connections the metrics listener serves at once; it is for one or two scrapers.
const METRICS_CONNECTIONS: usize = 8;

/// The metrics listener (`GATEWAY_METRICS_LISTEN`): `GET /metrics` and nothing else, no
/// credentials (it is meant for a private address), connections over the cap dropped.
pub async fn serve_metrics(app: Arc<App>, listener: TcpListener) {
    let connections = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else { continue };
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(app.limits.header_read_timeout);
        let app = app.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let app = app.clone();
            async move {
                Ok::<_, Infallible>(match (&app.metrics, req.uri().path(), req.method()) {
                    (Some(metrics), "/metrics", &http::Method::GET) => app.metrics_page(metrics),
                    (_, path, _) => envelope(&ApiError::route_not_found(path)),
                })
            }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
}

/// A connection over the cap: one 503 in the envelope, then closed (bounded in time).
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let error = ApiError::new(ErrorCode::Unavailable, "the gateway is at capacity (connections); retry shortly").with_detail("retryAfter", 1);
    let body = error.to_json().to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let refuse = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Closing with the client's request unread would reset the connection before the
        // client read the answer: drain what it sends until it closes.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), refuse).await;
}

/// Returns the memory of instances nobody needed lately to the pool.
async fn drop_idle_instances(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        app.components.values().for_each(|component| component.drop_idle());
    }
}

impl App {
    async fn handle(&self, req: hyper::Request<Incoming>, peer: SocketAddr) -> hyper::Response<HostBody> {
        let started = Instant::now();
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        if let (Some(metrics), "/metrics", &http::Method::GET) = (&self.metrics, path.as_str(), &method) {
            match metrics.opens_to(req.headers()) {
                Some(true) => return self.metrics_page(metrics),
                Some(false) => return envelope(&ApiError::new(ErrorCode::Unauthorized, "/metrics needs the operator's GATEWAY_METRICS_TOKEN as a bearer token")),
                None => {}
            }
        }
        let in_flight = self.metrics.as_ref().map(crate::metrics::Metrics::in_flight);
        let (response, component, route) = match self.router.route(&path) {
            Some(matched) => {
                let component = self.components[matched.component].clone();
                let req = with_spin_headers(req, matched.route, peer);
                (self.invoke(component.clone(), req).await, component.id.clone(), matched.route)
            }
            None => (envelope(&ApiError::route_not_found(&path)), "-".to_owned(), crate::metrics::NO_ROUTE),
        };
        let status = response.status().as_u16();
        tracing::info!(%method, %path, status, component, micros = started.elapsed().as_micros() as u64, "request");
        drop(in_flight);
        let Some(metrics) = &self.metrics else { return response };
        metrics.answered(route, status, started.elapsed());
        if !is_event_stream(response.headers()) {
            return response;
        }
        // The stream counts as open for as long as its body lives (the closure owns the count).
        let open = metrics.open_stream();
        response.map(|body| {
            body.map_frame(move |frame| {
                let _ = &open;
                frame
            })
            .boxed_unsync()
        })
    }

    fn metrics_page(&self, metrics: &crate::metrics::Metrics) -> hyper::Response<HostBody> {
        let text = metrics.render(self.components.values().map(|c| (c.id.clone(), c.idle_count())));
        let mut response = hyper::Response::new(full(Bytes::from(text)));
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
        response
    }

    /// Runs the guest inside this connection's task, not a spawned one: a spawn per request
    /// woke an idle worker thread every time, and those wake-ups cost more than the guest.
    async fn invoke(&self, component: Arc<ComponentRuntime>, req: hyper::Request<Incoming>) -> hyper::Response<HostBody> {
        let (response_tx, mut response_rx) = oneshot::channel();
        let id = component.id.clone();
        let mut guest: GuestFuture = Box::pin({
            let engine = self.engine.clone();
            async move {
                if let Err(e) = run_guest(&engine, component, req, response_tx).await {
                    tracing::error!(component = id, "guest failed: {e:#}");
                }
            }
        });
        let deadline = tokio::time::sleep(self.response_timeout);
        tokio::pin!(deadline);
        let mut guest_done = false;
        let response = loop {
            tokio::select! {
                response = &mut response_rx => break response.ok(),
                () = &mut guest, if !guest_done => guest_done = true,
                () = &mut deadline => {
                    return envelope(&ApiError::new(ErrorCode::Timeout, "the function did not respond in time"));
                }
            }
        };
        match response {
            // The guest keeps running inside the body: it may still be writing it.
            Some(response) => response.map(|body| Alongside { body, guest: (!guest_done).then_some(guest) }.boxed_unsync()),
            None => envelope(&ApiError::internal("the function failed before responding")),
        }
    }
}

type GuestFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response body that also drives the guest's store, whose tasks produce the body.
/// Dropping it (sent, or client gone) drops the store with it.
struct Alongside {
    body: HostBody,
    guest: Option<GuestFuture>,
}

impl Body for Alongside {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(guest) = self.guest.as_mut() {
            if guest.as_mut().poll(cx).is_ready() {
                self.guest = None;
            }
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Runs one request on a warm instance. A streamed body keeps the store's event loop running
/// until it has been sent or the client went away (this future is then dropped, the store with
/// it), since the guest produces the body there. A buffered one, whose guest tasks all exited,
/// gives the instance back for the next request.
async fn run_guest(
    engine: &Engine,
    component: Arc<ComponentRuntime>,
    req: hyper::Request<Incoming>,
    response_tx: oneshot::Sender<hyper::Response<HostBody>>,
) -> wasmtime::Result<()> {
    let mut warm = match component.checkout(engine).await {
        Ok(warm) => warm,
        Err(e) => {
            // The instance pool is exhausted (or memory is): the request can be retried.
            tracing::warn!(component = component.id, "no instance for a request: {e:#}");
            let _ = response_tx.send(at_capacity("instances"));
            return Ok(());
        }
    };
    let (request, _request_io) = wasmtime_wasi_http::p3::Request::from_http(&mut warm.store.data_mut().hooks, req);
    let service = &warm.service;
    let reusable = warm
        .store
        .run_concurrent(async move |accessor| -> wasmtime::Result<bool> {
            let response = match service.handle(accessor, request).await? {
                Ok(response) => response,
                Err(code) => {
                    tracing::error!("guest answered with error code {code:?}");
                    let _ = response_tx.send(envelope(&ApiError::internal("the function failed")));
                    return Ok(false);
                }
            };
            let response = accessor.with(|mut store| response.into_http(&mut store, async { Ok(()) }))?;
            let (parts, body) = response.into_parts();
            let body = body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
            let (body, complete) = if is_event_stream(&parts.headers) { (body, false) } else { buffer_whole(body).await };
            let idle = complete && guest_tasks_exit(accessor).await;
            let sent = response_tx.send(hyper::Response::from_parts(parts, body)).is_ok();
            if sent && !idle {
                // Keep the store's tasks running for as long as the body they write is being
                // sent; the body owns this future and drops it when it is done.
                std::future::pending::<()>().await;
            }
            Ok(idle)
        })
        .await??;
    if reusable {
        component.checkin(warm);
    }
    Ok(())
}

/// Whether every guest task exits soon after the body ended: only then is the instance as
/// idle as a fresh one. One that lingers is not given to another request.
async fn guest_tasks_exit(accessor: &wasmtime::component::Accessor<crate::runtime::InstanceState>) -> bool {
    let exited = std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx));
    tokio::time::timeout(Duration::from_millis(100), exited).await.is_ok()
}

/// Bodies up to this size are sent whole, with a Content-Length, in one write.
const BUFFERED_BODY_LIMIT: usize = 1 << 20;

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Collects a response body the guest is still writing, so hyper sends head and body in one
/// write instead of a head, a chunk and a terminator (three syscalls and three wake-ups of the
/// client). Past the limit, or at trailers or an error, the rest follows what was collected;
/// the flag says whether the body was all there.
async fn buffer_whole(mut body: HostBody) -> (HostBody, bool) {
    let mut collected = bytes::BytesMut::new();
    let stop = loop {
        match body.frame().await {
            None => return (full(collected.freeze()), true),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    collected.extend_from_slice(&data);
                    if collected.len() > BUFFERED_BODY_LIMIT {
                        break None;
                    }
                }
                Err(trailers) => break Some(Ok(trailers)),
            },
            Some(Err(e)) => break Some(Err(e)),
        }
    };
    let ends = matches!(stop, Some(Err(_)));
    let frames = std::iter::once(Ok(Frame::data(collected.freeze()))).chain(stop).collect();
    (Prefixed { frames, rest: (!ends).then_some(body) }.boxed_unsync(), false)
}

/// Frames already taken from a body, then the rest of it.
struct Prefixed {
    frames: std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>,
    rest: Option<HostBody>,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(frame));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}

/// The request metadata headers Spin gives components, so components behave alike on both hosts.
fn with_spin_headers(mut req: hyper::Request<Incoming>, route: &str, peer: SocketAddr) -> hyper::Request<Incoming> {
    let path = req.uri().path().to_owned();
    let base = route.strip_suffix("/...").unwrap_or(route);
    let path_info = path.strip_prefix(base).unwrap_or("").to_owned();
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_owned();
    let full_url = format!("http://{host}{}", req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let headers = req.headers_mut();
    for (name, value) in [
        ("spin-full-url", full_url),
        ("spin-path-info", path_info),
        ("spin-matched-route", route.to_owned()),
        ("spin-component-route", route.to_owned()),
        ("spin-base-path", "/".to_owned()),
        ("spin-client-addr", peer.to_string()),
    ] {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    req
}

/// A body that is all there already.
fn full(bytes: Bytes) -> HostBody {
    Full::new(bytes).map_err(|e: Infallible| match e {}).boxed_unsync()
}

/// A host-made response in the API's error envelope (for failures before or outside a guest).
pub fn envelope(error: &ApiError) -> hyper::Response<HostBody> {
    let mut response = hyper::Response::builder().status(error.status()).header(http::header::CONTENT_TYPE, "application/json");
    if let Some(seconds) = error.retry_after() {
        response = response.header(http::header::RETRY_AFTER, seconds);
    }
    response.body(full(Bytes::from(error.to_json().to_string()))).unwrap_or_else(|_| hyper::Response::new(full(Bytes::new())))
}
