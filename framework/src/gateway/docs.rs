//! `GET /docs`: the OpenAPI document as one self-contained HTML page (no script, nothing
//! fetched from elsewhere), rendered at start-up: every route with its summary, parameters and
//! record schema.

use std::fmt::Write as _;

use serde_json::Value;

/// The page for `openapi`.
pub fn page(openapi: &Value) -> String {
    let title = text(&openapi["info"]["title"]);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}\
         code,pre{{background:#f4f4f4}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}}\
         h3{{margin-top:2rem}}</style></head><body>\n<h1>{}</h1>\n<p>{}</p>\n\
         <p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {}).</p>\n",
        escape(&title),
        escape(&title),
        escape(&text(&openapi["info"]["description"])),
        escape(&text(&openapi["openapi"])),
    );
    let Some(paths) = openapi["paths"].as_object() else {
        out.push_str("</body></html>\n");
        return out;
    };
    out.push_str("<h2>Routes</h2>\n<ul>\n");
    for (path, operations) in paths {
        for method in operations.as_object().into_iter().flat_map(|o| o.keys()) {
            let _ = writeln!(
                out,
                "<li><a href=\"#{}\"><code>{} {}</code></a></li>",
                anchor(method, path),
                method.to_uppercase(),
                escape(path)
            );
        }
    }
    out.push_str("</ul>\n");
    for (path, operations) in paths {
        let Some(operations) = operations.as_object() else {
            continue;
        };
        for (method, operation) in operations {
            operation_section(&mut out, openapi, method, path, operation);
        }
    }
    out.push_str("</body></html>\n");
    out
}

fn operation_section(out: &mut String, openapi: &Value, method: &str, path: &str, op: &Value) {
    let _ = writeln!(
        out,
        "<h3 id=\"{}\"><code>{} {}</code></h3>\n<p>{}</p>",
        anchor(method, path),
        method.to_uppercase(),
        escape(path),
        escape(&text(&op["summary"]))
    );
    if let Some(parameters) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th>what</th></tr>\n");
        for parameter in parameters {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&text(&parameter["name"])),
                escape(&text(&parameter["in"])),
                escape(&schema_type(&parameter["schema"])),
                escape(&text(&parameter["description"]))
            );
        }
        out.push_str("</table>\n");
    }
    let body = &op["requestBody"]["content"]["application/json"]["schema"];
    let record = body["properties"]["records"]["items"]["$ref"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .map(|name| &openapi["components"]["schemas"][name]);
    if let Some(properties) = record.and_then(|r| r["properties"].as_object()) {
        out.push_str(
            "<p>Body: <code>{\"records\": [...]}</code> or NDJSON, each record:</p>\n\
             <table><tr><th>field</th><th>type</th><th>what</th></tr>\n",
        );
        for (field, schema) in properties {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(field),
                escape(&schema_type(schema)),
                escape(&text(&schema["description"]))
            );
        }
        out.push_str("</table>\n");
    }
    if let Some(responses) = op["responses"].as_object() {
        let listed: Vec<String> = responses
            .iter()
            .map(|(status, r)| format!("{status} {}", text(&r["description"])))
            .collect();
        let _ = writeln!(out, "<p>Answers: {}</p>", escape(&listed.join("; ")));
    }
}

/// A JSON Schema's type as text (`string`, `string | null`, `integer | "all"`, ...).
fn schema_type(schema: &Value) -> String {
    if let Some(choices) = schema["anyOf"].as_array() {
        return choices
            .iter()
            .map(|choice| match &choice["const"] {
                Value::Null => schema_type(choice),
                value => value.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" | ");
    }
    match &schema["type"] {
        Value::Array(types) => types.iter().map(text).collect::<Vec<_>>().join(" | "),
        other => text(other),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn anchor(method: &str, path: &str) -> String {
    format!("{method}{path}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_page_lists_routes_parameters_and_records_escaped() {
        let openapi = json!({
            "openapi": "3.1.0",
            "info": { "title": "gw", "description": "a <b> gateway" },
            "paths": {
                "/ingest/t": { "post": {
                    "summary": "take records",
                    "parameters": [{ "name": "wait", "in": "query", "schema": { "type": "string" } }],
                    "requestBody": { "content": { "application/json": { "schema": {
                        "properties": { "records": { "items": { "$ref": "#/components/schemas/t_record" } } }
                    } } } },
                    "responses": { "200": { "description": "visible" } },
                } },
            },
            "components": { "schemas": { "t_record": { "properties": {
                "id": { "type": "string", "description": "the key" },
                "n": { "type": ["integer", "null"] },
            } } } },
        });
        let page = super::page(&openapi);
        assert!(page.contains("a &lt;b&gt; gateway"), "{page}");
        assert!(page.contains("<code>POST /ingest/t</code>"), "{page}");
        assert!(page.contains("<td><code>wait</code></td><td>query</td><td>string</td>"));
        assert!(page.contains("<td><code>n</code></td><td>integer | null</td>"));
        assert!(page.contains("<td><code>id</code></td><td>string</td><td>the key</td>"));
        assert!(page.contains("Answers: 200 visible"));
    }
}
