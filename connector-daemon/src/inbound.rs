//! Messages the session receives: stored in Redis (once each) and announced as
//! `message.received` or `message.reaction` before the client lets WhatsApp's server know they
//! arrived, so a daemon that dies mid-batch loses none: WhatsApp delivers them again. Once the
//! session's read receipts for them went out (`autoRead`), they are `read`.

use crate::backend::Inbox;
use crate::daemon::{Daemon, persist};
use crate::receipts;
use async_trait::async_trait;
use shared::inbox::{self, Incoming, Stored};
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
    async fn store(&self, batch: Vec<Incoming>) -> Result<Stored, String> {
        let (config, redis) = (&self.daemon.config, &self.daemon.redis);
        let mut failures = 0;
        let give_up = || {
            failures += 1;
            failures >= ATTEMPTS
        };
        let store = || inbox::store(redis, &self.org, &self.session_id, &batch, config.retention(), config.message_retention_ms());
        let stored = persist("store received messages", give_up, store).await.ok_or("cannot store received messages; WhatsApp keeps them")?;
        tracing::debug!(session = %self.session_id, received = batch.len(), new = stored.new.len(), "stored received messages");
        Ok(stored)
    }

    async fn read(&self, chat: &str, sender: &str, wa_ids: Vec<String>) {
        receipts::read_received(&self.daemon, &self.org, &self.session_id, chat, sender, &wa_ids).await;
    }
}

/// The inbox of a client that only unlinks its device: nothing it receives is kept.
pub struct Refuse;

#[async_trait]
impl Inbox for Refuse {
    async fn store(&self, _batch: Vec<Incoming>) -> Result<Stored, String> {
        Err("the device is being unlinked; received messages are not kept".to_owned())
    }

    async fn read(&self, _chat: &str, _sender: &str, _wa_ids: Vec<String>) {}
}
