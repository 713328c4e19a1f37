//! Media files on the daemon's side: the bytes a message sends (kept inline with it, or fetched
//! from the URL the client gave, within the operator's egress rules), and fetching a message's
//! file back from WhatsApp into the cache `GET …/messages/{id}/media` answers from.

use crate::backend::Client;
use crate::daemon::Daemon;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use shared::media::{self, FetchError, MediaRef};
use shared::message::Content;
use std::net::{IpAddr, SocketAddr};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Redirects a media URL may take.
const MAX_REDIRECTS: usize = 3;

/// Files one daemon fetches from WhatsApp at once, and files its sessions send at once: each is
/// held in memory whole (a send's twice, plain and encrypted), up to `MEDIA_MAX_BYTES`. One
/// organization gets at most half of either, so its burst never starves the others.
static FETCHES: LazyLock<Slots> = LazyLock::new(|| Slots::new(4, 2));
pub static SENDS: LazyLock<Slots> = LazyLock::new(|| Slots::new(8, 4));

/// Slots for work that holds a whole file in memory: at most `total` at once in the daemon, and
/// at most `per_org` for one organization.
pub struct Slots {
    total: Arc<Semaphore>,
    per_org: usize,
    orgs: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A slot taken; dropping it gives it back.
pub struct Slot {
    _org: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(total: usize, per_org: usize) -> Slots {
        Slots { total: Arc::new(Semaphore::new(total)), per_org, orgs: Mutex::default() }
    }

    /// Waits for a slot of the organization's, then for one of the daemon's.
    pub async fn take(&self, org: &str) -> Slot {
        let mine = {
            let mut orgs = self.orgs.lock().unwrap_or_else(|e| e.into_inner());
            // An organization nobody holds or waits for a slot of is forgotten.
            orgs.retain(|_, slots| Arc::strong_count(slots) > 1);
            orgs.entry(org.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_org))).clone()
        };
        // Neither semaphore is ever closed.
        let org = mine.acquire_owned().await.expect("an open semaphore");
        let total = self.total.clone().acquire_owned().await.expect("an open semaphore");
        Slot { _org: org, _total: total }
    }
}

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

/// A file just sent: its reference kept for fetching it again, and the bytes cached meanwhile.
pub async fn sent(daemon: &Daemon, org: &str, message_id: &str, reference: &MediaRef, bytes: Vec<u8>) -> Result<(), shared::ApiError> {
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
    if !config.media_fetch_allow_private && !literal_host_is_public(&parsed) {
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
            } else if !allow_private && !literal_host_is_public(attempt.url()) {
                attempt.error("redirected inside the gateway's network")
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder().timeout(timeout).redirect(redirects).no_proxy().user_agent("whatsapp-gateway-media/1");
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        builder.build().ok()
    };
    CLIENTS.get_or_init(|| [build(false), build(true)])[usize::from(allow_private)]
        .clone()
        .ok_or_else(|| "cannot build an HTTP client".to_owned())
}

/// Resolves names to their public addresses only, so a name cannot lead a fetch into the
/// gateway's own network (a check before connecting would race a DNS answer that changes).
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{} has no public address", name.as_str()).into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// A URL whose host is a name (the resolver checks it), or a public address.
fn literal_host_is_public(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_public(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => !name.eq_ignore_ascii_case("localhost") && !name.to_ascii_lowercase().ends_with(".localhost"),
        None => false,
    }
}

/// An address on the public internet: not loopback, private, link-local, shared (CGNAT),
/// unspecified, multicast, broadcast, benchmarking or reserved, in either family; an IPv6
/// address that carries an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by that one.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return is_public(embedded(s[6], s[7])); // IPv4-compatible
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(embedded(s[6], s[7])); // NAT64, well-known prefix
            }
            if (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) || s[..6] == [0, 0, 0, 0, 0xffff, 0] {
                return false; // local NAT64 (RFC 8215), IPv4-translated: where they lead is the network's
            }
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2])); // 6to4
            }
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_organization_cannot_take_every_slot() {
        let slots = Slots::new(3, 2);
        let soon = |org: &'static str| tokio::time::timeout(Duration::from_millis(50), slots.take(org));
        let a1 = soon("a").await.expect("a slot");
        let _a2 = soon("a").await.expect("a second slot");
        assert!(soon("a").await.is_err(), "a third waits: the organization has its share");
        let _b1 = soon("b").await.expect("another organization is not starved");
        assert!(soon("c").await.is_err(), "the daemon's total holds");
        drop(a1);
        soon("a").await.expect("a slot again once one came back");
    }

    #[test]
    fn only_public_addresses_pass() {
        for private in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1", "224.0.0.1",
            "255.255.255.255", "192.0.0.8", "198.18.0.1", "::1", "::", "fd00::1", "fe80::1", "fec0::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
            "::127.0.0.1", "64:ff9b::a00:1", "64:ff9b:1::a00:1", "64:ff9b:1:a00:1:0:808:808", "::ffff:0:808:808", "2002:a00:1::1", "2002:7f00:1::"] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "157.240.1.1", "2a03:2880:f10c:83:face:b00c:0:25de", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        let host = |url: &str| literal_host_is_public(&reqwest::Url::parse(url).unwrap());
        assert!(host("https://cdn.example.com/a.jpg") && host("http://8.8.8.8/x"));
        assert!(!host("http://127.0.0.1:8080/x") && !host("http://[::1]/x") && !host("http://localhost/x") && !host("http://a.localhost/x"));
    }
}
