//! Commands from the functions to the connector daemon, carried as Redis Stream entries (one
//! field, `command`, holding the JSON below).
//!
//! A command names its session and organization so the daemon never has to trust a stream
//! position; `id` is a ULID so a daemon can tell a redelivered command from a new one. `seq` is
//! the session's command number, assigned by the script that queues the command (see
//! [`crate::store`]) together with the intent it writes: a supervisor applies a command only
//! when its number is above the last one applied to the session, so a command that reaches a
//! daemon late (moved during an adoption, forwarded, redelivered) never undoes a newer one.

use serde::{Deserialize, Serialize};

/// The stream entry's one field.
pub const ENTRY_FIELD: &str = "command";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Connect; begin pairing if the session is unpaired.
    Start,
    /// Disconnect, keeping the pairing.
    Stop,
    /// Reconnect, keeping the pairing.
    Restart,
    /// Unlink the device from WhatsApp and wipe its store; the row stays.
    Logout,
    /// The row is gone: disconnect and remove every trace of the session.
    Delete,
    /// Connect if needed and ask WhatsApp for a phone pairing code for `phone`.
    PairPhone,
    /// Run the backfill job whose id is this command's id.
    Backfill,
    /// The gateway that ran the session died: run it again if its row says it runs. Queued by
    /// the daemon that adopts the dead gateway's work, outside the session's order (`seq` 0).
    Resume,
    /// The session's outbox has a new message: wakes the sender of the gateway running the
    /// session. Outside the session's order (`seq` 0); the outbox itself is the durable queue.
    Send,
    /// Fetch the media file of `messageId` from WhatsApp into the cache, for a waiting
    /// `GET …/media`. Outside the session's order (`seq` 0); never stored as a result.
    FetchMedia,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Start => "start",
            CommandKind::Stop => "stop",
            CommandKind::Restart => "restart",
            CommandKind::Logout => "logout",
            CommandKind::Delete => "delete",
            CommandKind::PairPhone => "pair_phone",
            CommandKind::Backfill => "backfill",
            CommandKind::Resume => "resume",
            CommandKind::Send => "send",
            CommandKind::FetchMedia => "fetch_media",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: CommandKind,
    pub session_id: String,
    pub organization_id: String,
    /// When the API accepted it (Unix ms).
    pub issued_at: i64,
    /// The session's command number; 0 for a command outside the order ([`CommandKind::Resume`]).
    #[serde(default)]
    pub seq: u64,
    /// The phone number a `pair_phone` command pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The message whose file a `fetch_media` command fetches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

impl Command {
    pub fn new(kind: CommandKind, session_id: &str, organization_id: &str) -> Self {
        Command {
            id: ulid::Ulid::new().to_string(),
            kind,
            session_id: session_id.to_owned(),
            organization_id: organization_id.to_owned(),
            issued_at: crate::time::now_millis(),
            seq: 0,
            phone: None,
            message_id: None,
        }
    }

    pub fn pair_phone(session_id: &str, organization_id: &str, phone: &str) -> Self {
        Command { phone: Some(phone.to_owned()), ..Command::new(CommandKind::PairPhone, session_id, organization_id) }
    }

    /// The entry's `command` field.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads an entry's `command` field back; `None` for an entry this build does not know.
    pub fn from_json(json: &str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }

    /// Whether the supervisor orders this command among the session's others.
    pub fn is_ordered(&self) -> bool {
        self.seq > 0
    }
}

/// What the daemon answers to a command once it took effect (or could not), for the function
/// that queued it and waits. `code` carries a phone pairing code.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandResult {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandError>,
}

/// Why a command could not take effect, in terms a function can answer with.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandError {
    /// `already_paired`, `not_connected`, `superseded` or `backend`.
    pub kind: String,
    pub message: String,
}

impl CommandResult {
    pub fn done() -> Self {
        CommandResult { ok: true, code: None, error: None }
    }

    pub fn code(code: String) -> Self {
        CommandResult { ok: true, code: Some(code), error: None }
    }

    pub fn failed(kind: &str, message: impl Into<String>) -> Self {
        CommandResult { ok: false, code: None, error: Some(CommandError { kind: kind.to_owned(), message: message.into() }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_entry_field() {
        for cmd in [Command::new(CommandKind::Delete, "01J", "acme"), Command::pair_phone("01J", "acme", "628123456789")] {
            assert_eq!(Command::from_json(&cmd.to_json()), Some(cmd));
        }
        let json = Command::new(CommandKind::PairPhone, "01J", "acme").to_json();
        assert!(json.contains(r#""type":"pair_phone""#), "{json}");
    }

    #[test]
    fn reads_what_the_queueing_script_writes() {
        // Lua's cjson escapes slashes and writes the sequence it assigned.
        let json = r#"{"id":"01K","type":"start","sessionId":"01J","organizationId":"a\/b","issuedAt":1732252800000,"seq":7}"#;
        let cmd = Command::from_json(json).unwrap();
        assert_eq!((cmd.seq, cmd.organization_id.as_str(), cmd.kind), (7, "a/b", CommandKind::Start));
        assert_eq!(Command::from_json(r#"{"id":"x","type":"explode"}"#), None);
    }
}
