//! Media files on the daemon's side: the bytes a message sends (kept inline with it, or fetched
//! from the URL the client gave, within the operator's egress rules), and fetching a message's
//! file back from WhatsApp into the cache `GET …/messages/{id}/media` answers from.

use crate::backend::Client;
use crate::daemon::Daemon;
use crate::egress;
use shared::media::{self, FetchError, MediaRef};
use shared::message::Content;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;
use crate::slots::Slots;

/// Redirects a media URL may take.
const MAX_REDIRECTS: usize = 3;

/// Files one daemon fetches from WhatsApp at once, and files its sessions send at once: each is
/// held in memory whole (a send's twice, plain and encrypted), up to `MEDIA_MAX_BYTES`. One
/// organization gets at most half of either, so its burst never starves the others.
static FETCHES: LazyLock<Slots> = LazyLock::new(|| Slots::new(4, 2));
pub static SENDS: LazyLock<Slots> = LazyLock::new(|| Slots::new(8, 4));

/// Why a message's file cannot be had.
#[derive(Debug)]
pub enum Unavailable {
    /// The file will not come: the message fails with this reason.
    Never(String),
    /// Redis failed: try again.
    Redis(shared::ApiError),
}

/// The bytes of the file `content` sends, if it sends one: kept with the message, or fetched
/// from its URL.
pub async fn outgoing(daemon: &Daemon, org: &str, content: &Content) -> Result<Option<Vec<u8>>, Unavailable> {
    let Some(file) = &content.media else { return Ok(None) };
    if let Some(url) = &file.url {
        return fetch_url(daemon, url).await.map(Some).map_err(Unavailable::Never);
    }
    match media::upload(&daemon.redis, org, &content.id).await {
        Ok(Some(bytes)) => Ok(Some(bytes)),
        Ok(None) => Err(Unavailable::Never("the file given with the message is no longer kept".into())),
        Err(e) => Err(Unavailable::Redis(e)),
    }
}

/// A file just uploaded: its reference kept (to send it without uploading it again, to fetch it
/// again later), and the bytes cached meanwhile.
pub async fn uploaded(daemon: &Daemon, org: &str, message_id: &str, reference: &MediaRef, bytes: Vec<u8>) -> Result<(), shared::ApiError> {
    media::keep_reference(&daemon.redis, org, message_id, reference).await?;
    media::store(&daemon.redis, org, message_id, bytes, daemon.config.media_cache()).await.map(drop)
}

/// Fetches a message's file from WhatsApp through the session's connected client into the
/// cache, or records why it could not, for the `GET …/media` waiting on it.
pub async fn fetch(daemon: Arc<Daemon>, client: Arc<dyn Client>, org: String, message_id: String) {
    let _slot = FETCHES.take(&org).await;
    // Queued behind other fetches, this one may have been asked for again meanwhile and done.
    if matches!(media::cached(&daemon.redis, &org, &message_id).await, Ok(Some(_))) {
        return;
    }
    let outcome = match media::reference(&daemon.redis, &org, &message_id).await {
        Ok(Some(reference)) if reference.file_length > daemon.config.media_max_bytes => {
            Err(failure("too_large", format!("the file is {} bytes, more than this gateway serves ({})", reference.file_length, daemon.config.media_max_bytes)))
        }
        Ok(Some(reference)) => client.download(&reference, daemon.config.media_max_bytes).await,
        Ok(None) => Err(failure("no_reference", "WhatsApp gave no way to fetch this message's file")),
        Err(e) => Err(failure("failed", format!("cannot read the message: {e}"))),
    };
    let recorded = match outcome {
        Ok(bytes) => match media::store(&daemon.redis, &org, &message_id, bytes, daemon.config.media_cache()).await {
            Ok(true) => Ok(()),
            Ok(false) => media::fail(&daemon.redis, &org, &message_id, &failure("too_large", "the file is larger than this gateway's media cache")).await,
            Err(e) => Err(e),
        },
        Err(error) => {
            tracing::info!(message = %message_id, "media fetch failed: {}", error.message);
            media::fail(&daemon.redis, &org, &message_id, &error).await
        }
    };
    if let Err(e) = recorded {
        // The waiting request answers a timeout.
        tracing::warn!(message = %message_id, "cannot record a media fetch: {e:?}");
    }
}

/// A fetch that cannot run: the session is not connected on this daemon.
pub async fn not_connected(daemon: &Daemon, org: &str, message_id: &str) {
    let error = failure("not_connected", "the session is not connected to WhatsApp, which holds the file; try again once it is");
    if let Err(e) = media::fail(&daemon.redis, org, message_id, &error).await {
        tracing::warn!(message = %message_id, "cannot record a media fetch: {e:?}");
    }
}

pub fn failure(code: &str, message: impl Into<String>) -> FetchError {
    FetchError { code: code.to_owned(), message: message.into() }
}

/// GETs a media URL, refusing addresses inside the gateway's network unless the operator allows
/// them (every hop of a redirect included), and files past `MEDIA_MAX_BYTES`.
async fn fetch_url(daemon: &Daemon, url: &str) -> Result<Vec<u8>, String> {
    let config = &daemon.config;
    let client = http_client(config.media_fetch_allow_private, Duration::from_millis(config.media_fetch_timeout_ms))?;
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("the media URL is not valid: {e}"))?;
    if !config.media_fetch_allow_private && !egress::literal_host_is_public(&parsed) {
        return Err("the media URL points inside the gateway's network, which this gateway does not fetch from".into());
    }
    let response = client.get(parsed).send().await.map_err(|e| format!("cannot fetch the media URL: {}", without_url(e)))?;
    if !response.status().is_success() {
        return Err(format!("the media URL answered {}", response.status()));
    }
    let max = config.media_max_bytes;
    let too_large = || format!("the file at the media URL is larger than {max} bytes");
    if response.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut response = response;
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("cannot read the media URL: {}", without_url(e)))? {
        if (bytes.len() + chunk.len()) as u64 > max {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.is_empty() {
        return Err("the media URL answered an empty file".into());
    }
    Ok(bytes)
}

/// reqwest's errors name the URL, which may carry a client's credentials.
fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

/// One client per setting, built on first use: connections are pooled across fetches.
fn http_client(allow_private: bool, timeout: Duration) -> Result<reqwest::Client, String> {
    static CLIENTS: OnceLock<[Option<reqwest::Client>; 2]> = OnceLock::new();
    let build = |allow_private: bool| {
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if !allow_private && !egress::literal_host_is_public(attempt.url()) {
                attempt.error("redirected inside the gateway's network")
            } else {
                attempt.follow()
            }
        });
        egress::client(allow_private).timeout(timeout).redirect(redirects).user_agent("whatsapp-gateway-media/1").build().ok()
    };
    CLIENTS.get_or_init(|| [build(false), build(true)])[usize::from(allow_private)]
        .clone()
        .ok_or_else(|| "cannot build an HTTP client".to_owned())
}

