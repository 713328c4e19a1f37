//! Messages the session receives: stored in Redis (once each) and announced as
//! `message.received` or `message.reaction` before the client lets WhatsApp's server know they
//! arrived, so a daemon that dies mid-batch loses none: WhatsApp delivers them again.

use crate::backend::Inbox;
use crate::daemon::Daemon;
use async_trait::async_trait;
use shared::inbox::{self, Incoming, Stored};
use std::sync::Arc;
use std::time::Duration;

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
        let (mut pause, mut attempt) = (Duration::from_millis(100), 1);
        loop {
            match inbox::store(redis, &self.org, &self.session_id, &batch, config.retention(), config.message_retention_ms()).await {
                Ok(stored) => {
                    tracing::debug!(session = %self.session_id, received = batch.len(), new = stored.new.len(), "stored received messages");
                    return Ok(stored);
                }
                Err(e) if attempt >= ATTEMPTS => return Err(format!("cannot store received messages: {e}")),
                Err(e) => tracing::warn!(session = %self.session_id, "cannot store received messages, retrying in {pause:?}: {e}"),
            }
            tokio::time::sleep(pause).await;
            (pause, attempt) = (pause * 2, attempt + 1);
        }
    }
}

/// The inbox of a client that only unlinks its device: nothing it receives is kept.
pub struct Refuse;

#[async_trait]
impl Inbox for Refuse {
    async fn store(&self, _batch: Vec<Incoming>) -> Result<Stored, String> {
        Err("the device is being unlinked; received messages are not kept".to_owned())
    }
}
