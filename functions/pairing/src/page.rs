//! The pairing page, `/pair/{session}?token=<pairing link token>`: the session's live QR code,
//! redrawn as it rotates, the phone-code alternative, and the number once it is attached. The
//! page itself is static; what it shows comes from `/pair/{session}/state`, and a phone code
//! from `POST /pair/{session}/pairing-code`, both allowed by the link's token alone and for its
//! one session (see `shared::pairing_link`).

use shared::answer::Answer;
use shared::session::SessionStatus;
use shared::spin::Context;
use shared::{ApiError, pairing_link, store, validate};
use spin_sdk::http::{Method, Request};

const PAGE: &str = include_str!("page.html");
pub const PREFIX: &str = "/pair/";

pub enum Endpoint {
    Page,
    State(String),
    PairingCode(String),
}

/// `None` for paths outside `/pair/`; 404 and 405 for the wrong ones inside it.
pub fn parse(method: &Method, path: &str) -> Result<Option<Endpoint>, ApiError> {
    let Some(rest) = path.strip_prefix(PREFIX) else { return Ok(None) };
    let only = |allowed| shared::route::only(method.as_str(), allowed);
    let endpoint = match rest.split('/').collect::<Vec<_>>().as_slice() {
        [id] if validate::is_safe_id(id) => only(&["GET"]).map(|()| Endpoint::Page),
        [id, "state"] if validate::is_safe_id(id) => only(&["GET"]).map(|()| Endpoint::State(id.to_string())),
        [id, "pairing-code"] if validate::is_safe_id(id) => only(&["POST"]).map(|()| Endpoint::PairingCode(id.to_string())),
        _ => Err(ApiError::route_not_found(path)),
    };
    endpoint.map(Some)
}

pub async fn serve(req: Request, endpoint: Endpoint) -> Result<Answer, ApiError> {
    let params = validate::query_params(req.uri().query(), &["token"])?;
    let token = params.into_iter().find(|(name, _)| name == "token").map(|(_, token)| token);
    let session_id = match &endpoint {
        // The page is static and says itself when its link has expired (its `state` call
        // answers 401), but a URL without a token is no pairing link at all.
        Endpoint::Page if token.is_none() => return Err(ApiError::invalid_field("token", "the pairing page opens from a pairing link: its URL carries the link's token")),
        Endpoint::Page => return Ok(Answer::Page(PAGE)),
        Endpoint::State(id) | Endpoint::PairingCode(id) => id.clone(),
    };
    let ctx = Context::open().await?;
    let link = pairing_link::open(&ctx.redis, token.as_deref(), &session_id).await?;
    let session = store::get_observed(&ctx.redis, &link.organization_id, &link.session_id).await?;
    match endpoint {
        Endpoint::PairingCode(_) if link.spent(&session) => Err(pairing_link::spent_error()),
        Endpoint::PairingCode(_) => {
            let body = ctx.body(req).await?;
            crate::pairing_code::request(&ctx, &link.organization_id, &session_id, &body).await
        }
        _ => state(&ctx, &link, &session).await,
    }
}

/// `{status, phoneNumber, qr: {svg, expiresAt} | null, linkExpiresAt}`: the QR only while a
/// live client shows it.
async fn state(ctx: &Context, link: &pairing_link::PairingLink, session: &shared::session::Session) -> Result<Answer, ApiError> {
    let mut qr = serde_json::Value::Null;
    if session.status == SessionStatus::ScanQrCode && !link.spent(session) {
        if let Some(current) = store::qr(&ctx.redis, &link.organization_id, &link.session_id).await? {
            if let Some(code) = current["code"].as_str() {
                qr = serde_json::json!({ "svg": crate::image::svg(code)?, "expiresAt": current["expiresAt"] });
            }
        }
    }
    Ok(Answer::ok(&serde_json::json!({
        "status": session.status,
        "phoneNumber": session.phone_number,
        "qr": qr,
        "linkExpiresAt": link.expires_at,
    })))
}
