//! The gateway over a real socket: `framework serve` as a child process, called by a Python
//! client (urllib; pyarrow reads the Arrow and Parquet bodies back), values checked against the
//! CSVs read with the `csv` crate.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

const TOKEN: &str = "test-token-4f1c";

/// A running `framework serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_within(&mut self.child, Duration::from_secs(10));
    }
}

/// Starts `framework serve` on a free port over `lake`, with `extra` arguments.
fn serve(lake: &Path, extra: &[&str]) -> Server {
    serve_with(framework(lake), extra)
}

/// Starts `framework serve` on a free port with `cmd`'s global options and `extra` arguments.
fn serve_with(cmd: Command, extra: &[&str]) -> Server {
    serve_logging_to(cmd, extra, Stdio::inherit())
}

/// [`serve_with`], the server's log going to `stderr`.
fn serve_logging_to(mut cmd: Command, extra: &[&str], stderr: Stdio) -> Server {
    cmd.args(["serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .env("FRAMEWORK_GATEWAY_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = cmd.spawn().expect("framework serve starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = match receiver.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("framework serve printed no address within 60 s");
        }
    };
    let address = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    Server {
        child,
        base: address,
    }
}

/// Sends `requests` with the Python client; returns `{status, headers, body}` per request.
fn http(requests: &[Value]) -> Vec<Value> {
    let script = repo().join("framework/tests/py/http_client.py");
    // In a file: a large body exceeds the argument list's limit.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), Value::Array(requests.to_vec()).to_string()).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(script).arg(format!("@{}", file.path().display()));
    let out = output_within(cmd, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "the Python client failed (FRAMEWORK_TEST_PYTHON must be the venv of scripts/env.sh: \
         `source scripts/env.sh && ensure_venv`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

fn get(server: &Server, path: &str, accept: &str) -> Value {
    json!({
        "url": format!("{}{path}", server.base),
        "headers": { "Accept": accept, "Authorization": format!("Bearer {TOKEN}") },
    })
}

/// A JSON `POST` of `body` to `route` with the token, and an `Idempotency-Key` when given.
fn post_json(server: &Server, route: &str, body: &Value, key: Option<&str>) -> Value {
    let mut headers = json!({
        "Content-Type": "application/json",
        "Authorization": format!("Bearer {TOKEN}"),
    });
    if let Some(key) = key {
        headers["Idempotency-Key"] = json!(key);
    }
    json!({
        "url": format!("{}{route}", server.base),
        "method": "POST",
        "headers": headers,
        "body": body.to_string(),
    })
}

/// The rows of a CSV file of the sample as maps.
fn csv_rows(file: &str) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(sample().join(file)).unwrap();
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

fn loaded_lake(dir: &Path) -> std::path::PathBuf {
    let lake = dir.join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--all", "--data"]).arg(sample());
    ok(run);
    lake
}

#[test]
fn every_layer_reads_back_in_every_format_with_filters_order_and_pinned_versions() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let server = serve(&lake, &[]);
    let orders = csv_rows("olist_orders_dataset.csv");
    let order = &orders[0];
    let id = &order["order_id"];
    let one = format!("/staging/orders?order_id={id}&columns=order_id,order_status,customer_id");
    let formats = [
        "application/json",
        "application/x-ndjson",
        "text/csv",
        "application/vnd.apache.arrow.stream",
        "application/vnd.apache.parquet",
    ];
    let mut requests: Vec<Value> = formats.iter().map(|f| get(&server, &one, f)).collect();
    // Payments of at least 1000, largest first.
    requests.push(get(
        &server,
        "/staging/payments?payment_value.gte=1000&columns=order_id,payment_value&order_by=-payment_value&limit=3",
        "application/json",
    ));
    requests.push(get(
        &server,
        "/raw/orders?limit=2&columns=order_id,_offset",
        "*/*",
    ));
    requests.push(get(
        &server,
        "/curated/gold_daily_sales?limit=1",
        "application/json",
    ));
    requests.push(get(&server, "/stats", "application/json"));
    requests.push(get(&server, "/health", "application/json"));
    requests.push(get(&server, "/ready", "application/json"));
    // Errors: unknown table, unknown column, a value of the wrong type, a format not served,
    // a limit that is not a number, a route that does not exist.
    requests.push(get(&server, "/staging/nope", "application/json"));
    requests.push(get(
        &server,
        "/staging/orders?colour=red",
        "application/json",
    ));
    requests.push(get(
        &server,
        "/staging/payments?payment_value.gt=abc",
        "application/json",
    ));
    requests.push(get(&server, "/staging/orders", "image/png"));
    requests.push(get(
        &server,
        "/staging/orders?limit=ten",
        "application/json",
    ));
    requests.push(get(&server, "/nowhere", "application/json"));
    let mut openapi = get(&server, "/openapi.json", "application/json");
    openapi["validate_openapi"] = json!(true);
    requests.push(openapi);
    // A whole table (several batches), streamed, in every format; an empty result in each.
    let all = "/raw/products?limit=all&columns=product_id&order_by=product_id";
    requests.extend(formats.iter().map(|f| get(&server, all, f)));
    let none = "/staging/orders?order_id=none&columns=order_id";
    requests.extend(formats.iter().map(|f| get(&server, none, f)));
    let responses = http(&requests);
    let spec = &responses[17];
    assert_eq!(spec["openapi_valid"], true, "{}", spec["openapi_error"]);
    // Generated from the idcards: every table's routes and its record schema.
    let paths = spec["body"]["paths"].as_object().unwrap();
    for table in project().names() {
        for route in ["raw", "staging", "rejects", "quarantine", "ingest"] {
            assert!(
                paths.contains_key(&format!("/{route}/{table}")),
                "/{route}/{table}"
            );
        }
    }
    let record = &spec["body"]["components"]["schemas"]["orders_record"];
    assert_eq!(
        record["properties"]["order_id"]["type"], "string",
        "{record}"
    );
    assert!(paths.contains_key("/curated/gold_daily_sales"));

    let expected = json!([{
        "order_id": id,
        "order_status": order["order_status"],
        "customer_id": order["customer_id"],
    }]);
    for (format, response) in formats.iter().zip(&responses) {
        assert_eq!(response["status"], 200, "{format}: {response}");
        assert_eq!(response["headers"]["content-type"], *format);
        assert_eq!(response["body"], expected, "{format}");
        assert!(response["headers"]["x-delta-version"].is_string());
    }

    let mut values: Vec<f64> = csv_rows("olist_order_payments_dataset.csv")
        .iter()
        .map(|r| r["payment_value"].parse::<f64>().unwrap())
        .filter(|v| *v >= 1000.0)
        .collect();
    values.sort_by(|a, b| b.partial_cmp(a).unwrap());
    values.dedup();
    let got: Vec<f64> = responses[5]["body"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["payment_value"].as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), 3, "{}", responses[5]);
    assert_eq!(got[0], values[0]);
    assert!(got.windows(2).all(|w| w[0] >= w[1]), "{got:?}");
    assert!(got.iter().all(|v| *v >= 1000.0));

    assert_eq!(responses[6]["body"].as_array().unwrap().len(), 2);
    assert_eq!(responses[7]["body"].as_array().unwrap().len(), 1);
    let stats = &responses[8]["body"];
    let distinct = distinct_keys_from_csv(&sample(), &project(), "orders");
    assert_eq!(
        stats["tables"]["orders"]["silver"]["rows"], distinct,
        "{stats}"
    );
    assert!(stats["gold"]["gold_daily_sales"]["version"].is_number());
    assert_eq!(responses[9]["body"]["status"], "ok");
    assert_eq!(responses[10]["body"]["ready"], true, "{}", responses[10]);

    let problem = |i: usize, status: u64, needle: &str| {
        let r = &responses[i];
        assert_eq!(r["status"], status, "{r}");
        assert_eq!(
            r["headers"]["content-type"], "application/problem+json",
            "{r}"
        );
        let detail = r["body"]["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{r}");
    };
    problem(11, 404, "/staging/nope: no such table");
    problem(12, 400, "no column `colour`");
    problem(
        13,
        400,
        "filter `payment_value`: `abc` is not a Decimal128(18, 2)",
    );
    problem(14, 406, "image/png");
    problem(15, 400, "`limit=ten`: not a whole number");
    problem(16, 404, "no such route");

    let mut whole: Vec<String> = csv_rows("olist_products_dataset.csv")
        .iter()
        .map(|p| p["product_id"].clone())
        .collect();
    whole.sort();
    assert!(
        whole.len() > 3 * 8192,
        "the table must span several batches"
    );
    for (format, response) in formats.iter().zip(&responses[18..23]) {
        assert_eq!(response["status"], 200, "{format}: {}", response["status"]);
        let got: Vec<&str> = response["body"]
            .as_array()
            .unwrap_or_else(|| panic!("{format}: {response}"))
            .iter()
            .map(|r| r["product_id"].as_str().unwrap())
            .collect();
        assert!(
            got == whole,
            "{format}: {} rows of {}",
            got.len(),
            whole.len()
        );
    }
    for (format, response) in formats.iter().zip(&responses[23..28]) {
        assert_eq!(response["status"], 200, "{format}: {response}");
        assert_eq!(response["body"], json!([]), "{format}: {response}");
    }

    // A pinned version reads the same rows after a later commit.
    let version = responses[0]["headers"]["x-delta-version"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut again = framework(&lake);
    again
        .args(["run", "--table", "orders", "--resend", "--data"])
        .arg(sample());
    ok(again);
    let pinned = http(&[
        get(
            &server,
            &format!("{one}&as_of_version={version}"),
            "application/json",
        ),
        get(&server, &one, "application/json"),
    ]);
    assert_eq!(pinned[0]["body"], expected);
    assert_eq!(pinned[0]["headers"]["x-delta-version"], version);
    assert_ne!(
        pinned[1]["headers"]["x-delta-version"], version,
        "no new version"
    );

    // A version past the latest is refused at once (the log was searched version by version up
    // to it: minutes for a large one); numbers past i64 are refused, not wrapped to -1.
    let started = Instant::now();
    let refused = http(&[
        get(&server, &format!("{one}&as_of_version=1000000000"), "*/*"),
        get(
            &server,
            &format!("{one}&as_of_version=18446744073709551615"),
            "*/*",
        ),
        get(&server, &format!("{one}&limit=18446744073709551615"), "*/*"),
        get(&server, "/staging/orders?columns=", "*/*"),
        get(
            &server,
            &format!("/staging/orders?order_id={id}&columns=order_id,%20order_id"),
            "*/*",
        ),
        get(&server, &many_filters(64), "*/*"),
        get(&server, &many_filters(65), "*/*"),
        // 1 500 of them overflowed a worker's stack and aborted the gateway.
        get(&server, &many_filters(1500), "*/*"),
        get(&server, &one, "application/json"),
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(refused[0]["status"], 404, "{}", refused[0]);
    let detail = refused[0]["body"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("has no version 1000000000"),
        "{}",
        refused[0]
    );
    for r in &refused[1..3] {
        assert_eq!(r["status"], 400, "{r}");
        let detail = r["body"]["detail"].as_str().unwrap();
        assert!(detail.contains("not a whole number from 0 to"), "{r}");
    }
    // A column list naming nothing is refused; a column named twice is read once.
    assert_eq!(refused[3]["status"], 400, "{}", refused[3]);
    assert_eq!(refused[3]["body"]["detail"], "`columns=`: names no column");
    assert_eq!(refused[4]["status"], 200, "{}", refused[4]);
    assert_eq!(refused[4]["body"], json!([{ "order_id": id }]));
    // At most 64 column filters in one read; the gateway answers on.
    assert_eq!(refused[5]["status"], 200, "{}", refused[5]);
    for r in &refused[6..8] {
        assert_eq!(r["status"], 400, "{r}");
        assert_eq!(
            r["body"]["detail"], "more than 64 column filters in one read",
            "{r}"
        );
    }
    assert_eq!(refused[8]["body"], expected, "{}", refused[8]);
}

/// A read of one order with `count` filters `order_status.ne=<n>`.
fn many_filters(count: usize) -> String {
    let filters: Vec<String> = (0..count).map(|n| format!("order_status.ne={n}")).collect();
    format!(
        "/staging/orders?{}&limit=1&columns=order_id",
        filters.join("&")
    )
}

#[test]
fn an_idcards_gateway_section_hides_its_routes_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    // The same project, with sellers showing two columns and the category translation not
    // exposed at all.
    let cards = dir.path().join("idcards");
    copy_dir(&idcards(), &cards);
    let append = |file: &str, section: &str| {
        let path = cards.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}{section}")).unwrap();
    };
    append(
        "sellers.yaml",
        "gateway:\n  columns: [seller_id, seller_state]\n",
    );
    append(
        "category_translation.yaml",
        "gateway: { read: false, ingest: false }\n",
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_framework"));
    cmd.arg("--idcards")
        .arg(&cards)
        .arg("--models")
        .arg(repo().join("models"))
        .arg("--expectations")
        .arg(repo().join("expectations"))
        .arg("--lake")
        .arg(&lake);
    let server = serve_with(cmd, &[]);
    let seller = &csv_rows("olist_sellers_dataset.csv")[0];
    let id = &seller["seller_id"];
    let post = |path: &str| {
        json!({
            "url": format!("{}{path}", server.base),
            "method": "POST",
            "headers": { "Authorization": format!("Bearer {TOKEN}"), "Content-Type": "application/json" },
            "body": "{\"records\": [{\"product_category_name\": \"x\", \"product_category_name_english\": \"y\"}]}",
        })
    };
    let mut requests = vec![
        get(
            &server,
            &format!("/staging/sellers?seller_id={id}"),
            "application/json",
        ),
        get(
            &server,
            "/raw/sellers?limit=1&columns=seller_id,_offset,_key",
            "application/json",
        ),
        get(
            &server,
            "/staging/sellers?seller_city=campinas",
            "application/json",
        ),
        get(
            &server,
            "/staging/sellers?columns=seller_city",
            "application/json",
        ),
        get(&server, "/raw/category_translation", "application/json"),
        get(&server, "/staging/category_translation", "application/json"),
        post("/ingest/category_translation"),
        post("/ingest_fast/category_translation"),
        get(&server, "/", "application/json"),
    ];
    let mut openapi = get(&server, "/openapi.json", "application/json");
    openapi["validate_openapi"] = json!(true);
    requests.push(openapi);
    requests.push(get(&server, "/docs", "text/html"));
    let responses = http(&requests);

    let docs = responses[10]["body"].as_str().expect("an HTML page");
    assert_eq!(
        responses[10]["headers"]["content-type"],
        "text/html; charset=utf-8"
    );
    assert!(
        docs.contains("<code>POST /ingest_fast/sellers</code>"),
        "{docs}"
    );
    assert!(docs.contains("<code>seller_state</code>") && !docs.contains("category_translation"));
    let rows = responses[0]["body"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{}", responses[0]);
    let row = rows[0].as_object().unwrap();
    let named: Vec<&str> = row
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with('_'))
        .collect();
    assert_eq!(named, ["seller_id", "seller_state"], "{row:?}");
    assert_eq!(row["seller_id"], *id);
    assert_eq!(row["seller_state"], seller["seller_state"]);
    let raw = responses[1]["body"][0].as_object().expect("a bronze row");
    assert!(
        !raw.contains_key("seller_city") && !raw.contains_key("seller_zip_code_prefix"),
        "{raw:?}"
    );
    // `_key` is selectable (a hidden column is a 400, as below); it is null for a record keyed
    // by its own key columns, and JSON leaves nulls out.
    assert_eq!(responses[1]["status"], 200, "{}", responses[1]);
    assert!(
        raw.contains_key("_offset") && raw.contains_key("seller_id"),
        "{raw:?}"
    );
    for i in [2, 3] {
        assert_eq!(responses[i]["status"], 400, "{}", responses[i]);
        assert!(
            responses[i]["body"]["detail"]
                .as_str()
                .unwrap()
                .contains("no column `seller_city`"),
            "{}",
            responses[i]
        );
    }
    for response in &responses[4..8] {
        assert_eq!(response["status"], 404, "{response}");
        let hint = response["body"]["hint"].as_str().unwrap_or_default();
        assert!(hint.contains("category_translation.yaml"), "{response}");
    }
    let routes: Vec<&str> = responses[8]["body"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(routes.contains(&"GET /staging/sellers"), "{routes:?}");
    assert!(
        !routes.iter().any(|r| r.contains("category_translation")),
        "{routes:?}"
    );
    let spec = &responses[9];
    assert_eq!(spec["openapi_valid"], true, "{}", spec["openapi_error"]);
    let paths = spec["body"]["paths"].as_object().unwrap();
    assert!(!paths.keys().any(|p| p.contains("category_translation")));
    let filters: Vec<&str> = paths["/staging/sellers"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        filters.contains(&"seller_state") && !filters.contains(&"seller_city"),
        "{filters:?}"
    );
}

/// `--max-records` is bounded: a request's record count sizes what the gateway reads back of a
/// Kafka topic's tags, so a limit past the ceiling (or zero) is refused at start, naming the range.
#[test]
fn serve_refuses_a_record_limit_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    for value in ["0", "100001", "many"] {
        let mut cmd = framework(dir.path());
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--max-records", value]);
        let out = output_within(cmd, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value}: {stderr}");
        assert!(
            stderr.contains("--max-records") && stderr.contains("from 1 to 100000"),
            "{value}: {stderr}"
        );
    }
}

#[test]
fn ingest_runs_the_pipeline_lists_the_refused_records_and_checks_tokens_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let server = serve(&lake, &["--max-body-bytes", "4000"]);
    let url = format!("{}/ingest/sellers", server.base);
    let post = |body: String, token: Option<&str>, kind: &str| {
        let mut headers = json!({ "Content-Type": kind });
        if let Some(token) = token {
            headers["Authorization"] = json!(format!("Bearer {token}"));
        }
        json!({ "url": url, "method": "POST", "headers": headers, "body": body })
    };
    let batch = json!({ "records": [
        { "seller_id": "gw-seller-1", "seller_zip_code_prefix": "1001", "seller_city": "sao paulo", "seller_state": "SP" },
        { "seller_id": "gw-seller-2", "seller_zip_code_prefix": 20040, "seller_city": "rio de janeiro", "seller_state": "RJ" },
        { "seller_id": "gw-seller-3", "seller_city": "x", "colour": "red" },
        [1, 2, 3],
    ]})
    .to_string();
    let ndjson = "{\"seller_id\": \"gw-seller-4\", \"seller_zip_code_prefix\": \"30130\", \"seller_city\": \"belo horizonte\", \"seller_state\": \"MG\"}\n".to_owned();
    let responses = http(&[
        post(batch.clone(), None, "application/json"),
        post(batch.clone(), Some("wrong"), "application/json"),
        post("x".repeat(5000), Some(TOKEN), "application/json"),
        post(
            "{\"records\": [".to_owned(),
            Some(TOKEN),
            "application/json",
        ),
        post(batch, Some(TOKEN), "application/json"),
        post(ndjson, Some(TOKEN), "application/x-ndjson"),
        get(
            &server,
            "/staging/sellers?seller_id.gte=gw-&order_by=seller_id&columns=seller_id,seller_zip_code_prefix,seller_state",
            "application/json",
        ),
        get(
            &server,
            "/rejects/sellers?columns=_source_line,_reason&order_by=_source_line",
            "application/json",
        ),
        // Reads need a token once tokens are configured.
        json!({ "url": format!("{}/staging/sellers", server.base) }),
    ]);
    assert_eq!(responses[0]["status"], 401, "{}", responses[0]);
    assert_eq!(responses[1]["status"], 401, "{}", responses[1]);
    assert_eq!(responses[2]["status"], 413, "{}", responses[2]);
    assert_eq!(responses[3]["status"], 400, "{}", responses[3]);
    assert!(
        responses[3]["body"]["detail"]
            .as_str()
            .unwrap()
            .contains("line 1 column 13"),
        "{}",
        responses[3]
    );

    let report = &responses[4];
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["body"]["records"], 4);
    assert_eq!(report["body"]["accepted"], 2);
    let rejected = report["body"]["rejected"].as_array().unwrap();
    let indices: Vec<u64> = rejected
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [2, 3], "{report}");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{report}"
    );
    assert!(report["body"]["versions"]["silver"].is_number(), "{report}");
    assert!(
        report["body"]["versions"]["gold"]["gold_seller_performance"].is_number(),
        "{report}"
    );
    assert_eq!(responses[5]["status"], 200, "{}", responses[5]);
    assert_eq!(responses[5]["body"]["accepted"], 1, "{}", responses[5]);

    // In silver, padded as the idcard says; the refused ones are not. The zip is PII: stored
    // encrypted, shown decrypted to this token (it holds every scope, `pii` included).
    assert_eq!(
        responses[6]["body"],
        json!([
            { "seller_id": "gw-seller-1", "seller_zip_code_prefix": "01001", "seller_state": "SP" },
            { "seller_id": "gw-seller-2", "seller_zip_code_prefix": "20040", "seller_state": "RJ" },
            { "seller_id": "gw-seller-4", "seller_zip_code_prefix": "30130", "seller_state": "MG" },
        ]),
        "{}",
        responses[6]
    );
    let rejects = responses[7]["body"].as_array().unwrap();
    assert_eq!(rejects.len(), 2, "{}", responses[7]);
    assert_eq!(responses[8]["status"], 401, "{}", responses[8]);
    // An equality filter on a deterministic PII column is encrypted and matched; a range is
    // refused; the lake itself holds the ciphertext.
    let more = http(&[
        get(
            &server,
            "/staging/sellers?seller_zip_code_prefix=01001&seller_id.gte=gw-&columns=seller_id,seller_zip_code_prefix",
            "application/json",
        ),
        get(
            &server,
            "/staging/sellers?seller_zip_code_prefix.gt=01001",
            "application/json",
        ),
    ]);
    assert_eq!(
        more[0]["body"],
        json!([{ "seller_id": "gw-seller-1", "seller_zip_code_prefix": "01001" }]),
        "{}",
        more[0]
    );
    assert_eq!(more[1]["status"], 400, "{}", more[1]);
    let stored = query(
        &lake,
        framework::lake::Layer::Silver,
        "sellers",
        "SELECT seller_zip_code_prefix FROM t WHERE seller_id = 'gw-seller-1'",
    );
    assert!(
        !stored.contains("01001") && stored.lines().count() == 5,
        "{stored}"
    );
}

#[test]
fn durable_ingests_become_visible_in_the_background_without_a_waiting_request() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let server = serve(&lake, &[]);
    // Three durable requests one after the other: the first starts a background refresh at
    // once, the later ones wait for the next (background refreshes are paced).
    three_durable_sellers(&server, "bg-");
    let expected =
        json!([{ "seller_id": "bg-1" }, { "seller_id": "bg-2" }, { "seller_id": "bg-3" }]);
    let started = Instant::now();
    let seen = sellers_within(
        &server,
        "staging",
        "bg-",
        &expected,
        Duration::from_secs(20),
    );
    assert_eq!(
        seen,
        expected,
        "durable records not visible {:?} after their acknowledgement",
        started.elapsed()
    );
}

/// SIGTERM while a background refresh runs (it starts at once after the first durable
/// request): the gateway lets the refresh under way finish, runs the one the later requests
/// wait for, and exits 0 with no panic; a new server then shows every acknowledged record.
#[test]
fn sigterm_lets_the_refreshes_finish_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let log = dir.path().join("serve.log");
    let mut server = serve_logging_to(
        framework(&lake),
        &[],
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    three_durable_sellers(&server, "term-");
    let term = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let status = wait_within(&mut server.child, Duration::from_secs(60))
        .expect("the gateway exits within 60 s of SIGTERM");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit {status:?}; log:\n{logged}");
    assert!(
        !logged.contains("panicked"),
        "a panic on SIGTERM:\n{logged}"
    );
    // Visible at once in a new server: the stopping one made them so (no catch-up needed).
    let server = serve(&lake, &[]);
    let path = "/staging/sellers?seller_id.gte=term-&seller_id.lt=term-~&order_by=seller_id&columns=seller_id";
    let seen = http(&[get(&server, path, "application/json")]).remove(0)["body"].clone();
    assert_eq!(
        seen,
        json!([{ "seller_id": "term-1" }, { "seller_id": "term-2" }, { "seller_id": "term-3" }])
    );
}

/// With `--vacuum-retention-s 1` the gateway deletes the files its refreshes removed (silver
/// sellers rewritten by an update, gold's previous builds) within seconds: each table's folder
/// then holds exactly the live files its log lists (read by the Python deltalake package), its
/// VACUUM commits say they deleted files, and every record is still there with its last
/// values. A read pinned to a version whose files are gone is a 410 saying so; one whose files
/// are all live still reads.
#[test]
fn the_gateway_vacuums_the_files_its_refreshes_removed_and_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let server = serve(&lake, &["--vacuum-retention-s", "1"]);
    let performance = "/curated/gold_seller_performance?order_by=seller_id&limit=all";
    let before = http(&[get(&server, performance, "application/json")]).remove(0);
    assert_eq!(before["status"], 200, "{before}");
    let version = |response: &Value| {
        response["headers"]["x-delta-version"]
            .as_str()
            .unwrap_or_else(|| panic!("{response}"))
            .to_owned()
    };
    let gold_before = version(&before);
    let sellers_before =
        version(&http(&[get(&server, "/staging/sellers?limit=1", "application/json")]).remove(0));
    // Three new sellers, then the first one moved: silver rewrites the file holding it.
    for (seller, city) in [
        ("vac-1", "sp"),
        ("vac-2", "sp"),
        ("vac-3", "sp"),
        ("vac-1", "rio"),
    ] {
        let body = json!({ "records": [
            { "seller_id": seller, "seller_zip_code_prefix": "01001", "seller_city": city, "seller_state": "SP" },
        ]});
        let answer = http(&[post_json(
            &server,
            "/ingest_fast/sellers?wait=visible",
            &body,
            None,
        )])
        .remove(0);
        assert_eq!(answer["status"], 200, "{answer}");
    }
    let tables = ["silver/sellers", "gold/gold_seller_performance"];
    let started = Instant::now();
    loop {
        let logs = live_and_vacuumed(&lake, &tables);
        let done = tables.iter().all(|table| {
            logs[table]["vacuumed"].as_u64() > Some(0)
                && logs[table]["live"] == json!(files_on_disk(&lake.join(table)))
        });
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not vacuumed 30 s after the last refresh: {logs:#} on disk: {:?}",
            tables.map(|t| files_on_disk(&lake.join(t)))
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let moved = http(&[get(
        &server,
        "/staging/sellers?seller_id.gte=vac-&seller_id.lt=vac-~&order_by=seller_id&columns=seller_id,seller_city",
        "application/json",
    )])
    .remove(0);
    assert_eq!(
        moved["body"],
        json!([
            { "seller_id": "vac-1", "seller_city": "rio" },
            { "seller_id": "vac-2", "seller_city": "sp" },
            { "seller_id": "vac-3", "seller_city": "sp" },
        ])
    );
    // Every seller of the sample and the three new ones in silver; gold rebuilt four times
    // over its vacuumed files, the same rows (the new sellers sold nothing).
    let staging = http(&[get(
        &server,
        "/staging/sellers?columns=seller_id&order_by=seller_id&limit=all",
        "application/json",
    )])
    .remove(0);
    let mut sellers: Vec<String> = csv_rows("olist_sellers_dataset.csv")
        .into_iter()
        .map(|row| row["seller_id"].clone())
        .chain((1..=3).map(|i| format!("vac-{i}")))
        .collect();
    sellers.sort();
    let staged: Vec<&str> = staging["body"]
        .as_array()
        .unwrap_or_else(|| panic!("{staging}"))
        .iter()
        .map(|row| row["seller_id"].as_str().unwrap())
        .collect();
    assert_eq!(staged, sellers);
    let after = http(&[get(&server, performance, "application/json")]).remove(0);
    assert_eq!(after["body"], before["body"]);
    assert!(after["body"].as_array().is_some_and(|rows| rows.len() > 10));
    // Gold's first build was replaced by each refresh, and vacuumed; silver's first version
    // still has every file (the update rewrote a file added after it).
    let pinned = http(&[
        get(
            &server,
            &format!("{performance}&as_of_version={gold_before}"),
            "application/json",
        ),
        get(
            &server,
            &format!("/staging/sellers?limit=all&as_of_version={sellers_before}"),
            "application/json",
        ),
    ]);
    assert_eq!(pinned[0]["status"], 410, "{}", pinned[0]);
    let detail = pinned[0]["body"]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("version {gold_before} can no longer be read"))
            && detail.contains("vacuumed"),
        "{detail}"
    );
    assert!(
        pinned[0]["body"]["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("--vacuum-retention-s")),
        "{}",
        pinned[0]
    );
    assert_eq!(pinned[1]["status"], 200, "{}", pinned[1]);
    assert_eq!(
        pinned[1]["body"].as_array().map(Vec::len),
        Some(sellers.len() - 3)
    );
}

/// Sellers `{prefix}1` to `{prefix}3`, one `/ingest_fast` request each, one after the other;
/// each answered 202 (durable).
fn three_durable_sellers(server: &Server, prefix: &str) {
    let requests: Vec<Value> = (1..=3)
        .map(|i| {
            let body = json!({ "records": [
                { "seller_id": format!("{prefix}{i}"), "seller_zip_code_prefix": "01001", "seller_city": "sp", "seller_state": "SP" },
            ]});
            post_json(server, "/ingest_fast/sellers", &body, None)
        })
        .collect();
    for response in http(&requests) {
        assert_eq!(response["status"], 202, "{response}");
    }
}

/// The sellers in `/{layer}` (`raw` or `staging`) whose id starts with `prefix`, in order, read
/// again until they are `expected` or `limit` has passed.
fn sellers_within(
    server: &Server,
    layer: &str,
    prefix: &str,
    expected: &Value,
    limit: Duration,
) -> Value {
    let started = Instant::now();
    let path = format!(
        "/{layer}/sellers?seller_id.gte={prefix}&seller_id.lt={prefix}~&order_by=seller_id&columns=seller_id"
    );
    loop {
        let seen = http(&[get(server, &path, "application/json")]).remove(0)["body"].clone();
        if seen == *expected || started.elapsed() > limit {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A wait for visibility is bounded (`serve --visible-timeout-s`): with silver's merge held up
/// for 4 s, both ingest routes answer 504 after 1 s, naming the offsets where the records are
/// durable, and the records still arrive in silver once the merge goes on.
#[test]
fn a_visibility_wait_past_its_limit_answers_504_and_the_records_arrive_later() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let mut cmd = framework(&lake);
    cmd.env("FRAMEWORK_PAUSE_AT", "silver-before-merge:sellers=4000");
    let server = serve_with(cmd, &["--visible-timeout-s", "1"]);
    let record = |id: &str| {
        json!({ "records": [
            { "seller_id": id, "seller_zip_code_prefix": "01001", "seller_city": "sp", "seller_state": "SP" },
        ]})
    };
    for (route, id) in [
        ("/ingest_fast/sellers?wait=visible", "late-1"),
        ("/ingest/sellers", "late-2"),
    ] {
        let started = Instant::now();
        let response = http(&[post_json(&server, route, &record(id), None)]).remove(0);
        let waited = started.elapsed();
        assert_eq!(response["status"], 504, "{route}: {response}");
        assert_eq!(
            response["headers"]["content-type"], "application/problem+json",
            "{response}"
        );
        let detail = response["body"]["detail"].as_str().unwrap();
        assert!(
            detail.contains("durable on the topic of sellers (offsets ")
                && detail.contains("not visible in silver and gold within 1 s")
                && response["body"]["hint"]
                    .as_str()
                    .is_some_and(|h| h.contains("the same Idempotency-Key")),
            "{response}"
        );
        assert!(
            waited < Duration::from_secs(4),
            "{route}: answered after {waited:?}"
        );
    }
    let expected = json!([{ "seller_id": "late-1" }, { "seller_id": "late-2" }]);
    let started = Instant::now();
    let seen = sellers_within(
        &server,
        "staging",
        "late-",
        &expected,
        Duration::from_secs(60),
    );
    assert_eq!(seen, expected, "after {:?}", started.elapsed());
}

/// A wait for durability is bounded too (`serve --durable-timeout-s`): with the table's first
/// group held 4 s before the topic, `/ingest_fast` answers 504 after 1 s, saying the records may
/// or may not be there. They land once the group goes on, and a retry with the same
/// Idempotency-Key is then acknowledged as a replay, without appending them twice.
#[test]
fn a_durability_wait_past_its_limit_answers_504_and_a_keyed_retry_appends_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let mut cmd = framework(&lake);
    cmd.env("FRAMEWORK_PAUSE_AT", "gateway-group:sellers:1=4000");
    let server = serve_with(cmd, &["--durable-timeout-s", "1"]);
    let body = json!({ "records": [
        { "seller_id": "slow-1", "seller_zip_code_prefix": "01001", "seller_city": "sp", "seller_state": "SP" },
    ]});
    let send = || {
        let started = Instant::now();
        let response = http(&[post_json(
            &server,
            "/ingest_fast/sellers",
            &body,
            Some("slow"),
        )])
        .remove(0);
        (response, started.elapsed())
    };
    let (response, waited) = send();
    assert_eq!(response["status"], 504, "{response}");
    assert_eq!(
        response["headers"]["content-type"], "application/problem+json",
        "{response}"
    );
    assert!(
        response["body"]["detail"].as_str().is_some_and(|d| d
            .contains("did not acknowledge them as durable on the topic within 1 s; they may or may not be there"))
            && response["body"]["hint"]
                .as_str()
                .is_some_and(|h| h.contains("the same Idempotency-Key")),
        "{response}"
    );
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}");
    let expected = json!([{ "seller_id": "slow-1" }]);
    let seen = sellers_within(&server, "raw", "slow-", &expected, Duration::from_secs(60));
    assert_eq!(seen, expected);
    let (retry, _) = send();
    assert_eq!(retry["status"], 202, "{retry}");
    assert_eq!(retry["body"]["replayed"], true, "{retry}");
    let seen = sellers_within(&server, "raw", "slow-", &expected, Duration::ZERO);
    assert_eq!(seen, expected, "the retry appended the record again");
}

/// A client that stops half-way through its headers or its body, or sends nothing at all, is
/// disconnected once `--idle-timeout-s` passes without a byte moving; a socket held forever
/// by such clients once left the gateway unable to answer `/health`. Others are served on.
#[test]
fn a_connection_that_stalls_is_closed_after_the_idle_timeout() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("lake"), &["--idle-timeout-s", "2"]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let stalls = [
        "GET /health HTTP/1.1\r\nHost: gw\r\n".to_owned(),
        format!(
            "POST /ingest/sellers HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"records\": ["
        ),
        String::new(),
    ];
    for stall in &stalls {
        let mut socket = std::net::TcpStream::connect(&address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        socket.write_all(stall.as_bytes()).unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        // The server closes the socket (after an answer, for the body cut short), or resets it.
        let ended = match socket.read_to_end(&mut answer) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        let waited = started.elapsed();
        assert!(
            ended && waited >= Duration::from_millis(1500) && waited < Duration::from_secs(9),
            "{stall:?}: ended {ended} after {waited:?}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let health = http(&[get(&server, "/health", "application/json")]).remove(0);
    assert_eq!(health["status"], 200, "{health}");
}

/// `clients` clients that wait for visibility, each sending `rounds` requests of one new seller
/// one after the other (`tests/py/visible_rounds.py`); checks that every request was answered 200.
fn visible_rounds(server: &Server, clients: usize, rounds: usize) {
    let config =
        json!({ "base": server.base, "token": TOKEN, "clients": clients, "rounds": rounds });
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("framework/tests/py/visible_rounds.py"))
        .arg(config.to_string());
    let out = output_within(cmd, Duration::from_secs(300));
    assert!(
        out.status.success(),
        "the clients failed (FRAMEWORK_TEST_PYTHON must be the venv of scripts/env.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert_eq!(summary["answered"], clients * rounds, "{summary}");
}

/// Eight clients that wait for visibility, each sending its next request as soon as it is
/// answered (`tests/py/visible_rounds.py`): a refresh lingers for the requests the last one
/// answered, so each serves all eight: ten rounds took 11 refreshes (silver commits; three
/// runs). Taking only what was queued when it started (no linger), the clients split into
/// groups served by alternate refreshes: 16-19.
#[test]
fn concurrent_clients_waiting_for_visibility_share_each_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let server = serve(&lake, &[]);
    let commits = || delta_commits(&lake.join("silver/sellers")).len();
    // The lane and its first refresh started before the rounds.
    let warm = json!({ "records": [
        { "seller_id": "warm-1", "seller_zip_code_prefix": "01001", "seller_city": "sp", "seller_state": "SP" },
    ]});
    let response = http(&[post_json(
        &server,
        "/ingest_fast/sellers?wait=visible",
        &warm,
        None,
    )]);
    assert_eq!(response[0]["status"], 200, "{}", response[0]);
    let before = commits();
    let (clients, rounds) = (8, 10);
    visible_rounds(&server, clients, rounds);
    let refreshes = commits() - before;
    eprintln!("{refreshes} refreshes for {rounds} rounds of {clients} clients");
    assert!(
        refreshes <= rounds + 2,
        "{refreshes} refreshes served {rounds} rounds of {clients} clients"
    );
}

/// The `index` of each record an answer lists as rejected or quarantined.
fn indexes(listed: &Value) -> Vec<u64> {
    let listed = listed.as_array().expect("a list of records");
    listed
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect()
}

/// `?wait=visible` names the records silver quarantined, request by request: one with a bad
/// order id, then one with none (its answer skips reading the quarantine table, which did not
/// change since before it was appended), then a bad one again (the table changed: read).
#[test]
fn visible_answers_name_the_quarantined_records_of_each_request_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let server = serve(&lake, &[]);
    let template = csv_rows("olist_orders_dataset.csv").remove(0);
    let order = |id: &str| {
        let mut row = template.clone();
        row.insert("order_id".into(), id.into());
        json!(row)
    };
    let good = |n: u32| format!("{n:032x}");
    let rounds = [
        (vec![order(&good(1)), order("not-an-order-id-1")], vec![1]),
        (vec![order(&good(2))], vec![]),
        (vec![order(&good(3))], vec![]),
        (vec![order("not-an-order-id-2"), order(&good(4))], vec![0]),
        (vec![order(&good(5))], vec![]),
    ];
    for (records, quarantined) in rounds {
        let body = json!({ "records": records });
        let answer = http(&[post_json(
            &server,
            "/ingest_fast/orders?wait=visible",
            &body,
            None,
        )])
        .remove(0);
        assert_eq!(answer["status"], 200, "{answer}");
        assert_eq!(
            indexes(&answer["body"]["quarantined"]),
            quarantined,
            "{answer}"
        );
        for q in answer["body"]["quarantined"].as_array().unwrap() {
            assert_eq!(q["reason"], "order_id_matches", "{answer}");
        }
        assert_eq!(
            answer["body"]["accepted"],
            records.len() - quarantined.len(),
            "{answer}"
        );
    }
}

#[test]
fn ingest_fast_acknowledges_durable_then_visible_and_a_retried_key_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let server = serve(&lake, &[]);
    let post = |query: &str, body: &Value, key: Option<&str>| {
        post_json(&server, &format!("/ingest_fast/sellers{query}"), body, key)
    };
    let first = json!({ "records": [
        { "seller_id": "fast-1", "seller_zip_code_prefix": "1001", "seller_city": "sao paulo", "seller_state": "SP" },
        { "seller_id": "fast-2", "seller_city": "x", "colour": "red" },
    ]});
    let other = json!({ "records": [
        { "seller_id": "fast-3", "seller_zip_code_prefix": "20040", "seller_city": "rio", "seller_state": "RJ" },
    ]});
    let visible = json!({ "records": [
        { "seller_id": "fast-4", "seller_zip_code_prefix": "30130", "seller_city": "bh", "seller_state": "MG" },
        { "seller_id": "fast-5", "seller_zip_code_prefix": "nope", "seller_city": "x", "seller_state": "XX", "extra": 1 },
    ]});
    let responses = http(&[
        post("", &first, Some("key-1")),
        post("", &first, Some("key-1")),
        post("", &other, Some("key-1")),
        post("?wait=visible", &visible, None),
        post("?wait=soon", &visible, None),
        get(
            &server,
            "/staging/sellers?seller_id.gte=fast-&seller_id.lt=fast-9&order_by=seller_id&columns=seller_id,seller_state",
            "application/json",
        ),
        get(
            &server,
            "/raw/sellers?seller_id.gte=fast-&seller_id.lt=fast-9&columns=seller_id,_partition,_offset&order_by=seller_id",
            "application/json",
        ),
    ]);
    let durable = &responses[0];
    assert_eq!(durable["status"], 202, "{durable}");
    assert_eq!(durable["body"]["durable"], true, "{durable}");
    assert_eq!(durable["body"]["replayed"], false, "{durable}");
    let offsets = durable["body"]["offsets"].as_array().unwrap();
    assert_eq!(offsets.len(), 2, "{durable}");
    // The retry: the first answer's offsets, nothing appended.
    let retry = &responses[1];
    assert_eq!(retry["status"], 202, "{retry}");
    assert_eq!(retry["body"]["replayed"], true, "{retry}");
    assert_eq!(
        retry["body"]["offsets"], durable["body"]["offsets"],
        "{retry}"
    );
    // The same key with another body.
    assert_eq!(responses[2]["status"], 422, "{}", responses[2]);
    // Visible: after it, silver holds this request's good record and the durable one before it.
    let report = &responses[3];
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["body"]["accepted"], 1, "{report}");
    assert_eq!(indexes(&report["body"]["rejected"]), [1], "{report}");
    assert!(
        report["body"]["versions"]["gold"]["gold_seller_performance"].is_number(),
        "{report}"
    );
    assert_eq!(responses[4]["status"], 400, "{}", responses[4]);
    assert_eq!(
        responses[5]["body"],
        json!([
            { "seller_id": "fast-1", "seller_state": "SP" },
            { "seller_id": "fast-4", "seller_state": "MG" },
        ]),
        "{}",
        responses[5]
    );
    // Bronze holds fast-1 once, at the offset the 202 gave.
    let raw = responses[6]["body"].as_array().unwrap();
    assert_eq!(raw.len(), 2, "{}", responses[6]);
    assert_eq!(raw[0]["seller_id"], "fast-1");
    assert_eq!(raw[0]["_partition"], offsets[0]["partition"]);
    assert_eq!(raw[0]["_offset"], offsets[0]["offset"]);
}

/// A late row through `?wait=visible`: a new item of a 2016 order, whose date lies far behind
/// `gold_daily_sales`' incremental window. When the answer comes, `/curated` shows the date with
/// one item more and its revenue (price and freight) added.
#[test]
fn a_visible_late_item_is_in_the_gold_row_of_its_old_date() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let server = serve(&lake, &[]);
    let orders = csv_rows("olist_orders_dataset.csv");
    let items = csv_rows("olist_order_items_dataset.csv");
    let mut delivered: Vec<(&str, &BTreeMap<String, String>)> = items
        .iter()
        .filter_map(|item| {
            let order = orders.iter().find(|o| o["order_id"] == item["order_id"])?;
            let bought = order["order_purchase_timestamp"].as_str();
            (order["order_status"] == "delivered").then_some((bought, item))
        })
        .collect();
    delivered.sort_by_key(|(bought, _)| *bought);
    let (bought, item) = delivered[0];
    assert!(bought.starts_with("2016"), "{bought}");
    let mut late = item.clone();
    late.insert("order_item_id".into(), "99".into());
    let day = format!(
        "/curated/gold_daily_sales?order_date={}&columns=total_orders,total_revenue,total_items",
        &bought[..10]
    );
    let responses = http(&[
        get(&server, &day, "application/json"),
        post_json(
            &server,
            "/ingest_fast/order_items?wait=visible",
            &json!({ "records": [late] }),
            None,
        ),
        get(&server, &day, "application/json"),
    ]);
    assert_eq!(responses[1]["status"], 200, "{}", responses[1]);
    let (before, after) = (&responses[0]["body"][0], &responses[2]["body"][0]);
    assert_eq!(after["total_orders"], before["total_orders"], "{after}");
    let count = |row: &Value| row["total_items"].as_u64().unwrap();
    assert_eq!(count(after), count(before) + 1, "{before} -> {after}");
    let cents = |text: &str| (text.parse::<f64>().unwrap() * 100.0).round() as i64;
    let money = |row: &Value| match &row["total_revenue"] {
        Value::String(text) => cents(text),
        other => cents(&other.to_string()),
    };
    let added = cents(&item["price"]) + cents(&item["freight_value"]);
    assert_eq!(money(after), money(before) + added, "{before} -> {after}");
}

/// The gateway on a Kafka bus (a real Tansu broker): `/ingest` and `/ingest_fast` put the
/// records on the topic through the idempotent producer and answer where the broker put them;
/// bronze holds them exactly there, silver the good ones, the reject table the bad one; an
/// Idempotency-Key is refused with a hint (the keys live beside the embedded log's topics).
#[test]
fn ingests_on_a_kafka_bus_land_where_the_broker_put_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = crate::kafka::Broker::start(dir.path());
    let lake = dir.path().join("lake");
    let mut load = framework(&lake);
    load.args(["--bus", &broker.url(), "run", "--all", "--data"])
        .arg(sample());
    ok(load);
    let mut cmd = framework(&lake);
    cmd.args(["--bus", &broker.url()]);
    let server = serve_with(cmd, &[]);
    let seller = |id: &str, city: &str| json!({ "seller_id": id, "seller_zip_code_prefix": "01001", "seller_city": city, "seller_state": "SP" });
    let post = |route: &str, records: Value, key: Option<&str>| {
        post_json(&server, route, &json!({ "records": records }), key)
    };
    let responses = http(&[
        post(
            "/ingest/sellers",
            json!([seller("kgw-1", "campinas"), { "seller_id": "kgw-2", "colour": "red" }, seller("kgw-3", "santos")]),
            None,
        ),
        post(
            "/ingest_fast/sellers",
            json!([seller("kgw-4", "osasco")]),
            None,
        ),
        post(
            "/ingest_fast/sellers?wait=visible",
            json!([seller("kgw-5", "guarulhos")]),
            None,
        ),
        get(
            &server,
            "/raw/sellers?seller_id.gte=kgw-&seller_id.lt=kgw-6&columns=seller_id,_partition,_offset&order_by=seller_id",
            "application/json",
        ),
        get(
            &server,
            "/staging/sellers?seller_id.gte=kgw-&seller_id.lt=kgw-6&columns=seller_id,seller_city&order_by=seller_id",
            "application/json",
        ),
        get(
            &server,
            "/rejects/sellers?columns=_partition,_offset,_reason&order_by=-_offset&limit=1",
            "application/json",
        ),
        get(&server, "/stats", "application/json"),
        // Last, so the lag above counts only the acknowledged-when-visible records.
        post(
            "/ingest_fast/sellers",
            json!([seller("kgw-6", "x")]),
            Some("k"),
        ),
    ]);
    let ingest = &responses[0];
    assert_eq!(ingest["status"], 200, "{ingest}");
    assert_eq!(ingest["body"]["accepted"], 2, "{ingest}");
    assert_eq!(ingest["body"]["rejected"][0]["index"], 1, "{ingest}");
    let durable = &responses[1];
    assert_eq!(durable["status"], 202, "{durable}");
    let visible = &responses[2];
    assert_eq!(visible["status"], 200, "{visible}");
    assert_eq!(visible["body"]["accepted"], 1, "{visible}");
    let keyed = &responses[7];
    assert_eq!(keyed["status"], 202, "{keyed}");
    assert_eq!(keyed["body"]["replayed"], false, "{keyed}");
    // Where the broker put each record, as the answers said.
    let at = |response: &Value, i: usize| response["body"]["offsets"][i].clone();
    let raw: Vec<(String, Value)> = responses[3]["body"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", responses[3]))
        .iter()
        .map(|r| {
            (
                r["seller_id"].as_str().unwrap().to_owned(),
                json!({ "partition": r["_partition"], "offset": r["_offset"] }),
            )
        })
        .collect();
    assert_eq!(
        raw,
        vec![
            ("kgw-1".to_owned(), at(ingest, 0)),
            ("kgw-3".to_owned(), at(ingest, 2)),
            ("kgw-4".to_owned(), at(durable, 0)),
            ("kgw-5".to_owned(), at(visible, 0)),
        ],
        "bronze"
    );
    assert_eq!(
        responses[4]["body"],
        json!([
            { "seller_id": "kgw-1", "seller_city": "campinas" },
            { "seller_id": "kgw-3", "seller_city": "santos" },
            { "seller_id": "kgw-4", "seller_city": "osasco" },
            { "seller_id": "kgw-5", "seller_city": "guarulhos" },
        ]),
        "{}",
        responses[4]
    );
    let reject = &responses[5]["body"][0];
    assert_eq!(
        json!({ "partition": reject["_partition"], "offset": reject["_offset"] }),
        at(ingest, 1),
        "{reject}"
    );
    assert!(
        reject["_reason"].as_str().unwrap().contains("colour"),
        "{reject}"
    );
    // The topic ends one past the last record, from the broker; bronze stored all of it.
    let lag = &responses[6]["body"]["tables"]["sellers"]["lag"];
    let end = at(visible, 0)["offset"].as_u64().unwrap() + 1;
    assert_eq!(
        lag,
        &json!({ "messages": 0, "partitions": [{ "partition": 0, "end": end, "stored": end, "lag": 0 }] }),
        "{lag}"
    );
    idempotency_keys_on_kafka_survive_a_lost_keys_line_and_a_partial_send(
        &broker,
        &lake,
        server,
        &keyed["body"],
    );
}

/// The rest of the Kafka gateway test: a retried `Idempotency-Key` appends nothing, also after
/// a restart whose keys file lost the request (a crash between the broker's acknowledgement and
/// the file's line: the tags on the topic tell); a request whose send reached the topic for
/// some records only (one sent here by hand, with its tag) appends exactly the others.
fn idempotency_keys_on_kafka_survive_a_lost_keys_line_and_a_partial_send(
    broker: &crate::kafka::Broker,
    lake: &Path,
    server: Server,
    first: &Value,
) {
    use framework::bus::{Batch, KafkaBus};
    use framework::gateway::{kafka_keys, keys::Idempotency};

    let seller = json!({ "records": [{ "seller_id": "kgw-6", "seller_zip_code_prefix": "01001", "seller_city": "x", "seller_state": "SP" }] });
    let again = http(&[post_json(
        &server,
        "/ingest_fast/sellers",
        &seller,
        Some("k"),
    )]);
    assert_eq!(again[0]["status"], 202, "{}", again[0]);
    assert_eq!(again[0]["body"]["replayed"], true, "{}", again[0]);
    assert_eq!(
        again[0]["body"]["offsets"], first["offsets"],
        "{}",
        again[0]
    );
    // A group without keys moves the keys file's ends too (a second after the last line), so
    // the topic read on the next open starts past it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let unkeyed = json!({ "records": [{ "seller_id": "kgw-7", "seller_zip_code_prefix": "01001", "seller_city": "x", "seller_state": "SP" }] });
    let plain = http(&[post_json(&server, "/ingest_fast/sellers", &unkeyed, None)]);
    assert_eq!(plain[0]["status"], 202, "{}", plain[0]);
    let keys_file = lake.join("_gateway/gateway-keys/raw_sellers.jsonl");
    let text = std::fs::read_to_string(&keys_file).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let placed = &plain[0]["body"]["offsets"][0];
    assert_eq!(
        last["ends"][placed["partition"].as_u64().unwrap() as usize],
        placed["offset"].as_u64().unwrap() + 1,
        "the keys file's ends past the unkeyed group: {text}"
    );
    drop(server);
    // The keys file as a crash right after the acknowledgement leaves it: without the request,
    // its `ends` before the request's record.
    let before = first["offsets"][0]["offset"].as_u64().unwrap();
    std::fs::write(
        &keys_file,
        format!(
            "{{\"at\":{},\"keys\":[],\"ends\":[{before}]}}\n",
            chrono_now()
        ),
    )
    .unwrap();
    // Three payments in one request; the second reached the topic in an earlier attempt.
    let payment = |order: &str| json!({ "order_id": order, "payment_sequential": 1, "payment_type": "voucher", "payment_installments": 1, "payment_value": "10.00" });
    let payments = json!({ "records": [payment("kgw-p1"), payment("kgw-p2"), payment("kgw-p3")] });
    let project = project();
    let table = project.table("payments").unwrap();
    let records: Vec<Value> = payments["records"].as_array().unwrap().clone();
    let mut all = Batch::default();
    framework::gateway::ingest::push_messages(table, &mut None, &records, 3, &mut all);
    let second = all.iter().nth(1).unwrap();
    let mut half = Batch::default();
    half.push(second.key, second.value, second.timestamp_ms);
    // Tags carry the digests sealed with the state dir's secret.
    let secret: [u8; 32] = std::fs::read(lake.join("_gateway/gateway-keys/secret"))
        .unwrap()
        .try_into()
        .unwrap();
    let id = kafka_keys::seal(
        &secret,
        &Idempotency::new("payments", "kp", payments.to_string().as_bytes()),
    );
    let kafka = KafkaBus::new(broker.url().trim_start_matches("kafka://"), Vec::new());
    // The keys file of the attempt that sent it: the topic's ends before it.
    let ends = kafka.topic_ends("raw_payments").unwrap();
    std::fs::write(
        lake.join("_gateway/gateway-keys/raw_payments.jsonl"),
        format!(
            "{{\"at\":{},\"keys\":[],\"ends\":{ends:?}}}\n",
            chrono_now()
        ),
    )
    .unwrap();
    let early = kafka
        .send_placed("raw_payments", &half, &[Some(kafka_keys::tag(&id, 1, 3))])
        .unwrap()[0];
    // Three sellers of one request acknowledged in one batch, the last on the topic, whose keys
    // line a crash lost (the file's ends are still before them, see above). Tansu reports a
    // partition's end as one past the first offset of its last batch: the open must read the
    // batch whole to find the three tags, or the retry appends two of them again.
    let sellers = json!({ "records": [
        { "seller_id": "kgw-8", "seller_zip_code_prefix": "01001", "seller_city": "x", "seller_state": "SP" },
        { "seller_id": "kgw-9", "seller_zip_code_prefix": "01001", "seller_city": "x", "seller_state": "SP" },
        { "seller_id": "kgw-10", "seller_zip_code_prefix": "01001", "seller_city": "x", "seller_state": "SP" },
    ] });
    let seller_id = kafka_keys::seal(
        &secret,
        &Idempotency::new("sellers", "k3", sellers.to_string().as_bytes()),
    );
    let mut three = Batch::default();
    let seller_records: Vec<Value> = sellers["records"].as_array().unwrap().clone();
    framework::gateway::ingest::push_messages(
        project.table("sellers").unwrap(),
        &mut None,
        &seller_records,
        1,
        &mut three,
    );
    let three_tags: Vec<Option<String>> = (0..3)
        .map(|i| Some(kafka_keys::tag(&seller_id, i, 3)))
        .collect();
    let landed: Vec<Value> = kafka
        .send_placed("raw_sellers", &three, &three_tags)
        .unwrap()
        .into_iter()
        .map(|(partition, offset)| json!({ "partition": partition, "offset": offset }))
        .collect();
    let mut cmd = framework(lake);
    cmd.args(["--bus", &broker.url()]);
    let server = serve_with(cmd, &[]);
    let responses = http(&[
        post_json(
            &server,
            "/ingest_fast/sellers?wait=visible",
            &seller,
            Some("k"),
        ),
        post_json(
            &server,
            "/ingest_fast/payments?wait=visible",
            &payments,
            Some("kp"),
        ),
        post_json(&server, "/ingest_fast/payments", &payments, Some("kp")),
        get(
            &server,
            "/raw/sellers?seller_id=kgw-6&columns=seller_id,_partition,_offset",
            "application/json",
        ),
        get(
            &server,
            "/raw/payments?order_id.gte=kgw-p&order_id.lt=kgw-q&columns=order_id,_partition,_offset&order_by=order_id",
            "application/json",
        ),
        post_json(&server, "/ingest_fast/sellers", &sellers, Some("k3")),
        // A record larger than the producer sends: a 413 of its own request.
        post_json(
            &server,
            "/ingest_fast/sellers",
            &json!({ "records": [{ "seller_id": "kgw-big", "seller_zip_code_prefix": "01001", "seller_city": "x".repeat(1_100_000), "seller_state": "SP" }] }),
            None,
        ),
    ]);
    let found = &responses[5];
    assert_eq!(found["status"], 202, "{found}");
    assert_eq!(
        (&found["body"]["replayed"], &found["body"]["offsets"]),
        (&json!(true), &json!(landed)),
        "the three records found past the broker's reported end: {found}"
    );
    let big = &responses[6];
    assert_eq!(big["status"], 413, "{big}");
    assert!(
        big["body"]["detail"]
            .as_str()
            .unwrap()
            .contains("message.max.bytes"),
        "{big}"
    );
    let replay = &responses[0];
    assert_eq!(replay["status"], 200, "{replay}");
    assert_eq!(
        replay["body"]["replayed"], true,
        "found by its tag: {replay}"
    );
    assert_eq!(replay["body"]["offsets"], first["offsets"], "{replay}");
    let partial = &responses[1];
    assert_eq!(partial["status"], 200, "{partial}");
    assert_eq!(
        partial["body"]["offsets"][1],
        json!({ "partition": early.0, "offset": early.1 }),
        "the record already on the topic keeps its place: {partial}"
    );
    let retried = &responses[2];
    assert_eq!(retried["body"]["replayed"], true, "{retried}");
    assert_eq!(
        retried["body"]["offsets"], partial["body"]["offsets"],
        "{retried}"
    );
    // Each record once in bronze, where the answers said.
    assert_eq!(
        responses[3]["body"],
        json!([{ "seller_id": "kgw-6", "_partition": first["offsets"][0]["partition"], "_offset": first["offsets"][0]["offset"] }]),
        "{}",
        responses[3]
    );
    let offsets = &partial["body"]["offsets"];
    let place = |i: usize| {
        (
            offsets[i]["partition"].clone(),
            offsets[i]["offset"].clone(),
        )
    };
    let raw: Vec<(Value, (Value, Value))> = responses[4]["body"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", responses[4]))
        .iter()
        .map(|r| {
            (
                r["order_id"].clone(),
                (r["_partition"].clone(), r["_offset"].clone()),
            )
        })
        .collect();
    assert_eq!(
        raw,
        vec![
            (json!("kgw-p1"), place(0)),
            (json!("kgw-p2"), place(1)),
            (json!("kgw-p3"), place(2)),
        ],
        "bronze"
    );
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `/stats` tells what bronze has not stored of each topic: with bronze held before its store
/// (stall point `bronze-before-store`), a durable ingest of two records is a lag of two.
#[test]
fn stats_shows_the_messages_bronze_has_not_stored_yet() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let mut stalled = framework(&lake);
    stalled.env("FRAMEWORK_STALL_AT", "bronze-before-store");
    let server = serve_with(stalled, &[]);
    let records = json!({ "records": [
        { "seller_id": "lag-1", "seller_zip_code_prefix": "01001", "seller_city": "x", "seller_state": "SP" },
        { "seller_id": "lag-2", "seller_zip_code_prefix": "01001", "seller_city": "y", "seller_state": "SP" },
    ]});
    let responses = http(&[
        post_json(&server, "/ingest_fast/sellers", &records, None),
        get(&server, "/stats", "application/json"),
    ]);
    assert_eq!(responses[0]["status"], 202, "{}", responses[0]);
    let first = responses[0]["body"]["offsets"][0]["offset"]
        .as_u64()
        .unwrap();
    let lag = &responses[1]["body"]["tables"]["sellers"]["lag"];
    assert_eq!(
        lag,
        &json!({ "messages": 2, "partitions": [{ "partition": 0, "end": first + 2, "stored": first, "lag": 2 }] }),
        "{lag}"
    );
}

/// The engine turns transparent huge pages off for its process (see `framework::memory`): the
/// kernel reports it in the process's status.
#[cfg(target_os = "linux")]
#[test]
fn the_engine_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("lake"), &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .expect("a kernel that reports THP_enabled (Linux 5.0+)");
    assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
}

/// The async runtime's threads of `server` (workers and blocking-pool threads alike are named
/// `tokio-rt-worker`), from /proc.
#[cfg(target_os = "linux")]
fn runtime_threads(server: &Server) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.child.id())).unwrap();
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

/// A burst of requests grows the runtime's blocking pool (file reads and writes, lease waits):
/// 16 clients waiting for visibility left 40-110 threads, each holding the memory its allocator
/// heap had freed, for the pool's default 10 s keep-alive, which a steady load never reached,
/// so the server's memory grew for a minute (see `memory::THREAD_KEEP_ALIVE`). Once the
/// burst is answered, the idle threads end within seconds: the runtime is back to its workers
/// and at most two more.
#[cfg(target_os = "linux")]
#[test]
fn a_burst_leaves_no_idle_threads_behind() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let server = serve(&lake, &[]);
    visible_rounds(&server, 16, 4);
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let answered = Instant::now();
    let mut seen = Vec::new();
    loop {
        let threads = runtime_threads(&server);
        seen.push(threads);
        if threads <= workers + 2 {
            break;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(5),
            "the runtime kept {threads} threads ({workers} workers) 5 s after the burst; \
             counts every 100 ms: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The embedded log appends a group one partition after the other. A crash after the first
/// partition's block (crash point `log-between-partitions`), then a retry with the same
/// Idempotency-Key after a restart: the retry appends exactly the records that did not reach
/// the log, so bronze and silver hold each record once, at the offsets the retry answers.
#[test]
fn a_crash_between_the_partitions_of_a_group_then_a_retry_leaves_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let ids: Vec<String> = (0..12).map(|i| format!("split-{i:02}")).collect();
    let body = json!({ "records": ids.iter().map(|id| json!({
        "customer_id": id,
        "customer_unique_id": format!("person-{id}"),
        "customer_zip_code_prefix": "01001",
        "customer_city": "sao paulo",
        "customer_state": "SP",
    })).collect::<Vec<_>>() });
    let post = |server: &Server, query: &str| {
        let route = format!("/ingest_fast/customers{query}");
        post_json(server, &route, &body, Some("split-batch"))
    };
    let mut crashing = framework(&lake);
    crashing.env("FRAMEWORK_CRASH_AT", "log-between-partitions");
    let mut server = serve_with(crashing, &[]);
    let cut = http(&[post(&server, "")]);
    assert_eq!(
        cut[0]["status"],
        Value::Null,
        "no answer expected: {}",
        cut[0]
    );
    let exit = wait_within(&mut server.child, Duration::from_secs(30))
        .expect("the server aborts at the crash point");
    assert!(!exit.success());
    drop(server);

    let server = serve(&lake, &[]);
    let responses = http(&[
        post(&server, "?wait=visible"),
        post(&server, ""),
        get(
            &server,
            "/raw/customers?customer_id.gte=split-&customer_id.lt=split-z&columns=customer_id,_partition,_offset&order_by=customer_id&limit=100",
            "application/json",
        ),
        get(
            &server,
            "/staging/customers?customer_id.gte=split-&customer_id.lt=split-z&columns=customer_id&order_by=customer_id&limit=100",
            "application/json",
        ),
    ]);
    let retry = &responses[0];
    assert_eq!(retry["status"], 200, "{retry}");
    assert_eq!(retry["body"]["accepted"], 12, "{retry}");
    let offsets = retry["body"]["offsets"].as_array().unwrap().clone();
    assert_eq!(offsets.len(), 12, "{retry}");
    let partitions: std::collections::BTreeSet<u64> = offsets
        .iter()
        .map(|o| o["partition"].as_u64().unwrap())
        .collect();
    assert!(
        partitions.len() > 1,
        "the batch must span partitions: {retry}"
    );
    // A second retry appends nothing and answers the same offsets.
    assert_eq!(responses[1]["status"], 202, "{}", responses[1]);
    assert_eq!(responses[1]["body"]["replayed"], true, "{}", responses[1]);
    assert_eq!(responses[1]["body"]["offsets"], json!(offsets));
    let raw: Vec<(String, Value)> = responses[2]["body"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", responses[2]))
        .iter()
        .map(|r| {
            (
                r["customer_id"].as_str().unwrap().to_owned(),
                json!({ "partition": r["_partition"], "offset": r["_offset"] }),
            )
        })
        .collect();
    let expected: Vec<(String, Value)> = ids.iter().cloned().zip(offsets).collect();
    assert_eq!(
        raw, expected,
        "bronze holds each record once, where the retry said"
    );
    let staged: Vec<&str> = responses[3]["body"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(staged, ids);
}

/// 32 clients on /ingest, /ingest_fast and /ingest_fast?wait=visible for 30 s, then ten SIGKILLs
/// of the server under the same load, each followed by a restart; clients resend what got no
/// answer with the same Idempotency-Key. The Python `deltalake` reader then finds every
/// acknowledged good record once in bronze and silver, every bad one once in the reject table,
/// and nothing else (see `tests/py/gateway_load.py`). The server vacuums every second, so the
/// embedded log gives back what bronze stored while appends, refreshes and kills go on.
#[test]
fn a_gateway_killed_under_load_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = loaded_lake(dir.path());
    let serve = ["--vacuum-retention-s", "1"];
    load_with_kills(&lake, &[], &serve, 32, 30, 10);
    let released = (0..3).any(|p| lake.join(format!("_bus/raw_orders/p{p}.start")).exists());
    assert!(released, "the vacuums released nothing from raw_orders");
}

/// `framework/tests/py/gateway_load.py` against `framework serve` on `lake` (with the global
/// options `global` and serve's options `serve`): `clients` clients for `load_s` seconds, then
/// `kills` SIGKILLs under load; its audit of the lake must pass.
fn load_with_kills(
    lake: &Path,
    global: &[&str],
    serve: &[&str],
    clients: u32,
    load_s: u32,
    kills: u32,
) {
    let command: Vec<String> = {
        let mut cmd = framework(lake);
        cmd.args(global);
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    };
    let config = json!({
        "command": command,
        "lake": lake,
        "token": TOKEN,
        "sample_orders": sample().join("olist_orders_dataset.csv"),
        "clients": clients,
        "load_s": load_s,
        "kills": kills,
        "serve_args": serve,
    });
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("framework/tests/py/gateway_load.py"))
        .arg(config.to_string());
    let out = output_within(cmd, Duration::from_secs(900));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the load test failed (FRAMEWORK_TEST_PYTHON must be the venv of scripts/env.sh):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).expect("a JSON summary");
    assert_eq!(summary["kills"], kills, "{summary}");
    assert_eq!(summary["problem_count"], 0, "{summary}");
    assert!(summary["bad"].as_u64().unwrap() > 0, "{summary}");
    // Some requests were cut by a kill and answered on a retry with the same key.
    let retried: u64 = summary["per_route"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["retried"].as_u64().unwrap())
        .sum();
    assert!(retried > 0, "{summary}");
    eprintln!("{summary}");
}

/// The same load and kills on a Kafka bus (Tansu): the keys of the retried requests are settled
/// from the keys file and the tags on the topic ([`framework::gateway::kafka_keys`]).
#[test]
fn a_gateway_on_kafka_killed_under_load_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = crate::kafka::Broker::start(dir.path());
    // A short group session: a killed gateway's bronze member leaves the group within seconds.
    let bus = broker.fast_group_url();
    let lake = dir.path().join("lake");
    let mut load = framework(&lake);
    load.args(["--bus", &bus, "run", "--all", "--data"])
        .arg(sample());
    ok(load);
    load_with_kills(&lake, &["--bus", &bus], &[], 16, 20, 10);
}

#[test]
fn a_nested_table_ingests_and_reads_back_in_its_shape_and_csv_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--table", "customer_profiles", "--data"])
        .arg(sample());
    ok(run);
    let server = serve(&lake, &[]);
    let profile = json!({
        "customer_unique_id": "gw-profile-1",
        "updated_at": "2018-05-01T10:00:00Z",
        "address": { "zip_code_prefix": "01001", "city": "sao paulo", "state": "SP" },
        "contacts": [{ "kind": "email", "value": "gw@example.com", "verified": true }],
        "preferences": { "newsletter": true, "channels": ["email"] },
        "tags": ["gateway"],
    });
    let mut broken = profile.clone();
    broken["customer_unique_id"] = json!("gw-profile-2");
    broken["contacts"][0]["kind"] = Value::Null;
    let responses = http(&[
        post_json(
            &server,
            "/ingest/customer_profiles",
            &json!({ "records": [profile, broken] }),
            None,
        ),
        get(
            &server,
            "/staging/customer_profiles?customer_unique_id=gw-profile-1&columns=customer_unique_id,address,contacts,preferences,tags",
            "application/json",
        ),
        get(&server, "/staging/customer_profiles?limit=1", "text/csv"),
        get(
            &server,
            "/staging/customer_profiles?columns=customer_unique_id&customer_unique_id=gw-profile-1",
            "text/csv",
        ),
    ]);
    let report = &responses[0];
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["body"]["accepted"], 1, "{report}");
    assert_eq!(
        report["body"]["rejected"][0]["reason"],
        "column `contacts`: at `contacts[0].kind`: null in a non-nullable field",
        "{report}"
    );
    // The shape is kept; this token holds the `pii` scope, so the nested PII leaves are shown
    // decrypted, while the lake holds their ciphertext.
    let row = &responses[1]["body"][0];
    assert_eq!(
        row["preferences"],
        json!({ "newsletter": true, "channels": ["email"] }),
        "{row}"
    );
    assert_eq!(row["tags"], json!(["gateway"]), "{row}");
    assert_eq!(
        row["address"],
        json!({ "zip_code_prefix": "01001", "city": "sao paulo", "state": "SP" }),
        "{row}"
    );
    assert_eq!(
        row["contacts"],
        json!([{ "kind": "email", "value": "gw@example.com", "verified": true }]),
        "{row}"
    );
    let stored = query(
        &lake,
        framework::lake::Layer::Silver,
        "customer_profiles",
        "SELECT get_field(contacts[1], 'value') AS v, get_field(address, 'city') AS c FROM t WHERE customer_unique_id = 'gw-profile-1'",
    );
    assert!(
        !stored.contains("gw@example.com") && !stored.contains("sao paulo"),
        "{stored}"
    );

    assert_eq!(responses[2]["status"], 406, "{}", responses[2]);
    let detail = responses[2]["body"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("CSV cannot hold the nested columns address, contacts, preferences, tags"),
        "{detail}"
    );
    assert_eq!(responses[3]["status"], 200, "{}", responses[3]);
}
