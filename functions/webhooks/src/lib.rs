//! `/api/v1/webhooks[/{webhook}[:action | /dead-letters]]`: an organization's webhook endpoints
//! (`manage` only: they see every event, pairing codes included), one module per endpoint. The
//! daemons deliver (`connector-daemon/src/webhooks.rs`).

mod create;
mod dead_letters;
mod delete;
mod get;
mod list;
mod redeliver;
mod replay;
mod rotate;
mod update;

use shared::answer::Answer;
use shared::route::{self, ApiPath, webhook_path};
use shared::spin::{accept, respond};
use shared::ApiError;
use spin_sdk::http::{IntoResponse, Method, Request};
use spin_sdk::http_service;

enum Endpoint {
    List,
    Create,
    Get(String),
    Update(String),
    Delete(String),
    RotateSecret(String),
    Redeliver(String),
    Replay(String),
    DeadLetters(String),
}

impl Endpoint {
    /// Routes before authenticating: an unknown path is 404 and a wrong method 405 for anyone.
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let only = |allowed| route::only(method.as_str(), allowed);
        match webhook_path(path).ok_or_else(|| ApiError::route_not_found(path))? {
            ApiPath::Collection => match *method {
                Method::GET => Ok(Endpoint::List),
                Method::POST => Ok(Endpoint::Create),
                _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET", "POST"])),
            },
            ApiPath::One(id) => match *method {
                Method::GET => Ok(Endpoint::Get(id.to_owned())),
                Method::PATCH => Ok(Endpoint::Update(id.to_owned())),
                Method::DELETE => Ok(Endpoint::Delete(id.to_owned())),
                _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET", "PATCH", "DELETE"])),
            },
            ApiPath::Action(id, action) => {
                let endpoint = match action {
                    "rotate-secret" => Endpoint::RotateSecret(id.to_owned()),
                    "redeliver" => Endpoint::Redeliver(id.to_owned()),
                    "replay" => Endpoint::Replay(id.to_owned()),
                    _ => return Err(ApiError::route_not_found(path)),
                };
                only(&["POST"]).map(|()| endpoint)
            }
            ApiPath::Resource(id, "dead-letters") => only(&["GET"]).map(|()| Endpoint::DeadLetters(id.to_owned())),
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
    let org = caller.org_with(shared::auth::Capability::Manage)?.to_owned();
    match endpoint {
        Endpoint::List => list::apply(&ctx, &org).await,
        Endpoint::Create => create::apply(&ctx, &org, &ctx.body(req).await?).await,
        Endpoint::Get(id) => get::apply(&ctx, &org, &id).await,
        Endpoint::Update(id) => update::apply(&ctx, &org, &id, &ctx.body(req).await?).await,
        Endpoint::Delete(id) => delete::apply(&ctx, &org, &id).await,
        Endpoint::RotateSecret(id) => rotate::apply(&ctx, &org, &id).await,
        Endpoint::Redeliver(id) => redeliver::apply(&ctx, &org, &id).await,
        Endpoint::Replay(id) => replay::apply(&ctx, &org, &id, &ctx.body(req).await?).await,
        Endpoint::DeadLetters(id) => dead_letters::apply(&ctx, &org, &id, req.uri().query()).await,
    }
}
