//! The daemon's outbound HTTP (media URLs, webhook deliveries) within the gateway's egress rule
//! (`shared::egress`): unless an operator allows it, no request reaches loopback, private or
//! link-local addresses, whether by an address in the URL or by a name that resolves there.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;

/// A client builder held to the rule: no proxy (it would resolve names for us), and, unless
/// `allow_private`, a resolver that yields public addresses only. The caller adds timeouts,
/// its redirect policy and its user agent.
pub fn client(allow_private: bool) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder().no_proxy();
    if allow_private { builder } else { builder.dns_resolver(Arc::new(PublicOnly)) }
}

/// A URL whose host is a name (the resolver checks it), or a public address.
pub fn literal_host_is_public(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(shared::egress::host_is_public)
}

/// Resolves names to their public addresses only, so a name cannot lead a request into the
/// gateway's own network (a check before connecting would race a DNS answer that changes).
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| shared::egress::is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{} has no public address", name.as_str()).into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_to_names_and_public_addresses_pass() {
        let host = |url: &str| literal_host_is_public(&reqwest::Url::parse(url).unwrap());
        assert!(host("https://cdn.example.com/a.jpg") && host("http://8.8.8.8/x"));
        assert!(!host("http://127.0.0.1:8080/x") && !host("http://[::1]/x") && !host("http://localhost/x") && !host("http://a.localhost/x"));
    }
}
