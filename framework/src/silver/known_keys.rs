//! The keys an APPEND table holds, as hashes, while one run loads it from empty in several
//! windows. Without them each window after the first anti-joins its keys against everything the
//! earlier windows wrote, so a large first load costs the square of its windows.
//!
//! A row whose key hash is not known has a key silver does not hold: a hash is a function of
//! the key's values (the same column types in every window of a run), so equal keys hash equal.
//! A known hash may be another key's (a collision), or the key of a row delivered twice: those
//! rows are checked against the table as before, so the hashes only ever save work and never
//! decide alone that a key is stored. Each hash also remembers the window that wrote its key,
//! and each of the table's files the window that wrote it: the check then reads only the files
//! of the windows that wrote those hashes, not the whole table (at scale 10, 14 windows of
//! geolocation, one file's worth against ten).

use std::collections::{BTreeSet, HashMap, HashSet};

use deltalake::arrow::array::{ArrayRef, BooleanArray};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::common::hash_utils::{RandomState, create_hashes};
use hashbrown::HashTable;

/// Hashes of every key written to one table since it was empty, in this process, each with
/// the window that wrote it.
#[derive(Debug)]
pub struct KnownKeys {
    key: Vec<String>,
    state: RandomState,
    /// One entry per known hash: the hash's upper 48 bits, then the window that wrote a key of
    /// that hash ([`ANY_WINDOW`] once keys of that hash come from two windows). Eight bytes an
    /// entry, as a set of the hashes alone would take.
    entries: HashTable<u64>,
    /// The window whose keys are recorded now, counted by [`Self::note_files`].
    window: u16,
    /// The table's files, each with the window that wrote it.
    files: HashMap<String, u16>,
    /// The files no longer tell which window wrote a row (a file went, or windows ran out):
    /// every check reads the whole table.
    windows_lost: bool,
}

/// A batch's rows split by whether their key hash is known.
#[derive(Debug, Default)]
pub struct Split {
    /// Keys silver does not hold.
    pub fresh: Vec<RecordBatch>,
    /// Keys whose hash is known: silver holds them, or a key of the same hash.
    pub maybe_stored: Vec<RecordBatch>,
    /// The windows that wrote the keys of `maybe_stored`'s hashes.
    windows: BTreeSet<u16>,
}

/// The low bits of an entry: the window.
const WINDOW_BITS: u32 = 16;
/// The window of a hash whose keys more than one window wrote.
const ANY_WINDOW: u16 = u16::MAX;

/// What identifies a hash in [`KnownKeys::entries`]: its upper 48 bits.
fn identity(hash_or_entry: u64) -> u64 {
    hash_or_entry >> WINDOW_BITS
}

/// Where the table places an identity (spread over all 64 bits again).
fn placement(identity: u64) -> u64 {
    identity.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn entry(identity: u64, window: u16) -> u64 {
    (identity << WINDOW_BITS) | u64::from(window)
}

fn window_of(entry: u64) -> u16 {
    entry as u16
}

impl KnownKeys {
    /// No key known yet: for a table that holds no row, with room for `capacity` keys.
    pub fn empty(key: &[String], capacity: usize) -> Self {
        Self {
            key: key.to_vec(),
            state: RandomState::with_seed(0),
            entries: HashTable::with_capacity(capacity),
            window: 0,
            files: HashMap::new(),
            windows_lost: false,
        }
    }

    /// How many distinct key hashes are known (by their upper 48 bits).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Starts a window that finds the table stored, given the live files of the snapshot it
    /// reads: the files not seen before were written by the last window that recorded keys.
    pub fn note_files<'a>(&mut self, live: impl IntoIterator<Item = &'a str>) {
        let live: HashSet<&str> = live.into_iter().collect();
        if self.files.keys().any(|path| !live.contains(path.as_str())) {
            self.windows_lost = true;
        }
        for path in live {
            if !self.files.contains_key(path) {
                self.files.insert(path.to_owned(), self.window);
            }
        }
        match self.window.checked_add(1).filter(|&w| w < ANY_WINDOW) {
            Some(next) => self.window = next,
            None => self.windows_lost = true,
        }
    }

    /// The files to check `split.maybe_stored` against: those of the windows that wrote their
    /// hashes, or `None` for the whole table.
    pub fn files_to_check(&self, split: &Split) -> Option<Vec<String>> {
        if self.windows_lost || split.windows.contains(&ANY_WINDOW) {
            return None;
        }
        Some(
            self.files
                .iter()
                .filter(|(_, window)| split.windows.contains(window))
                .map(|(path, _)| path.clone())
                .collect(),
        )
    }

    /// Splits `batches` (which hold the key columns, each key once) into rows whose key is
    /// surely not stored, which it remembers (the caller writes them), and rows that need the
    /// check against the table, which [`Self::add`] remembers once written.
    pub fn split(&mut self, batches: &[RecordBatch]) -> Result<Split, ArrowError> {
        let mut split = Split::default();
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let hashes = self.hashes_of(batch)?;
            let mut known = Vec::with_capacity(hashes.len());
            for hash in hashes {
                let id = identity(hash);
                match self.entries.find(placement(id), |e| identity(*e) == id) {
                    Some(&found) => {
                        split.windows.insert(window_of(found));
                        known.push(true);
                    }
                    None => {
                        self.insert(id);
                        known.push(false);
                    }
                }
            }
            let known = BooleanArray::from(known);
            let fresh = deltalake::arrow::compute::not(&known)?;
            if known.true_count() > 0 {
                split.maybe_stored.push(filter_record_batch(batch, &known)?);
            }
            if fresh.true_count() > 0 {
                split.fresh.push(filter_record_batch(batch, &fresh)?);
            }
        }
        Ok(split)
    }

    /// Remembers the keys of `batches`, written to the table by the current window.
    pub fn add(&mut self, batches: &[RecordBatch]) -> Result<(), ArrowError> {
        for batch in batches {
            for hash in self.hashes_of(batch)? {
                let id = identity(hash);
                match self.entries.find_mut(placement(id), |e| identity(*e) == id) {
                    Some(found) if window_of(*found) != self.window => {
                        *found = entry(id, ANY_WINDOW);
                    }
                    Some(_) => {}
                    None => self.insert(id),
                }
            }
        }
        Ok(())
    }

    /// Records the hash `id` (not known yet) as written by the current window.
    fn insert(&mut self, id: u64) {
        self.entries
            .insert_unique(placement(id), entry(id, self.window), |e| {
                placement(identity(*e))
            });
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

    /// Known hashes point at the files of the window that wrote their keys; a hash two windows
    /// wrote, or a file gone, points at the whole table.
    #[test]
    fn a_known_key_is_checked_against_the_files_of_its_window() {
        let mut known = KnownKeys::empty(&["zip".to_owned(), "lat".to_owned()], 4);
        // Window 0 (a first write) records its keys without a split.
        known.add(&[batch(&["01001"], &[1.0])]).expect("add");
        known.note_files(["w0.parquet"]);
        // Window 1: a fresh key, and window 0's key again.
        let split = known
            .split(&[batch(&["01002", "01001"], &[2.0, 1.0])])
            .expect("split");
        assert_eq!(rows(&split.maybe_stored), [("01001".to_owned(), 1.0)]);
        assert_eq!(
            known.files_to_check(&split),
            Some(vec!["w0.parquet".to_owned()])
        );
        known.note_files(["w0.parquet", "w1.parquet"]);
        // Window 2: window 1's key is checked against window 1's file alone.
        let split = known.split(&[batch(&["01002"], &[2.0])]).expect("split");
        assert_eq!(
            known.files_to_check(&split),
            Some(vec!["w1.parquet".to_owned()])
        );
        // A key of window 2 found new by the check, with a hash window 1 wrote (as a
        // collision would): that hash now points at the whole table.
        known.add(&[batch(&["01002"], &[2.0])]).expect("add");
        let split = known.split(&[batch(&["01002"], &[2.0])]).expect("split");
        assert_eq!(known.files_to_check(&split), None);
        // A key recorded in the current window has no file yet: nothing to read.
        let split = known
            .split(&[batch(&["01003", "01003"], &[3.0, 3.0])])
            .expect("split");
        assert_eq!(known.files_to_check(&split), Some(vec![]));
        // A file gone (compacted, say): the windows no longer tell, every check reads all.
        known.note_files(["w1.parquet", "w2.parquet"]);
        let split = known.split(&[batch(&["01001"], &[1.0])]).expect("split");
        assert_eq!(known.files_to_check(&split), None);
    }
}
