//! `/api/v1/admin/...`: platform administration, for the platform `super_admin` only (from a
//! login JWT: api-keys and organization roles never qualify). Sessions are addressed
//! platform-wide here: a super_admin sees every organization's.

mod backfill;

use shared::answer::Answer;
use shared::auth::{Caller, Credential};
use shared::spin::{accept, respond};
use shared::ApiError;
use spin_sdk::http::{IntoResponse, Method, Request};
use spin_sdk::http_service;

const SESSIONS: &str = "/api/v1/admin/sessions/";

enum Endpoint {
    StartBackfill(String),
    GetBackfill(String),
}

impl Endpoint {
    /// Routes before authenticating: an unknown path is 404 and a wrong method 405 for anyone.
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let session = path
            .strip_prefix(SESSIONS)
            .and_then(|rest| rest.strip_suffix("/backfill"))
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| ApiError::route_not_found(path))?
            .to_owned();
        match *method {
            Method::POST => Ok(Endpoint::StartBackfill(session)),
            Method::GET => Ok(Endpoint::GetBackfill(session)),
            _ => Err(ApiError::method_not_allowed(method.as_str(), &["GET", "POST"])),
        }
    }
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    respond(route(req).await)
}

async fn route(req: Request) -> Result<Answer, ApiError> {
    let (endpoint, ctx, caller) = accept(&req, Endpoint::parse).await?;
    require_super_admin(&caller)?;
    match endpoint {
        Endpoint::StartBackfill(id) => backfill::start(&ctx, &id).await,
        Endpoint::GetBackfill(id) => backfill::get(&ctx, &id).await,
    }
}

fn require_super_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.super_admin && matches!(caller.credential, Credential::LoginJwt { .. }) {
        Ok(())
    } else {
        Err(ApiError::forbidden("this endpoint needs the platform super_admin role, from a login token")
            .with_detail("role", "super_admin"))
    }
}
