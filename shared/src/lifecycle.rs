//! The function side of a command: record the intent on the row, route the command to the
//! daemon that runs the session, and read back what the daemon answered.
//!
//! Only intents that are true the moment they are written go on the row (`starting` once a
//! start is queued). Everything else, `stopped`, `working`, identity, is written by the daemon
//! when it has happened, so the API never reports a state the WhatsApp side is not in.

use crate::command::{Command, CommandKind, CommandResult};
use crate::event::{Event, EventType};
use crate::event_log::Retention;
use crate::redis::{Redis, first};
use crate::session::{Session, SessionStatus};
use crate::store;
use crate::{ApiError, args, keys};

/// The status a queued command puts the row in at once, and the statuses it does so from.
fn intent(kind: CommandKind) -> Option<(SessionStatus, &'static [SessionStatus])> {
    const IDLE: &[SessionStatus] = &[SessionStatus::Stopped, SessionStatus::Failed];
    match kind {
        CommandKind::Start | CommandKind::PairPhone => Some((SessionStatus::Starting, IDLE)),
        CommandKind::Restart => Some((SessionStatus::Starting, &[])),
        CommandKind::Stop | CommandKind::Logout | CommandKind::Delete | CommandKind::Backfill | CommandKind::Resume | CommandKind::Send | CommandKind::FetchMedia => None,
    }
}

/// Records the command's intent and queues it, in one step: to the stream of the gateway that
/// holds the session while that gateway is alive, otherwise to the placement stream any daemon
/// reads. Returns the row as the intent left it.
pub async fn send<R: Redis>(r: &R, session: &Session, command: &Command, log: Retention) -> Result<Session, ApiError> {
    let intent = intent(command.kind).map(|(status, from)| (status, from, announce(session, status)));
    store::enqueue(r, session, command, intent, log).await
}

/// Stores a new session within the organization's `quota`; with `start`, queues its start in
/// the same step, the row `starting` from the first moment. Returns the row as stored.
pub async fn create<R: Redis>(r: &R, mut session: Session, quota: u64, start: bool, log: Retention) -> Result<Session, ApiError> {
    if !start {
        store::create(r, &session, quota, None, log).await?;
        return Ok(session);
    }
    let command = Command::new(CommandKind::Start, &session.id, &session.organization_id);
    session.status = SessionStatus::Starting;
    let event = announce(&session, SessionStatus::Starting);
    store::create(r, &session, quota, Some((&command, &[event])), log).await?;
    Ok(session)
}

/// The `session.status` event a function's intent writes.
fn announce(session: &Session, status: SessionStatus) -> Event {
    let data = crate::event::status_data(status, session.phone_number.as_deref(), session.wa_jid.as_deref(), session.wa_lid.as_deref(), None);
    Event::new(EventType::SessionStatus, &session.organization_id, &session.id, data)
}

/// The daemon's answer to a command, once it has written one.
pub async fn result<R: Redis>(r: &R, org: &str, command_id: &str) -> Result<Option<CommandResult>, ApiError> {
    store::decode(first(r, "GET", args![keys::command_result(org, command_id)]).await?)
}
