//! Messages the session receives: stored in Redis (once each) and announced as
//! `message.received` or `message.reaction` before the client lets WhatsApp's server know they
//! arrived, so a daemon that dies mid-batch loses none: WhatsApp delivers them again. Once the
//! session's read receipts for them went out (`autoRead`), they are `read`.
//!
//! Contacts' status posts (`status@broadcast`) are no chat messages: they are neither stored
//! nor read (a read receipt would tell the contact the session viewed them).

use crate::backend::{Inbox, Kept};
use crate::daemon::{Daemon, persist};
use crate::receipts;
use async_trait::async_trait;
use shared::inbox::{self, Incoming};
use shared::message::{STATUS_BROADCAST, UNDECRYPTABLE};
use std::sync::Arc;

/// Tries to store a batch before giving it back unacknowledged (WhatsApp then delivers it again
/// later, at the next connection): a Redis restart is ridden out, a long outage is not waited on.
const ATTEMPTS: u32 = 5;

/// One session's inbox.
pub struct SessionInbox {
    pub daemon: Arc<Daemon>,
    pub org: String,
    pub session_id: String,
}

#[async_trait]
impl Inbox for SessionInbox {
    async fn store(&self, batch: Vec<Incoming>) -> Result<Kept, String> {
        let (config, redis) = (&self.daemon.config, &self.daemon.redis);
        let kept: Vec<Incoming> = batch.iter().filter(|i| i.content.chat != STATUS_BROADCAST).cloned().collect();
        if kept.is_empty() {
            return Ok(Kept::default());
        }
        let mut failures = 0;
        let give_up = || {
            failures += 1;
            failures >= ATTEMPTS
        };
        let store = || inbox::store(redis, &self.org, &self.session_id, &kept, config.retention(), config.message_retention_ms());
        let stored = persist("store received messages", give_up, store).await.ok_or("cannot store received messages; WhatsApp keeps them")?;
        tracing::debug!(session = %self.session_id, received = batch.len(), new = stored.new.len(), "stored received messages");
        let readable = |i: &Incoming| i.content.chat != STATUS_BROADCAST && i.change.is_none() && i.content.kind != UNDECRYPTABLE;
        let read = match stored.auto_read {
            true => batch.iter().enumerate().filter(|(_, i)| readable(i)).map(|(n, _)| n).collect(),
            false => Vec::new(),
        };
        Ok(Kept { read })
    }

    async fn read(&self, chat: &str, sender: &str, wa_ids: Vec<String>) {
        receipts::read_received(&self.daemon, &self.org, &self.session_id, chat, sender, &wa_ids).await;
    }
}

/// The inbox of a client that only unlinks its device: nothing it receives is kept.
pub struct Refuse;

#[async_trait]
impl Inbox for Refuse {
    async fn store(&self, _batch: Vec<Incoming>) -> Result<Kept, String> {
        Err("the device is being unlinked; received messages are not kept".to_owned())
    }

    async fn read(&self, _chat: &str, _sender: &str, _wa_ids: Vec<String>) {}
}
