//! The Session row: one attached (or to-be-attached) WhatsApp number, exactly as the API shows it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Stopped,
    Starting,
    ScanQrCode,
    Working,
    Failed,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Stopped => "stopped",
            SessionStatus::Starting => "starting",
            SessionStatus::ScanQrCode => "scan_qr_code",
            SessionStatus::Working => "working",
            SessionStatus::Failed => "failed",
        }
    }

    /// A daemon runs a client for the session in these states, and resumes it after a restart.
    pub fn is_running(self) -> bool {
        matches!(self, SessionStatus::Starting | SessionStatus::ScanQrCode | SessionStatus::Working)
    }
}

/// Field names and order follow the API reference; unknown values are `null`, never omitted.
/// `statusReason` is an added field: why the session is in its status (a `failed` session says
/// what failed). `pushName`, the number's WhatsApp display name, is kept on the stored row and
/// shown by `/me` with the rest of the identity, not in every listed row.
///
/// The stored row also carries fields the API never shows ([`Control`]); deserializing a
/// `Session` drops them, and the row scripts patch the stored JSON rather than replace it, so
/// they survive every write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: String,
    pub organization_id: String,
    pub label: Option<String>,
    pub status: SessionStatus,
    pub gateway_id: Option<String>,
    pub phone_number: Option<String>,
    pub wa_jid: Option<String>,
    pub wa_lid: Option<String>,
    pub auto_read: bool,
    pub presence_typing: bool,
    /// Shown online to contacts while connected. Off by default: WhatsApp stops notifying the
    /// phone while one of its devices is online, so the owner would miss messages.
    #[serde(default)]
    pub always_online: bool,
    pub rate_per_min: u32,
    pub rate_per_hour: u32,
    pub is_admin_session: bool,
    pub created_by_user_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_connected_at: Option<i64>,
    #[serde(default)]
    pub status_reason: Option<String>,
    #[serde(default, skip_serializing)]
    pub push_name: Option<String>,
    /// The daemon process that last wrote the row (its heartbeat's value): a row written by a
    /// process that is no longer the gateway's live one says nothing true about now.
    #[serde(rename = "_process", default, skip_serializing)]
    pub written_by: Option<String>,
}

/// What the scripts keep on a stored row beside the API's fields: `_fence`, the fencing token of
/// the latest lease acquisition (the row refuses a daemon's write that carries another one);
/// `_seq`, the number given to the session's latest queued command; and, read here, `_applied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct Control {
    /// The number of the latest command a daemon carried out.
    #[serde(rename = "_applied", default)]
    pub applied: u64,
}

impl Session {
    /// Paired means a WhatsApp number is attached; pairing endpoints refuse paired sessions.
    pub fn is_paired(&self) -> bool {
        self.wa_jid.is_some()
    }
}

/// What a caller may choose when creating a session, already validated (see [`crate::validate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSession {
    pub label: Option<String>,
    pub start: bool,
    pub auto_read: bool,
    pub presence_typing: bool,
    pub always_online: bool,
    pub rate_per_min: u32,
    pub rate_per_hour: u32,
    pub is_admin_session: bool,
}

impl NewSession {
    /// The row, `stopped`. Created with `start`, it is stored `starting` in the same step that
    /// queues the start (see `lifecycle::create`).
    pub fn into_session(self, organization_id: &str, created_by: Option<String>, now: i64) -> Session {
        Session {
            id: ulid::Ulid::new().to_string(),
            organization_id: organization_id.to_owned(),
            label: self.label,
            status: SessionStatus::Stopped,
            gateway_id: None,
            phone_number: None,
            wa_jid: None,
            wa_lid: None,
            auto_read: self.auto_read,
            presence_typing: self.presence_typing,
            always_online: self.always_online,
            rate_per_min: self.rate_per_min,
            rate_per_hour: self.rate_per_hour,
            is_admin_session: self.is_admin_session,
            created_by_user_id: created_by,
            created_at: now,
            updated_at: now,
            last_connected_at: None,
            status_reason: None,
            push_name: None,
            written_by: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_reference_field_with_nulls() {
        let new = NewSession {
            label: None,
            start: true,
            auto_read: false,
            presence_typing: true,
            always_online: false,
            rate_per_min: 20,
            rate_per_hour: 600,
            is_admin_session: false,
        };
        let json = serde_json::to_value(new.into_session("acme", None, 1)).unwrap();
        let mut fields: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "alwaysOnline", "autoRead", "createdAt", "createdByUserId", "gatewayId", "id", "isAdminSession",
                "label", "lastConnectedAt", "organizationId", "phoneNumber", "presenceTyping",
                "ratePerHour", "ratePerMin", "status", "statusReason", "updatedAt", "waJid", "waLid"
            ]
        );
        assert_eq!(json["status"], "stopped");
        assert!(json["waJid"].is_null());
        assert_eq!(json["id"].as_str().unwrap().len(), 26);
    }
}
