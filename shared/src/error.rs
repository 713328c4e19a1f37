//! The API's error envelope: `{"error": {"code", "message", "details"}}`, the only error shape a
//! client ever sees. Every failure path ends in an [`ApiError`], never a bare status or a panic.

use serde_json::{Map, Value, json};

/// The reference's error codes, with the HTTP status each one always travels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ValidationError,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    /// Past a limit on what a caller may hold or do; `details.retryAfter` (seconds) says when
    /// to try again, and travels as the `Retry-After` header too.
    RateLimited,
    Internal,
    NotImplemented,
    Unavailable,
    Timeout,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "validation_error",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            ErrorCode::ValidationError => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::NotImplemented => 501,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Map<String, Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), details: Map::new() }
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// A 400 that names the offending field, so a client can point at it.
    pub fn invalid_field(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        ApiError::new(ErrorCode::ValidationError, format!("{field}: {reason}"))
            .with_detail("field", field)
            .with_detail("reason", reason)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    pub fn session_not_found() -> Self {
        ApiError::new(ErrorCode::NotFound, "session not found")
    }

    pub fn route_not_found(path: &str) -> Self {
        ApiError::new(ErrorCode::NotFound, "no such route").with_detail("path", path)
    }

    pub fn method_not_allowed(method: &str, allowed: &[&str]) -> Self {
        ApiError::new(ErrorCode::MethodNotAllowed, format!("method {method} is not allowed here"))
            .with_detail("allowed", allowed.to_vec())
    }

    pub fn unavailable() -> Self {
        ApiError::new(ErrorCode::Unavailable, "the gateway's storage is unreachable; retry shortly")
    }

    /// 429: the caller is past `limit` for `scope`; it may try again after `retry_after_secs`.
    pub fn rate_limited(message: impl Into<String>, scope: &str, limit: u64, retry_after_secs: u64) -> Self {
        ApiError::new(ErrorCode::RateLimited, message)
            .with_detail("scope", scope)
            .with_detail("limit", limit)
            .with_detail("retryAfter", retry_after_secs.max(1))
    }

    /// The `Retry-After` header this error travels with, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.details.get("retryAfter").and_then(serde_json::Value::as_u64)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Internal, message)
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "error": {
                "code": self.code.as_str(),
                "message": self.message,
                "details": self.details,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_names_code_message_and_details() {
        let body = ApiError::invalid_field("ratePerMin", "must be at most 1000").to_json();
        assert_eq!(body["error"]["code"], "validation_error");
        assert_eq!(body["error"]["details"]["field"], "ratePerMin");
        assert_eq!(ApiError::unavailable().status(), 503);
    }
}
