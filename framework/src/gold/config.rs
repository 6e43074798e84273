//! What a model says about itself with `{{ config(...) }}`.

use std::fmt;

/// How a model is materialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Materialized {
    /// Written whole to `<lake>/gold/<model>` on every build.
    Table,
    /// Merged into `<lake>/gold/<model>` on `unique_key`; `is_incremental()` is true when the
    /// table exists, so the model can select only the window that changed.
    Incremental,
    /// A view in the build's session: queried by the models that ref it, never stored.
    View,
    /// Inlined as a CTE into every model that refs it.
    Ephemeral,
}

impl Materialized {
    pub const ALL: &[&str] = &["table", "incremental", "view", "ephemeral"];

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "table" => Self::Table,
            "incremental" => Self::Incremental,
            "view" => Self::View,
            "ephemeral" => Self::Ephemeral,
            _ => return None,
        })
    }

    /// The default of a model folder: staging/ holds views, intermediate/ ephemeral models,
    /// anything else tables.
    pub fn default_for(folder: &str) -> Self {
        match folder {
            "staging" => Self::View,
            "intermediate" => Self::Ephemeral,
            _ => Self::Table,
        }
    }

    /// Whether the model is written to the lake.
    pub const fn is_stored(self) -> bool {
        matches!(self, Self::Table | Self::Incremental)
    }
}

impl fmt::Display for Materialized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Table => "table",
            Self::Incremental => "incremental",
            Self::View => "view",
            Self::Ephemeral => "ephemeral",
        })
    }
}

/// A model's configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelConfig {
    pub materialized: Materialized,
    /// Columns an incremental model merges on.
    pub unique_key: Vec<String>,
}
