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
        let ok = match &endpoint.answer {
            Answer::Json(schema) => json!({
                "description": "done",
                "content": {"application/json": {"schema": schema(&mut generator)}}
            }),
            Answer::Stream => json!({
                "description": "a stream of job events, one JSON object a line, the last one `end`",
                "content": {"application/x-ndjson": {"schema": event.clone()}}
            }),
        };
        let mut operation = json!({
            "summary": endpoint.summary,
            "parameters": parameters,
            "responses": {
                "200": ok,
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
    json!({
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
    })
}
