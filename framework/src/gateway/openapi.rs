//! `GET /openapi.json`: the OpenAPI 3.1 document of this gateway, generated at start-up from the
//! idcards and the models (a table's record schema is its idcard's schema), so it always
//! describes the routes that exist.

use serde_json::{Map, Value, json};

use crate::gold::Models;
use crate::idcard::ColumnType;
use crate::idcard::{Project, Table};

/// The document.
pub fn document(project: &Project, models: &Models) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert("Problem".into(), problem_schema());
    schemas.insert("IngestReport".into(), ingest_report_schema());
    schemas.insert("DurableReport".into(), durable_report_schema());
    for table in &project.tables {
        let name = table.name();
        let record = format!("{name}_record");
        let exposure = &table.config.gateway;
        if exposure.ingest {
            schemas.insert(record.clone(), record_schema(table));
            paths.insert(
                format!("/ingest/{name}"),
                json!({ "post": ingest_operation(table, &record, false) }),
            );
            paths.insert(
                format!("/ingest_fast/{name}"),
                json!({ "post": ingest_operation(table, &record, true) }),
            );
        }
        if !exposure.read {
            continue;
        }
        for (route, what) in [
            ("raw", "bronze: every message that arrived, typed"),
            ("staging", "silver: one current row per key"),
            (
                "rejects",
                "messages that could not be a bronze row, with the reason",
            ),
            (
                "quarantine",
                "rows a quarantine rule kept out of silver, with the rule",
            ),
        ] {
            paths.insert(
                format!("/{route}/{name}"),
                json!({ "get": read_operation(&format!("{route}_{name}"), &format!("{name}, {what}"), Some(table)) }),
            );
        }
    }
    for model in &models.models {
        if model.config.materialized.is_stored() {
            paths.insert(
                format!("/curated/{}", model.name),
                json!({ "get": read_operation(&format!("curated_{}", model.name), &format!("gold model {}", model.name), None) }),
            );
        }
    }
    paths.insert(
        "/quality/results".into(),
        json!({ "get": read_operation("quality_results", "results of the quality checks", None) }),
    );
    for (path, id, summary) in [
        ("/health", "health", "liveness"),
        (
            "/ready",
            "ready",
            "whether the lake and the bus answer, per component",
        ),
        (
            "/stats",
            "stats",
            "per table and layer, and per gold model: version, files, bytes, rows, latest commit; per table, the messages on its topic bronze has not stored (lag)",
        ),
    ] {
        paths.insert(
            path.into(),
            json!({ "get": {
                "operationId": id,
                "summary": summary,
                "responses": {
                    "200": { "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } },
                    "503": problem_response("not ready"),
                },
            }}),
        );
    }
    paths.insert(
        "/docs".into(),
        json!({ "get": {
            "operationId": "docs",
            "summary": "this document as an HTML page",
            "responses": { "200": { "description": "OK", "content": { "text/html": { "schema": { "type": "string" } } } } },
        }}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "framework gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Reads of every layer of the lake and ingestion through the pipeline, generated from the idcards.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
    })
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } },
    })
}

fn read_operation(id: &str, summary: &str, table: Option<&Table>) -> Value {
    let mut parameters = vec![
        json!({ "name": "columns", "in": "query", "description": "columns to return, comma-separated", "schema": { "type": "string" } }),
        json!({ "name": "order_by", "in": "query", "description": "columns to sort by, comma-separated; `-` before a column sorts it descending", "schema": { "type": "string" } }),
        json!({ "name": "limit", "in": "query", "description": "rows to return at most, or `all` (the body is streamed)", "schema": { "anyOf": [{ "type": "integer", "minimum": 0 }, { "const": "all" }], "default": 100 } }),
        json!({ "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0, "default": 0 } }),
        json!({ "name": "as_of_version", "in": "query", "description": "read this Delta version (the X-Delta-Version of an earlier page)", "schema": { "type": "integer", "minimum": 0 } }),
        json!({ "name": "format", "in": "query", "description": "instead of Accept", "schema": { "type": "string", "enum": ["json", "ndjson", "csv", "arrow", "parquet"] } }),
    ];
    let filterable = table.map(|t| t.columns.as_slice()).unwrap_or_default();
    let shown = |name: &str| table.is_none_or(|t| t.config.gateway.shows(name, t.key()));
    for column in filterable.iter().filter(|c| shown(&c.name)) {
        parameters.push(json!({
            "name": column.name,
            "in": "query",
            "description": format!("rows whose {} equals this value; `{}.gt|gte|lt|lte|ne` for ranges", column.name, column.name),
            "schema": { "type": "string" },
        }));
    }
    let rows = json!({ "type": "array", "items": { "type": "object" } });
    json!({
        "operationId": id,
        "summary": summary,
        "security": [{}, { "bearer": [] }],
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "the rows, at most `limit`, streamed",
                "headers": {
                    "X-Delta-Version": { "description": "the Delta version read", "schema": { "type": "integer" } },
                },
                "content": {
                    "application/json": { "schema": rows },
                    "application/x-ndjson": { "schema": { "type": "string" } },
                    "text/csv": { "schema": { "type": "string" } },
                    "application/vnd.apache.arrow.stream": { "schema": { "type": "string", "format": "binary" } },
                    "application/vnd.apache.parquet": { "schema": { "type": "string", "format": "binary" } },
                },
            },
            "400": problem_response("a parameter names no column, or a value does not fit its column"),
            "401": problem_response("a token is needed"),
            "403": problem_response("the token lacks the read scope"),
            "404": problem_response("no such table, or no data yet"),
            "406": problem_response("no format of Accept is served"),
            "410": problem_response("as_of_version names a version whose files were vacuumed"),
        },
    })
}

fn ingest_operation(table: &Table, record: &str, fast: bool) -> Value {
    let records = json!({
        "type": "object",
        "required": ["records"],
        "additionalProperties": false,
        "properties": { "records": { "type": "array", "items": { "$ref": format!("#/components/schemas/{record}") } } },
    });
    let report = json!({ "application/json": { "schema": { "$ref": "#/components/schemas/IngestReport" } } });
    let mut responses = json!({
        "400": problem_response("the body is not JSON or holds no record, or a bad parameter or Idempotency-Key"),
        "401": problem_response("a bearer token is needed"),
        "403": problem_response("the token lacks the ingest scope"),
        "404": problem_response("no such table"),
        "413": problem_response("the body or the number of records is over the limit"),
        "415": problem_response("an unsupported Content-Type"),
        "422": problem_response("the Idempotency-Key was used with another body, or quality checks stopped the pipeline"),
        "429": problem_response("too many ingests in flight; retry after Retry-After seconds"),
    });
    let mut parameters = vec![json!({
        "name": "Idempotency-Key",
        "in": "header",
        "description": "a retry with the same key and body appends nothing and answers the first request's offsets",
        "schema": { "type": "string", "maxLength": 255 },
    })];
    let summary = if fast {
        responses["200"] = json!({ "description": "(wait=visible) the records are visible in /staging and /curated; the refused ones are listed", "content": report });
        responses["202"] = json!({
            "description": "the records are durable on the topic (group commit); they become visible shortly",
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/DurableReport" } } },
        });
        parameters.push(json!({
            "name": "wait",
            "in": "query",
            "description": "durable (default): 202 once synced on the topic; visible: 200 once in silver and gold",
            "schema": { "type": "string", "enum": ["durable", "visible"] },
        }));
        format!(
            "send {} records to the topic in a group commit; bronze, silver and gold follow",
            table.name()
        )
    } else {
        responses["200"] = json!({ "description": "the records are visible in /staging and /curated; the refused ones are listed", "content": report });
        format!(
            "send {} records through topic, bronze, silver, the gold models that read it and the checks",
            table.name()
        )
    };
    json!({
        "operationId": format!("{}_{}", if fast { "ingest_fast" } else { "ingest" }, table.name()),
        "summary": summary,
        "security": [{ "bearer": [] }],
        "parameters": parameters,
        "requestBody": {
            "required": true,
            "content": {
                "application/json": { "schema": records },
                "application/x-ndjson": { "schema": { "type": "string" } },
            },
        },
        "responses": responses,
    })
}

/// A table's record as its idcard declares it (what /ingest takes).
fn record_schema(table: &Table) -> Value {
    let fields = table
        .columns
        .iter()
        .map(|c| (c.name.as_str(), &c.data_type, c.nullable));
    let mut schema = object_schema(fields);
    schema["description"] = table.config.description.clone().into();
    schema
}

/// An object of named, typed fields (a record or a struct value).
fn object_schema<'a>(fields: impl Iterator<Item = (&'a str, &'a ColumnType, bool)>) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, data_type, nullable) in fields {
        let schema = value_schema(data_type);
        if !nullable {
            required.push(name.to_owned());
        }
        properties.insert(
            name.to_owned(),
            if nullable { or_null(schema) } else { schema },
        );
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// The JSON Schema of one value of `data_type`.
fn value_schema(data_type: &ColumnType) -> Value {
    match data_type {
        ColumnType::String => json!({ "type": "string" }),
        ColumnType::Int => json!({ "type": "integer" }),
        ColumnType::Double => json!({ "type": "number" }),
        ColumnType::Decimal { precision, scale } => json!({
            "type": ["number", "string"],
            "description": format!("decimal({precision},{scale})"),
        }),
        ColumnType::Timestamp => json!({ "type": "string", "format": "date-time" }),
        ColumnType::Date => json!({ "type": "string", "format": "date" }),
        ColumnType::Bool => json!({ "type": "boolean" }),
        ColumnType::Struct(fields) => object_schema(
            fields
                .iter()
                .map(|f| (f.name.as_str(), &f.data_type, f.nullable)),
        ),
        ColumnType::List(item) => json!({ "type": "array", "items": or_null(value_schema(item)) }),
    }
}

/// `schema` that also admits null.
fn or_null(mut schema: Value) -> Value {
    let kinds = match schema["type"].take() {
        Value::Array(mut kinds) => {
            kinds.push("null".into());
            kinds
        }
        kind => vec![kind, "null".into()],
    };
    schema["type"] = Value::Array(kinds);
    schema
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": { "type": "string" },
            "title": { "type": "string" },
            "status": { "type": "integer" },
            "detail": { "type": "string" },
            "hint": { "type": "string" },
            "retry_after_s": { "type": "integer" },
        },
    })
}

fn offsets_schema() -> Value {
    json!({
        "type": "array",
        "description": "where each record landed on the topic, in request order",
        "items": {
            "type": "object",
            "required": ["partition", "offset"],
            "properties": { "partition": { "type": "integer" }, "offset": { "type": "integer" } },
        },
    })
}

fn durable_report_schema() -> Value {
    json!({
        "type": "object",
        "required": ["table", "records", "durable", "offsets", "replayed", "seconds"],
        "properties": {
            "table": { "type": "string" },
            "records": { "type": "integer" },
            "durable": { "type": "boolean" },
            "offsets": offsets_schema(),
            "replayed": { "type": "boolean" },
            "seconds": { "type": "number" },
        },
    })
}

fn ingest_report_schema() -> Value {
    let refused = json!({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["index", "reason"],
            "properties": { "index": { "type": "integer" }, "reason": { "type": "string" } },
        },
    });
    json!({
        "type": "object",
        "required": ["table", "records", "accepted", "rejected", "quarantined", "offsets", "replayed", "versions", "seconds"],
        "properties": {
            "table": { "type": "string" },
            "records": { "type": "integer" },
            "accepted": { "type": "integer" },
            "rejected": refused,
            "quarantined": refused,
            "offsets": offsets_schema(),
            "replayed": { "type": "boolean" },
            "versions": { "type": "object" },
            "seconds": { "type": "number" },
        },
    })
}
