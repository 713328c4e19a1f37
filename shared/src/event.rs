//! Events the daemon publishes: appended to the organization's durable log and announced on
//! pub/sub, in the one shape every consumer reads: `{id, type, sessionId, organizationId,
//! timestamp, data}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "auth.qr")]
    AuthQr,
    #[serde(rename = "auth.pairing_code")]
    AuthPairingCode,
    #[serde(rename = "auth.paired")]
    AuthPaired,
    /// The phone code given out no longer links anything (WhatsApp asked for a new one, or
    /// refused the request), or the phone's confirmation of a pairing failed: ask again.
    #[serde(rename = "auth.pairing_failed")]
    AuthPairingFailed,
    #[serde(rename = "session.status")]
    SessionStatus,
    #[serde(rename = "session.logged_out")]
    SessionLoggedOut,
    /// A device that a logout could not unlink at once (WhatsApp was unreachable) is unlinked now.
    #[serde(rename = "session.unlinked")]
    SessionUnlinked,
    #[serde(rename = "backfill.progress")]
    BackfillProgress,
    #[serde(rename = "backfill.completed")]
    BackfillCompleted,
    #[serde(rename = "backfill.failed")]
    BackfillFailed,
    /// A message moved a step: queued, sent (WhatsApp's server took it), delivered, read,
    /// played, or failed with its error.
    #[serde(rename = "message.status")]
    MessageStatus,
    /// A message arrived (the Message, `direction: inbound`).
    #[serde(rename = "message.received")]
    MessageReceived,
    /// A reaction arrived (the Message of type `reaction`; an empty emoji takes one back).
    #[serde(rename = "message.reaction")]
    MessageReaction,
    /// A message arrived that the session could not decrypt (the Message, of type
    /// `undecryptable`); WhatsApp asks the sender's phone for it again, and once it comes it is
    /// announced as `message.received`, with the same id.
    #[serde(rename = "message.undecryptable")]
    MessageUndecryptable,
    /// A contact edited a message they sent: `messageId` (ours, when the gateway has it),
    /// `waMessageId`, `chat`, `from`, `text` (the new text), `editedAt`.
    #[serde(rename = "message.edited")]
    MessageEdited,
    /// A message was deleted for everyone, by its author (or a group admin): `messageId`,
    /// `waMessageId`, `chat`, `by`, `revokedAt`.
    #[serde(rename = "message.revoked")]
    MessageRevoked,
}

impl EventType {
    pub const ALL: &[EventType] = &[
        EventType::AuthQr,
        EventType::AuthPairingCode,
        EventType::AuthPaired,
        EventType::AuthPairingFailed,
        EventType::SessionStatus,
        EventType::SessionLoggedOut,
        EventType::SessionUnlinked,
        EventType::BackfillProgress,
        EventType::BackfillCompleted,
        EventType::BackfillFailed,
        EventType::MessageStatus,
        EventType::MessageReceived,
        EventType::MessageReaction,
        EventType::MessageUndecryptable,
        EventType::MessageEdited,
        EventType::MessageRevoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AuthQr => "auth.qr",
            EventType::AuthPairingCode => "auth.pairing_code",
            EventType::AuthPaired => "auth.paired",
            EventType::AuthPairingFailed => "auth.pairing_failed",
            EventType::SessionStatus => "session.status",
            EventType::SessionLoggedOut => "session.logged_out",
            EventType::SessionUnlinked => "session.unlinked",
            EventType::BackfillProgress => "backfill.progress",
            EventType::BackfillCompleted => "backfill.completed",
            EventType::BackfillFailed => "backfill.failed",
            EventType::MessageStatus => "message.status",
            EventType::MessageReceived => "message.received",
            EventType::MessageReaction => "message.reaction",
            EventType::MessageUndecryptable => "message.undecryptable",
            EventType::MessageEdited => "message.edited",
            EventType::MessageRevoked => "message.revoked",
        }
    }
}

/// Which events a subscriber wants: some sessions (none named: all) and some types, each an
/// exact name or a family such as `auth.*` (none named: all).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    sessions: Vec<String>,
    types: Vec<String>,
}

impl EventFilter {
    pub fn session(&mut self, id: &str) -> Result<(), crate::ApiError> {
        if !crate::validate::is_safe_id(id) {
            return Err(crate::ApiError::invalid_field("session", "must be a session id"));
        }
        self.sessions.push(id.to_owned());
        Ok(())
    }

    /// Adds a comma list of types; each must name a type or a family that exists.
    pub fn types(&mut self, list: &str) -> Result<(), crate::ApiError> {
        for pattern in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !is_known_pattern(pattern) {
                return Err(unknown_pattern("types", pattern));
            }
            self.types.push(pattern.to_owned());
        }
        Ok(())
    }

    /// The sessions named (none: every session).
    pub fn sessions(&self) -> &[String] {
        &self.sessions
    }

    pub fn admits(&self, kind: &str, session_id: &str) -> bool {
        let session_ok = self.sessions.is_empty() || self.sessions.iter().any(|s| s == session_id);
        let type_ok = self.types.is_empty() || self.types.iter().any(|p| type_matches(p, kind));
        session_ok && type_ok
    }
}

/// Whether `pattern` names an event type or a family (`auth.*`) that exists.
pub fn is_known_pattern(pattern: &str) -> bool {
    let well_formed = pattern.strip_suffix('*').is_none_or(|family| family.ends_with('.'));
    well_formed && EventType::ALL.iter().any(|t| type_matches(pattern, t.as_str()))
}

/// The 400 for a `field` naming an unknown type or family, listing the types there are.
pub fn unknown_pattern(field: &str, pattern: &str) -> crate::ApiError {
    let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    crate::ApiError::invalid_field(field, format!("unknown event type or family {pattern:?}")).with_detail("allowed", known)
}

/// Whether `kind` is the type `pattern` names, or of the family it names (`auth.*`).
fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(family) => kind.starts_with(family),
        None => pattern == kind,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub session_id: String,
    pub organization_id: String,
    pub timestamp: i64,
    pub data: Value,
}

impl Event {
    pub fn new(kind: EventType, organization_id: &str, session_id: &str, data: Value) -> Event {
        Event {
            id: ulid::Ulid::new().to_string(),
            kind,
            session_id: session_id.to_owned(),
            organization_id: organization_id.to_owned(),
            timestamp: crate::time::now_millis(),
            data,
        }
    }
}

/// The event (JSON, of type `kind`) as a caller without `manage` may see it: the live QR or
/// pairing code of `auth.qr` and `auth.pairing_code` removed (`code: null`, `redacted: true`),
/// so a viewer cannot link their own phone to the organization's number. The event itself
/// still shows that pairing is under way.
pub fn redact_pairing_secret<'a>(kind: &str, json: &'a str) -> std::borrow::Cow<'a, str> {
    if kind != EventType::AuthQr.as_str() && kind != EventType::AuthPairingCode.as_str() {
        return std::borrow::Cow::Borrowed(json);
    }
    let Ok(mut event) = serde_json::from_str::<Value>(json) else { return std::borrow::Cow::Borrowed("{}") };
    if let Some(data) = event.get_mut("data").and_then(Value::as_object_mut) {
        data.insert("code".to_owned(), Value::Null);
        data.insert("redacted".to_owned(), Value::Bool(true));
    }
    std::borrow::Cow::Owned(event.to_string())
}

/// A `session.status` event's data: the new status, the identity as far as it is known (phone
/// number and LID both), and why, when the change has a reason.
pub fn status_data(
    status: crate::session::SessionStatus,
    phone_number: Option<&str>,
    wa_jid: Option<&str>,
    wa_lid: Option<&str>,
    reason: Option<&str>,
) -> Value {
    serde_json::json!({
        "status": status,
        "phoneNumber": phone_number,
        "waJid": wa_jid,
        "waLid": wa_lid,
        "reason": reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_match_their_serialization() {
        for kind in EventType::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn filters_by_session_and_by_type_or_family() {
        let mut filter = EventFilter::default();
        assert!(filter.admits("auth.qr", "s1"));
        filter.types("auth.*, session.status").unwrap();
        assert!(filter.admits("auth.qr", "s1") && filter.admits("auth.paired", "s1"));
        assert!(filter.admits("session.status", "s1"));
        assert!(!filter.admits("session.logged_out", "s1"));
        filter.session("s2").unwrap();
        assert!(!filter.admits("auth.qr", "s1") && filter.admits("auth.qr", "s2"));
    }

    #[test]
    fn unknown_types_and_families_are_refused() {
        let mut filter = EventFilter::default();
        for bad in ["auth.qrx", "nope.*", "auth*", "*", "auth.q*"] {
            let e = filter.types(bad).unwrap_err();
            assert_eq!(e.details["field"], "types", "{bad}");
        }
        assert!(filter.session("../x").is_err());
    }

    #[test]
    fn pairing_secrets_are_removed_for_viewers() {
        let qr = Event::new(EventType::AuthQr, "acme", "01J", serde_json::json!({"code": "2@secret", "expiresAt": 5}));
        let json = serde_json::to_string(&qr).unwrap();
        let seen: Value = serde_json::from_str(&redact_pairing_secret("auth.qr", &json)).unwrap();
        assert_eq!((&seen["data"]["code"], &seen["data"]["redacted"], &seen["data"]["expiresAt"]), (&Value::Null, &Value::Bool(true), &5.into()));
        assert!(!redact_pairing_secret("auth.pairing_code", r#"{"data":{"code":"ABCD-1234"}}"#).contains("ABCD"));
        assert_eq!(redact_pairing_secret("session.status", r#"{"data":{"code":"x"}}"#), r#"{"data":{"code":"x"}}"#);
    }

    #[test]
    fn serializes_in_the_published_shape() {
        let event = Event::new(EventType::AuthQr, "acme", "01J", serde_json::json!({"code": "x"}));
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "auth.qr");
        assert_eq!(json["sessionId"], "01J");
        assert_eq!(json["organizationId"], "acme");
        assert_eq!(json["data"]["code"], "x");
        assert_eq!(json["id"].as_str().unwrap().len(), 26);
    }
}
