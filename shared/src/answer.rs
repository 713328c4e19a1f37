//! What a successful endpoint answers, independent of the host that carries it.

use crate::ApiError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

/// A JSON body is serialized once, when the answer is made: straight from the endpoint's types
/// to bytes, without a `serde_json::Value` tree in between.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Json(u16, Vec<u8>),
    NoContent,
    /// A file, 200 with its content type, kept by private caches for `max_age_secs` (0: not
    /// at all, for what changes, such as a rotating QR code).
    File { content_type: String, body: Vec<u8>, max_age_secs: u32 },
    /// An HTML page of the gateway's own (the pairing page): its inline script and style may
    /// run, it may call back only its own origin, and its URL never leaves in a Referer.
    Page(&'static str),
}

impl Answer {
    pub fn ok(body: &impl Serialize) -> Answer {
        Answer::json(200, body)
    }

    pub fn created(body: &impl Serialize) -> Answer {
        Answer::json(201, body)
    }

    pub fn accepted(body: &impl Serialize) -> Answer {
        Answer::json(202, body)
    }

    fn json(status: u16, body: &impl Serialize) -> Answer {
        Answer::Json(status, serde_json::to_vec(body).unwrap_or_default())
    }
}

/// A list's cursor for a position in it (the last key of a page): opaque to clients.
pub fn cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position)
}

/// The position a cursor of [`cursor`] stands for; 400 for anything else.
pub fn position(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::invalid_field("cursor", "is not a cursor this endpoint returned"))
}

/// One page of a list endpoint, in the reference's shape for every list.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}
