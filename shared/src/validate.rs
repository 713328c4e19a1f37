//! Input validation: every rejection is a 400 `validation_error` whose `details.field` names
//! what to fix. Bodies are checked field by field (not by serde's first error) so the message
//! speaks the API's field names and bounds.

use crate::ApiError;
use crate::session::NewSession;
use serde_json::{Map, Value};

pub const LABEL_MAX_CHARS: usize = 100;
pub const RATE_PER_MIN: (u32, u32, u32) = (1, 20, 1_000); // (min, default, max)
pub const RATE_PER_HOUR: (u32, u32, u32) = (1, 600, 60_000);

/// Parses a request body that must be one JSON object.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(crate::ErrorCode::ValidationError, format!("body is not valid JSON: {e}"))
            .with_detail("field", "body")
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid_field("body", "must be a JSON object")),
    }
}

/// A query string's parameters, in order, refusing names the endpoint does not define (a typo
/// must not silently widen a filter or reset a page).
pub fn query_params(query: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(name, value)| {
            if known.contains(&&*name) {
                Ok((name.into_owned(), value.into_owned()))
            } else {
                Err(ApiError::invalid_field(&name, "unknown query parameter").with_detail("allowed", known.to_vec()))
            }
        })
        .collect()
}

/// A page size from a query parameter: 1 to `max`, `default` when absent.
pub fn page_limit(value: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::invalid_field("limit", format!("must be an integer from 1 to {max}"))),
    }
}

/// Refuses fields the endpoint does not define: a typo must not silently fall back to a default.
pub fn only_known_fields(body: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid_field(unknown, "unknown field")
            .with_detail("allowed", known.to_vec())),
        None => Ok(()),
    }
}

pub fn optional_bool(body: &Map<String, Value>, field: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid_field(field, "must be a boolean")),
    }
}

/// A JSON number that is a whole number, as JSON Schema's `integer` means it: `12006.0` is one.
pub fn whole_number(n: &serde_json::Number) -> Option<u64> {
    // `u64::MAX as f64` is 2^64, one past the largest u64: the range excludes it.
    n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && (0.0..u64::MAX as f64).contains(f)).map(|f| f as u64))
}

pub fn optional_u32_in(
    body: &Map<String, Value>,
    field: &str,
    (min, default, max): (u32, u32, u32),
) -> Result<u32, ApiError> {
    let out_of_range = || ApiError::invalid_field(field, format!("must be an integer from {min} to {max}"));
    match body.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => {
            let n = whole_number(n).ok_or_else(out_of_range)?;
            u32::try_from(n).ok().filter(|n| (min..=max).contains(n)).ok_or_else(out_of_range)
        }
        Some(_) => Err(ApiError::invalid_field(field, "must be an integer")),
    }
}

pub fn optional_label(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() || s.chars().count() > LABEL_MAX_CHARS {
                Err(ApiError::invalid_field(field, format!("must be 1 to {LABEL_MAX_CHARS} characters")))
            } else if s.chars().any(char::is_control) {
                Err(ApiError::invalid_field(field, "must not contain control characters"))
            } else {
                Ok(Some(s.to_owned()))
            }
        }
        Some(_) => Err(ApiError::invalid_field(field, "must be a string")),
    }
}

/// `POST /sessions`: every field optional, with the defaults the reference's examples show.
pub fn new_session(body: &[u8]) -> Result<NewSession, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { Map::new() } else { json_object(body)? };
    only_known_fields(
        &body,
        &["label", "start", "autoRead", "presenceTyping", "alwaysOnline", "ratePerMin", "ratePerHour", "isAdminSession"],
    )?;
    let session = NewSession {
        label: optional_label(&body, "label")?,
        start: optional_bool(&body, "start", false)?,
        auto_read: optional_bool(&body, "autoRead", false)?,
        presence_typing: optional_bool(&body, "presenceTyping", true)?,
        always_online: optional_bool(&body, "alwaysOnline", false)?,
        rate_per_min: optional_u32_in(&body, "ratePerMin", RATE_PER_MIN)?,
        rate_per_hour: optional_u32_in(&body, "ratePerHour", RATE_PER_HOUR)?,
        is_admin_session: optional_bool(&body, "isAdminSession", false)?,
    };
    // A minute's rate above the hour's is no contradiction: the hour's window binds first.
    Ok(session)
}

/// `POST /sessions/{session}/pairing-code`: `{"phone": "628123456789"}`, the number in
/// international form, digits only, without `+` (E.164 allows at most 15 digits).
pub fn pairing_phone(body: &[u8]) -> Result<String, ApiError> {
    let body = json_object(body)?;
    only_known_fields(&body, &["phone"])?;
    let malformed = || ApiError::invalid_field("phone", "must be the international number, 8 to 15 digits without '+', e.g. 628123456789");
    match body.get("phone") {
        None | Some(Value::Null) => Err(ApiError::invalid_field("phone", "is required")),
        Some(Value::String(phone)) => {
            let valid = (8..=15).contains(&phone.len()) && phone.bytes().all(|b| b.is_ascii_digit()) && !phone.starts_with('0');
            if valid { Ok(phone.clone()) } else { Err(malformed()) }
        }
        Some(_) => Err(ApiError::invalid_field("phone", "must be a string")),
    }
}

/// A session that already has a number attached cannot pair again: log it out first.
pub fn unpaired(session: &crate::session::Session) -> Result<(), ApiError> {
    if session.is_paired() { Err(already_paired()) } else { Ok(()) }
}

pub fn already_paired() -> ApiError {
    ApiError::new(crate::ErrorCode::ValidationError, "session is already paired; log it out first to pair again")
        .with_detail("field", "session")
        .with_detail("reason", "already_paired")
}

/// Ids that may appear inside Redis keys: ULIDs for sessions, slugs for organizations.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_whole_whatever_their_notation() {
        let number = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert_eq!(whole_number(&number("12006.0")), Some(12_006));
        assert_eq!(whole_number(&number("18446744073709551615")), Some(u64::MAX));
        for not in ["1.5", "-1", "-0.5", "18446744073709551616", "1e20"] {
            assert_eq!(whole_number(&number(not)), None, "{not}");
        }
    }

    fn field_of(body: &str) -> String {
        new_session(body.as_bytes()).unwrap_err().details["field"].as_str().unwrap().to_owned()
    }

    #[test]
    fn defaults_apply_to_an_empty_body() {
        let s = new_session(b"").unwrap();
        assert_eq!((s.start, s.presence_typing, s.rate_per_min, s.rate_per_hour), (false, true, 20, 600));
    }

    #[test]
    fn each_rejection_names_its_field() {
        assert_eq!(field_of("{"), "body");
        assert_eq!(field_of("[]"), "body");
        assert_eq!(field_of(r#"{"start":"yes"}"#), "start");
        assert_eq!(field_of(r#"{"labell":"x"}"#), "labell");
        assert_eq!(field_of(r#"{"ratePerMin":0}"#), "ratePerMin");
        assert_eq!(field_of(r#"{"ratePerMin":1.5}"#), "ratePerMin");
        assert_eq!(field_of(r#"{"ratePerHour":-1}"#), "ratePerHour");
        assert_eq!(field_of(r#"{"ratePerHour":99999999999}"#), "ratePerHour");
        assert_eq!(field_of(r#"{"label":""}"#), "label");
    }

    #[test]
    fn pairing_phone_is_digits_only_international() {
        assert_eq!(pairing_phone(br#"{"phone":"628123456789"}"#).unwrap(), "628123456789");
        for bad in [r#"{}"#, r#"{"phone":"+628123456789"}"#, r#"{"phone":"0812345678"}"#, r#"{"phone":"123"}"#, r#"{"phone":62812345678}"#, r#"{"phone":"6281234567890123"}"#] {
            assert_eq!(pairing_phone(bad.as_bytes()).unwrap_err().details["field"], "phone", "{bad}");
        }
        assert_eq!(pairing_phone(br#"{"phone":"628123456789","x":1}"#).unwrap_err().details["field"], "x");
    }

    #[test]
    fn safe_ids_keep_keys_well_formed() {
        assert!(is_safe_id("01J9ZX8K2QHV0M3T6R7P4N5W8C"));
        assert!(!is_safe_id("a}b"));
        assert!(!is_safe_id("a:b"));
        assert!(!is_safe_id(""));
    }
}
