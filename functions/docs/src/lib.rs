//! `GET /api/v1/openapi.json` (the API's OpenAPI 3.1 document, `openapi.json` beside this crate)
//! and `GET /docs` (a page that renders it in the browser, with nothing loaded from elsewhere).
//! Both public: the document describes the API, it holds nothing of anyone's.

use shared::ApiError;
use shared::answer::Answer;
use shared::spin::respond;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

const DOCUMENT: &str = include_str!("../openapi.json");
const PAGE: &str = include_str!("docs.html");

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    respond(route(&req))
}

fn route(req: &Request) -> Result<Answer, ApiError> {
    let page = match req.uri().path() {
        "/api/v1/openapi.json" => Answer::Json(200, DOCUMENT.as_bytes().to_vec()),
        "/docs" => Answer::Page(PAGE),
        path => return Err(ApiError::route_not_found(path)),
    };
    shared::route::only(req.method().as_str(), &["GET"])?;
    Ok(page)
}
