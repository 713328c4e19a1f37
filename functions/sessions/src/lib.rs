//! `/api/v1/sessions[/{session}[:action | /me]]`: the session row and its lifecycle, one module
//! per endpoint. Pairing (`/qr`, `/pairing-code`) is its own component.

mod action;
mod create;
mod delete;
mod get;
mod list;
mod me;

use shared::answer::Answer;
use shared::command::CommandKind;
use shared::route::{self, ApiPath, session_path};
use shared::spin::{accept, respond};
use shared::ApiError;
use spin_sdk::http::{IntoResponse, Method, Request};
use spin_sdk::http_service;

enum Endpoint {
    List,
    Create,
    Get(String),
    Delete(String),
    Action(String, CommandKind),
    Me(String),
}

impl Endpoint {
    /// Routes before authenticating: an unknown path is 404 and a wrong method 405 for anyone.
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let only = |allowed| route::only(method.as_str(), allowed);
        match session_path(path).ok_or_else(|| ApiError::route_not_found(path))? {
            ApiPath::Collection => match *method {
                Method::GET => Ok(Endpoint::List),
                Method::POST => Ok(Endpoint::Create),
                _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET", "POST"])),
            },
            ApiPath::One(id) => match *method {
                Method::GET => Ok(Endpoint::Get(id.to_owned())),
                Method::DELETE => Ok(Endpoint::Delete(id.to_owned())),
                _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET", "DELETE"])),
            },
            ApiPath::Action(id, action) => {
                let kind = match action {
                    "start" => CommandKind::Start,
                    "stop" => CommandKind::Stop,
                    "restart" => CommandKind::Restart,
                    "logout" => CommandKind::Logout,
                    _ => return Err(ApiError::route_not_found(path)),
                };
                only(&["POST"]).map(|()| Endpoint::Action(id.to_owned(), kind))
            }
            ApiPath::Resource(id, "me") => only(&["GET"]).map(|()| Endpoint::Me(id.to_owned())),
            ApiPath::Resource(..) | ApiPath::Item(..) | ApiPath::ItemPart(..) => Err(ApiError::route_not_found(path)),
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
        Endpoint::List => list::apply(&ctx, &caller, req.uri().query()).await,
        Endpoint::Create => {
            let body = ctx.body(req).await?;
            create::apply(&ctx, &caller, &body).await
        }
        Endpoint::Get(id) => get::apply(&ctx, &caller, &id).await,
        Endpoint::Delete(id) => delete::apply(&ctx, &caller, &id).await,
        Endpoint::Action(id, kind) => action::apply(&ctx, &caller, &id, kind).await,
        Endpoint::Me(id) => me::apply(&ctx, &caller, &id).await,
    }
}
