//! Every answer a test gets through [`crate::Client`] is held to the published OpenAPI document
//! (`functions/docs/openapi.json`, what `GET /api/v1/openapi.json` serves): its path and method
//! must be documented (else it is a 404 or 405 in the error envelope), its status must be one
//! the operation lists, and a JSON body must validate against that response's schema.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::from_str(include_str!("../../functions/docs/openapi.json")).expect("openapi.json parses"))
}

/// Whether a concrete path fits a template: literal segments, `{name}`, and `{name}:action`.
fn fits(template: &str, path: &str) -> bool {
    let (template, path): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    template.len() == path.len()
        && template.iter().zip(&path).all(|(t, p)| match t.split_once('}') {
            Some((_, suffix)) if t.starts_with('{') => {
                p.strip_suffix(suffix).is_some_and(|value| !value.is_empty() && !value.contains(':'))
            }
            _ => t == p,
        })
}

/// A JSON pointer segment, escaped.
fn escaped(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The validator for the schema at `pointer` in the document, its `$ref`s resolved in it.
fn validator(pointer: &str) -> Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(pointer.to_owned())
        .or_insert_with(|| {
            let mut root = document().clone();
            root["$schema"] = "https://json-schema.org/draft/2020-12/schema".into();
            // A URI fragment: the braces of path templates percent-encoded.
            root["$ref"] = format!("#{}", pointer.replace('{', "%7B").replace('}', "%7D")).into();
            Arc::new(jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema at {pointer}: {e}")))
        })
        .clone()
}

fn check(pointer: &str, body: &Value, what: &str) {
    let errors: Vec<String> = validator(pointer).iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "{what}: the answer does not match the OpenAPI document ({pointer}): {errors:?}\nbody: {body}");
}

/// Panics when the answer is not what the document says `method url` answers.
pub fn conforms(method: &str, url: &str, status: u16, content_type: &str, body: &Value) {
    let path = url.split_once("://").map_or(url, |(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]));
    let path = path.split('?').next().unwrap_or(path);
    let what = format!("{method} {path} → {status}");
    let paths = document()["paths"].as_object().unwrap();
    let Some((template, item)) = paths.iter().find(|(template, _)| fits(template, path)) else {
        assert!(matches!(status, 404 | 405), "{what}: an undocumented path answered");
        return check("/components/schemas/Error", body, &what);
    };
    let method = method.to_ascii_lowercase();
    let Some(operation) = item.get(&method) else {
        assert!(matches!(status, 404 | 405), "{what}: an undocumented method answered");
        return check("/components/schemas/Error", body, &what);
    };
    let Some(response) = operation["responses"].get(status.to_string()) else {
        panic!("{what}: status {status} is not documented for {method} {template}; body: {body}");
    };
    if content_type.starts_with("application/json") {
        if response["content"].get("application/json").is_none() {
            panic!("{what}: a JSON body where the document has none; body: {body}");
        }
        let pointer = format!("/paths/{}/{method}/responses/{status}/content/application~1json/schema", escaped(template));
        check(&pointer, body, &what);
    }
}
