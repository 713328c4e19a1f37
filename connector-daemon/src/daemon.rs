//! What every part of the daemon shares: settings, Redis, the backend, and the registry of
//! session supervisors (one task per session this daemon has touched).

use crate::backend::Backend;
use crate::config::Config;
use crate::supervisor::{self, Order};
use redis::aio::ConnectionManager;
use shared::command::CommandResult;
use shared::redis::Redis;
use shared::{args, keys};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// How long a command's result stays readable for the function waiting on it.
const RESULT_TTL_MS: i64 = 120_000;

pub struct Daemon {
    pub config: Config,
    pub gateway_id: String,
    pub redis: ConnectionManager,
    pub backend: Arc<dyn Backend>,
    supervisors: Mutex<HashMap<String, mpsc::UnboundedSender<Order>>>,
    stopping: AtomicBool,
}

impl Daemon {
    pub fn new(config: Config, redis: ConnectionManager, backend: Arc<dyn Backend>) -> Arc<Daemon> {
        let gateway_id = config.gateway_id();
        Arc::new(Daemon { config, gateway_id, redis, backend, supervisors: Mutex::default(), stopping: AtomicBool::new(false) })
    }

    /// The session's supervisor, started on first use. Orders to one session go through one
    /// channel, so they are carried out in the order the commands arrived.
    pub fn supervisor(self: &Arc<Self>, session_id: &str, org: &str) -> mpsc::UnboundedSender<Order> {
        let mut supervisors = self.supervisors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(orders) = supervisors.get(session_id).filter(|orders| !orders.is_closed()) {
            return orders.clone();
        }
        let (orders, inbox) = mpsc::unbounded_channel();
        supervisors.insert(session_id.to_owned(), orders.clone());
        tokio::spawn(supervisor::run(self.clone(), session_id.to_owned(), org.to_owned(), inbox));
        orders
    }

    /// Every live supervisor, for heartbeats and shutdown.
    pub fn supervisors(&self) -> Vec<(String, mpsc::UnboundedSender<Order>)> {
        let supervisors = self.supervisors.lock().unwrap_or_else(|e| e.into_inner());
        supervisors.iter().filter(|(_, o)| !o.is_closed()).map(|(id, o)| (id.clone(), o.clone())).collect()
    }

    /// From now on, commands left unanswered stay pending for the next daemon.
    pub fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Lets the function that queued a command read what became of it.
    pub async fn publish_result(&self, org: &str, command_id: &str, result: &CommandResult) {
        let json = serde_json::to_string(result).unwrap_or_default();
        let written = self.redis.execute("SET", args![keys::command_result(org, command_id), json, "PX", RESULT_TTL_MS]).await;
        if let Err(e) = written {
            tracing::warn!(command_id, "cannot record a command's result: {e}");
        }
    }
}
