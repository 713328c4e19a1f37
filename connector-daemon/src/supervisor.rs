//! One task per session this daemon works on: the status machine `stopped → starting →
//! scan_qr_code → working`, and `failed` with a reason when only a person can put it right
//! (logged out, banned, replaced, refused). A lost connection is `starting` until it is back,
//! however long that takes: reconnects follow WhatsApp Web's backoff (Fibonacci to 15 min,
//! longer after a rate limit), and the restart WhatsApp asks for after a pairing is immediate,
//! on the same client. Every change is written to the row together with the events that
//! announce it (one atomic step), under the session's lease: a write carries the lease's
//! fencing token, and a row that took a newer lease refuses it.
//!
//! A command is carried out only by the lease holder, and only if it is newer than the last one
//! applied to the session (`seq` above the row's `_applied`); the task re-reads the row before
//! each, never acting on an old snapshot. When the session no longer runs here the task gives
//! its lease up and ends.

use crate::backend::{Acks, BackendEvent, Cause, Client, Events, Identity, format_pairing_code};
use crate::daemon::{Daemon, Held, persist};
use crate::inbound::SessionInbox;
use crate::lease::{self, Acquired};
use crate::media;
use crate::outbox::Sender;
use crate::{backfill, receipts, unlinks};
use shared::backfill::JobStatus;
use shared::command::{Command, CommandKind, CommandResult};
use shared::directory;
use shared::event::{Event, EventType, status_data};
use shared::session::{Control, Session, SessionStatus};
use shared::store::{self, QrChange, Update, Written};
use shared::keys;
use shared::redis::Redis;
use shared::time::now_millis;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// How long a phone pairing code request may wait for the socket to come up.
const SOCKET_DEADLINE: Duration = Duration::from_secs(30);
/// How long it may then wait for WhatsApp's answer: the request's own 30 s timeout, after a key
/// derivation that takes seconds on a busy machine.
const PAIRING_CODE_DEADLINE: Duration = Duration::from_secs(65);
/// How long a phone code stays typeable after it was issued (WhatsApp's ~180 s), plus the minute
/// WhatsApp gives the phone to confirm once typed. A client kept up for an outstanding code
/// after its QR codes ran out is let go past this.
const PAIRING_CODE_LIFETIME: Duration = Duration::from_secs(240);
/// How long closing a client may take (its last flushes, the socket's close).
pub const DISCONNECT_DEADLINE: Duration = Duration::from_secs(15);
/// When, after the presence was set, it is set again: whatsapp-rust announces the number
/// online right after it reports the profile name's arrival, and may overtake the first.
const PRESENCE_AGAIN_AFTER: Duration = Duration::from_secs(2);
/// What a rate limit (stream error 429) adds to the reconnect backoff's position, as WhatsApp
/// Web does: five steps up the Fibonacci sequence.
const RATE_LIMIT_PENALTY: u32 = 5;
/// A `statusReason` of a session waiting to reconnect: this, why, [`NEXT_ATTEMPT_AT`] and the
/// Unix ms of the next attempt.
const RECONNECTING: &str = "reconnecting: ";
const NEXT_ATTEMPT_AT: &str = "; next attempt at ";

/// What the supervisor answers once a command took effect; `None` when it was handed on to the
/// gateway that holds the session, which answers instead.
pub type Reply = oneshot::Sender<Option<CommandResult>>;

pub enum Order {
    Command(Command, Reply),
    /// The lease taken with this token is gone to another gateway (or with the row): let go at
    /// once, writing nothing. A renewal of an older lease of the session says nothing of a newer one.
    LeaseLost(i64),
    /// The session's lease went unrenewed for a lease period (its client is stopped already):
    /// let go, staying resumable.
    Suspend,
    /// The daemon is stopping: disconnect, keep the session resumable.
    Shutdown(oneshot::Sender<()>),
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Exit,
}

/// A temporary ban's `statusReason`: this, WhatsApp's reason, then (when WhatsApp said when it
/// lifts) [`BAN_LIFTS_AT`] and the Unix ms.
const BAN_REASON: &str = "temporary_ban: ";
const BAN_LIFTS_AT: &str = "; lifts at ";

/// A phone-code request's outcome: the command's id, and the code or why none came.
type PairingCodeOutcome = (String, Result<String, String>);

struct Supervisor {
    daemon: Arc<Daemon>,
    id: String,
    org: String,
    /// The fencing token of the lease this task holds; `None` while it holds none.
    fence: Option<i64>,
    status: SessionStatus,
    identity: Option<Identity>,
    client: Option<Arc<dyn Client>>,
    events: Option<mpsc::UnboundedReceiver<BackendEvent>>,
    /// Where the reconnect backoff stands: the attempts since the last stable connection, plus
    /// the rate-limit penalties.
    attempts: u32,
    /// A rate limit raised the backoff: the next stable connection ends the penalty instead of
    /// starting the backoff over.
    penalty: bool,
    connected_at: Option<Instant>,
    /// Clients whose QR codes ran out while waiting for a scan.
    qr_rounds: u32,
    retry_at: Option<Instant>,
    /// The session shows itself online (`alwaysOnline`); else offline, so the phone keeps
    /// getting notifications.
    online: bool,
    /// When the last phone code was issued on the current client.
    code_issued_at: Option<Instant>,
    /// A client whose QR codes ran out is kept for an outstanding phone code until then.
    code_deadline: Option<Instant>,
    pairing_codes: JoinSet<PairingCodeOutcome>,
    /// The phone-code requests waiting for their code, by command id, with their answers.
    code_requests: HashMap<String, (Command, Reply)>,
    /// The backfill job running on the current client.
    backfill: Option<tokio::task::JoinHandle<()>>,
    /// Sends the session's outbox while the client is connected.
    sender: Option<Sender>,
    /// Where WhatsApp's answers to the sender's messages go, straight from the client.
    acks: Arc<Acks>,
    /// The current client's receipts and contacts workers: stopped before what they write is
    /// cleared (a logout, a delete), so nothing of the old number comes back.
    workers: Vec<AbortHandle>,
    /// The number of the last command applied to the session (the row's `_applied`).
    applied: u64,
    /// The number of the command being applied, written with its first row write.
    applying: Option<u64>,
    /// Commands that came before an earlier one of the session, by number.
    parked: BTreeMap<u64, Parked>,
}

/// A command waiting for the session's earlier ones, until `until`.
struct Parked {
    command: Command,
    reply: Reply,
    until: Instant,
}

pub async fn run(daemon: Arc<Daemon>, id: String, org: String, task: u64, mut inbox: mpsc::UnboundedReceiver<Order>) {
    let mut supervisor = Supervisor {
        daemon,
        id,
        org,
        fence: None,
        status: SessionStatus::Stopped,
        identity: None,
        client: None,
        events: None,
        attempts: 0,
        penalty: false,
        connected_at: None,
        qr_rounds: 0,
        retry_at: None,
        online: false,
        code_issued_at: None,
        code_deadline: None,
        pairing_codes: JoinSet::new(),
        code_requests: HashMap::new(),
        backfill: None,
        sender: None,
        acks: Arc::default(),
        workers: Vec::new(),
        applied: 0,
        applying: None,
        parked: BTreeMap::new(),
    };
    loop {
        let flow = tokio::select! {
            order = inbox.recv() => match order {
                Some(order) => supervisor.obey(order).await,
                None => Flow::Exit,
            },
            event = next_event(&mut supervisor.events) => {
                match event {
                    Some(event) => supervisor.on_event(event).await,
                    None => {
                        supervisor.events = None;
                        supervisor.connection_lost("the client stopped without saying why".into(), Cause::Lost).await;
                    }
                }
                Flow::Continue
            }
            () = wake_at(supervisor.retry_at) => {
                supervisor.retry_at = None;
                supervisor.reconnect().await;
                Flow::Continue
            }
            () = wake_at(supervisor.code_deadline) => {
                tracing::info!(session = %supervisor.id, "the outstanding phone code expired unused");
                supervisor.qr_exhausted().await;
                Flow::Continue
            }
            () = wake_at(supervisor.parked.values().map(|p| p.until).min()) => supervisor.apply_parked().await,
            Some(done) = supervisor.pairing_codes.join_next(), if !supervisor.pairing_codes.is_empty() => {
                if let Ok(outcome) = done {
                    supervisor.on_pairing_code(outcome).await;
                }
                Flow::Continue
            }
        };
        if flow == Flow::Exit {
            supervisor.drop_client().await;
            inbox.close();
            break;
        }
        if !supervisor.is_busy() {
            supervisor.give_up_lease().await;
            if supervisor.daemon.retire(&supervisor.id, task, &mut inbox) {
                break;
            }
        }
    }
    // Orders that raced the end go to the session's next task; during a shutdown they stay
    // unanswered, so their commands stay pending for the next daemon.
    while let Ok(order) = inbox.try_recv() {
        match order {
            Order::Shutdown(done) => drop(done.send(())),
            Order::Command(command, reply) if !supervisor.daemon.is_stopping() => supervisor.daemon.command(command, reply),
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

/// A task doing `work` for each event it is handed, in order, until the client that reports
/// them is gone (or it is aborted).
fn worker<F: Future<Output = ()> + Send + 'static>(
    mut work: impl FnMut(BackendEvent) -> F + Send + 'static,
) -> (mpsc::UnboundedSender<BackendEvent>, AbortHandle) {
    let (events, mut handed) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(event) = handed.recv().await {
            work(event).await;
        }
    });
    (events, task.abort_handle())
}

/// The answer to a command that a newer one made moot.
fn superseded(command: &Command) -> CommandResult {
    CommandResult::failed("superseded", format!("a newer command for the session was carried out before this {}", command.kind.as_str()))
}

impl Supervisor {
    /// A client runs, or will again after a backoff.
    fn is_active(&self) -> bool {
        self.client.is_some() || self.retry_at.is_some()
    }

    /// Anything left that needs this task.
    fn is_busy(&self) -> bool {
        self.is_active() || !self.pairing_codes.is_empty() || !self.parked.is_empty()
    }

    async fn obey(&mut self, order: Order) -> Flow {
        match order {
            Order::Command(command, reply) => self.command(command, reply).await,
            Order::LeaseLost(fence) if self.fence != Some(fence) => Flow::Continue,
            Order::LeaseLost(_) => {
                tracing::warn!(session = %self.id, "this gateway lost the session's lease; letting go");
                self.let_go().await;
                let (daemon, id) = (&*self.daemon, self.id.as_str());
                persist("forget a lost session", || daemon.is_stopping(), move || lease::forget(daemon, id)).await;
                Flow::Continue
            }
            Order::Suspend => {
                tracing::warn!(session = %self.id, "the lease could not be renewed for a lease period; letting go until it can");
                self.let_go().await;
                Flow::Continue
            }
            Order::Shutdown(done) => {
                self.pause_for_shutdown().await;
                let _ = done.send(());
                Flow::Exit
            }
        }
    }

    async fn command(&mut self, command: Command, reply: Reply) -> Flow {
        if command.kind == CommandKind::Send {
            self.wake_sender(&command).await;
            let _ = reply.send(None);
            return Flow::Continue;
        }
        if command.kind == CommandKind::FetchMedia {
            self.fetch_media(&command).await;
            let _ = reply.send(None);
            return Flow::Continue;
        }
        tracing::info!(session = %self.id, command = command.kind.as_str(), id = %command.id, seq = command.seq, "command");
        // Unanswered when the daemon stops before Redis answers: the command stays pending.
        let Some(row) = self.load().await else { return Flow::Exit };
        let Some((row, control)) = row else {
            // The row is gone: whatever the command, what is left is cleaning up after the delete.
            self.row_gone(&command).await;
            let _ = reply.send(Some(CommandResult::done()));
            return Flow::Exit;
        };
        if command.is_ordered() && command.seq <= control.applied {
            tracing::info!(session = %self.id, seq = command.seq, applied = control.applied, "skipping a command older than the last one applied");
            if command.kind == CommandKind::Backfill {
                self.settle_backfill(&command, "superseded by a later command for the session").await;
            }
            let _ = reply.send(Some(superseded(&command)));
            return Flow::Continue;
        }
        if self.fence.is_none() {
            self.applied = control.applied;
            match self.take_lease(&command, row).await {
                Ok(()) => {}
                Err(Handled::Abandoned) => return Flow::Exit,
                Err(Handled::Elsewhere(answer)) => {
                    let _ = reply.send(answer);
                    return Flow::Continue;
                }
                Err(Handled::Gone) => {
                    self.row_gone(&command).await;
                    let _ = reply.send(Some(CommandResult::done()));
                    return Flow::Exit;
                }
            }
        }
        if command.is_ordered() && command.seq > self.applied + 1 {
            // An earlier command of the session is still on its way (on a dead gateway's
            // stream, being adopted or handed on): it goes first, if it arrives in time.
            tracing::info!(session = %self.id, seq = command.seq, applied = self.applied, "waiting for the session's earlier commands");
            if self.parked.contains_key(&command.seq) {
                // The same command delivered twice (redelivered, requeued): the first one answers.
                let _ = reply.send(None);
                return Flow::Continue;
            }
            let until = Instant::now() + self.daemon.config.lease() * 2;
            self.parked.insert(command.seq, Parked { command, reply, until });
            return Flow::Continue;
        }
        match self.apply(command, reply).await {
            Flow::Continue => self.apply_parked().await,
            exit => exit,
        }
    }

    /// A message was queued: the sender looks at the outbox now. A session that moved to
    /// another gateway gets the wake-up there; one that runs nowhere sends when it runs again.
    async fn wake_sender(&self, command: &Command) {
        match &self.sender {
            Some(sender) => sender.wake(),
            None => drop(self.forward_to_holder(command).await),
        }
    }

    /// A `GET …/media` waits for a message's file: fetched through the connected client, off
    /// this task, or by the gateway the session moved to.
    async fn fetch_media(&self, command: &Command) {
        let Some(message_id) = command.message_id.clone() else { return };
        if let (Some(client), Some(_)) = (&self.client, &self.sender) {
            tokio::spawn(media::fetch(self.daemon.clone(), client.clone(), self.org.clone(), message_id));
        } else if !self.forward_to_holder(command).await {
            media::not_connected(&self.daemon, &self.org, &message_id).await;
        }
    }

    /// Passes a command on to the gateway the session's row names, when that is another one;
    /// `true` when it went.
    async fn forward_to_holder(&self, command: &Command) -> bool {
        let Ok(Some((row, _))) = store::get_with_control(&self.daemon.redis, &self.org, &self.id).await else { return false };
        match row.gateway_id.filter(|g| *g != self.daemon.gateway_id) {
            Some(holder) => matches!(store::forward(&self.daemon.redis, &holder, command).await, Ok(true)),
            None => false,
        }
    }

    /// Starts sending the outbox once the session is connected under a lease.
    fn start_sender(&mut self) {
        let (Some(client), Some(fence), Some(me), None) = (self.client.clone(), self.fence, self.identity.as_ref(), &self.sender) else { return };
        let (lease, me) = (lease::value(&self.daemon, fence), me.jid.clone());
        self.sender = Some(Sender::start(self.daemon.clone(), client, self.acks.clone(), self.org.clone(), self.id.clone(), me, lease));
    }

    /// Applies the parked commands that are next in order, or whose wait ran out.
    async fn apply_parked(&mut self) -> Flow {
        while let Some(entry) = self.parked.first_entry() {
            let due = *entry.key() <= self.applied + 1 || entry.get().until <= Instant::now();
            if !due {
                break;
            }
            let Parked { command, reply, .. } = entry.remove();
            if command.seq <= self.applied {
                let _ = reply.send(Some(superseded(&command)));
            } else if self.fence.is_none() {
                // The lease went meanwhile: routed again, to whoever holds the session now.
                self.daemon.command(command, reply);
            } else if self.apply(command, reply).await == Flow::Exit {
                return Flow::Exit;
            }
        }
        Flow::Continue
    }

    /// Carries a command out under the lease this task holds.
    async fn apply(&mut self, command: Command, reply: Reply) -> Flow {
        self.applying = command.is_ordered().then_some(command.seq);
        let result = match command.kind {
            // Handled in `command`, before any lease: neither starts a session.
            CommandKind::Send | CommandKind::FetchMedia => CommandResult::done(),
            CommandKind::Start if self.is_active() => CommandResult::done(),
            CommandKind::Start => {
                self.begin().await;
                CommandResult::done()
            }
            CommandKind::Resume => {
                if !self.is_active() && self.status.is_running() {
                    tracing::info!(session = %self.id, status = self.status.as_str(), "resuming");
                    self.begin().await;
                }
                CommandResult::done()
            }
            CommandKind::Restart => {
                self.drop_client().await;
                self.retry_at = None;
                self.begin().await;
                CommandResult::done()
            }
            CommandKind::Stop => {
                self.halt(SessionStatus::Stopped, "stop_requested").await;
                CommandResult::done()
            }
            CommandKind::Logout => {
                self.logout().await;
                CommandResult::done()
            }
            CommandKind::PairPhone => {
                self.mark_applied().await;
                return self.request_pairing_code(command, reply).await;
            }
            CommandKind::Backfill => {
                self.backfill(&command).await;
                CommandResult::done()
            }
            CommandKind::Delete => {
                self.remove_everything().await;
                let _ = reply.send(Some(CommandResult::done()));
                return Flow::Exit;
            }
        };
        self.mark_applied().await;
        if self.fence.is_none() && command.kind != CommandKind::Resume {
            // A write was refused midway (another gateway holds the session now): the command
            // goes to whoever holds it, rather than being answered as done.
            self.daemon.command(command, reply);
            return Flow::Continue;
        }
        let _ = reply.send(Some(result));
        Flow::Continue
    }

    /// The row as it is now, with what the scripts keep on it (`Some(None)` once it is deleted);
    /// `None` when the daemon stopped before Redis answered.
    async fn load(&self) -> Option<Option<(Session, Control)>> {
        let (daemon, org, id) = (&*self.daemon, self.org.as_str(), self.id.as_str());
        persist("read the session's row", || daemon.is_stopping(), move || store::get_with_control(&daemon.redis, org, id)).await
    }

    /// Takes the session's lease, taking the row as it stands for what is true. When another
    /// gateway runs the session the command goes to it (it answers the waiting function); a
    /// holder whose heartbeat is gone loses its lease within a lease period, so that is waited out.
    async fn take_lease(&mut self, command: &Command, row: Session) -> Result<(), Handled> {
        let deadline = Instant::now() + self.daemon.config.lease() * 2;
        let daemon = self.daemon.clone();
        loop {
            let (org, id) = (self.org.as_str(), self.id.as_str());
            // The lease runs from when the attempt that took it left, not the first of a retried few.
            let attempt = || async {
                let sent = Instant::now();
                lease::acquire(&daemon, org, id).await.map(|acquired| (sent, acquired))
            };
            let acquired = persist("take the session's lease", || daemon.is_stopping(), attempt).await;
            let (sent, acquired) = match acquired {
                Some((sent, acquired)) => (sent, Some(acquired)),
                None => (Instant::now(), None),
            };
            let holder = match acquired {
                None => return Err(Handled::Abandoned),
                Some(Acquired::Gone) => return Err(Handled::Gone),
                Some(Acquired::Fence(fence)) => {
                    self.fence = Some(fence);
                    self.daemon.hold(&self.id, Held { org: self.org.clone(), fence, extended_at: sent });
                    self.status = row.status;
                    self.online = row.always_online;
                    self.identity = row.wa_jid.clone().map(|jid| Identity {
                        jid,
                        lid: row.wa_lid.clone(),
                        phone: row.phone_number.clone(),
                        push_name: row.push_name.clone(),
                    });
                    self.settle_orphaned_backfill(command).await;
                    return Ok(());
                }
                Some(Acquired::Busy(holder)) => holder,
            };
            if command.kind == CommandKind::Resume && lease::is_alive(&self.daemon, &holder).await.unwrap_or(false) {
                // A live holder runs it already. A dead one's lease lapses soon: waited out below.
                return Err(Handled::Elsewhere(Some(CommandResult::done())));
            }
            match store::forward(&self.daemon.redis, &holder, command).await {
                Ok(true) => return Err(Handled::Elsewhere(None)),
                Ok(false) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(250)).await,
                Ok(false) => return Err(Handled::Elsewhere(Some(CommandResult::failed("backend", format!("the session stays held by {holder}, whose heartbeat is gone"))))),
                Err(e) => {
                    tracing::warn!(session = %self.id, "cannot hand a command to {holder}, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Records that the command being applied was carried out, so no older one is: with the
    /// write that carried it out when there was one, else on its own.
    async fn mark_applied(&mut self) {
        if self.applying.is_some() {
            self.write(Update::default()).await;
        }
    }

    /// Releases the lease of a session that no longer runs here; the row then names no gateway.
    async fn give_up_lease(&mut self) {
        let Some(fence) = self.fence.take() else { return };
        self.daemon.unhold(&self.id, fence);
        let (daemon, org, id) = (&*self.daemon, self.org.as_str(), self.id.as_str());
        persist("release the session's lease", || daemon.is_stopping(), move || lease::release(daemon, org, id, fence)).await;
    }

    /// Stops driving the session without writing anything: another gateway may own it now.
    /// Commands waiting for their turn are routed again, to whoever holds the session.
    async fn let_go(&mut self) {
        for (_, Parked { command, reply, .. }) in std::mem::take(&mut self.parked) {
            self.daemon.command(command, reply);
        }
        if let Some(fence) = self.fence.take() {
            self.daemon.unhold(&self.id, fence);
        }
        self.drop_client().await;
        self.retry_at = None;
    }

    /// The session's row is gone. Deleted (a delete command, or a recorded deletion): everything
    /// goes. Otherwise (lost Redis data) the store is kept: unlinking a device cannot be undone.
    async fn row_gone(&mut self, command: &Command) {
        let deleted = command.kind == CommandKind::Delete
            || store::was_deleted(&self.daemon.redis, &self.id).await.unwrap_or(false);
        if deleted {
            return self.remove_everything().await;
        }
        tracing::warn!(session = %self.id, "a command for a session Redis does not know, and no record of its deletion: store kept");
        self.let_go().await;
        let (daemon, id) = (&*self.daemon, self.id.as_str());
        persist("forget an unknown session", || daemon.is_stopping(), move || lease::forget(daemon, id)).await;
    }

    /// The session is deleted: disconnect, unlink its device and wipe its store, forget it.
    async fn remove_everything(&mut self) {
        self.let_go().await;
        self.workers.drain(..).for_each(|worker| worker.abort());
        unlinks::discard(&self.daemon, &self.org, &self.id, None).await;
        let (daemon, org, id) = (&*self.daemon, self.org.as_str(), self.id.as_str());
        persist("drop a deleted session's webhook deliveries", || daemon.is_stopping(), move || {
            shared::webhook::forget_session(&daemon.redis, org, id)
        })
        .await;
        persist("forget a deleted session", || daemon.is_stopping(), move || lease::forget(daemon, id)).await;
    }

    /// Marks the row `starting` and connects; while a temporary ban WhatsApp announced has not
    /// lifted, waits for it instead. The ban is kept in Redis, so it holds across a daemon
    /// restart, a shutdown, a `:restart` and a move to another daemon.
    async fn begin(&mut self) {
        // A command starts the backoff over, but not a rate limit's penalty: restarting a
        // session WhatsApp finds too eager must not make it more so.
        if !self.penalty {
            self.attempts = 0;
        }
        self.qr_rounds = 0;
        if let Some((reason, lifts_in)) = self.ban_in_force().await {
            tracing::info!(session = %self.id, ?lifts_in, "still banned by WhatsApp; connecting when the ban lifts");
            let update = self.status_change(SessionStatus::Starting, Some(&reason));
            if self.write(update).await {
                self.retry_at = Some(Instant::now() + lifts_in);
            }
            return;
        }
        let update = self.status_change(SessionStatus::Starting, None);
        if self.write(update).await {
            self.connect().await;
        }
    }

    /// The session's temporary ban (its reason, as [`Supervisor::banned`] kept it) and how long
    /// until it lifts, while it has not.
    async fn ban_in_force(&self) -> Option<(String, Duration)> {
        // Read until Redis answers: connecting because a read failed would end a ban early.
        let (redis, key) = (&self.daemon.redis, keys::session_ban(&self.org, &self.id));
        let reason = persist("read a temporary ban", || self.daemon.is_stopping(), || shared::redis::get_string(redis, &key)).await??;
        let lifts_at: i64 = reason.rsplit_once(BAN_LIFTS_AT)?.1.parse().ok()?;
        let left = lifts_at - now_millis();
        (left > 0).then(|| (reason, Duration::from_millis(left as u64)))
    }

    /// Whether the lease this task took still holds: no client runs past its lapse.
    fn lease_holds(&self) -> bool {
        self.fence.is_some_and(|fence| self.daemon.holds(&self.id, fence))
    }

    /// The lease lapsed unrenewed: let go, staying resumable (renewals resume the session).
    async fn lapsed(&mut self) {
        tracing::info!(session = %self.id, "the lease lapsed unrenewed; letting go until renewals succeed");
        self.daemon.suspend();
        self.let_go().await;
    }

    async fn connect(&mut self) {
        let Some(fence) = self.fence.filter(|_| self.lease_holds()) else { return self.lapsed().await };
        let (status, reports) = mpsc::unbounded_channel();
        let (daemon, org, id) = (self.daemon.clone(), self.org.clone(), self.id.clone());
        let (receipts, receipts_worker) = worker(move |event| {
            let (daemon, org, id) = (daemon.clone(), org.clone(), id.clone());
            async move {
                match event {
                    BackendEvent::Receipt { ids, status } => receipts::apply(&daemon, &org, &id, &ids, status).await,
                    BackendEvent::Undeliverable { ids } => receipts::undeliverable(&daemon, &org, &id, &ids).await,
                    _ => {}
                }
            }
        });
        let (daemon, org, id) = (self.daemon.clone(), self.org.clone(), self.id.clone());
        let (contacts, contacts_worker) = worker(move |event| {
            let (daemon, org, id) = (daemon.clone(), org.clone(), id.clone());
            async move {
                let BackendEvent::Contacts(contacts) = event else { return };
                if let Err(e) = directory::update_contacts(&daemon.redis, &org, &id, &contacts).await {
                    tracing::warn!(session = %id, "cannot keep {} contact updates: {e:?}", contacts.len());
                }
            }
        });
        self.workers = vec![receipts_worker, contacts_worker];
        let events = Events::routed(status, self.acks.clone(), receipts, contacts);
        let inbox = Arc::new(SessionInbox { daemon: self.daemon.clone(), org: self.org.clone(), session_id: self.id.clone() });
        match self.daemon.backend.connect(&self.id, &self.daemon.config.session_dir(&self.id), events, inbox).await {
            Ok(client) if self.daemon.drive(&self.id, fence, client.clone()) => {
                self.client = Some(client);
                self.events = Some(reports);
            }
            Ok(client) => {
                // The lease lapsed while it connected: it never runs.
                let _ = tokio::time::timeout(DISCONNECT_DEADLINE, client.disconnect()).await;
                self.lapsed().await;
            }
            Err(reason) => self.connection_lost(reason, Cause::Lost).await,
        }
    }

    /// Connects again once a backoff ran out: on the client that lost its connection when there
    /// is one (it keeps what it knows in memory), else on a new one.
    async fn reconnect(&mut self) {
        if !self.lease_holds() {
            return self.lapsed().await;
        }
        let Some(client) = self.client.clone() else { return self.connect().await };
        if let Err(reason) = client.reconnect().await {
            tracing::info!(session = %self.id, "the client cannot connect again ({reason}); starting a new one");
            self.drop_client().await;
            self.connect().await;
        }
    }

    /// The connection ended while the client stays, to connect again: what needs a connection
    /// stops (the sender, a backfill, phone-code requests, which no reconnect keeps valid).
    async fn connection_ended(&mut self) {
        self.sender = None;
        self.connected_at = None;
        self.abandon_code_requests("interrupted", "the session stopped (or ended) before WhatsApp issued a code");
        self.code_issued_at = None;
        self.code_deadline = None;
        if let Some(job) = self.backfill.take().filter(|job| !job.is_finished()) {
            job.abort();
            backfill::interrupt(&self.daemon, &self.org, &self.id, "the session's connection ended during the backfill").await;
        }
    }

    async fn drop_client(&mut self) {
        self.connection_ended().await;
        self.events = None;
        self.daemon.release_client(&self.id, None);
        if let Some(client) = self.client.take() {
            // The library's close waits on the socket, which a dead network can hold for minutes.
            if tokio::time::timeout(DISCONNECT_DEADLINE, client.disconnect()).await.is_err() {
                tracing::warn!(session = %self.id, "the client did not close in time; going on without it");
            }
        }
    }

    /// A status change with its `session.status` event (only when the status really changes or
    /// there is a reason to tell). A status other than `scan_qr_code` has no live QR code.
    fn status_change(&mut self, status: SessionStatus, reason: Option<&str>) -> Update {
        let mut update = Update::default().status(status).set("statusReason", reason);
        if status != SessionStatus::ScanQrCode {
            update = update.qr(QrChange::Clear);
        }
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

    /// Writes the update, with this gateway and the identity as known, in one atomic step under
    /// the lease; retried until it is written, the row is gone or the lease is lost. `false`
    /// when it was not written (the task no longer drives the session).
    async fn write(&mut self, update: Update) -> bool {
        let Some(fence) = self.fence else { return false };
        let applying = self.applying.take();
        let (jid, lid, phone) = self.identity_fields();
        let push_name = self.identity.as_ref().and_then(|i| i.push_name.clone());
        // A session that stopped or failed names no gateway in the same write that says so: the
        // lease goes right after, and no reader may see a halted session still held.
        let halted = matches!(self.status, SessionStatus::Stopped | SessionStatus::Failed);
        let mut update = update
            .set("_applied", applying.unwrap_or(self.applied))
            .set("_process", self.daemon.process.as_str())
            .set("gatewayId", (!halted).then_some(self.daemon.gateway_id.as_str()))
            .set("waJid", jid)
            .set("waLid", lid)
            .set("phoneNumber", phone)
            .set("pushName", push_name);
        update.retention = self.daemon.config.retention();
        update.fence = fence;
        let daemon = self.daemon.clone();
        // Past a lease period without renewals, another daemon may have taken the session.
        let (daemon, org, id, update) = (&*daemon, self.org.as_str(), self.id.as_str(), &update);
        let written = persist("write the session's state", || daemon.leases_lapsed(), move || store::update(&daemon.redis, org, id, update.clone()));
        match written.await {
            Some(Written::Row(_)) => {
                self.applied = applying.unwrap_or(self.applied);
                true
            }
            Some(Written::Gone) => {
                tracing::debug!(session = %self.id, "the row is gone; a delete command will follow");
                self.let_go().await;
                false
            }
            Some(Written::Fenced) => {
                tracing::warn!(session = %self.id, "the row took a newer lease; letting go");
                self.let_go().await;
                false
            }
            None => {
                // Renewals failed for a lease period: let go, resumed once they succeed.
                self.daemon.suspend();
                self.let_go().await;
                false
            }
        }
    }

    /// Ends the connection on purpose (stop, failure): the session rests in `status` until a
    /// command starts it again.
    async fn halt(&mut self, status: SessionStatus, reason: &str) {
        self.drop_client().await;
        self.retry_at = None;
        let update = self.status_change(status, Some(reason));
        self.write(update).await;
    }

    /// The daemon stops: not working any more, and resumed when a daemon for this gateway
    /// starts again within the lease period, which it keeps until then.
    async fn pause_for_shutdown(&mut self) {
        let was_active = self.is_active();
        self.drop_client().await;
        self.retry_at = None;
        if was_active {
            let update = self.status_change(SessionStatus::Starting, Some("gateway_shutdown"));
            self.write(update).await;
        }
    }

    /// WhatsApp banned the number for a while. When it said for how long, the session waits that
    /// long, its outbox paused, and connects again (the reason, with when the ban lifts, on the
    /// row and in `session.status`); else it fails with the reason.
    async fn banned(&mut self, reason: &str, lifts_in: Option<Duration>) {
        let Some(lifts_in) = lifts_in else { return self.halt(SessionStatus::Failed, &format!("{BAN_REASON}{reason}")).await };
        self.drop_client().await;
        self.retry_at = Some(Instant::now() + lifts_in);
        let lifts_at = now_millis() + lifts_in.as_millis() as i64;
        tracing::warn!(session = %self.id, ?lifts_in, "temporarily banned by WhatsApp: {reason}");
        let reason = format!("{BAN_REASON}{reason}{BAN_LIFTS_AT}{lifts_at}");
        let (redis, key, ttl) = (&self.daemon.redis, keys::session_ban(&self.org, &self.id), lifts_in.as_millis().max(1) as i64);
        let keep = || redis.execute("SET", shared::args![key.as_str(), reason.as_str(), "PX", ttl]);
        persist("keep a temporary ban", || self.daemon.is_stopping(), keep).await;
        let update = self.status_change(SessionStatus::Starting, Some(&reason));
        self.write(update).await;
    }

    /// The connection is gone. After a pairing WhatsApp restarts the stream on purpose: the
    /// client logs in again at once, and nothing is counted or shown. Otherwise the session is
    /// `starting` (the reason and the next attempt's time on the row) and the client connects
    /// again after the backoff, however long WhatsApp stays out of reach: only what no reconnect
    /// fixes ends a session. A connection that dropped soon after it came up does not reset the
    /// backoff, so a flapping number backs off instead of hammering WhatsApp.
    async fn connection_lost(&mut self, reason: String, cause: Cause) {
        let stable = self.connected_at.is_some_and(|at| at.elapsed() >= self.daemon.config.stable_connection());
        self.abandon_code_requests("not_connected", "the connection to WhatsApp was lost before it issued a code; retry shortly");
        self.connection_ended().await;
        if cause == Cause::Restart && self.client.is_some() {
            tracing::info!(session = %self.id, "WhatsApp restarts the stream after the pairing; logging in again");
            self.retry_at = Some(Instant::now());
            return;
        }
        match (stable, self.penalty) {
            (true, true) => self.penalty = false,
            (true, false) => self.attempts = 0,
            _ => {}
        }
        if cause == Cause::RateLimited {
            self.attempts += RATE_LIMIT_PENALTY;
            self.penalty = true;
        }
        let delay = self.daemon.config.reconnect_delay(self.attempts);
        self.attempts += 1;
        tracing::info!(session = %self.id, attempt = self.attempts, ?delay, "reconnecting: {reason}");
        crate::metrics::reconnect();
        self.retry_at = Some(Instant::now() + delay);
        let next = now_millis() + delay.as_millis() as i64;
        let update = self.status_change(SessionStatus::Starting, Some(&format!("{RECONNECTING}{reason}{NEXT_ATTEMPT_AT}{next}")));
        self.write(update).await;
    }

    /// The QR codes ran out with no phone code outstanding (or it expired unused): a new client
    /// shows new codes, for `pairing_rounds` clients, then the session stops waiting for a scan.
    async fn qr_exhausted(&mut self) {
        self.drop_client().await;
        self.qr_rounds += 1;
        if self.qr_rounds >= self.daemon.config.pairing_rounds {
            self.halt(SessionStatus::Stopped, "qr_codes_exhausted").await;
        } else {
            self.connect().await;
        }
    }

    /// Shows the number online or offline as the session asks, off the task: WhatsApp clients
    /// announce themselves online at every login and when their profile name arrives.
    fn assert_presence(&self) {
        let (Some(client), online, id) = (self.client.clone(), self.online, self.id.clone()) else { return };
        tokio::spawn(async move {
            for pause in [Duration::ZERO, PRESENCE_AGAIN_AFTER] {
                tokio::time::sleep(pause).await;
                match tokio::time::timeout(SOCKET_DEADLINE, client.set_presence(online)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return tracing::info!(session = %id, online, "cannot set the presence: {e}"),
                    Err(_) => return tracing::info!(session = %id, online, "setting the presence took too long"),
                }
            }
        });
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
            BackendEvent::QrExhausted { code_outstanding: false } => self.qr_exhausted().await,
            BackendEvent::QrExhausted { code_outstanding: true } => {
                // The phone code may still be typed: the client stays up for it, showing no QR.
                let issued = self.code_issued_at.unwrap_or_else(Instant::now);
                self.code_deadline = Some(issued + PAIRING_CODE_LIFETIME);
                let update = self.status_change(SessionStatus::ScanQrCode, Some("waiting_for_pairing_code"));
                self.write(update.qr(QrChange::Clear)).await;
            }
            BackendEvent::PairingFailed { reason, retry_after } => {
                // The code shown no longer links anything: a new one must be asked for.
                self.code_issued_at = None;
                let retry_after_ms = retry_after.map(|d| d.as_millis() as u64);
                let announce = self.event(EventType::AuthPairingFailed, serde_json::json!({ "reason": reason, "retryAfterMs": retry_after_ms }));
                self.write(Update::default().event(announce)).await;
                // A client kept up only for that code has nothing left to wait for.
                if self.code_deadline.is_some() {
                    self.qr_exhausted().await;
                }
            }
            BackendEvent::Paired(identity) => {
                let announce = self.event(EventType::AuthPaired, serde_json::json!({
                    "waJid": identity.jid, "waLid": identity.lid, "phoneNumber": identity.phone, "pushName": identity.push_name,
                }));
                self.identity = Some(identity);
                self.code_deadline = None;
                self.write(Update::default().event(announce).qr(QrChange::Clear)).await;
            }
            BackendEvent::Connected(identity) => {
                self.connected_at = Some(Instant::now());
                self.qr_rounds = 0;
                self.identity = Some(identity);
                self.code_deadline = None;
                let update = self.status_change(SessionStatus::Working, None).set("lastConnectedAt", now_millis());
                if self.write(update).await {
                    self.assert_presence();
                    self.start_sender();
                }
            }
            BackendEvent::ProfileName(name) => {
                if let Some(identity) = self.identity.as_mut() {
                    identity.push_name = Some(name);
                }
                self.assert_presence();
                self.write(Update::default()).await;
            }
            BackendEvent::Disconnected { reason, cause } => self.connection_lost(reason, cause).await,
            BackendEvent::Refused { reason } => self.halt(SessionStatus::Failed, &format!("refused: {reason}")).await,
            BackendEvent::LoggedOut { reason } => self.unpaired(&format!("logged_out: {reason}"), SessionStatus::Failed, true).await,
            BackendEvent::StreamReplaced => {
                self.halt(SessionStatus::Failed, "stream_replaced: another client connected with this session's credentials").await;
            }
            BackendEvent::TemporaryBan { reason, lifts_in } => self.banned(&reason, lifts_in).await,
            // Routed past the supervisor, to the sender and to workers of their own (see `connect`).
            BackendEvent::ServerAck { .. } | BackendEvent::Receipt { .. } | BackendEvent::Undeliverable { .. } | BackendEvent::Contacts(_) => {}
        }
    }

    /// Runs the backfill job this command names on the live client, or fails it when the
    /// session is not connected here.
    async fn backfill(&mut self, command: &Command) {
        let Some(job) = self.running_job(command).await else { return };
        match &self.client {
            Some(client) if self.status == SessionStatus::Working && self.backfill.as_ref().is_none_or(|j| j.is_finished()) => {
                self.backfill = Some(tokio::spawn(backfill::run(self.daemon.clone(), client.clone(), job)));
            }
            _ => backfill::finish(&self.daemon, job, Err("the session is not connected".to_owned())).await,
        }
    }

    /// A backfill this gateway was running when its daemon died and came back (so its heartbeat
    /// never lapsed) died with the old process: it is failed, not left `running`.
    async fn settle_orphaned_backfill(&self, command: &Command) {
        let Ok(Some(job)) = shared::backfill::current(&self.daemon.redis, &self.org, &self.id).await else { return };
        let ours = job.gateway_id.as_deref() == Some(self.daemon.gateway_id.as_str());
        if job.status == JobStatus::Running && ours && job.id != command.id {
            backfill::finish(&self.daemon, job, Err("the gateway restarted during the backfill".to_owned())).await;
        }
    }

    /// Fails the job a skipped backfill command started, so it does not stay `running`.
    async fn settle_backfill(&self, command: &Command, reason: &str) {
        if let Some(job) = self.running_job(command).await {
            backfill::finish(&self.daemon, job, Err(reason.to_owned())).await;
        }
    }

    /// The job the command names, while it is the session's current one and still running.
    async fn running_job(&self, command: &Command) -> Option<shared::backfill::BackfillJob> {
        match shared::backfill::current(&self.daemon.redis, &self.org, &self.id).await {
            Ok(Some(job)) if job.id == command.id && job.status == JobStatus::Running => Some(job),
            _ => None,
        }
    }

    /// `:logout`, whatever the session's state: unlink the device on WhatsApp's side (through
    /// the live socket, or by connecting with the stored device just for that), wipe the store.
    /// When WhatsApp cannot be reached the session is unpaired all the same, and the unlink is
    /// retried (see `unlinks`).
    async fn logout(&mut self) {
        let live = self.client.clone().filter(|_| self.status == SessionStatus::Working);
        let identity = self.identity.clone();
        let identity_ref = identity.as_ref().map(|i| (i.jid.as_str(), i.phone.as_deref()));
        let unlinked = match (live, &identity) {
            (Some(client), _) => {
                let sent = client.logout().await;
                self.drop_client().await;
                unlinks::settle(&self.daemon, &self.org, &self.id, identity_ref, sent).await
            }
            (None, None) => {
                self.drop_client().await;
                unlinks::settle(&self.daemon, &self.org, &self.id, None, Ok(())).await
            }
            (None, Some(_)) => {
                self.drop_client().await;
                unlinks::discard(&self.daemon, &self.org, &self.id, identity_ref).await
            }
        };
        self.unpaired("logout_requested", SessionStatus::Stopped, unlinked).await;
    }

    /// The pairing is gone (logout, or unlinked from the phone): wipe what is stored, clear the
    /// identity, and announce it, saying whether the device is unlinked on WhatsApp's side yet.
    async fn unpaired(&mut self, reason: &str, status: SessionStatus, unlinked: bool) {
        self.drop_client().await;
        self.workers.drain(..).for_each(|worker| worker.abort());
        self.retry_at = None;
        // A ban was the number's: the next number paired here starts free of it.
        let (redis, ban) = (&self.daemon.redis, keys::session_ban(&self.org, &self.id));
        persist("forget a temporary ban", || self.daemon.is_stopping(), || redis.execute("DEL", shared::args![ban.as_str()])).await;
        if let Err(e) = self.daemon.config.remove_session_dir(&self.id) {
            tracing::warn!(session = %self.id, "cannot remove the session's store: {e}");
        }
        let (jid, lid, phone) = self.identity_fields();
        let announce = self.event(EventType::SessionLoggedOut, serde_json::json!({
            "reason": reason, "waJid": jid, "waLid": lid, "phoneNumber": phone, "unlinked": unlinked,
        }));
        self.identity = None;
        // The number's contacts and groups go with it.
        if let Err(e) = directory::clear(&self.daemon.redis, &self.org, &self.id).await {
            tracing::warn!(session = %self.id, "cannot clear the session's contacts and groups: {e:?}");
        }
        let update = self.status_change(status, Some(reason)).event(announce);
        self.write(update).await;
    }

    async fn request_pairing_code(&mut self, command: Command, reply: Reply) -> Flow {
        if self.identity.is_some() {
            let _ = reply.send(Some(CommandResult::failed("already_paired", "the session is already paired")));
            return Flow::Continue;
        }
        if !self.is_active() {
            self.begin().await;
        }
        let (Some(client), Some(phone)) = (self.client.clone(), command.phone.clone()) else {
            let _ = reply.send(Some(CommandResult::failed("not_connected", "no connection to WhatsApp right now; retry shortly")));
            return Flow::Continue;
        };
        // A session just started has no socket yet, and WhatsApp takes a code request only on
        // one: wait for it, as the library's own pairing by code does.
        let id = command.id.clone();
        self.code_requests.insert(id.clone(), (command, reply));
        self.pairing_codes.spawn(async move {
            let code = async {
                client.wait_for_socket(SOCKET_DEADLINE).await.map_err(|e| format!("no connection to WhatsApp: {e}"))?;
                match tokio::time::timeout(PAIRING_CODE_DEADLINE, client.pair_with_code(&phone)).await {
                    Ok(code) => code,
                    Err(_) => Err("WhatsApp did not answer in time".to_owned()),
                }
            };
            (id, code.await)
        });
        Flow::Continue
    }

    /// Answers the phone-code requests still waiting: their code can no longer come (`kind`
    /// says why: `interrupted`, a conflict with what the session was told since; or
    /// `not_connected`, an outage to retry).
    fn abandon_code_requests(&mut self, kind: &str, message: &str) {
        self.pairing_codes.abort_all();
        for (_, (_, reply)) in self.code_requests.drain() {
            let _ = reply.send(Some(CommandResult::failed(kind, message)));
        }
    }

    async fn on_pairing_code(&mut self, (id, code): PairingCodeOutcome) {
        let Some((command, reply)) = self.code_requests.remove(&id) else { return };
        let result = match code {
            Ok(raw) => {
                self.code_issued_at = Some(Instant::now());
                // A client kept up for a phone code waits for this one now.
                if self.code_deadline.is_some() {
                    self.code_deadline = Some(Instant::now() + PAIRING_CODE_LIFETIME);
                }
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

/// A command the lease holder elsewhere takes over (`None`: it answers the waiting function),
/// one whose session is gone, or one left pending because the daemon stops.
enum Handled {
    Elsewhere(Option<CommandResult>),
    Gone,
    Abandoned,
}
