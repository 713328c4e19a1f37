//! The shapes of the session paths, parsed once for every component that serves a part of them.

pub const SESSIONS: &str = "/api/v1/sessions";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionPath<'a> {
    /// `/api/v1/sessions`
    Collection,
    /// `/api/v1/sessions/{session}`
    Session(&'a str),
    /// `/api/v1/sessions/{session}:{action}` (the reference's custom methods, `:start` …)
    Action(&'a str, &'a str),
    /// `/api/v1/sessions/{session}/{resource}` (`qr`, `pairing-code`, `me`, `messages`)
    Resource(&'a str, &'a str),
    /// `/api/v1/sessions/{session}/{resource}/{item}` (`messages/{message}`)
    Item(&'a str, &'a str, &'a str),
    /// `/api/v1/sessions/{session}/{resource}/{item}/{part}` (`messages/{message}/media`)
    ItemPart(&'a str, &'a str, &'a str, &'a str),
}

/// `None` for anything that is not one of the shapes above.
pub fn session_path(path: &str) -> Option<SessionPath<'_>> {
    let rest = path.strip_prefix(SESSIONS)?;
    if rest.is_empty() {
        return Some(SessionPath::Collection);
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
        (false, None, None, ..) => Some(SessionPath::Session(id)),
        (false, Some(action), None, ..) => Some(SessionPath::Action(id, action)),
        (false, None, Some(resource), None, _) => Some(SessionPath::Resource(id, resource)),
        (false, None, Some(resource), Some(item), None) => Some(SessionPath::Item(id, resource, item)),
        (false, None, Some(resource), Some(item), Some(part)) => Some(SessionPath::ItemPart(id, resource, item, part)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_session_path_shape() {
        assert_eq!(session_path("/api/v1/sessions"), Some(SessionPath::Collection));
        assert_eq!(session_path("/api/v1/sessions/01J"), Some(SessionPath::Session("01J")));
        assert_eq!(session_path("/api/v1/sessions/01J:stop"), Some(SessionPath::Action("01J", "stop")));
        assert_eq!(session_path("/api/v1/sessions/01J/qr"), Some(SessionPath::Resource("01J", "qr")));
        assert_eq!(session_path("/api/v1/sessions/01J/messages/01K"), Some(SessionPath::Item("01J", "messages", "01K")));
        assert_eq!(session_path("/api/v1/sessions/01J/messages/01K/media"), Some(SessionPath::ItemPart("01J", "messages", "01K", "media")));
        for bad in ["/api/v1/sessionsX", "/api/v1/sessions/", "/api/v1/sessions/:stop", "/api/v1/sessions/01J:",
            "/api/v1/sessions/01J/qr/x/y/z", "/api/v1/sessions/01J/messages/01K/", "/api/v1/sessions/01J/messages//media", "/api/v1/sessions/01J:stop/qr", "/api/v1/sessions/01J/", "/api/v1/sessions/01J/qr/",
            "/api/v1/sessions/01J//x", "/api/v1/sessions/01J:stop/qr/x"] {
            assert_eq!(session_path(bad), None, "{bad}");
        }
    }
}
