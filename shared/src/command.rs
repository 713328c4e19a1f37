//! Commands from the functions to the connector daemon, carried as Redis Stream entries.
//!
//! A command names its session and organization so the daemon never has to trust a stream
//! position; `id` is a ULID so a daemon can tell a redelivered command from a new one.

use crate::redis::Arg;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => CommandKind::Start,
            "stop" => CommandKind::Stop,
            "restart" => CommandKind::Restart,
            "logout" => CommandKind::Logout,
            "delete" => CommandKind::Delete,
            "pair_phone" => CommandKind::PairPhone,
            "backfill" => CommandKind::Backfill,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: String,
    pub kind: CommandKind,
    pub session_id: String,
    pub organization_id: String,
    pub issued_at: i64,
    /// The phone number a `pair_phone` command pairs.
    pub phone: Option<String>,
}

impl Command {
    pub fn new(kind: CommandKind, session_id: &str, organization_id: &str) -> Self {
        Command {
            id: ulid::Ulid::new().to_string(),
            kind,
            session_id: session_id.to_owned(),
            organization_id: organization_id.to_owned(),
            issued_at: crate::time::now_millis(),
            phone: None,
        }
    }

    pub fn pair_phone(session_id: &str, organization_id: &str, phone: &str) -> Self {
        Command { phone: Some(phone.to_owned()), ..Command::new(CommandKind::PairPhone, session_id, organization_id) }
    }

    /// The entry's field/value pairs, in `XADD` argument order.
    pub fn to_fields(&self) -> Vec<Arg> {
        let mut fields = crate::args![
            "id", &self.id,
            "type", self.kind.as_str(),
            "sessionId", &self.session_id,
            "organizationId", &self.organization_id,
            "issuedAt", self.issued_at,
        ];
        if let Some(phone) = &self.phone {
            fields.extend(crate::args!["phone", phone]);
        }
        fields
    }

    /// Reads an entry's flattened field/value pairs back; `None` for an entry this build does not know.
    pub fn from_fields(pairs: &[(String, String)]) -> Option<Self> {
        let field = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Some(Command {
            id: field("id")?,
            kind: CommandKind::parse(&field("type")?)?,
            session_id: field("sessionId")?,
            organization_id: field("organizationId")?,
            issued_at: field("issuedAt")?.parse().ok()?,
            phone: field("phone"),
        })
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
    /// `already_paired`, `not_connected` or `backend`.
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
    fn round_trips_through_stream_fields() {
        let text = |a: &Arg| match a {
            Arg::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
            Arg::Int(i) => i.to_string(),
        };
        for cmd in [Command::new(CommandKind::Delete, "01J", "acme"), Command::pair_phone("01J", "acme", "628123456789")] {
            let fields = cmd.to_fields();
            let pairs: Vec<_> = fields.chunks(2).map(|p| (text(&p[0]), text(&p[1]))).collect();
            assert_eq!(Command::from_fields(&pairs), Some(cmd));
        }
    }
}
