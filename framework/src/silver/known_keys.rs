//! The keys an APPEND table holds, as hashes, while one run loads it from empty in several
//! windows. Without them each window after the first anti-joins its keys against everything the
//! earlier windows wrote, so a large first load costs the square of its windows.
//!
//! A row whose key hash is not known has a key silver does not hold: a hash is a function of
//! the key's values (the same column types in every window of a run), so equal keys hash equal.
//! A known hash may be another key's (a collision): those rows are checked against the table as
//! before, so the hashes only ever save work and never decide alone that a key is stored.

use std::collections::HashSet;

use deltalake::arrow::array::{ArrayRef, BooleanArray};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::common::hash_utils::{RandomState, create_hashes};

/// Hashes of every key written to one table since it was empty, in this process.
#[derive(Debug)]
pub struct KnownKeys {
    key: Vec<String>,
    state: RandomState,
    hashes: HashSet<u64, RandomState>,
}

/// A batch's rows split by whether their key hash is known.
#[derive(Debug, Default)]
pub struct Split {
    /// Keys silver does not hold.
    pub fresh: Vec<RecordBatch>,
    /// Keys whose hash is known: silver holds them, or a key of the same hash.
    pub maybe_stored: Vec<RecordBatch>,
}

impl KnownKeys {
    /// No key known yet: for a table that holds no row, with room for `capacity` keys.
    pub fn empty(key: &[String], capacity: usize) -> Self {
        Self {
            key: key.to_vec(),
            state: RandomState::with_seed(0),
            hashes: HashSet::with_capacity_and_hasher(capacity, RandomState::with_seed(1)),
        }
    }

    /// How many distinct key hashes are known.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Splits `batches` (which hold the key columns, each key once) into rows whose key is
    /// surely not stored, which it remembers (the caller writes them), and rows that need the
    /// check against the table, which [`Self::add`] remembers once written.
    pub fn split(&mut self, batches: &[RecordBatch]) -> Result<Split, ArrowError> {
        let mut split = Split::default();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let hashes = self.hashes_of(batch)?;
            let known: BooleanArray = hashes
                .iter()
                .map(|h| Some(self.hashes.contains(h)))
                .collect();
            let fresh = deltalake::arrow::compute::not(&known)?;
            self.hashes.extend(
                hashes
                    .iter()
                    .zip(fresh.values().iter())
                    .filter_map(|(&hash, fresh)| fresh.then_some(hash)),
            );
            if known.true_count() > 0 {
                split.maybe_stored.push(filter_record_batch(batch, &known)?);
            }
            if fresh.true_count() > 0 {
                split.fresh.push(filter_record_batch(batch, &fresh)?);
            }
        }
        Ok(split)
    }

    /// Remembers the keys of `batches`, written to the table.
    pub fn add(&mut self, batches: &[RecordBatch]) -> Result<(), ArrowError> {
        for batch in batches {
            let hashes = self.hashes_of(batch)?;
            self.hashes.extend(hashes);
        }
        Ok(())
    }

    fn hashes_of(&self, batch: &RecordBatch) -> Result<Vec<u64>, ArrowError> {
        let columns = self
            .key
            .iter()
            .map(|name| {
                batch.column_by_name(name).cloned().ok_or_else(|| {
                    ArrowError::SchemaError(format!("known keys: no key column `{name}`"))
                })
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        let mut hashes = vec![0; batch.num_rows()];
        create_hashes(&columns, &self.state, &mut hashes)
            .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        Ok(hashes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deltalake::arrow::array::{AsArray, Float64Array, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Float64Type, Schema};

    use super::*;

    fn batch(zips: &[&str], lats: &[f64]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("zip", DataType::Utf8, false),
            Field::new("lat", DataType::Float64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(zips.to_vec())),
                Arc::new(Float64Array::from(lats.to_vec())),
            ],
        )
        .expect("valid batch")
    }

    fn rows(batches: &[RecordBatch]) -> Vec<(String, f64)> {
        batches
            .iter()
            .flat_map(|b| {
                let zips = b.column(0).as_string::<i32>().clone();
                let lats = b.column(1).as_primitive::<Float64Type>().clone();
                (0..b.num_rows())
                    .map(move |i| (zips.value(i).to_owned(), lats.value(i)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A key is known only once added, and only with all its columns equal.
    #[test]
    fn a_key_is_known_once_written_and_only_whole() {
        let mut known = KnownKeys::empty(&["zip".to_owned(), "lat".to_owned()], 2);
        let first = batch(&["01001", "01002"], &[1.5, -2.0]);
        let split = known.split(std::slice::from_ref(&first)).expect("split");
        assert_eq!(rows(&split.fresh).len(), 2);
        assert!(split.maybe_stored.is_empty());
        // The fresh keys are remembered by the split itself.
        assert_eq!(known.len(), 2);

        let second = batch(
            &["01001", "01001", "01002", "01003"],
            &[1.5, 2.5, -2.0, 1.5],
        );
        let split = known.split(&[second]).expect("split");
        assert_eq!(
            rows(&split.maybe_stored),
            [("01001".to_owned(), 1.5), ("01002".to_owned(), -2.0)]
        );
        assert_eq!(
            rows(&split.fresh),
            [("01001".to_owned(), 2.5), ("01003".to_owned(), 1.5)]
        );
        assert_eq!(known.len(), 4);
        // Rows checked against the table and written are added once more: nothing new.
        known.add(&split.maybe_stored).expect("add");
        assert_eq!(known.len(), 4);
    }
}
