//! Receipts for messages the session sent: the recipient's phone got one (`delivered`), opened
//! it (`read`) or played a voice or video note (`played`). Each moves the message forward and
//! is announced as `message.status`; a repeated or late receipt changes nothing, since statuses
//! only move forward. Receipts for messages the API did not send (sent from the phone) have no
//! message of ours and are ignored. The session's own read receipts for what it received move
//! those messages from `received` to `read` the same way.

use crate::daemon::{Daemon, persist};
use shared::message::MessageStatus;
use shared::outbox::{self, Step};

pub async fn apply(daemon: &Daemon, org: &str, session_id: &str, wa_ids: &[String], status: MessageStatus) {
    for wa_id in wa_ids {
        let step = move || async move {
            let Some(message_id) = outbox::by_wa_id(&daemon.redis, org, session_id, wa_id).await? else { return Ok::<(), shared::ApiError>(()) };
            let Some((content, _)) = outbox::content(&daemon.redis, org, &message_id).await? else { return Ok(()) };
            let step = Step {
                org,
                session_id,
                message_id: &message_id,
                chat: &content.chat,
                wa_message_id: Some(wa_id.as_str()),
                status,
                error: None,
                lease: None,
                retention: daemon.config.retention(),
            };
            outbox::advance(&daemon.redis, &step).await.map(drop)
        };
        persist("record a receipt", || daemon.is_stopping(), step).await;
    }
}
