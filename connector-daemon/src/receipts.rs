//! Receipts for messages the session sent: the recipient's phone got one (`delivered`), opened
//! it (`read`) or played a voice or video note (`played`). Each moves the message forward and
//! is announced as `message.status`; a repeated or late receipt changes nothing, since statuses
//! only move forward. Receipts for messages the API did not send (sent from the phone) have no
//! message of ours and are ignored. The session's own read receipts for what it received move
//! those messages from `received` to `read` the same way.
//!
//! A WhatsApp id is chosen by whoever sends the message, so it names a message only together
//! with its direction: a receipt moves only an outbound message, and a received message is found
//! by the record it was stored under (chat, sender and id), never by its id alone.

use crate::daemon::{Daemon, persist};
use shared::message::{Direction, MessageStatus};
use shared::outbox::{self, Step};
use shared::{ApiError, keys};

pub async fn apply(daemon: &Daemon, org: &str, session_id: &str, wa_ids: &[String], status: MessageStatus) {
    for wa_id in wa_ids {
        let step = move || async move {
            let message_id = outbox::by_wa_id(&daemon.redis, org, session_id, wa_id).await?;
            advance(daemon, org, session_id, message_id, wa_id, Direction::Outbound, status).await
        };
        persist("record a receipt", || daemon.is_stopping(), step).await;
    }
}

/// The recipient's device cannot take these direct messages: each one not delivered yet fails
/// as `undeliverable` (a delivery from another of their devices overturns it).
pub async fn undeliverable(daemon: &Daemon, org: &str, session_id: &str, wa_ids: &[String]) {
    for wa_id in wa_ids {
        let step = move || async move {
            let Some(message_id) = outbox::by_wa_id(&daemon.redis, org, session_id, wa_id).await? else { return Ok(()) };
            let Some((content, _)) = outbox::content(&daemon.redis, org, &message_id).await? else { return Ok(()) };
            // In a group one member's device says nothing of the others.
            if content.direction != Direction::Outbound || content.chat.ends_with("@g.us") {
                return Ok(());
            }
            outbox::undeliverable(&daemon.redis, org, session_id, &content, wa_id, daemon.config.retention()).await.map(drop)
        };
        persist("record an undeliverable message", || daemon.is_stopping(), step).await;
    }
}

/// The session's read receipts for these received messages (of `chat`, from `sender`) went out.
pub async fn read_received(daemon: &Daemon, org: &str, session_id: &str, chat: &str, sender: &str, wa_ids: &[String]) {
    for wa_id in wa_ids {
        let step = move || async move {
            let record = keys::session_inbound(org, session_id, chat, sender, wa_id);
            let message_id = shared::redis::get_string(&daemon.redis, &record).await?;
            advance(daemon, org, session_id, message_id, wa_id, Direction::Inbound, MessageStatus::Read).await
        };
        persist("record a read receipt", || daemon.is_stopping(), step).await;
    }
}

/// Moves our message `message_id` (if any, and only if it goes the `direction` expected) to `status`.
async fn advance(
    daemon: &Daemon,
    org: &str,
    session_id: &str,
    message_id: Option<String>,
    wa_id: &str,
    direction: Direction,
    status: MessageStatus,
) -> Result<(), ApiError> {
    let Some(message_id) = message_id else { return Ok(()) };
    let Some((content, _)) = outbox::content(&daemon.redis, org, &message_id).await? else { return Ok(()) };
    if content.direction != direction {
        return Ok(());
    }
    let step = Step {
        org,
        session_id,
        message_id: &message_id,
        chat: &content.chat,
        wa_message_id: Some(wa_id),
        status,
        error: None,
        lease: None,
        unattended: false,
        retention: daemon.config.retention(),
    };
    outbox::advance(&daemon.redis, &step).await.map(drop)
}
