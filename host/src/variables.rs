//! `spin:variables/variables@3.0.0`: application variables resolved once at start-up (the
//! manifest's defaults, overridden by `SPIN_VARIABLE_<NAME>`), and each component's variables
//! rendered from their `{{ name }}` templates, as Spin does.

use crate::bindings::spin::variables::variables::{Error, Host, HostWithStore};
use crate::manifest::VariableDecl;
use wasmtime::{Result, bail};
use std::collections::{BTreeMap, HashMap};
use wasmtime::component::{Accessor, HasData};

/// Resolves application variables from the manifest and the process environment.
pub fn resolve_app_variables(
    decls: &BTreeMap<String, VariableDecl>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>> {
    let mut values = HashMap::new();
    for (name, decl) in decls {
        let value = env(&format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())).or_else(|| decl.default.clone());
        match value {
            Some(value) => {
                values.insert(name.clone(), value);
            }
            None if decl.required => bail!("variable {name} is required: set SPIN_VARIABLE_{}", name.to_ascii_uppercase()),
            None => {}
        }
    }
    Ok(values)
}

/// Renders a component variable's template (`"{{ redis_url }}"`, or literal text around it).
pub fn render(template: &str, app: &HashMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else { bail!("unclosed {{{{ in {template:?}") };
        let name = rest[start + 2..start + end].trim();
        match app.get(name) {
            Some(value) => out.push_str(value),
            None => bail!("template {template:?} names unknown or unset variable {name}"),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One component's rendered variables.
#[derive(Debug, Default, Clone)]
pub struct ComponentVariables(pub HashMap<String, String>);

pub struct Variables;

impl HasData for Variables {
    type Data<'a> = &'a ComponentVariables;
}

impl Host for &ComponentVariables {}

impl<T: Send> HostWithStore<T> for Variables {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, Error> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(Error::InvalidName(name));
        }
        accessor.with(|mut view| view.get().0.get(&name).cloned()).ok_or(Error::Undefined(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_defaults_and_templates_render() {
        let decls = BTreeMap::from([
            ("redis_url".to_owned(), VariableDecl { default: Some("redis://a".into()), ..Default::default() }),
            ("issuer".to_owned(), VariableDecl { default: Some("x".into()), ..Default::default() }),
        ]);
        let env = |k: &str| (k == "SPIN_VARIABLE_REDIS_URL").then(|| "redis://b".to_owned());
        let app = resolve_app_variables(&decls, env).unwrap();
        assert_eq!(render("{{ redis_url }}", &app).unwrap(), "redis://b");
        assert_eq!(render("at {{issuer}}!", &app).unwrap(), "at x!");
        assert!(render("{{ nope }}", &app).is_err());
    }

    #[test]
    fn a_required_variable_must_be_set() {
        let decls = BTreeMap::from([("token".to_owned(), VariableDecl { required: true, ..Default::default() })]);
        assert!(resolve_app_variables(&decls, |_| None).is_err());
    }
}
