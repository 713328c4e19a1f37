//! `/api/v1/sessions[/{session}]`: the session lifecycle endpoints, one module per endpoint.

mod create;
mod delete;
mod get;
mod list;

use shared::answer::Answer;
use shared::spin::{Context, respond};
use shared::ApiError;
use spin_sdk::http::{IntoResponse, Method, Request};
use spin_sdk::http_service;

const COLLECTION: &str = "/api/v1/sessions";

enum Endpoint {
    List,
    Create,
    Get(String),
    Delete(String),
}

impl Endpoint {
    /// Routes before authenticating: an unknown path is 404 and a wrong method 405 for anyone.
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let rest = path.strip_prefix(COLLECTION).ok_or_else(|| ApiError::route_not_found(path))?;
        match rest.strip_prefix('/') {
            None if rest.is_empty() => match *method {
                Method::GET => Ok(Endpoint::List),
                Method::POST => Ok(Endpoint::Create),
                _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET", "POST"])),
            },
            Some(id) if !id.is_empty() && !id.contains(['/', ':']) => match *method {
                Method::GET => Ok(Endpoint::Get(id.to_owned())),
                Method::DELETE => Ok(Endpoint::Delete(id.to_owned())),
                _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET", "DELETE"])),
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
    let endpoint = Endpoint::parse(req.method(), req.uri().path())?;
    let ctx = Context::open().await?;
    let caller = ctx.authenticate(&req).await?;
    match endpoint {
        Endpoint::List => list::apply(&ctx, &caller).await,
        Endpoint::Create => {
            let body = ctx.body(req).await?;
            create::apply(&ctx, &caller, &body).await
        }
        Endpoint::Get(id) => get::apply(&ctx, &caller, &id).await,
        Endpoint::Delete(id) => delete::apply(&ctx, &caller, &id).await,
    }
}
