//! The catch-all route: unknown paths get the envelope, on Spin and on the embedded host alike.

use shared::ApiError;
use shared::spin::respond;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    respond(Err(ApiError::route_not_found(req.uri().path())))
}
