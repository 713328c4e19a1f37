//! `GET /api/v1/sessions/{session}/contacts` and `GET /api/v1/sessions/{session}/groups`: what
//! the gateway keeps of the session's contacts and groups, one page at a time
//! (`?limit=` 1–500, default 100; `?cursor=` from the previous page's `nextCursor`).

use shared::answer::{Answer, Page};
use shared::auth::{Caller, Capability};
use shared::directory::{self, Kind};
use shared::route::{ApiPath, session_path};
use shared::spin::{Context, accept, respond};
use shared::{ApiError, store, validate};
use spin_sdk::http::{IntoResponse, Method, Request};
use spin_sdk::http_service;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 500;

struct Endpoint {
    session: String,
    kind: Kind,
}

impl Endpoint {
    /// Routes before authenticating: an unknown path is 404 and a wrong method 405 for anyone.
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let (session, kind) = match session_path(path) {
            Some(ApiPath::Resource(id, "contacts")) => (id, Kind::Contacts),
            Some(ApiPath::Resource(id, "groups")) => (id, Kind::Groups),
            _ => return Err(ApiError::route_not_found(path)),
        };
        if *method != Method::GET {
            return Err(ApiError::method_not_allowed(method.as_str(), &["GET"]));
        }
        Ok(Endpoint { session: session.to_owned(), kind })
    }
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    respond(route(req).await)
}

async fn route(req: Request) -> Result<Answer, ApiError> {
    let (endpoint, ctx, caller) = accept(&req, Endpoint::parse).await?;
    list(&ctx, &caller, &endpoint, req.uri().query()).await
}

async fn list(ctx: &Context, caller: &Caller, endpoint: &Endpoint, query: Option<&str>) -> Result<Answer, ApiError> {
    let org = caller.org_with(Capability::Read)?;
    let params = validate::query_params(query, &["limit", "cursor"])?;
    let param = |name: &str| params.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let limit = validate::page_limit(param("limit"), DEFAULT_LIMIT, MAX_LIMIT)?;
    let session = store::get(&ctx.redis, org, &endpoint.session).await?;
    let (data, next_cursor) = directory::page(&ctx.redis, org, &session.id, endpoint.kind, param("cursor"), limit).await?;
    Ok(Answer::ok(&Page { data, next_cursor }))
}
