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
    #[serde(rename = "session.status")]
    SessionStatus,
    #[serde(rename = "session.logged_out")]
    SessionLoggedOut,
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
