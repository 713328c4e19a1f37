//! What a successful endpoint answers, independent of the host that carries it.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Json(u16, Value),
    NoContent,
}

impl Answer {
    pub fn ok(body: &impl Serialize) -> Answer {
        Answer::Json(200, serde_json::to_value(body).unwrap_or(Value::Null))
    }

    pub fn created(body: &impl Serialize) -> Answer {
        Answer::Json(201, serde_json::to_value(body).unwrap_or(Value::Null))
    }
}
