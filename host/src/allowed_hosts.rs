//! `allowed_outbound_hosts`: which scheme://host:port a component may reach, with Spin's
//! wildcards (`*` for any host or any port, `*.example.com` for subdomains).

use wasmtime::{Result, bail};

#[derive(Debug, Clone, PartialEq)]
struct AllowedHost {
    scheme: String,
    host: String,
    port: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllowedHosts(Vec<AllowedHost>);

impl AllowedHosts {
    pub fn parse(entries: &[String]) -> Result<AllowedHosts> {
        let mut allowed = Vec::new();
        for entry in entries {
            let Some((scheme, rest)) = entry.split_once("://") else { bail!("allowed host {entry:?} needs a scheme") };
            let rest = rest.trim_end_matches('/');
            let (host, port) = match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port.to_owned())),
                None => (rest, None),
            };
            if host.is_empty() {
                bail!("allowed host {entry:?} has no host");
            }
            allowed.push(AllowedHost { scheme: scheme.to_owned(), host: host.to_ascii_lowercase(), port });
        }
        Ok(AllowedHosts(allowed))
    }

    /// Whether `scheme://host:port` may be reached; `port` is the effective port.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.0.iter().any(|a| {
            (a.scheme == "*" || a.scheme == scheme)
                && (a.host == "*" || a.host == host || a.host.strip_prefix("*.").is_some_and(|d| host.ends_with(&format!(".{d}"))))
                && match &a.port {
                    Some(p) if p == "*" => true,
                    Some(p) => p.parse::<u16>().ok() == Some(port),
                    None => default_port(scheme) == Some(port),
                }
        })
    }

    /// Whether a URL (`redis://host:6379/0`, `https://issuer/jwks`) may be reached.
    pub fn allows_url(&self, url: &str) -> bool {
        let Ok(uri) = url.parse::<http::Uri>() else { return false };
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else { return false };
        let Some(port) = uri.port_u16().or_else(|| default_port(scheme)) else { return false };
        self.allows(scheme, host.trim_start_matches('[').trim_end_matches(']'), port)
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "redis" | "rediss" => Some(6379),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        assert!(!AllowedHosts::default().allows_url("redis://127.0.0.1:6379"));
    }

    #[test]
    fn scheme_host_and_port_must_all_match() {
        let allowed = hosts(&["redis://127.0.0.1:6379", "https://*.example.com"]);
        assert!(allowed.allows_url("redis://127.0.0.1:6379"));
        assert!(allowed.allows_url("redis://127.0.0.1"));
        assert!(!allowed.allows_url("redis://127.0.0.1:6380"));
        assert!(!allowed.allows_url("http://127.0.0.1:6379"));
        assert!(allowed.allows_url("https://login.example.com/jwks"));
        assert!(!allowed.allows_url("https://example.com.evil.io/jwks"));
        assert!(!allowed.allows_url("https://login.example.com:8443/jwks"));
    }

    #[test]
    fn wildcards_open_hosts_and_ports() {
        let allowed = hosts(&["http://*:*"]);
        assert!(allowed.allows_url("http://10.1.2.3:9999/x"));
        assert!(!allowed.allows_url("https://10.1.2.3:9999/x"));
    }
}
