//! One task per session: the status machine `stopped → starting → scan_qr_code → working`, and
//! `failed` with a reason. Transient disconnects reconnect with capped, jittered backoff. Every
//! change is written to the row together with the events that announce it (one atomic step),
//! always with the gateway and the identity as this task knows them, so the API reports what is
//! true on the WhatsApp side.

use crate::backend::{BackendEvent, Client, Identity, format_pairing_code};
use crate::daemon::Daemon;
use crate::{backfill, lease};
use shared::backfill::JobStatus;
use shared::command::{Command, CommandKind, CommandResult};
use shared::directory;
use shared::event::{Event, EventType, status_data};
use shared::session::SessionStatus;
use shared::store::{self, QrChange, Update};
use shared::time::now_millis;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long a phone pairing code request may wait for the socket and WhatsApp's answer.
const PAIRING_CODE_DEADLINE: Duration = Duration::from_secs(30);

/// What the supervisor answers once a command took effect; `None` when it was handed on to the
/// gateway that holds the session, which answers instead.
pub type Reply = oneshot::Sender<Option<CommandResult>>;

pub enum Order {
    Command(Command, Reply),
    /// The session was running when this daemon last stopped: run it again.
    Resume,
    /// Another gateway holds the session's lease now: let go without touching the row.
    LeaseLost,
    /// The daemon is stopping: disconnect, keep the session resumable.
    Shutdown(oneshot::Sender<()>),
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Exit,
}

type PairingCodeOutcome = (Command, Reply, Result<String, String>);

struct Supervisor {
    daemon: Arc<Daemon>,
    id: String,
    org: String,
    status: SessionStatus,
    identity: Option<Identity>,
    client: Option<Arc<dyn Client>>,
    events: Option<mpsc::UnboundedReceiver<BackendEvent>>,
    /// Connection attempts that failed in a row.
    failures: u32,
    /// Clients whose QR codes ran out while waiting for a scan.
    qr_rounds: u32,
    retry_at: Option<Instant>,
    pairing_codes: JoinSet<PairingCodeOutcome>,
    /// The backfill job running on the current client.
    backfill: Option<tokio::task::JoinHandle<()>>,
}

pub async fn run(daemon: Arc<Daemon>, id: String, org: String, mut inbox: mpsc::UnboundedReceiver<Order>) {
    let row = store::get(&daemon.redis, &org, &id).await.ok();
    let mut supervisor = Supervisor {
        status: row.as_ref().map_or(SessionStatus::Stopped, |r| r.status),
        identity: row.as_ref().and_then(|r| {
            Some(Identity { jid: r.wa_jid.clone()?, lid: r.wa_lid.clone(), phone: r.phone_number.clone(), push_name: None })
        }),
        daemon,
        id,
        org,
        client: None,
        events: None,
        failures: 0,
        qr_rounds: 0,
        retry_at: None,
        pairing_codes: JoinSet::new(),
        backfill: None,
    };
    loop {
        tokio::select! {
            order = inbox.recv() => match order {
                Some(order) => if supervisor.obey(order).await == Flow::Exit { break },
                None => break,
            },
            event = next_event(&mut supervisor.events) => match event {
                Some(event) => supervisor.on_event(event).await,
                None => supervisor.connection_lost("the client stopped without saying why".into()).await,
            },
            () = wake_at(supervisor.retry_at) => {
                supervisor.retry_at = None;
                supervisor.connect().await;
            }
            Some(done) = supervisor.pairing_codes.join_next(), if !supervisor.pairing_codes.is_empty() => {
                if let Ok(outcome) = done {
                    supervisor.on_pairing_code(outcome).await;
                }
            }
        }
    }
    supervisor.drop_client().await;
    // Orders that raced the exit. After a delete there is nothing left to do; during a shutdown
    // they stay unanswered, so their commands stay pending for the next daemon.
    inbox.close();
    while let Ok(order) = inbox.try_recv() {
        match order {
            Order::Command(_, reply) if !supervisor.daemon.is_stopping() => drop(reply.send(Some(CommandResult::done()))),
            Order::Shutdown(done) => drop(done.send(())),
            _ => {}
        }
    }
}

async fn next_event(events: &mut Option<mpsc::UnboundedReceiver<BackendEvent>>) -> Option<BackendEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

async fn wake_at(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    fn is_active(&self) -> bool {
        self.client.is_some() || self.retry_at.is_some()
    }

    async fn obey(&mut self, order: Order) -> Flow {
        let (command, reply) = match order {
            Order::Command(command, reply) => (command, reply),
            Order::Resume => {
                if !self.is_active() {
                    let _ = self.begin().await;
                }
                return Flow::Continue;
            }
            Order::LeaseLost => {
                tracing::warn!(session = %self.id, "another gateway took this session's lease; letting go");
                self.drop_client().await;
                self.retry_at = None;
                return Flow::Continue;
            }
            Order::Shutdown(done) => {
                self.pause_for_shutdown().await;
                let _ = done.send(());
                return Flow::Exit;
            }
        };
        tracing::info!(session = %self.id, command = command.kind.as_str(), id = %command.id, "command");
        let for_the_holder = matches!(command.kind, CommandKind::Stop | CommandKind::Logout | CommandKind::Delete | CommandKind::Backfill);
        if for_the_holder && !self.is_active() {
            if let Some(holder) = self.holder_elsewhere().await {
                let _ = reply.send(self.forward(&holder, &command).await);
                return if command.kind == CommandKind::Delete { Flow::Exit } else { Flow::Continue };
            }
        }
        let result = match command.kind {
            CommandKind::Start if self.is_active() => Some(CommandResult::done()),
            CommandKind::Start => self.begin_or_forward(&command).await,
            CommandKind::Restart => {
                self.drop_client().await;
                self.retry_at = None;
                self.begin_or_forward(&command).await
            }
            CommandKind::Stop => {
                self.halt(SessionStatus::Stopped, "stop_requested").await;
                Some(CommandResult::done())
            }
            CommandKind::Logout => {
                self.logout().await;
                Some(CommandResult::done())
            }
            CommandKind::Delete => {
                self.drop_client().await;
                if let Err(e) = self.daemon.backend.remove(&self.id).await {
                    tracing::warn!(session = %self.id, "cannot remove the session's store: {e}");
                }
                self.release(true).await;
                let _ = reply.send(Some(CommandResult::done()));
                return Flow::Exit;
            }
            CommandKind::PairPhone => return self.request_pairing_code(command, reply).await,
            CommandKind::Backfill => {
                self.backfill(&command).await;
                Some(CommandResult::done())
            }
        };
        let _ = reply.send(result);
        Flow::Continue
    }

    /// Starts a client unless another live gateway runs the session, in which case the command
    /// goes on to that gateway's stream (it answers the waiting function itself).
    async fn begin_or_forward(&mut self, command: &Command) -> Option<CommandResult> {
        match self.begin().await {
            Ok(()) => Some(CommandResult::done()),
            Err(holder) => self.forward(&holder, command).await,
        }
    }

    /// Hands the command to the gateway that runs the session; that gateway answers the waiting
    /// function (`None` here), unless the hand-over itself failed.
    async fn forward(&self, holder: &str, command: &Command) -> Option<CommandResult> {
        match store::enqueue(&self.daemon.redis, Some(holder), command).await {
            Ok(()) => None,
            Err(e) => Some(CommandResult::failed("backend", format!("cannot hand the command to {holder}: {e}"))),
        }
    }

    /// The live gateway that runs the session, when it is not this one.
    async fn holder_elsewhere(&self) -> Option<String> {
        let holder = shared::redis::get_string(&self.daemon.redis, &shared::keys::session_lease(&self.id)).await.ok()??;
        let alive = holder != self.daemon.gateway_id && lease::is_alive(&self.daemon, &holder).await.unwrap_or(false);
        alive.then_some(holder)
    }

    /// Takes the lease, marks the row `starting` and connects. `Err(holder)` when another live
    /// gateway runs the session.
    async fn begin(&mut self) -> Result<(), String> {
        match lease::acquire(&self.daemon, &self.id).await {
            Ok(None) => {}
            Ok(Some(holder)) => return Err(holder),
            Err(e) => {
                // Redis is down: the lease cannot be checked, but the session must not be left
                // for dead. Run it; the heartbeat renews the lease once Redis is back.
                tracing::warn!(session = %self.id, "cannot take the lease: {e}");
            }
        }
        self.failures = 0;
        self.qr_rounds = 0;
        let update = self.status_change(SessionStatus::Starting, None);
        self.write(update).await;
        self.connect().await;
        Ok(())
    }

    async fn connect(&mut self) {
        let (events, inbox) = mpsc::unbounded_channel();
        match self.daemon.backend.connect(&self.id, events).await {
            Ok(client) => {
                self.client = Some(client);
                self.events = Some(inbox);
            }
            Err(reason) => self.connection_lost(reason).await,
        }
    }

    async fn drop_client(&mut self) {
        self.events = None;
        self.pairing_codes.abort_all();
        if let Some(job) = self.backfill.take().filter(|job| !job.is_finished()) {
            job.abort();
            backfill::interrupt(&self.daemon, &self.org, &self.id, "the session's connection ended during the backfill").await;
        }
        if let Some(client) = self.client.take() {
            client.disconnect().await;
        }
    }

    /// A status change with its `session.status` event (only when the status really changes or
    /// there is a reason to tell).
    fn status_change(&mut self, status: SessionStatus, reason: Option<&str>) -> Update {
        let update = Update::default().status(status);
        let changed = status != self.status || reason.is_some();
        self.status = status;
        if !changed {
            return update;
        }
        let (jid, lid, phone) = self.identity_fields();
        update.event(self.event(EventType::SessionStatus, status_data(status, phone, jid, lid, reason)))
    }

    fn identity_fields(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        match &self.identity {
            Some(i) => (Some(i.jid.as_str()), i.lid.as_deref(), i.phone.as_deref()),
            None => (None, None, None),
        }
    }

    fn event(&self, kind: EventType, data: serde_json::Value) -> Event {
        Event::new(kind, &self.org, &self.id, data)
    }

    /// Writes the update with this gateway and the identity as known, in one atomic step.
    async fn write(&self, update: Update) {
        let (jid, lid, phone) = self.identity_fields();
        let mut update = update.set("gatewayId", self.daemon.gateway_id.as_str()).set("waJid", jid).set("waLid", lid).set("phoneNumber", phone);
        update.retention = Some(self.daemon.config.retention());
        match store::update(&self.daemon.redis, &self.org, &self.id, update).await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::debug!(session = %self.id, "the row is gone; a delete command will follow"),
            Err(e) => tracing::warn!(session = %self.id, "cannot write the session's state: {e}"),
        }
    }

    async fn release(&self, forget: bool) {
        if let Err(e) = lease::release(&self.daemon, &self.id, forget).await {
            tracing::warn!(session = %self.id, "cannot release the lease: {e}");
        }
    }

    /// Ends the connection on purpose (stop, failure): the session rests in `status` until a
    /// command starts it again.
    async fn halt(&mut self, status: SessionStatus, reason: &str) {
        self.drop_client().await;
        self.retry_at = None;
        let update = self.status_change(status, Some(reason)).qr(QrChange::Clear);
        self.write(update).await;
        self.release(true).await;
    }

    async fn pause_for_shutdown(&mut self) {
        let was_active = self.is_active();
        self.drop_client().await;
        self.retry_at = None;
        if was_active {
            // Not working any more, and resumed when a daemon for this gateway starts again.
            let update = self.status_change(SessionStatus::Starting, Some("gateway_shutdown")).qr(QrChange::Clear);
            self.write(update).await;
            self.release(false).await;
        }
    }

    /// The socket is gone: reconnect after a backoff, or give up as `failed` after too many
    /// failures in a row.
    async fn connection_lost(&mut self, reason: String) {
        self.drop_client().await;
        self.failures += 1;
        let limit = self.daemon.config.max_connect_failures;
        if self.failures >= limit {
            let reason = format!("connection_failed: {limit} attempts in a row, last: {reason}");
            tracing::warn!(session = %self.id, "{reason}");
            return self.halt(SessionStatus::Failed, &reason).await;
        }
        let delay = self.daemon.config.reconnect_delay(self.failures);
        tracing::info!(session = %self.id, failures = self.failures, ?delay, "reconnecting: {reason}");
        self.retry_at = Some(Instant::now() + delay);
        let update = self.status_change(SessionStatus::Starting, Some(&format!("reconnecting: {reason}")));
        self.write(update).await;
    }

    async fn on_event(&mut self, event: BackendEvent) {
        match event {
            BackendEvent::Qr { code, valid_for } => {
                let expires_at = now_millis() + valid_for.as_millis() as i64;
                // A QR means the backend pairs from scratch: any pairing we knew of is void.
                self.identity = None;
                let announce = self.event(EventType::AuthQr, serde_json::json!({ "code": code, "expiresAt": expires_at }));
                let update = self.status_change(SessionStatus::ScanQrCode, None).event(announce);
                self.write(update.qr(QrChange::Set { code, expires_at })).await;
            }
            BackendEvent::QrExhausted => {
                self.drop_client().await;
                self.qr_rounds += 1;
                if self.qr_rounds >= self.daemon.config.pairing_rounds {
                    self.halt(SessionStatus::Stopped, "qr_codes_exhausted").await;
                } else {
                    self.connect().await;
                }
            }
            BackendEvent::Paired(identity) => {
                let announce = self.event(EventType::AuthPaired, serde_json::json!({
                    "waJid": identity.jid, "waLid": identity.lid, "phoneNumber": identity.phone, "pushName": identity.push_name,
                }));
                self.identity = Some(identity);
                self.write(Update::default().event(announce).qr(QrChange::Clear)).await;
            }
            BackendEvent::Connected(identity) => {
                self.failures = 0;
                self.qr_rounds = 0;
                self.identity = Some(identity);
                let update = self.status_change(SessionStatus::Working, None).set("lastConnectedAt", now_millis());
                self.write(update.qr(QrChange::Clear)).await;
            }
            BackendEvent::Disconnected { reason } => self.connection_lost(reason).await,
            BackendEvent::LoggedOut { reason } => self.unpaired(&format!("logged_out: {reason}"), SessionStatus::Failed).await,
            BackendEvent::StreamReplaced => {
                self.halt(SessionStatus::Failed, "stream_replaced: another client connected with this session's credentials").await;
            }
            BackendEvent::TemporaryBan { reason } => self.halt(SessionStatus::Failed, &format!("temporary_ban: {reason}")).await,
            BackendEvent::Contacts(contacts) => {
                if let Err(e) = directory::update_contacts(&self.daemon.redis, &self.org, &self.id, &contacts).await {
                    tracing::warn!(session = %self.id, "cannot keep {} contact updates: {e:?}", contacts.len());
                }
            }
        }
    }

    /// Runs the backfill job this command names on the live client, or fails it when the
    /// session is not connected here.
    async fn backfill(&mut self, command: &Command) {
        let job = match shared::backfill::current(&self.daemon.redis, &self.org, &self.id).await {
            Ok(Some(job)) if job.id == command.id && job.status == JobStatus::Running => job,
            // Superseded, or already settled: nothing to run.
            _ => return,
        };
        match &self.client {
            Some(client) if self.status == SessionStatus::Working && self.backfill.as_ref().is_none_or(|j| j.is_finished()) => {
                self.backfill = Some(tokio::spawn(backfill::run(self.daemon.clone(), client.clone(), job)));
            }
            _ => backfill::finish(&self.daemon, job, Err("the session is not connected".to_owned())).await,
        }
    }

    /// `:logout`: unlink the device (through the live socket when there is one), wipe the store.
    async fn logout(&mut self) {
        let unlinked = match &self.client {
            Some(client) if self.status == SessionStatus::Working => client.logout().await,
            _ => self.daemon.backend.remove(&self.id).await,
        };
        if let Err(e) = unlinked {
            tracing::warn!(session = %self.id, "logout did not reach WhatsApp ({e}); removing the local pairing anyway");
        }
        self.unpaired("logout_requested", SessionStatus::Stopped).await;
    }

    /// The pairing is gone (logout, or unlinked from the phone): wipe what is stored, clear the
    /// identity, and announce it.
    async fn unpaired(&mut self, reason: &str, status: SessionStatus) {
        self.drop_client().await;
        self.retry_at = None;
        if let Err(e) = self.daemon.backend.remove(&self.id).await {
            tracing::warn!(session = %self.id, "cannot remove the session's store: {e}");
        }
        let (jid, lid, phone) = self.identity_fields();
        let announce = self.event(EventType::SessionLoggedOut, serde_json::json!({
            "reason": reason, "waJid": jid, "waLid": lid, "phoneNumber": phone,
        }));
        self.identity = None;
        // The number's contacts and groups go with it.
        if let Err(e) = directory::clear(&self.daemon.redis, &self.org, &self.id).await {
            tracing::warn!(session = %self.id, "cannot clear the session's contacts and groups: {e:?}");
        }
        let update = self.status_change(status, Some(reason)).event(announce);
        self.write(update.qr(QrChange::Clear)).await;
        self.release(true).await;
    }

    async fn request_pairing_code(&mut self, command: Command, reply: Reply) -> Flow {
        if self.identity.is_some() {
            let _ = reply.send(Some(CommandResult::failed("already_paired", "the session is already paired")));
            return Flow::Continue;
        }
        if !self.is_active() {
            if let Err(holder) = self.begin().await {
                let _ = reply.send(self.forward(&holder, &command).await);
                return Flow::Continue;
            }
        }
        let (Some(client), Some(phone)) = (self.client.clone(), command.phone.clone()) else {
            let _ = reply.send(Some(CommandResult::failed("not_connected", "no connection to WhatsApp right now; retry shortly")));
            return Flow::Continue;
        };
        self.pairing_codes.spawn(async move {
            let code = match tokio::time::timeout(PAIRING_CODE_DEADLINE, client.pair_with_code(&phone)).await {
                Ok(code) => code,
                Err(_) => Err("WhatsApp did not answer in time".to_owned()),
            };
            (command, reply, code)
        });
        Flow::Continue
    }

    async fn on_pairing_code(&mut self, (command, reply, code): PairingCodeOutcome) {
        let result = match code {
            Ok(raw) => {
                let code = format_pairing_code(&raw);
                let announce = self.event(EventType::AuthPairingCode, serde_json::json!({ "code": code, "phoneNumber": command.phone }));
                self.write(Update::default().event(announce)).await;
                CommandResult::code(code)
            }
            Err(e) => CommandResult::failed("backend", e),
        };
        let _ = reply.send(Some(result));
    }
}
