//! PII encrypted in place, at the edge (before the topic): an idcard's `pii:` entries name the
//! columns, each with a mode and a key domain.
//!
//! - [`cipher`]: the two modes and the wire format (`deterministic`: AES-256-SIV, equal inputs
//!   give equal outputs, so keys, joins, dedup and MERGE still work; `randomized`: AES-256-GCM
//!   with a random nonce). The ciphertext replaces the value in the same string column:
//!   base64 of a version byte, the data key's id and the ciphertext, as Tink's wire format does.
//! - [`keyset`]: a keyset file per environment holding data keys per domain, each wrapped under
//!   one or several root keys (any one of them unlocks it), and the `framework keys` commands.
//! - [`edge`]: what the producer and the gateway do to a table's PII cells (pad, the PII
//!   columns' expectations on the plaintext, encrypt).

pub mod cells;
pub mod cipher;
pub mod edge;
pub mod keyset;
pub mod reencrypt;
pub mod subjects;
pub mod udf;

#[cfg(test)]
mod tests;

pub use cipher::{Keyring, PiiMode};
pub use edge::Edge;
pub use keyset::{Error, KeysetOptions};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::idcard::Project;

/// The key domains the idcards use, each with the `table.column`s that declare it.
pub fn domains(project: &Project) -> BTreeMap<String, Vec<String>> {
    let mut domains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for table in &project.tables {
        for column in &table.columns {
            let nested = column.nested_pii.iter().map(|n| (&n.pii, n.path.as_str()));
            for (pii, path) in column
                .pii
                .iter()
                .map(|p| (p, column.name.as_str()))
                .chain(nested)
            {
                domains
                    .entry(pii.domain.clone())
                    .or_default()
                    .push(format!("{}.{path}", table.name()));
            }
        }
    }
    domains
}

/// The top-level columns of `table`'s rows that hold ciphertext of a whole value, each with
/// how it is encrypted: its own PII columns and those its enrichment copies from another
/// table's PII columns (nested columns with PII leaves are not listed: their leaves are).
pub fn encrypted_columns<'p>(
    project: &'p Project,
    table: &'p crate::idcard::Table,
) -> BTreeMap<String, &'p crate::idcard::model::ColumnPii> {
    let mut columns: BTreeMap<String, &crate::idcard::model::ColumnPii> = table
        .columns
        .iter()
        .filter_map(|c| Some((c.name.clone(), c.pii.as_ref()?)))
        .collect();
    for enrich in &table.config.enrich {
        let Some(from) = project.table(&enrich.from) else {
            continue;
        };
        for column in &enrich.columns {
            let (source, target) = crate::idcard::compile::enrich_column_names(column);
            if let Some(pii) = from.column(&source).and_then(|c| c.pii.as_ref()) {
                columns.insert(target, pii);
            }
        }
    }
    columns
}

/// Per lake table name, the columns whose Delta statistics are left out because they hold
/// ciphertext: [`encrypted_columns`], nested columns with PII leaves, and a reject payload
/// (sealed whole for a table with PII); `latest_by` and tombstone tables as their owner.
pub fn stats_off(project: &Project) -> std::collections::HashMap<String, Vec<String>> {
    let mut out = std::collections::HashMap::new();
    for table in &project.tables {
        let mut columns: Vec<String> = encrypted_columns(project, table).into_keys().collect();
        columns.extend(
            table
                .columns
                .iter()
                .filter(|c| !c.nested_pii.is_empty())
                .map(|c| c.name.clone()),
        );
        if columns.is_empty() {
            continue;
        }
        if table
            .columns
            .iter()
            .any(|c| c.pii.is_some() || !c.nested_pii.is_empty())
        {
            columns.push("_payload".to_owned());
        }
        for name in table.lake_names() {
            out.insert(name, columns.clone());
        }
    }
    out
}

/// The keyring of a run over `project` (idcards under `project_dir`): empty when no idcard
/// declares PII; else the environment's keyset, unlocked (see [`keyset::open`]).
pub fn keyring(project: &Project, project_dir: &Path) -> Result<Arc<Keyring>, Error> {
    let options = KeysetOptions::from_env(project_dir);
    keyset::open(&options, &domains(project)).map(Arc::new)
}
