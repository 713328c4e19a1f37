//! `gateway-host`: serves a Spin application (spin.toml and its components) without Spin.
//!
//! Usage: `gateway-host [--manifest spin.toml] [--listen 127.0.0.1:3000] [--cache-dir DIR]`

mod allowed_hosts;
mod bindings;
mod manifest;
mod metrics;
mod outbound_http;
mod outbound_redis;
mod router;
mod runtime;
mod server;
mod variables;

use wasmtime::error::Context as _;
use wasmtime::{Result, bail};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

// Every request allocates a store, tables and buffers; glibc malloc was a tenth of the profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Options {
    manifest: PathBuf,
    listen: String,
    cache_dir: PathBuf,
    /// Requests per instance (Spin's `--max-instance-reuse-count`), 1 for a fresh one each time.
    reuse: runtime::Reuse,
    /// Stop when standard input closes: a supervisor (or a test) that dies takes the host with it.
    stop_on_stdin_close: bool,
    limits: server::Limits,
    /// Component instances alive at once (Spin's pooling default is 1,000).
    max_instances: u32,
}

/// A whole number of at least 1 from the environment, or `default`.
fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(value) => value.parse().ok().filter(|n| *n >= 1).with_context(|| format!("{name}={value}: expected a whole number of at least 1")),
        Err(_) => Ok(default),
    }
}

fn options() -> Result<Options> {
    let mut options = Options {
        manifest: PathBuf::from("spin.toml"),
        listen: std::env::var("GATEWAY_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned()),
        cache_dir: PathBuf::from(".gateway/cache"),
        reuse: runtime::Reuse::default(),
        stop_on_stdin_close: false,
        max_instances: env_number("GATEWAY_MAX_INSTANCES", 1_000)?.min(u32::MAX as u64) as u32,
        limits: server::Limits {
            max_connections: env_number("GATEWAY_MAX_CONNECTIONS", 10_000)? as usize,
            header_read_timeout: Duration::from_millis(env_number("GATEWAY_HEADER_READ_TIMEOUT_MS", 10_000)?),
        },
    };
    if let Ok(count) = std::env::var("GATEWAY_MAX_INSTANCE_REUSE_COUNT") {
        options.reuse.max_requests = count.parse().ok().filter(|n| *n >= 1)
            .with_context(|| format!("GATEWAY_MAX_INSTANCE_REUSE_COUNT={count}: expected a whole number of at least 1"))?;
    }
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--manifest" => options.manifest = value()?.into(),
            "--listen" => options.listen = value()?,
            "--cache-dir" => options.cache_dir = value()?.into(),
            "--stop-on-stdin-close" => options.stop_on_stdin_close = true,
            other => bail!("unknown argument {other}; usage: gateway-host [--manifest F] [--listen ADDR] [--cache-dir DIR] [--stop-on-stdin-close]"),
        }
    }
    Ok(options)
}


fn main() -> Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = std::env::var("GATEWAY_WORKER_THREADS").ok().and_then(|n| n.parse().ok()) {
        runtime.worker_threads(threads);
    }
    runtime.enable_all().build()?.block_on(run())
}

async fn run() -> Result<()> {
    shared::logging::init("gateway_host=info,wasmtime=warn");
    let options = options()?;
    let manifest = manifest::Manifest::load(&options.manifest)?;
    let base_dir = options.manifest.parent().map(PathBuf::from).unwrap_or_default();
    let engine = runtime::engine(options.max_instances)?;
    let started = std::time::Instant::now();
    let components = runtime::load_application(&engine, &manifest, &base_dir, &options.cache_dir, options.reuse)?;
    tracing::info!(components = components.len(), millis = started.elapsed().as_millis() as u64, "components ready");
    let router = router::Router::new(manifest.trigger.http.iter().map(|t| (t.route.as_str(), t.component.as_str())));
    let exposure = metrics::Exposure::from_env();
    let metrics = match exposure.is_served() {
        false => None,
        true => Some(metrics::Metrics::install(manifest.trigger.http.iter().map(|t| t.route.as_str()), exposure.token.as_deref())?),
    };
    let app = Arc::new(server::App { engine, router, components, response_timeout: Duration::from_secs(30), limits: options.limits, metrics });
    let listener = tokio::net::TcpListener::bind(&options.listen).await.with_context(|| format!("binding {}", options.listen))?;
    if let Some(listen) = &exposure.listen {
        let metrics_listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding GATEWAY_METRICS_LISTEN {listen}"))?;
        tracing::info!(listen = %metrics_listener.local_addr()?, "serving /metrics");
        tokio::spawn(server::serve_metrics(app.clone(), metrics_listener));
    }
    let shutdown = shared::shutdown::signal_or_stdin_close(options.stop_on_stdin_close)?;
    // Scripts wait for this exact line to know the host is ready.
    println!("gateway-host listening on http://{}", listener.local_addr()?);
    server::serve(app, listener, shutdown).await;
    Ok(())
}
