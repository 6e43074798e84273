//! `framework keys re-encrypt`: after a rotation, rewrite tables so that every value is under
//! its domain's primary key again. Old values still decrypt by their key id, but a
//! deterministic value encrypted under two keys has two ciphertexts, so equality (keys, dedup,
//! MERGE, joins) holds across a rotation only once the old ones are rewritten.
//!
//! Every string cell of a table is looked at, nested leaves included: a cell that is a value of
//! this keyring under an older key (parsed, its key found, authenticated) is decrypted and
//! encrypted again in its mode; anything else is left alone. So enriched copies of a PII column
//! and sealed reject payloads are rewritten too, without a list of columns. A table with nothing
//! to rewrite gets no commit; one with something gets one overwrite commit (its offsets, kept
//! as Delta transactions, are untouched), under the lease silver's writers take.

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::arrow::error::ArrowError;

use super::Keyring;
use super::cipher::CipherError;
use crate::lake::{Lake, Layer};

/// What one table's rewrite did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub layer: Layer,
    pub table: String,
    /// Values encrypted again (0: the table was left as it was).
    pub values: u64,
}

/// Errors of a rewrite.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Lake(#[from] crate::lake::Error),
    #[error("{layer}/{table}: {source}")]
    Cipher {
        layer: Layer,
        table: String,
        source: CipherError,
    },
    #[error("{layer}/{table}: reading or rebuilding rows: {message}")]
    Rows {
        layer: Layer,
        table: String,
        message: String,
    },
}

/// Rewrites `table` of `layer` (when it exists; one of [`targets`] of idcard table `owner`) so
/// that no value is under an older key.
pub async fn table(
    lake: &Lake,
    keys: &Keyring,
    owner: &str,
    layer: Layer,
    table: &str,
) -> Result<Rewritten, Error> {
    let rows = |message: String| Error::Rows {
        layer,
        table: table.to_owned(),
        message,
    };
    let done = |values| Rewritten {
        layer,
        table: table.to_owned(),
        values,
    };
    // Silver and quarantine are written under silver's lease of the table; bronze and reject
    // commits are appends, which an overwrite does not lose (it removes only the files it read).
    let _lease = match layer {
        Layer::Silver | Layer::Quarantine => Some(lake.lease(Layer::Silver, owner).await?),
        _ => None,
    };
    let Some(delta) = lake.open(layer, table).await? else {
        return Ok(done(0));
    };
    let partition_by: Vec<String> = delta
        .snapshot()
        .map_err(|e| rows(e.to_string()))?
        .metadata()
        .partition_columns()
        .to_vec();
    let ctx = crate::lake::session();
    lake.register(&ctx, layer, table, "t").await?;
    let batches = ctx
        .sql("SELECT * FROM t")
        .await
        .map_err(|e| rows(e.to_string()))?
        .collect()
        .await
        .map_err(|e| rows(e.to_string()))?;
    let mut values = 0;
    let mut rewritten = Vec::with_capacity(batches.len());
    for batch in &batches {
        let columns = batch
            .columns()
            .iter()
            .map(|c| rewrite(c, keys, &mut values))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| match e {
                Failure::Cipher(source) => Error::Cipher {
                    layer,
                    table: table.to_owned(),
                    source,
                },
                Failure::Arrow(e) => rows(e.to_string()),
            })?;
        let fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .zip(&columns)
            .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
            .collect();
        rewritten.push(
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(|e| rows(e.to_string()))?,
        );
    }
    if values == 0 {
        return Ok(done(0));
    }
    let partition_by: Vec<&str> = partition_by.iter().map(String::as_str).collect();
    lake.write(layer, table, rewritten, &partition_by, Vec::new(), true)
        .await?;
    Ok(done(values))
}

/// `array` with every string under an older key encrypted again; partition values (handed
/// over by delta-rs as dictionaries) back to their column's type for the write.
fn rewrite(array: &ArrayRef, keys: &Keyring, values: &mut u64) -> Result<ArrayRef, Failure> {
    let array = match array.data_type() {
        DataType::Dictionary(_, value) => cast(array, value)?,
        _ => array.clone(),
    };
    super::cells::map_strings(&array, &mut |text| match keys.reencrypt(text) {
        None => Ok(None),
        Some(sealed) => {
            *values += 1;
            sealed.map(Some).map_err(Failure::Cipher)
        }
    })
}

enum Failure {
    Cipher(CipherError),
    Arrow(ArrowError),
}

impl From<ArrowError> for Failure {
    fn from(e: ArrowError) -> Self {
        Self::Arrow(e)
    }
}

/// The tables of `table` that can hold its values: bronze, reject, silver, quarantine, and
/// silver's own extra tables (`latest_by`, tombstones).
pub fn targets(table: &crate::idcard::Table) -> Vec<(Layer, String)> {
    let name = table.name();
    let mut out = vec![
        (Layer::Bronze, name.to_owned()),
        (Layer::Reject, name.to_owned()),
        (Layer::Silver, name.to_owned()),
        (Layer::Quarantine, name.to_owned()),
    ];
    // Silver's extra tables (the first name is the table's own).
    out.extend(
        table
            .lake_names()
            .into_iter()
            .skip(1)
            .map(|n| (Layer::Silver, n)),
    );
    out
}
