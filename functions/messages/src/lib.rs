//! `/api/v1/sessions/{session}/messages[/{message}]` and `…/outbox`: sending a message through
//! a session, listing the session's messages, reading one back, cancelling one still queued,
//! the outbox's backlog, a message's media file; one module per endpoint.

mod cancel;
mod get;
mod list;
mod media;
mod outbox;
mod send;

use shared::answer::Answer;
use shared::route::{ApiPath, session_path};
use shared::spin::{accept, respond};
use shared::ApiError;
use spin_sdk::http::{IntoResponse, Method, Request};
use spin_sdk::http_service;

enum Endpoint {
    Send(String),
    List(String),
    Outbox(String),
    Get(String, String),
    Cancel(String, String),
    Media(String, String),
}

impl Endpoint {
    /// Routes before authenticating: an unknown path is 404 and a wrong method 405 for anyone.
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        match session_path(path) {
            Some(ApiPath::Resource(id, "messages")) => match *method {
                Method::POST => Ok(Endpoint::Send(id.to_owned())),
                Method::GET => Ok(Endpoint::List(id.to_owned())),
                _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET", "POST"])),
            },
            Some(ApiPath::Resource(id, "outbox")) => match *method {
                Method::GET => Ok(Endpoint::Outbox(id.to_owned())),
                _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET"])),
            },
            Some(ApiPath::Item(id, "messages", message)) => match *method {
                Method::GET => Ok(Endpoint::Get(id.to_owned(), message.to_owned())),
                Method::DELETE => Ok(Endpoint::Cancel(id.to_owned(), message.to_owned())),
                _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET", "DELETE"])),
            },
            Some(ApiPath::ItemPart(id, "messages", message, "media")) => match *method {
                Method::GET => Ok(Endpoint::Media(id.to_owned(), message.to_owned())),
                _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET"])),
            },
            _ => Err(ApiError::route_not_found(path)),
        }
    }
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    respond(route(req).await)
}

async fn route(req: Request) -> Result<Answer, ApiError> {
    let (endpoint, ctx, caller) = accept(&req, Endpoint::parse).await?;
    match endpoint {
        Endpoint::Send(id) => {
            let key = shared::message::idempotency_key(req.headers().get("idempotency-key").map(|v| v.as_bytes()))?;
            // Refused from its headers when the organization's quota is spent, or when it has
            // as many files being read as it may: no body is read.
            let window = send::window(&ctx, &caller).await?;
            let declared = req.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let slot = send::large_slot(&ctx, &caller, declared).await?;
            let sent = match ctx.body_within(req, send::body_limit().await).await {
                Ok(body) => send::apply(&ctx, &caller, &id, key.as_deref(), &body, &window).await,
                Err(e) => Err(e),
            };
            if let Some(slot) = slot {
                // Else it lapses on its own.
                let _ = slot.release(&ctx.redis).await;
            }
            sent
        }
        Endpoint::List(id) => list::apply(&ctx, &caller, &id, req.uri().query()).await,
        Endpoint::Outbox(id) => outbox::apply(&ctx, &caller, &id).await,
        Endpoint::Get(id, message) => get::apply(&ctx, &caller, &id, &message).await,
        Endpoint::Cancel(id, message) => cancel::apply(&ctx, &caller, &id, &message).await,
        Endpoint::Media(id, message) => media::apply(&ctx, &caller, &id, &message).await,
    }
}
