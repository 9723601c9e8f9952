//! The API's endpoints as one table, from which both the router and the OpenAPI document are
//! built, so the document cannot drift from what the daemon serves. Schemas come from the
//! wire types themselves (schemars).

use std::sync::Arc;

use axum::Router;
use axum::routing::MethodRouter;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::state::Daemon;

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// What an endpoint answers with.
pub(crate) enum Answer {
    Json(SchemaFn),
    /// A stream of `JobEvent`s, one JSON object a line (deploys, `run`, `logs?follow=1`).
    Stream,
    /// JSON, or a stream when asked for one (`logs?follow=1`).
    JsonOrStream(SchemaFn),
    /// `201 Created`: the JSON value, or the stream of the deploy that follows the creation.
    Created(SchemaFn),
}

pub(crate) struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub query: &'static [(&'static str, &'static str)],
    pub body: Option<SchemaFn>,
    pub answer: Answer,
    pub handler: fn() -> MethodRouter<Arc<Daemon>>,
}

/// The router of every endpoint of `endpoints` (routes of one path merge), plus
/// `GET /openapi.json`.
pub(crate) fn build(
    endpoints: &'static [Endpoint],
    fallback: MethodRouter<Arc<Daemon>>,
) -> Router<Arc<Daemon>> {
    let document = Arc::new(document(endpoints));
    let mut router = Router::new();
    for endpoint in endpoints {
        router = router.route(endpoint.path, (endpoint.handler)());
    }
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move { axum::Json((*document).clone()) }
            }),
        )
        .fallback(fallback)
}

/// The OpenAPI 3.1 document of `endpoints`.
pub(crate) fn document(endpoints: &[Endpoint]) -> Value {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "#/components/schemas/".into();
    let mut generator = settings.into_generator();
    let error = schema::<berth_api::ErrorBody>(&mut generator);
    let event = schema::<berth_api::JobEvent>(&mut generator);
    let mut paths = Map::new();
    for endpoint in endpoints {
        let mut parameters: Vec<Value> = endpoint
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(endpoint.query.iter().map(|(name, description)| {
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})
        }));
        let stream = json!({"application/x-ndjson": {"schema": event.clone()}});
        let (status, ok) = match &endpoint.answer {
            Answer::Json(schema) => (
                "200",
                json!({
                    "description": "done",
                    "content": {"application/json": {"schema": schema(&mut generator)}}
                }),
            ),
            Answer::Stream => (
                "200",
                json!({
                    "description": "a stream of job events, one JSON object a line, the last one `end`",
                    "content": stream,
                }),
            ),
            Answer::JsonOrStream(schema) => (
                "200",
                json!({
                    "description": "done: JSON, or a stream of job events when one was asked for",
                    "content": {
                        "application/json": {"schema": schema(&mut generator)},
                        "application/x-ndjson": stream["application/x-ndjson"],
                    }
                }),
            ),
            Answer::Created(schema) => (
                "201",
                json!({
                    "description": "created: JSON, or the stream of job events of the deploy that follows",
                    "content": {
                        "application/json": {"schema": schema(&mut generator)},
                        "application/x-ndjson": stream["application/x-ndjson"],
                    }
                }),
            ),
        };
        let mut operation = json!({
            "summary": endpoint.summary,
            "parameters": parameters,
            "responses": {
                status: ok,
                "401": {"description": "no valid bearer token (TCP API only)"},
                "default": {"description": "an error, naming the problem and the fix",
                            "content": {"application/json": {"schema": error.clone()}}},
            },
        });
        if let Some(body) = endpoint.body {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": body(&mut generator)}}});
        }
        let item = paths.entry(endpoint.path.to_owned()).or_insert_with(|| json!({}));
        item[endpoint.method.to_ascii_lowercase()] = operation;
    }
    let schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Berth",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The Berth daemon's API: the unix socket run/berth.sock, and TCP with --api (bearer tokens from tokens:create).",
        },
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "paths": paths,
    });
    uniform_tuples(&mut document);
    document
}

/// Rewrites the schema of a tuple whose items are all alike (a `(String, String)` pair) as an
/// array of that item with a fixed length: the same values, said in the way every OpenAPI tool
/// reads (some take 3.1's `prefixItems` for the `items` array of older drafts and reject it).
fn uniform_tuples(value: &mut Value) {
    match value {
        Value::Object(object) => {
            let uniform = match object.get("prefixItems") {
                Some(Value::Array(items)) => {
                    items.first().filter(|first| items.iter().all(|item| item == *first)).cloned()
                }
                _ => None,
            };
            if let Some(item) = uniform {
                object.remove("prefixItems");
                object.insert("items".to_owned(), item);
            }
            object.values_mut().for_each(uniform_tuples);
        }
        Value::Array(items) => items.iter_mut().for_each(uniform_tuples),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_of_strings_are_arrays_of_two_strings() {
        let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        let mut pairs =
            serde_json::to_value(schema::<Vec<(String, String)>>(&mut generator)).unwrap();
        uniform_tuples(&mut pairs);
        assert_eq!(
            pairs,
            json!({"type": "array", "items": {"type": "array", "items": {"type": "string"},
                   "minItems": 2, "maxItems": 2}})
        );
        // A tuple of different types keeps its positions.
        let mut mixed = serde_json::to_value(schema::<(String, u16)>(&mut generator)).unwrap();
        uniform_tuples(&mut mixed);
        assert!(mixed["prefixItems"].is_array(), "{mixed}");
    }
}
