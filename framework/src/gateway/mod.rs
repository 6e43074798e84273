//! `framework serve`: the HTTP gateway, a thin shell over the same library calls as the CLI.
//!
//! Routes come from the idcards and the models at start-up (a new idcard is a new set of
//! routes, no code): reads of every layer ([`read`]), `POST /ingest/{table}` ([`ingest`]),
//! `/health`, `/ready` and `/stats`. Every error is RFC 9457 problem+json ([`problem`]); writes
//! need a bearer token ([`auth`]). [`app`] builds the router, testable without a socket;
//! [`serve`] runs it on a listener until the shutdown future completes.

pub mod auth;
pub mod docs;
pub mod guard;
pub mod ingest;
pub mod kafka_keys;
pub mod keys;
pub mod lanes;
pub mod openapi;
pub mod problem;
pub mod read;
pub mod upkeep;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};

use crate::bronze::BronzeOptions;
use crate::bus::Bus;
use crate::gold::{BuildOptions, Models};
use crate::idcard::Project;
use crate::lake::{Lake, Layer};
use crate::pipeline::{RunOptions, Stage};
use crate::quality::Checks;
use crate::silver::SilverOptions;
use crate::source::ProduceOptions;

use auth::{Scope, Tokens};
use problem::Problem;

/// The most records one ingest request may hold, whatever `--max-records` says: a Kafka tag
/// counting more is not the gateway's, and the keys read back from a topic are sized by it.
pub const RECORDS_CEILING: usize = 100_000;

/// Limits of the gateway.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of a request body (413 above).
    pub max_body_bytes: usize,
    /// Records of one ingest request (413 above); at most [`RECORDS_CEILING`].
    pub max_records: usize,
    /// Ingest requests in flight at once (429 with `Retry-After` above).
    pub max_ingests: usize,
    /// How long an ingest waits for its records to be visible (504 past it: they are durable
    /// and become visible later).
    pub visible_timeout: std::time::Duration,
    /// How long an ingest waits for its records to be durable on the topic (504 past it: they
    /// may or may not be; a retry with the same Idempotency-Key appends them at most once).
    pub durable_timeout: std::time::Duration,
    /// How long a connection may wait on a read or a write without a byte moving before it is
    /// closed (a client that stops mid-request, sends nothing, or never reads its answer). The
    /// server reads a connection while it answers too, so this exceeds both timeouts above.
    pub idle_timeout: std::time::Duration,
}

impl Limits {
    /// The idle timeout that outlasts the longest answer: the longer of the two waits, plus
    /// 30 s.
    pub fn idle_after_waits(&self) -> std::time::Duration {
        self.visible_timeout.max(self.durable_timeout) + std::time::Duration::from_secs(30)
    }
}

impl Default for Limits {
    fn default() -> Self {
        let mut limits = Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_records: 10_000,
            max_ingests: 64,
            visible_timeout: std::time::Duration::from_secs(120),
            durable_timeout: std::time::Duration::from_secs(30),
            idle_timeout: std::time::Duration::ZERO,
        };
        limits.idle_timeout = limits.idle_after_waits();
        limits
    }
}

/// The answer to an ingest whose records are durable at `positions` but did not become
/// visible within the gateway's limit.
pub(crate) fn not_visible_in_time(
    table: &str,
    positions: &[lanes::Position],
    limit: std::time::Duration,
) -> Problem {
    Problem::timeout(format!(
        "the records are durable on the topic of {table} (offsets {}), but were not visible in silver and gold within {} s; the pipeline goes on without this request",
        ingest::offsets_text(positions),
        limit.as_secs_f64()
    ))
    .with_hint(format!(
        "read them later from /staging/{table} (a record a check keeps out is in /rejects/{table} or /quarantine/{table}), or send the request again with the same Idempotency-Key to wait again without appending twice"
    ))
}

/// The answer to an ingest whose records the table's committer did not acknowledge as durable
/// within the gateway's limit (a disk or a broker that does not answer).
pub(crate) fn not_durable_in_time(table: &str, limit: std::time::Duration) -> Problem {
    Problem::timeout(format!(
        "the records were handed to the committer of {table}, but it did not acknowledge them as durable on the topic within {} s; they may or may not be there",
        limit.as_secs_f64()
    ))
    .with_hint(format!(
        "send the request again with the same Idempotency-Key: records already on the topic are not appended twice (without a key, look for them in /raw/{table} first)"
    ))
}

/// What every request shares: the project, the lake, the bus, the tokens and the limits.
pub struct Gateway {
    pub project: Project,
    pub models: Models,
    pub checks: Checks,
    pub lake: Lake,
    pub bus: Bus,
    pub tokens: Tokens,
    pub limits: Limits,
    /// The data keys of PII columns, encrypted before the topic as the producer does.
    pub keys: Arc<crate::pii::Keyring>,
    /// The gateway's own files (on a Kafka bus, the idempotency keys; see [`kafka_keys`]).
    pub state_dir: Option<std::path::PathBuf>,
    /// How long files removed from a table stay on disk before [`upkeep::vacuum`] deletes
    /// them; `None`: never.
    pub vacuum_retention: Option<std::time::Duration>,
    /// `/openapi.json`, generated from the idcards and models at start-up.
    openapi: serde_json::Value,
    /// `/docs`, the same as an HTML page.
    docs: String,
    ingests: tokio::sync::Semaphore,
    turns: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Each table's committer and refresher, started on its first ingest; `None` once
    /// [`Gateway::stop`] has run.
    lanes: std::sync::Mutex<Option<HashMap<String, lanes::Lanes>>>,
    /// When each lane thread ends, for [`Gateway::stop`].
    lane_threads: std::sync::Mutex<Vec<lanes::Ended>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("tables", &self.project.names())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(
        project: Project,
        models: Models,
        checks: Checks,
        lake: Lake,
        bus: Bus,
        tokens: Tokens,
        limits: Limits,
    ) -> Self {
        let openapi = openapi::document(&project, &models);
        Self {
            docs: docs::page(&openapi),
            openapi,
            ingests: tokio::sync::Semaphore::new(limits.max_ingests.max(1)),
            project,
            keys: Arc::default(),
            state_dir: lake.local_root().map(|root| root.join("_gateway")),
            vacuum_retention: Some(DEFAULT_VACUUM_RETENTION),
            models,
            checks,
            lake,
            bus,
            tokens,
            limits,
            turns: std::sync::Mutex::new(HashMap::new()),
            lanes: std::sync::Mutex::new(Some(HashMap::new())),
            lane_threads: std::sync::Mutex::default(),
        }
    }

    /// The data keys PII columns are encrypted with (none by default: a project without PII).
    pub fn with_keys(mut self, keys: Arc<crate::pii::Keyring>) -> Self {
        self.keys = keys;
        self
    }

    /// Deletes the files removed from a table `retention` after their removal (`None`: keeps
    /// them; see [`upkeep`]).
    pub fn with_vacuum_retention(mut self, retention: Option<std::time::Duration>) -> Self {
        self.vacuum_retention = retention;
        self
    }

    /// Keeps the gateway's own files in `dir` (default: `_gateway` in a local lake, none for a
    /// lake on an object store).
    pub fn with_state_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        if dir.is_some() {
            self.state_dir = dir;
        }
        self
    }

    /// `table`'s lanes, started on first use (see [`lanes`]).
    fn lanes(self: &Arc<Self>, table: &crate::idcard::Table) -> Result<lanes::Lanes, Problem> {
        let mut all = self.lanes.lock().expect("the lanes map is never poisoned");
        let Some(all) = all.as_mut() else {
            return Err(Problem::unavailable("the gateway is shutting down"));
        };
        if let Some(found) = all.get(table.name()) {
            return Ok(found.clone());
        }
        let (started, ended) = lanes::Lanes::start(self, table).map_err(|e| {
            Problem::internal(format!("starting the lanes of {}: {e}", table.name()))
        })?;
        all.insert(table.name().to_owned(), started.clone());
        self.lane_threads
            .lock()
            .expect("the lane threads are never poisoned")
            .extend(ended);
        Ok(started)
    }

    /// Stops taking ingests and lets each table's lanes finish: the committer what it holds,
    /// the refresher the refresh under way and the one its queue still asks for (durable
    /// records become visible before the process ends). Waits for them up to `within`; a lane
    /// still running then is named in a warning (what it did not finish, the next start does:
    /// its records are durable on the topic). Called once the server has answered its requests.
    pub fn stop(&self, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        // Dropping the map's lanes (the requests' clones are gone) closes their queues.
        drop(
            self.lanes
                .lock()
                .expect("the lanes map is never poisoned")
                .take(),
        );
        let threads = std::mem::take(
            &mut *self
                .lane_threads
                .lock()
                .expect("the lane threads are never poisoned"),
        );
        for ended in threads {
            if let Err(thread) = ended.wait_until(deadline) {
                tracing::warn!(
                    "{thread} still running {within:?} after the shutdown began; stopping anyway \
                     (its records are on the topic: the next start makes them visible)"
                );
            }
        }
    }

    /// Brings every table whose topic holds messages up to date in the background: what was
    /// acknowledged as durable before a crash becomes visible without a new request.
    fn catch_up(self: &Arc<Self>) {
        for table in &self.project.tables {
            let has_messages = match &self.bus {
                Bus::Embedded(_) => self
                    .bus
                    .ends(table.topic())
                    .is_ok_and(|ends| ends.iter().any(|&end| end > 0)),
                // Every existing topic: its refresh reads what bronze has not stored, if any.
                Bus::Kafka(kafka) => kafka.partitions(table.topic()).is_ok(),
            };
            if has_messages && let Ok(lanes) = self.lanes(table) {
                lanes.kick();
            }
        }
    }

    /// The table's turn to run the pipeline in this process, held until dropped.
    async fn turn(&self, table: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut turns = self.turns.lock().expect("the turns map is never poisoned");
            turns.entry(table.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// How an ingest runs the pipeline: what is on the topic, up to gold, no progress bars.
    fn run_options(&self) -> RunOptions {
        RunOptions {
            data: PathBuf::new(),
            produce: false,
            resend: false,
            produce_options: ProduceOptions {
                delay: false,
                simulate: false,
                seed: 0,
                limit: None,
                keys: self.keys.clone(),
            },
            bronze_options: BronzeOptions::sole_reader(),
            silver_options: SilverOptions {
                keys: self.keys.clone(),
                ..SilverOptions::default()
            },
            until: Stage::Gold,
            progress: false,
            build_options: BuildOptions {
                keys: self.keys.clone(),
                ..BuildOptions::default()
            },
        }
    }

    fn table(&self, name: &str) -> Result<&crate::idcard::Table, Problem> {
        self.project.table(name).ok_or_else(|| {
            Problem::not_found(format!("no table `{name}`"))
                .with_hint(format!("tables: {}", self.project.names().join(", ")))
        })
    }
}

/// The router over `gateway`.
pub fn app(gateway: Arc<Gateway>) -> Router {
    let body_limit = gateway.limits.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/stats", get(stats))
        .route("/openapi.json", get(openapi_route))
        .route("/docs", get(docs_route))
        .route("/ingest/{table}", post(ingest_route))
        .route("/ingest_fast/{table}", post(ingest_fast_route))
        .route("/quality/results", get(quality_results))
        .route("/{layer}/{table}", get(read_route))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(gateway)
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // In the background: on Kafka each table's probe is a request to the brokers.
    let catching_up = gateway.clone();
    tokio::task::spawn_blocking(move || catching_up.catch_up());
    let upkeep = gateway
        .vacuum_retention
        .map(|retention| tokio::spawn(upkeep::vacuum(Arc::downgrade(&gateway), retention)));
    let listener = guard::GuardedListener::new(listener, gateway.limits.idle_timeout);
    let served = axum::serve(listener, app(gateway.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    // A vacuum cut short leaves its files to the next one (each of its commits is atomic).
    if let Some(upkeep) = upkeep {
        upkeep.abort();
    }
    served?;
    // The lanes' threads run on this runtime: they finish before it ends.
    let stopping = tokio::task::spawn_blocking(move || gateway.stop(STOP_WITHIN));
    stopping.await.map_err(std::io::Error::other)
}

/// How long removed files stay before the gateway vacuums them, unless `serve
/// --vacuum-retention-s` says otherwise.
pub const DEFAULT_VACUUM_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long a stopping gateway waits for its lanes (a refresh of a large delivery can take
/// seconds; an orchestrator's grace period before SIGKILL is usually 30 s).
const STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

async fn not_found() -> Problem {
    Problem::not_found("no such route").with_hint("GET / lists the routes")
}

async fn index(State(gateway): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    let tables = gateway.project.names();
    let models: Vec<&str> = gateway
        .models
        .models
        .iter()
        .filter(|m| m.config.materialized.is_stored())
        .map(|m| m.name.as_str())
        .collect();
    let mut routes: Vec<String> = vec![
        "GET /openapi.json".into(),
        "GET /docs".into(),
        "GET /health".into(),
        "GET /ready".into(),
        "GET /stats".into(),
        "GET /quality/results".into(),
    ];
    for table in &gateway.project.tables {
        let (name, exposure) = (table.name(), &table.config.gateway);
        if exposure.read {
            for layer in ["raw", "staging", "rejects", "quarantine"] {
                routes.push(format!("GET /{layer}/{name}"));
            }
        }
        if exposure.ingest {
            routes.push(format!("POST /ingest/{name}"));
            routes.push(format!("POST /ingest_fast/{name}"));
        }
    }
    for model in &models {
        routes.push(format!("GET /curated/{model}"));
    }
    Json(serde_json::json!({
        "tables": tables,
        "models": models,
        "layers": read::routes(),
        "routes": routes,
    }))
}

async fn openapi_route(State(gateway): State<Arc<Gateway>>) -> Json<serde_json::Value> {
    Json(gateway.openapi.clone())
}

async fn docs_route(State(gateway): State<Arc<Gateway>>) -> axum::response::Html<String> {
    axum::response::Html(gateway.docs.clone())
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Whether the lake and the bus answer, per component: 200 when both do, else 503.
async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    let lake = match gateway.lake.local_root() {
        Some(root) => match std::fs::create_dir_all(root) {
            Ok(()) => Ok(format!("folder {}", root.display())),
            Err(e) => Err(format!("folder {}: {e}", root.display())),
        },
        None => {
            let probe = gateway.project.tables.first().map(|t| t.name().to_owned());
            match probe {
                Some(table) => match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    gateway.lake.open(Layer::Silver, &table),
                )
                .await
                {
                    Ok(Ok(_)) => Ok("object store reachable".to_owned()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer within 5 s".to_owned()),
                },
                None => Ok("no table to probe".to_owned()),
            }
        }
    };
    let bus = {
        let bus = gateway.bus.clone();
        let topic = gateway.project.tables.first().map(|t| t.topic().to_owned());
        let probe = tokio::task::spawn_blocking(move || match (&bus, topic) {
            (Bus::Embedded(_), _) => Ok("embedded log".to_owned()),
            (Bus::Kafka(_), Some(topic)) => match bus.partitions(&topic) {
                Ok(_) | Err(crate::bus::Error::UnknownTopic { .. }) => {
                    Ok("Kafka brokers answer".to_owned())
                }
                Err(e) => Err(e.to_string()),
            },
            (Bus::Kafka(_), None) => Ok("no topic to probe".to_owned()),
        });
        match tokio::time::timeout(std::time::Duration::from_secs(10), probe).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 10 s".to_owned()),
        }
    };
    let component = |r: &Result<String, String>| match r {
        Ok(detail) => serde_json::json!({ "ready": true, "detail": detail }),
        Err(error) => serde_json::json!({ "ready": false, "error": error }),
    };
    let all = lake.is_ok() && bus.is_ok();
    let body = serde_json::json!({
        "ready": all,
        "components": { "lake": component(&lake), "bus": component(&bus) },
    });
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Per table and layer (and per gold model): version, files, bytes, rows and the latest commit.
async fn stats(State(gateway): State<Arc<Gateway>>) -> Result<Json<serde_json::Value>, Problem> {
    let lake = &gateway.lake;
    let internal = |e: crate::lake::Error| Problem::internal(e.to_string());
    let mut tables = serde_json::Map::new();
    for table in &gateway.project.tables {
        let mut layers = serde_json::Map::new();
        for layer in [
            Layer::Bronze,
            Layer::Reject,
            Layer::Silver,
            Layer::Quarantine,
        ] {
            let stats = lake.stats(layer, table.name()).await.map_err(internal)?;
            layers.insert(
                layer.dir().to_owned(),
                serde_json::to_value(stats).unwrap_or_default(),
            );
        }
        layers.insert("lag".to_owned(), lag(&gateway, table).await?);
        tables.insert(table.name().to_owned(), layers.into());
    }
    let mut models = serde_json::Map::new();
    for model in &gateway.models.models {
        if let Some(stats) = lake
            .stats(Layer::Gold, &model.name)
            .await
            .map_err(internal)?
        {
            models.insert(
                model.name.clone(),
                serde_json::to_value(stats).unwrap_or_default(),
            );
        }
    }
    Ok(Json(
        serde_json::json!({ "tables": tables, "gold": models }),
    ))
}

/// What bronze has not stored yet of the table's topic, per partition and in all: the topic's
/// end against the offsets bronze recorded. `null` when the topic does not exist yet.
async fn lag(
    gateway: &Gateway,
    table: &crate::idcard::Table,
) -> Result<serde_json::Value, Problem> {
    let topic = table.topic().to_owned();
    let bus = gateway.bus.clone();
    // A Kafka bus asks the brokers: off the async threads.
    let ends = tokio::task::spawn_blocking(move || bus.ends(&topic))
        .await
        .map_err(|e| Problem::internal(e.to_string()))?;
    let Ok(ends) = ends else {
        return Ok(serde_json::Value::Null);
    };
    let cursor = crate::offsets::Cursor::new(
        crate::offsets::Stage::Bronze,
        table.topic(),
        ends.len() as u32,
    );
    let stored = cursor
        .read(&gateway.lake, Layer::Bronze, table.name())
        .await
        .map_err(|e| Problem::internal(e.to_string()))?;
    let partitions: Vec<serde_json::Value> = ends
        .iter()
        .enumerate()
        .map(|(p, &end)| {
            let stored = stored.next(p as u32).max(0) as u64;
            serde_json::json!({ "partition": p, "end": end, "stored": stored, "lag": end.saturating_sub(stored) })
        })
        .collect();
    let total: u64 = partitions.iter().filter_map(|p| p["lag"].as_u64()).sum();
    Ok(serde_json::json!({ "messages": total, "partitions": partitions }))
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Runs a handler's work, turning a panic (a bug) into a 500 problem instead of a dropped
/// connection; the panic itself goes to the server's log.
async fn guarded(
    work: impl std::future::Future<Output = Result<Response, Problem>> + Send,
) -> Result<Response, Problem> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(Problem::internal(
                "the gateway failed on this request (a bug: its log has the details)",
            ))
        })
}

async fn read_route(
    State(gateway): State<Arc<Gateway>>,
    Path((route, table)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    guarded(read_table(gateway, route, table, params, headers)).await
}

async fn read_table(
    gateway: Arc<Gateway>,
    route: String,
    table: String,
    params: Vec<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Some(layer) = read::layer_of(&route) else {
        return Err(Problem::not_found(format!("no route /{route}"))
            .with_hint("GET /raw|staging|curated|rejects|quarantine/{table}; GET / lists them"));
    };
    // The idcard that owns the table (a `latest_by` table is its idcard's).
    let owner = gateway
        .project
        .tables
        .iter()
        .find(|t| t.name() == table || t.config.latest_by.iter().any(|l| l.name == table));
    let known = if layer == Layer::Gold {
        gateway.models.get(&table).is_some()
    } else {
        owner.is_some()
    };
    if let Some(owner) = owner
        && layer != Layer::Gold
        && !owner.config.gateway.read
    {
        return Err(Problem::not_found(format!(
            "/{route}/{table}: the table is not exposed for reading"
        ))
        .with_hint(format!(
            "its idcard ({}) says `gateway: {{read: false}}`",
            owner.file.display()
        )));
    }
    if !known {
        let names = if layer == Layer::Gold {
            gateway.models.names().join(", ")
        } else {
            gateway.project.names().join(", ")
        };
        return Err(
            Problem::not_found(format!("/{route}/{table}: no such table"))
                .with_hint(format!("known: {names}")),
        );
    }
    gateway
        .tokens
        .allow(authorization(&headers), Scope::Read, &table)?;
    let shown = match owner {
        Some(owner) if layer != Layer::Gold => {
            let exposure = owner.config.gateway.clone();
            let key = owner.key().to_vec();
            read::Shown::Some(Box::new(move |column: &str| exposure.shows(column, &key)))
        }
        _ => read::Shown::All,
    };
    // The table's PII columns, shown decrypted to a caller holding its `pii` scope.
    let decrypt = match owner {
        Some(owner)
            if matches!(layer, Layer::Bronze | Layer::Silver)
                && gateway
                    .tokens
                    .allow(authorization(&headers), Scope::Pii, &table)
                    .is_ok() =>
        {
            let columns = pii_columns(&gateway.project, owner);
            let nested: Vec<String> = owner
                .columns
                .iter()
                .filter(|c| !c.nested_pii.is_empty())
                .map(|c| c.name.clone())
                .collect();
            (!columns.is_empty() || !nested.is_empty()).then(|| read::Decrypt {
                keys: gateway.keys.clone(),
                columns,
                nested,
            })
        }
        _ => None,
    };
    read::read(
        &gateway.lake,
        read::ReadRequest {
            layer,
            table,
            params,
            shown,
            decrypt,
        },
        &headers,
    )
    .await
}

/// The encrypted columns of `table`'s tables: its own PII columns and those its enrichment
/// brings from another table's PII columns; each with its domain when deterministic.
fn pii_columns(
    project: &Project,
    table: &crate::idcard::Table,
) -> std::collections::BTreeMap<String, Option<String>> {
    crate::pii::encrypted_columns(project, table)
        .into_iter()
        .map(|(name, pii)| {
            let domain =
                (pii.mode == crate::pii::PiiMode::Deterministic).then(|| pii.domain.clone());
            (name, domain)
        })
        .collect()
}

async fn quality_results(
    State(gateway): State<Arc<Gateway>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    gateway
        .tokens
        .allow(authorization(&headers), Scope::Read, "quality")?;
    guarded(async {
        read::read(
            &gateway.lake,
            read::ReadRequest {
                layer: Layer::Quality,
                table: crate::quality::RESULTS_TABLE.to_owned(),
                params,
                shown: read::Shown::All,
                decrypt: None,
            },
            &headers,
        )
        .await
    })
    .await
}

async fn ingest_route(
    State(gateway): State<Arc<Gateway>>,
    Path(table): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    guarded(ingest_table(gateway, table, None, headers, body)).await
}

async fn ingest_fast_route(
    State(gateway): State<Arc<Gateway>>,
    Path(table): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let wait = match params
        .iter()
        .find(|(k, _)| k == "wait")
        .map(|(_, v)| v.as_str())
    {
        None | Some("durable") => Wait::Durable,
        Some("visible") => Wait::Visible,
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "wait={other}: not a known acknowledgement"
            ))
            .with_hint("wait=durable (the default: 202 once on the topic) or wait=visible (200 once in silver and gold)"));
        }
    };
    if let Some((unknown, _)) = params.iter().find(|(k, _)| k != "wait") {
        return Err(
            Problem::bad_request(format!("unknown parameter `{unknown}`"))
                .with_hint("/ingest_fast takes `wait=durable|visible`"),
        );
    }
    guarded(ingest_table(gateway, table, Some(wait), headers, body)).await
}

/// When `/ingest_fast` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// 202 once the records are synced on the topic.
    Durable,
    /// 200 once they are in silver and gold.
    Visible,
}

/// Longest `Idempotency-Key` taken.
const MAX_KEY_LEN: usize = 255;

/// The request's `Idempotency-Key`, for `table` and this body.
fn idempotency(
    headers: &HeaderMap,
    table: &str,
    body: &[u8],
) -> Result<Option<keys::Idempotency>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "the Idempotency-Key header must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(keys::Idempotency::new(table, key, body)))
}

/// `/ingest` (`wait` = `None`: the pipeline with its checks, in the request) and
/// `/ingest_fast` (group commit; the refresher makes the records visible).
async fn ingest_table(
    gateway: Arc<Gateway>,
    table: String,
    wait: Option<Wait>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let started = std::time::Instant::now();
    let config = gateway.table(&table)?.clone();
    if !config.config.gateway.ingest {
        return Err(
            Problem::not_found(format!("table `{table}` does not take records")).with_hint(
                format!(
                    "its idcard ({}) says `gateway: {{ingest: false}}`",
                    config.file.display()
                ),
            ),
        );
    }
    gateway
        .tokens
        .allow(authorization(&headers), Scope::Ingest, &table)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large(format!(
                "the body is over the gateway's limit of {} bytes",
                gateway.limits.max_body_bytes
            ))
            .with_hint("split the batch into smaller requests")
        } else {
            Problem::bad_request(format!("reading the body: {rejection}"))
        }
    })?;
    let Ok(_permit) = gateway.ingests.try_acquire() else {
        return Err(Problem::too_many(
            format!(
                "{} ingest requests are in flight, the most this gateway takes",
                gateway.limits.max_ingests
            ),
            1,
        ));
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let records = ingest::parse_body(content_type, &body)?;
    let idempotency = idempotency(&headers, &table, &body)?;
    if idempotency.is_some() && matches!(gateway.bus, Bus::Kafka(_)) && gateway.state_dir.is_none()
    {
        return Err(Problem::unprocessable(
            "Idempotency-Key on a Kafka bus needs a local folder for the gateway's keys, and \
             the lake is on an object store",
        )
        .with_hint("start the gateway with --state-dir DIR (a persistent local folder)"));
    }
    let Some(wait) = wait else {
        let report = ingest::ingest(&gateway, &config, records, idempotency).await?;
        return Ok(Json(report).into_response());
    };
    ingest::check_count(&records, gateway.limits.max_records)?;
    let count = records.len();
    let lanes = gateway.lanes(&config)?;
    let refused_before = lanes.refused_versions();
    let appended = lanes.append(records, idempotency, true).await?;
    match wait {
        Wait::Durable => Ok((
            StatusCode::ACCEPTED,
            Json(ingest::DurableReport {
                table,
                records: count,
                durable: true,
                offsets: appended.positions,
                replayed: appended.replayed,
                seconds: started.elapsed().as_secs_f64(),
            }),
        )
            .into_response()),
        Wait::Visible => {
            let limit = gateway.limits.visible_timeout;
            let visible = tokio::time::timeout(
                limit,
                lanes.visible(
                    appended.positions.clone(),
                    appended.replayed,
                    refused_before,
                ),
            )
            .await
            .map_err(|_| not_visible_in_time(&table, &appended.positions, limit))??;
            Ok(Json(ingest::IngestReport::new(
                &table,
                count,
                appended,
                visible.rejected,
                visible.quarantined,
                visible.versions,
                started,
            ))
            .into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};
    use axum::response::IntoResponse;

    /// An Idempotency-Key is 1 to 255 visible ASCII characters: a tab or a space (which a
    /// header may carry) is refused like an empty or a long key.
    #[test]
    fn an_idempotency_key_is_visible_ascii() {
        let key = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("idempotency-key", HeaderValue::from_str(value).unwrap());
            super::idempotency(&headers, "sellers", b"{}").map(|k| k.is_some())
        };
        assert!(key("order-42_retry.1").unwrap());
        for bad in ["a\tb", "a b", "", &"k".repeat(256)] {
            let problem = key(bad).unwrap_err();
            assert_eq!(problem.status, 400, "{bad:?}");
            assert!(problem.detail.contains("visible ASCII"), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_panic_in_a_handler_is_a_500_problem() {
        let failing = async {
            if std::hint::black_box(true) {
                panic!("a bug");
            }
            Ok(().into_response())
        };
        let problem = super::guarded(failing).await.unwrap_err();
        assert_eq!(problem.status, 500);
        assert!(
            problem.detail.contains("a bug: its log"),
            "{}",
            problem.detail
        );
    }
}
