//! `/api/v1/events`: the organization's events as Server-Sent Events, and
//! `/api/v1/events/token`: the single-use token a browser's `EventSource` puts in the URL.

mod stream;
mod token;

use http_body_util::Either;
use shared::answer::Answer;
use shared::spin::{Context, respond};
use shared::ApiError;
use spin_sdk::http::{IntoResponse, Method, Request};
use spin_sdk::http_service;

enum Endpoint {
    Stream,
    Token,
}

impl Endpoint {
    /// Routes before authenticating: an unknown path is 404 and a wrong method 405 for anyone.
    fn parse(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
        let (endpoint, allowed) = match path.trim_end_matches('/') {
            "/api/v1/events" => (Endpoint::Stream, Method::GET),
            "/api/v1/events/token" => (Endpoint::Token, Method::POST),
            _ => return Err(ApiError::route_not_found(path)),
        };
        if *method == allowed { Ok(endpoint) } else { Err(ApiError::method_not_allowed(method.as_str(), &[allowed.as_str()])) }
    }
}

/// A JSON answer, or the event stream.
enum Reply {
    Answer(Answer),
    Stream(stream::Response),
}

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    match route(req).await {
        Ok(Reply::Stream(events)) => events.map(Either::Right),
        Ok(Reply::Answer(answer)) => respond(Ok(answer)).map(Either::Left),
        Err(error) => respond(Err(error)).map(Either::Left),
    }
}

/// The stream authenticates itself, since it also accepts a stream token (see [`stream`]).
async fn route(req: Request) -> Result<Reply, ApiError> {
    let endpoint = Endpoint::parse(req.method(), req.uri().path())?;
    let ctx = Context::open().await?;
    match endpoint {
        Endpoint::Stream => stream::open(&req, ctx).await.map(Reply::Stream),
        Endpoint::Token => {
            let caller = ctx.authenticate(&req).await?;
            token::apply(&ctx, &caller).await.map(Reply::Answer)
        }
    }
}
