//! What every part of the daemon shares: settings, Redis, the backend, the registry of session
//! supervisors (one task per session this daemon is working on), the leases they hold and the
//! clients they drive: a lease that lapses unrenewed has its client stopped from here, whatever
//! its supervisor is waiting on (a Redis that does not answer, say).

use crate::backend::{Backend, Client};
use crate::config::Config;
use crate::supervisor::{self, Order};
use redis::aio::ConnectionManager;
use shared::command::{Command, CommandResult};
use shared::redis::Redis;
use shared::{args, keys};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a command's result stays readable for the function waiting on it.
const RESULT_TTL_MS: i64 = 120_000;

/// A session's supervisor as the registry knows it: its inbox, and which task it is (a retired
/// task's successor has another number).
struct Entry {
    task: u64,
    orders: mpsc::UnboundedSender<Order>,
}

/// A lease a supervisor holds, for the renewal loop and the lapse watch.
#[derive(Debug, Clone)]
pub struct Held {
    pub org: String,
    pub fence: i64,
    /// When the lease was last taken or extended: the time the request left, so the lease in
    /// Redis runs at least until `extended_at` plus a lease period.
    pub extended_at: tokio::time::Instant,
}

pub struct Daemon {
    pub config: Config,
    pub gateway_id: String,
    /// This process among all processes that ever ran as this gateway.
    pub process: String,
    pub redis: ConnectionManager,
    pub backend: Arc<dyn Backend>,
    supervisors: Mutex<HashMap<String, Entry>>,
    next_task: AtomicU64,
    leases: Mutex<HashMap<String, Held>>,
    /// The client each held session is driven with, under the lease's fence.
    clients: Mutex<HashMap<String, (i64, Arc<dyn Client>)>>,
    /// Sessions were let go because their leases lapsed: resume them once renewals succeed.
    suspended: AtomicBool,
    /// Command entries (`<stream> <entry id>`) handed to supervisors and not yet acknowledged.
    in_flight: Mutex<HashSet<String>>,
    /// When the heartbeat and leases were last renewed (Unix ms).
    renewed_at: AtomicI64,
    stopping: AtomicBool,
}

impl Daemon {
    pub fn new(config: Config, redis: ConnectionManager, backend: Arc<dyn Backend>) -> Arc<Daemon> {
        let gateway_id = config.gateway_id();
        Arc::new(Daemon {
            config,
            gateway_id,
            process: format!("{}-{}", std::process::id(), ulid::Ulid::new()),
            redis,
            backend,
            supervisors: Mutex::default(),
            next_task: AtomicU64::new(1),
            leases: Mutex::default(),
            clients: Mutex::default(),
            suspended: AtomicBool::new(false),
            in_flight: Mutex::default(),
            renewed_at: AtomicI64::new(shared::time::now_millis()),
            stopping: AtomicBool::new(false),
        })
    }

    /// The session's supervisor, started on first use. Orders to one session go through one
    /// channel, so they are carried out in the order the commands arrived.
    pub fn supervisor(self: &Arc<Self>, session_id: &str, org: &str) -> mpsc::UnboundedSender<Order> {
        let mut supervisors = self.supervisors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = supervisors.get(session_id).filter(|e| !e.orders.is_closed()) {
            return entry.orders.clone();
        }
        let (orders, inbox) = mpsc::unbounded_channel();
        let task = self.next_task.fetch_add(1, Ordering::Relaxed);
        supervisors.insert(session_id.to_owned(), Entry { task, orders: orders.clone() });
        tokio::spawn(supervisor::run(self.clone(), session_id.to_owned(), org.to_owned(), task, inbox));
        orders
    }

    /// Hands an order to the session's supervisor, starting a fresh one when the current one
    /// ended between lookup and send.
    pub fn order(self: &Arc<Self>, session_id: &str, org: &str, order: Order) {
        if let Err(refused) = self.supervisor(session_id, org).send(order) {
            let _ = self.supervisor(session_id, org).send(refused.0);
        }
    }

    /// Hands a command to the session's supervisor; the answer goes to `reply`.
    pub fn command(self: &Arc<Self>, command: Command, reply: supervisor::Reply) {
        let (session, org) = (command.session_id.clone(), command.organization_id.clone());
        self.order(&session, &org, Order::Command(command, reply));
    }

    /// Ends supervisor `task` of the session unless orders arrived for it meanwhile. Closes its
    /// inbox: what still lands there the task hands on (see `supervisor::run`).
    pub fn retire(&self, session_id: &str, task: u64, inbox: &mut mpsc::UnboundedReceiver<Order>) -> bool {
        let mut supervisors = self.supervisors.lock().unwrap_or_else(|e| e.into_inner());
        if !inbox.is_empty() {
            return false;
        }
        if supervisors.get(session_id).is_some_and(|e| e.task == task) {
            supervisors.remove(session_id);
        }
        inbox.close();
        true
    }

    /// Every live supervisor, for shutdown.
    pub fn supervisors(&self) -> Vec<(String, mpsc::UnboundedSender<Order>)> {
        let supervisors = self.supervisors.lock().unwrap_or_else(|e| e.into_inner());
        supervisors.iter().filter(|(_, e)| !e.orders.is_closed()).map(|(id, e)| (id.clone(), e.orders.clone())).collect()
    }

    /// Marks a command entry as being carried out; `false` when it already is, so an entry read
    /// again (this gateway's pending entries are re-read after a Redis failure) runs once.
    pub fn begin_entry(&self, entry: &str) -> bool {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(entry.to_owned())
    }

    /// The entry is acknowledged (or left for the next daemon).
    pub fn end_entry(&self, entry: &str) {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(entry);
    }

    /// Records a lease a supervisor took, so the renewal loop keeps it.
    pub fn hold(&self, session_id: &str, held: Held) {
        self.leases.lock().unwrap_or_else(|e| e.into_inner()).insert(session_id.to_owned(), held);
    }

    /// Forgets the lease taken with `fence`; a newer lease of the session stays.
    pub fn unhold(&self, session_id: &str, fence: i64) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if leases.get(session_id).is_some_and(|held| held.fence == fence) {
            leases.remove(session_id);
        }
    }

    pub fn held(&self) -> Vec<(String, Held)> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(id, h)| (id.clone(), h.clone())).collect()
    }

    /// Whether this gateway holds the session's lease taken with `fence`, not lapsed.
    pub fn holds(&self, session_id: &str, fence: i64) -> bool {
        self.live(&self.leases.lock().unwrap_or_else(|e| e.into_inner()), session_id, fence)
    }

    fn live(&self, leases: &HashMap<String, Held>, session_id: &str, fence: i64) -> bool {
        leases.get(session_id).is_some_and(|held| held.fence == fence && held.extended_at.elapsed() < self.lease_safe())
    }

    /// The lease taken with `fence` was extended by a request that left at `at`.
    pub fn extended(&self, session_id: &str, fence: i64, at: tokio::time::Instant) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = leases.get_mut(session_id).filter(|held| held.fence == fence) {
            held.extended_at = held.extended_at.max(at);
        }
    }

    /// How long a lease may go unextended before its client must stop: 85% of a lease period,
    /// which leaves the lapse watch's tick (a twentieth) and a tenth for the clocks and for
    /// stopping the client, so it stops before the lease in Redis lapses and another gateway
    /// may take the session.
    pub fn lease_safe(&self) -> Duration {
        self.config.lease() * 17 / 20
    }

    /// The leases whose time ran out unextended, forgotten here: their sessions must be let go.
    pub fn take_lapsed(&self) -> Vec<(String, Held)> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let lapsed: Vec<String> = leases.iter().filter(|(_, h)| h.extended_at.elapsed() >= self.lease_safe()).map(|(id, _)| id.clone()).collect();
        lapsed.into_iter().filter_map(|id| leases.remove(&id).map(|held| (id, held))).collect()
    }

    /// The session is driven with `client` under the lease taken with `fence`, if that lease
    /// still holds (checked and recorded in one step, so the lapse watch finds every client it
    /// must stop); `false` when it lapsed.
    pub fn drive(&self, session_id: &str, fence: i64, client: Arc<dyn Client>) -> bool {
        let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let holds = self.live(&leases, session_id, fence);
        if holds {
            self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(session_id.to_owned(), (fence, client));
        }
        holds
    }

    /// The session's client under `fence` (none, any) is no longer driven; it is handed back.
    pub fn release_client(&self, session_id: &str, fence: Option<i64>) -> Option<Arc<dyn Client>> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        match clients.get(session_id) {
            Some((held, _)) if fence.is_none_or(|fence| fence == *held) => clients.remove(session_id).map(|(_, client)| client),
            _ => None,
        }
    }

    /// Sessions were let go for lapsed leases; [`Daemon::take_suspended`] says so once.
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::SeqCst);
    }

    pub fn take_suspended(&self) -> bool {
        self.suspended.swap(false, Ordering::SeqCst)
    }

    /// The heartbeat and every lease were just renewed.
    pub fn renewed(&self) {
        self.renewed_at.store(shared::time::now_millis(), Ordering::SeqCst);
    }

    /// Whether renewals have failed for a whole lease period: the leases may have lapsed and
    /// another daemon may run these sessions now, so none may be driven until renewals succeed.
    pub fn leases_lapsed(&self) -> bool {
        shared::time::now_millis() - self.renewed_at.load(Ordering::SeqCst) >= self.config.lease_ms as i64
    }

    /// From now on, commands left unanswered stay pending for the next daemon.
    pub fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Lets the function that queued a command read what became of it. The first answer stands:
    /// a duplicate delivery of the command, skipped as already applied, does not replace it.
    pub async fn publish_result(&self, org: &str, command_id: &str, result: &CommandResult) {
        let json = serde_json::to_string(result).unwrap_or_default();
        let written = self.redis.execute("SET", args![keys::command_result(org, command_id), json, "NX", "PX", RESULT_TTL_MS]).await;
        if let Err(e) = written {
            tracing::warn!(command_id, "cannot record a command's result: {e}");
        }
    }
}

/// Runs a Redis step until it succeeds: a transient Redis error must not make the daemon forget
/// a session or skip a write. Backs off from 100 ms to 2 s; gives up (`None`) only when `give_up`
/// says so between attempts.
pub async fn persist<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut give_up: impl FnMut() -> bool,
    mut step: impl FnMut() -> F,
) -> Option<T> {
    let mut pause = Duration::from_millis(100);
    loop {
        match step().await {
            Ok(value) => return Some(value),
            Err(e) => tracing::warn!("cannot {what}, retrying in {pause:?}: {e}"),
        }
        if give_up() {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
