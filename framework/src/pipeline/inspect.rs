//! `framework rejects`: what did not make it into a table, and why.

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::arrow::util::pretty::pretty_format_batches;

use crate::idcard::Table;
use crate::lake::{Lake, Layer, session};

use super::{Error, Result};

/// The reject rows (bronze: could not be read or typed) and quarantine rows (silver: failed an
/// idcard expectation) of `table`, `limit` of each, oldest first, as printable tables, with the
/// total of each.
pub async fn rejects(lake: &Lake, table: &Table, limit: usize) -> Result<String> {
    let mut out = String::new();
    let key = crate::silver::sql::ident_list(table.key());
    for (layer, title, columns) in [
        (
            Layer::Reject,
            "rejected in bronze (the message could not become a row)",
            "_source_line AS line, _reason AS reason, _partition AS partition, _offset AS offset, \
             substr(_payload, 1, 120) AS payload"
                .to_owned(),
        ),
        (
            Layer::Quarantine,
            "quarantined in silver (the row failed an idcard expectation)",
            format!("_failed_rule AS rule, {key}, _partition AS partition, _offset AS offset"),
        ),
    ] {
        let name = table.name();
        let ctx = session();
        let total = lake.count(layer, name).await?;
        out.push_str(&format!("{layer}/{name}: {total} row(s) {title}\n"));
        if total == 0 || !lake.register(&ctx, layer, name, "t").await? {
            continue;
        }
        let query = |source| Error::Query {
            table: name.to_owned(),
            source,
        };
        let batches: Vec<RecordBatch> = ctx
            .sql(&format!(
                "SELECT {columns} FROM t ORDER BY _partition, _offset LIMIT {limit}"
            ))
            .await
            .map_err(query)?
            .collect()
            .await
            .map_err(query)?;
        let text = pretty_format_batches(&batches).map_err(|e| query(e.into()))?;
        out.push_str(&format!("{text}\n"));
    }
    Ok(out)
}
