//! The engine and the application's components: compiled once (or loaded precompiled from the
//! cache), linked against exactly the interfaces Spin offers, and pre-instantiated. Instances are
//! then kept warm between requests, within the bounds Spin keeps WASIp3 instances (see [`Reuse`]).

use crate::allowed_hosts::AllowedHosts;
use crate::bindings;
use crate::manifest::Manifest;
use crate::outbound_http::OutboundHttp;
use crate::outbound_redis::{OutboundRedis, RedisPool, RedisView};
use crate::variables::{ComponentVariables, Variables, render, resolve_app_variables};
use wasmtime::Result;
use wasmtime::error::Context as _;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// One component of the application: how to instantiate it, and its idle instances.
pub struct ComponentRuntime {
    pub id: String,
    pre: ServicePre<InstanceState>,
    imports: Arc<Imports>,
    reuse: Reuse,
    /// Instances between requests, the most recently used last.
    idle: Mutex<Vec<Warm>>,
}

/// What the host's interfaces serve a component's instances from. Instances hold this, not
/// their `ComponentRuntime`, whose idle list holds them.
pub struct Imports {
    variables: ComponentVariables,
    allowed: Arc<AllowedHosts>,
    redis: RedisPool,
}

/// How long an instance serves: Spin's and `wasmtime serve`'s defaults for WASIp3 handlers,
/// one request at a time. A store per request cost a fifth of the host's throughput in
/// `cargo xtask bench`; the guests keep no state between requests (no globals, every handle
/// dropped with its request), so a reused instance answers exactly as a fresh one.
#[derive(Debug, Clone, Copy)]
pub struct Reuse {
    /// Requests one instance serves before it is dropped; 1 gives every request a fresh one.
    pub max_requests: usize,
    /// An instance idle this long is dropped, returning its memory to the pool.
    pub idle_timeout: Duration,
}

impl Default for Reuse {
    fn default() -> Self {
        Reuse { max_requests: 128, idle_timeout: Duration::from_secs(1) }
    }
}

/// A store with its instance, lent to one request at a time.
pub struct Warm {
    pub store: Store<InstanceState>,
    pub service: Service,
    served: usize,
    idle_since: Instant,
}

/// An instance's store data, shared by the requests it serves one after another.
pub struct InstanceState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub hooks: OutboundHttp,
    imports: Arc<Imports>,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl ComponentRuntime {
    /// An idle instance, or a fresh one when none is idle.
    pub async fn checkout(&self, engine: &Engine) -> Result<Warm> {
        let idle = self.idle.lock().unwrap().pop();
        if let Some(warm) = idle {
            return Ok(warm);
        }
        tracing::debug!(component = self.id, "new instance");
        let mut store = self.new_store(engine);
        let service = self.pre.instantiate_async(&mut store).await?;
        Ok(Warm { store, service, served: 0, idle_since: Instant::now() })
    }

    /// Takes back an instance whose request finished cleanly (response sent, every guest task
    /// exited); one past its quota is dropped instead.
    pub fn checkin(&self, mut warm: Warm) {
        warm.served += 1;
        if warm.served < self.reuse.max_requests {
            warm.idle_since = Instant::now();
            self.idle.lock().unwrap().push(warm);
        }
    }

    /// Drops the instances idle past the timeout.
    /// Warm instances waiting for a request.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    pub fn drop_idle(&self) {
        let expired: Vec<Warm> = {
            let mut idle = self.idle.lock().unwrap();
            let fresh = idle.iter().position(|w| w.idle_since.elapsed() < self.reuse.idle_timeout).unwrap_or(idle.len());
            idle.drain(..fresh).collect()
        };
        // Stores are dropped outside the lock: returning their slots takes a while.
        drop(expired);
    }

    fn new_store(&self, engine: &Engine) -> Store<InstanceState> {
        let state = InstanceState {
            table: ResourceTable::new(),
            wasi: WasiCtx::builder().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            hooks: OutboundHttp { allowed: self.imports.allowed.clone() },
            imports: self.imports.clone(),
        };
        Store::new(engine, state)
    }
}

/// The engine, its pooling allocator sized for `instances` component instances at once (each
/// open request or event stream holds one; past that a request is answered 503).
pub fn engine(instances: u32) -> Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(4))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memory_size(256 << 20)
        // Reset a reused slot by zeroing it in place rather than returning its pages with
        // madvise: every madvise flushes TLBs on all cores, which capped throughput at a
        // fifth of native. Components here touch well under these sizes.
        .linear_memory_keep_resident(8 << 20)
        .table_keep_resident(1 << 20)
        // Where the kernel can tell (Linux 6.7+), reset only the pages a request wrote.
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .wasm_component_model_async(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

fn linker(engine: &Engine) -> Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    bindings::spin::redis::redis::add_to_linker::<_, OutboundRedis>(&mut linker, |s: &mut InstanceState| RedisView {
        table: &mut s.table,
        pool: &s.imports.redis,
        allowed: &s.imports.allowed,
    })?;
    bindings::spin::variables::variables::add_to_linker::<_, Variables>(&mut linker, |s: &mut InstanceState| {
        &s.imports.variables
    })?;
    Ok(linker)
}

/// Loads a component, from the precompiled cache when this engine compiled it before. The
/// cache key covers the component's bytes and the engine's compatibility hash, so a changed
/// component or a different wasmtime never loads a stale artifact.
fn load_component(engine: &Engine, wasm: &Path, cache_dir: &Path) -> Result<Component> {
    let bytes = std::fs::read(wasm).with_context(|| format!("reading component {} (run `cargo xtask build`)", wasm.display()))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let key = format!("{}-{:016x}.cwasm", hex::encode(Sha256::digest(&bytes)), hasher.finish());
    let cached = cache_dir.join(key);
    if cached.exists() {
        // SAFETY: the file was written by `Component::serialize` of an engine with the same
        // compatibility hash, in a directory only this host writes.
        if let Ok(component) = unsafe { Component::deserialize_file(engine, &cached) } {
            return Ok(component);
        }
    }
    let component = Component::from_binary(engine, &bytes)?;
    std::fs::create_dir_all(cache_dir)?;
    // Hosts starting together may compile the same component at once: each writes a file of its
    // own and renames it into place, so the cache always holds a whole artifact.
    let temp = cached.with_extension(format!("{}.{:x}.tmp", std::process::id(), rand_suffix()));
    std::fs::write(&temp, component.serialize()?)?;
    std::fs::rename(&temp, &cached)?;
    Ok(component)
}

/// A number that differs between the threads and moments that ask for one.
fn rand_suffix() -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::time::SystemTime::now().hash(&mut hasher);
    std::thread::current().id().hash(&mut hasher);
    hasher.finish()
}

/// Every component of the manifest, ready to serve.
pub fn load_application(
    engine: &Engine,
    manifest: &Manifest,
    base_dir: &Path,
    cache_dir: &Path,
    reuse: Reuse,
) -> Result<HashMap<String, Arc<ComponentRuntime>>> {
    let app_variables = resolve_app_variables(&manifest.variables, |k| std::env::var(k).ok())?;
    let linker = linker(engine)?;
    let redis = RedisPool::default();
    let mut components = HashMap::new();
    for (id, decl) in &manifest.component {
        let source: PathBuf = base_dir.join(&decl.source);
        let component = load_component(engine, &source, cache_dir).with_context(|| format!("component {id}"))?;
        let pre = ServicePre::new(linker.instantiate_pre(&component).with_context(|| format!("linking component {id}"))?)
            .with_context(|| format!("component {id} does not export wasi:http/handler@0.3"))?;
        let mut variables = HashMap::new();
        for (name, template) in &decl.variables {
            variables.insert(name.clone(), render(template, &app_variables).with_context(|| format!("component {id}"))?);
        }
        let runtime = ComponentRuntime {
            id: id.clone(),
            pre,
            imports: Arc::new(Imports {
                variables: ComponentVariables(variables),
                allowed: Arc::new(AllowedHosts::parse(&decl.allowed_outbound_hosts)?),
                redis: redis.clone(),
            }),
            reuse,
            idle: Mutex::default(),
        };
        components.insert(id.clone(), Arc::new(runtime));
    }
    Ok(components)
}
