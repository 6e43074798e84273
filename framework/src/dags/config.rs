//! What the generated DAGs take from configuration: each idcard's `schedule` (cron, retries) and
//! `owner` for its ingestion DAG, and the `dags:` section of the project file (`framework.yaml`)
//! for the rest.

use std::path::Path;

use serde::Deserialize;

use crate::idcard::position::Pos;
use crate::idcard::{Diagnostic, Diagnostics};

/// The project file: settings that are not about one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// Settings of `framework generate-dags`.
    #[serde(default)]
    pub dags: DagDefaults,
}

/// Project-wide settings of the generated DAGs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DagDefaults {
    /// Prefix of the DAG ids: `<project>_pipeline`, `<project>_ingest_<table>`, `<project>_gold`.
    pub project: String,
    /// Cron schedule of the daily pipeline DAG.
    pub pipeline_schedule: String,
    /// Cron schedule of an ingestion DAG whose idcard sets no `schedule.cron`.
    pub ingest_schedule: String,
    /// Retries of a failed task (an idcard's `schedule.retries` overrides it for its DAG).
    pub retries: u32,
    /// Seconds between tries (`FRAMEWORK_DAG_RETRY_DELAY_S` overrides it when Airflow parses).
    pub retry_delay_s: u32,
    /// Owner of the pipeline DAG, and of ingestion DAGs whose idcard names none.
    pub owner: String,
    /// Where a task that failed its last try is reported.
    pub alerts: Alerts,
}

/// Failure alerts. Only where to find the targets is written into the DAG files, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alerts {
    /// E-mail addresses, sent through Airflow's SMTP settings (`[smtp]` / `AIRFLOW__SMTP__*`).
    pub email: Vec<String>,
    /// Airflow Variable holding the Slack incoming-webhook URL; the environment variable
    /// `FRAMEWORK_ALERT_SLACK_WEBHOOK` wins when set.
    pub slack_webhook_variable: String,
}

impl Default for Alerts {
    fn default() -> Self {
        Self {
            email: Vec::new(),
            slack_webhook_variable: "framework_alert_slack_webhook".to_owned(),
        }
    }
}

impl Default for DagDefaults {
    fn default() -> Self {
        Self {
            project: "lakehouse".to_owned(),
            pipeline_schedule: "0 6 * * *".to_owned(),
            ingest_schedule: "0 5 * * *".to_owned(),
            retries: 2,
            retry_delay_s: 300,
            owner: "data-engineering".to_owned(),
            alerts: Alerts::default(),
        }
    }
}

impl DagDefaults {
    /// The `dags:` section of the project file at `path`; the defaults when there is no file.
    pub fn load(path: &Path) -> Result<Self, Diagnostics> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(err) => return Err(problem(path, Pos { line: 1, column: 1 }, err.to_string())),
        };
        let file: ProjectFile = serde_yaml_ng::from_str(&text).map_err(|err| {
            let pos = err.location().map_or(Pos { line: 1, column: 1 }, |l| Pos {
                line: l.line(),
                column: l.column(),
            });
            problem(path, pos, err.to_string())
        })?;
        let dags = file.dags;
        if !is_identifier(&dags.project) {
            return Err(problem(
                path,
                Pos { line: 1, column: 1 },
                format!(
                    "dags.project `{}` is not a valid DAG id prefix",
                    dags.project
                ),
            ));
        }
        Ok(dags)
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn problem(path: &Path, pos: Pos, message: String) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        file: path.to_path_buf(),
        pos,
        field: String::new(),
        message,
        hint: Some(
            "the project file holds `dags:` with project, owner, pipeline_schedule, \
             ingest_schedule, retries, retry_delay_s and alerts {email, slack_webhook_variable}"
                .to_owned(),
        ),
    }])
}
