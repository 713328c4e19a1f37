//! Spin's HTTP routing: exact paths, `:param` segments and a trailing `/...` wildcard, the most
//! specific route winning (exact over parameters over wildcards, longer over shorter).

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param,
}

#[derive(Debug, Clone)]
struct Route {
    pattern: String,
    segments: Vec<Segment>,
    wildcard: bool,
    component: String,
}

impl Route {
    fn parse(pattern: &str, component: &str) -> Route {
        let (base, wildcard) = match pattern.strip_suffix("/...") {
            Some(base) => (base, true),
            None => (pattern, false),
        };
        let segments = base
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| if s.starts_with(':') { Segment::Param } else { Segment::Literal(s.to_owned()) })
            .collect();
        Route { pattern: pattern.to_owned(), segments, wildcard, component: component.to_owned() }
    }

    fn matches(&self, path: &[&str]) -> bool {
        let fits = if self.wildcard { path.len() >= self.segments.len() } else { path.len() == self.segments.len() };
        fits && self.segments.iter().zip(path).all(|(seg, part)| match seg {
            Segment::Literal(l) => l == part,
            Segment::Param => !part.is_empty(),
        })
    }

    /// Larger is more specific.
    fn specificity(&self) -> (bool, usize, usize) {
        let literals = self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
        (!self.wildcard, self.segments.len(), literals)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Router(Vec<Route>);

#[derive(Debug, Clone, PartialEq)]
pub struct Matched<'a> {
    pub component: &'a str,
    pub route: &'a str,
}

impl Router {
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Router {
        let mut routes: Vec<Route> = routes.into_iter().map(|(p, c)| Route::parse(p, c)).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        Router(routes)
    }

    pub fn route(&self, path: &str) -> Option<Matched<'_>> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.0
            .iter()
            .find(|r| r.matches(&parts))
            .map(|r| Matched { component: &r.component, route: &r.pattern })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_route_wins() {
        let router = Router::new([
            ("/...", "fallback"),
            ("/api/v1/sessions/...", "sessions"),
            ("/api/v1/sessions/:id/qr", "qr"),
            ("/api/v1/events", "events"),
        ]);
        let component = |p| router.route(p).map(|m| m.component.to_owned());
        assert_eq!(component("/api/v1/sessions").as_deref(), Some("sessions"));
        assert_eq!(component("/api/v1/sessions/abc").as_deref(), Some("sessions"));
        assert_eq!(component("/api/v1/sessions/abc/qr").as_deref(), Some("qr"));
        assert_eq!(component("/api/v1/events").as_deref(), Some("events"));
        assert_eq!(component("/api/v1/events/x").as_deref(), Some("fallback"));
        assert_eq!(component("/").as_deref(), Some("fallback"));
    }

    #[test]
    fn no_route_without_a_catch_all() {
        let router = Router::new([("/api/v1/events", "events")]);
        assert_eq!(router.route("/api/v1/other"), None);
    }
}
