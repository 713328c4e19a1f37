//! The shapes of the API's resource paths (sessions, webhooks), parsed once for every component
//! that serves a part of them.

pub const SESSIONS: &str = "/api/v1/sessions";
pub const WEBHOOKS: &str = "/api/v1/webhooks";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiPath<'a> {
    /// `/api/v1/sessions`
    Collection,
    /// `/api/v1/sessions/{session}`, `/api/v1/webhooks/{webhook}`
    One(&'a str),
    /// `/api/v1/sessions/{session}:{action}` (the reference's custom methods, `:start` …)
    Action(&'a str, &'a str),
    /// `/api/v1/sessions/{session}/{resource}` (`qr`, `pairing-code`, `me`, `messages`)
    Resource(&'a str, &'a str),
    /// `/api/v1/sessions/{session}/{resource}/{item}` (`messages/{message}`)
    Item(&'a str, &'a str, &'a str),
    /// `/api/v1/sessions/{session}/{resource}/{item}/{part}` (`messages/{message}/media`)
    ItemPart(&'a str, &'a str, &'a str, &'a str),
}

/// `Ok` when `method` is one of `allowed`, else the 405 that names them.
pub fn only(method: &str, allowed: &'static [&'static str]) -> Result<(), crate::ApiError> {
    if allowed.contains(&method) { Ok(()) } else { Err(crate::ApiError::method_not_allowed(method, allowed)) }
}

/// A path under [`SESSIONS`]; `None` for anything that is not one of the shapes above.
pub fn session_path(path: &str) -> Option<ApiPath<'_>> {
    resource_path(SESSIONS, path)
}

/// A path under [`WEBHOOKS`], in the same shapes (`/{webhook}:replay`, `/{webhook}/dead-letters`).
pub fn webhook_path(path: &str) -> Option<ApiPath<'_>> {
    resource_path(WEBHOOKS, path)
}

fn resource_path<'a>(collection: &str, path: &'a str) -> Option<ApiPath<'a>> {
    let rest = path.strip_prefix(collection)?;
    if rest.is_empty() {
        return Some(ApiPath::Collection);
    }
    let rest = rest.strip_prefix('/')?;
    let (segment, resource) = match rest.split_once('/') {
        Some((segment, resource)) if !resource.is_empty() && !resource.contains(':') => (segment, Some(resource)),
        Some(_) => return None,
        None => (rest, None),
    };
    let (resource, item) = match resource.map(|r| r.split_once('/')) {
        Some(Some((resource, item))) if !resource.is_empty() && !item.is_empty() => (Some(resource), Some(item)),
        Some(Some(_)) => return None,
        _ => (resource, None),
    };
    let (item, part) = match item.map(|i| i.split_once('/')) {
        Some(Some((item, part))) if !item.is_empty() && !part.is_empty() && !part.contains('/') => (Some(item), Some(part)),
        Some(Some(_)) => return None,
        _ => (item, None),
    };
    let (id, action) = match segment.split_once(':') {
        Some((id, action)) if !action.is_empty() && !action.contains(':') => (id, Some(action)),
        Some(_) => return None,
        None => (segment, None),
    };
    match (id.is_empty(), action, resource, item, part) {
        (true, ..) | (false, Some(_), Some(_), ..) => None,
        (false, None, None, ..) => Some(ApiPath::One(id)),
        (false, Some(action), None, ..) => Some(ApiPath::Action(id, action)),
        (false, None, Some(resource), None, _) => Some(ApiPath::Resource(id, resource)),
        (false, None, Some(resource), Some(item), None) => Some(ApiPath::Item(id, resource, item)),
        (false, None, Some(resource), Some(item), Some(part)) => Some(ApiPath::ItemPart(id, resource, item, part)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_session_path_shape() {
        assert_eq!(session_path("/api/v1/sessions"), Some(ApiPath::Collection));
        assert_eq!(session_path("/api/v1/sessions/01J"), Some(ApiPath::One("01J")));
        assert_eq!(session_path("/api/v1/sessions/01J:stop"), Some(ApiPath::Action("01J", "stop")));
        assert_eq!(session_path("/api/v1/sessions/01J/qr"), Some(ApiPath::Resource("01J", "qr")));
        assert_eq!(session_path("/api/v1/sessions/01J/messages/01K"), Some(ApiPath::Item("01J", "messages", "01K")));
        assert_eq!(session_path("/api/v1/sessions/01J/messages/01K/media"), Some(ApiPath::ItemPart("01J", "messages", "01K", "media")));
        for bad in ["/api/v1/sessionsX", "/api/v1/sessions/", "/api/v1/sessions/:stop", "/api/v1/sessions/01J:",
            "/api/v1/sessions/01J/qr/x/y/z", "/api/v1/sessions/01J/messages/01K/", "/api/v1/sessions/01J/messages//media", "/api/v1/sessions/01J:stop/qr", "/api/v1/sessions/01J/", "/api/v1/sessions/01J/qr/",
            "/api/v1/sessions/01J//x", "/api/v1/sessions/01J:stop/qr/x"] {
            assert_eq!(session_path(bad), None, "{bad}");
        }
        assert_eq!(webhook_path("/api/v1/webhooks/01J:replay"), Some(ApiPath::Action("01J", "replay")));
        assert_eq!(session_path("/api/v1/webhooks/01J"), None);
    }
}
