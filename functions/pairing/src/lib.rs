//! `/api/v1/sessions/{session}/qr`, `…/pairing-code` and `…/pairing-link`: the ways to attach
//! a number, one module each, and the pairing page a link opens (`/pair/{session}`, [`page`]).

mod image;
mod link;
mod page;
mod pairing_code;
mod qr;

use shared::answer::Answer;
use shared::route::{ApiPath, session_path};
use shared::spin::{accept, respond};
use shared::ApiError;
use spin_sdk::http::{IntoResponse, Method, Request};
use spin_sdk::http_service;

enum Endpoint {
    Qr(String),
    PairingCode(String),
    Link(String),
    RevokeLinks(String),
}

impl Endpoint {
    /// Routes before authenticating: an unknown path is 404 and a wrong method 405 for anyone.
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        match session_path(path) {
            Some(ApiPath::Resource(id, "qr")) if *method == Method::GET => Ok(Endpoint::Qr(id.to_owned())),
            Some(ApiPath::Resource(_, "qr")) => Err(ApiError::method_not_allowed(method.as_str(), &["GET"])),
            Some(ApiPath::Resource(id, "pairing-code")) if *method == Method::POST => {
                Ok(Endpoint::PairingCode(id.to_owned()))
            }
            Some(ApiPath::Resource(_, "pairing-code")) => Err(ApiError::method_not_allowed(method.as_str(), &["POST"])),
            Some(ApiPath::Resource(id, "pairing-link")) if *method == Method::POST => Ok(Endpoint::Link(id.to_owned())),
            Some(ApiPath::Resource(id, "pairing-link")) if *method == Method::DELETE => Ok(Endpoint::RevokeLinks(id.to_owned())),
            Some(ApiPath::Resource(_, "pairing-link")) => Err(ApiError::method_not_allowed(method.as_str(), &["POST", "DELETE"])),
            _ => Err(ApiError::route_not_found(path)),
        }
    }
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    respond(route(req).await)
}

async fn route(req: Request) -> Result<Answer, ApiError> {
    // The pairing page and its calls carry a pairing link's token, not a caller's credential.
    if let Some(endpoint) = page::parse(req.method(), req.uri().path())? {
        return page::serve(req, endpoint).await;
    }
    let (endpoint, ctx, caller) = accept(&req, Endpoint::parse).await?;
    match endpoint {
        Endpoint::Qr(id) => {
            let accept = req.headers().get("accept").and_then(|v| v.to_str().ok());
            let format = image::format(req.uri().query(), accept)?;
            qr::apply(&ctx, &caller, &id, format).await
        }
        Endpoint::Link(id) => link::apply(&ctx, &caller, &id).await,
        Endpoint::RevokeLinks(id) => link::revoke(&ctx, &caller, &id).await,
        Endpoint::PairingCode(id) => {
            let body = ctx.body(req).await?;
            pairing_code::apply(&ctx, &caller, &id, &body).await
        }
    }
}
