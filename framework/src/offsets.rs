//! Exactly-once bookkeeping, in one place.
//!
//! A table fed from a topic records, in the same Delta commit as its rows, the next offset it
//! will take from each partition: one Delta transaction (`txn`) action per partition, app id
//! `framework-<stage>/<topic>/<partition>`. It only ever takes rows at or past those offsets.
//! A retried batch, two racing runs, or a consumer that took a partition over from another
//! therefore neither repeats nor loses a row: a second writer of the same offsets finds nothing
//! new, or its commit conflicts and is retried on the newer offsets.
//!
//! Bronze and its reject table take messages from the topic; silver, quarantine and the
//! tombstones take bronze rows, which carry their message's place in the [`PARTITION`] and
//! [`OFFSET`] columns.

use std::collections::BTreeMap;

use deltalake::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use deltalake::arrow::datatypes::{Int32Type, Int64Type};
use deltalake::arrow::error::ArrowError;

use crate::lake::{Lake, Layer, TxnVersions};

/// The column holding a row's partition (Int32) in every table fed from a topic.
pub const PARTITION: &str = "_partition";
/// The column holding a row's offset in its partition (Int64).
pub const OFFSET: &str = "_offset";

/// Who records offsets: each stage keeps its own, per table it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Bronze and the reject table, from the topic.
    Bronze,
    /// Silver, quarantine and tombstones, from bronze.
    Silver,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Self::Bronze => "bronze",
            Self::Silver => "silver",
        }
    }
}

/// The app id under which `stage` records the next offset of `partition` of `topic`.
pub fn app_id(stage: Stage, topic: &str, partition: u32) -> String {
    format!("framework-{}/{topic}/{partition}", stage.name())
}

/// A stage's offsets of one topic, as one table records them.
#[derive(Debug, Clone)]
pub struct Cursor {
    stage: Stage,
    topic: String,
    partitions: u32,
}

impl Cursor {
    pub fn new(stage: Stage, topic: &str, partitions: u32) -> Self {
        Self {
            stage,
            topic: topic.to_owned(),
            partitions,
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The app ids, by partition.
    pub fn app_ids(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.app_id(p)).collect()
    }

    pub fn app_id(&self, partition: u32) -> String {
        app_id(self.stage, &self.topic, partition)
    }

    /// The offsets `layer`/`table` records (0 for a partition it records none of, or when the
    /// table does not exist).
    pub async fn read(
        &self,
        lake: &Lake,
        layer: Layer,
        table: &str,
    ) -> crate::lake::Result<Offsets> {
        let versions = lake.txn_versions(layer, table, &self.app_ids()).await?;
        Ok(self.offsets(&versions))
    }

    /// The offsets of every partition among `versions` (read from a table's log).
    pub fn offsets(&self, versions: &TxnVersions) -> Offsets {
        self.offsets_of(0..self.partitions, versions)
    }

    fn offsets_of(&self, partitions: impl Iterator<Item = u32>, versions: &TxnVersions) -> Offsets {
        Offsets {
            next: partitions
                .map(|p| {
                    let recorded = versions.get(&self.app_id(p)).copied().unwrap_or(0);
                    (p, recorded.max(0))
                })
                .collect(),
        }
    }

    /// Ends at no partition yet; [`Ends::reach`] moves them.
    pub fn ends(&self) -> Ends {
        Ends {
            cursor: self.clone(),
            next: BTreeMap::new(),
        }
    }
}

/// The next offset a table takes from each partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offsets {
    next: BTreeMap<u32, i64>,
}

impl Offsets {
    /// The next offset of `partition` (0 for a partition these offsets were not read for).
    pub fn next(&self, partition: u32) -> i64 {
        self.next.get(&partition).copied().unwrap_or(0)
    }

    /// A SQL predicate on [`PARTITION`] and [`OFFSET`] for the rows at or past these offsets.
    pub fn sql_past(&self) -> String {
        if self.next.is_empty() {
            return "false".to_owned();
        }
        self.next
            .iter()
            .map(|(p, next)| format!("({PARTITION} = {p} AND {OFFSET} >= {next})"))
            .collect::<Vec<_>>()
            .join(" OR ")
    }

    /// A SQL predicate for the rows at or past these offsets and before `ends`, in the
    /// partitions `ends` holds.
    pub fn sql_until(&self, ends: &Ends) -> String {
        if ends.next.is_empty() {
            return "false".to_owned();
        }
        ends.iter()
            .map(|(p, end)| {
                let next = self.next(p);
                format!("({PARTITION} = {p} AND {OFFSET} >= {next} AND {OFFSET} < {end})")
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }

    /// These offsets moved on to `ends` where those lie further.
    pub fn advanced(&self, ends: &Ends) -> Offsets {
        let mut next = self.next.clone();
        for (p, end) in ends.iter() {
            let at = next.entry(p).or_insert(end);
            *at = (*at).max(end);
        }
        Offsets { next }
    }

    /// The rows of `batch` at or past these offsets.
    pub fn rows_past(&self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let (partitions, offsets) = place(batch)?;
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| Some(offsets.value(i) >= self.next(partitions.value(i) as u32)))
            .collect();
        deltalake::arrow::compute::filter_record_batch(batch, &keep)
    }
}

/// Where a batch ends in each partition it holds rows of: what a commit records.
#[derive(Debug, Clone)]
pub struct Ends {
    cursor: Cursor,
    next: BTreeMap<u32, i64>,
}

impl Ends {
    /// Takes `next` as the end of `partition` when it lies further.
    pub fn reach(&mut self, partition: u32, next: i64) {
        let end = self.next.entry(partition).or_insert(next);
        *end = (*end).max(next);
    }

    /// The first window of these ends past `from`: in each partition, at most `window` offsets
    /// past `from` and no further than these ends. Empty once `from` reaches every end.
    pub fn window(&self, from: &Offsets, window: i64) -> Ends {
        Ends {
            cursor: self.cursor.clone(),
            next: self
                .iter()
                .filter(|&(p, end)| end > from.next(p))
                .map(|(p, end)| (p, end.min(from.next(p).saturating_add(window))))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// `(partition, next offset)`, by partition.
    pub fn iter(&self) -> impl Iterator<Item = (u32, i64)> + '_ {
        self.next.iter().map(|(p, n)| (*p, *n))
    }

    /// The app ids of the partitions the batch holds rows of.
    pub fn app_ids(&self) -> Vec<String> {
        self.next.keys().map(|p| self.cursor.app_id(*p)).collect()
    }

    /// The offsets already recorded among `versions` for the partitions the batch holds (also
    /// one the topic gained after the cursor was made).
    pub fn recorded(&self, versions: &TxnVersions) -> Offsets {
        self.cursor.offsets_of(self.next.keys().copied(), versions)
    }

    /// The txn actions of a commit of this batch on top of `recorded`: one per partition whose
    /// end lies past what is recorded (none when a commit of these rows is already in).
    pub fn txns(&self, recorded: &Offsets) -> Vec<(String, i64)> {
        self.next
            .iter()
            .filter(|(p, end)| **end > recorded.next(**p))
            .map(|(p, end)| (self.cursor.app_id(*p), *end))
            .collect()
    }
}

/// The [`PARTITION`] and [`OFFSET`] columns of `batch`.
fn place(
    batch: &RecordBatch,
) -> Result<
    (
        &deltalake::arrow::array::Int32Array,
        &deltalake::arrow::array::Int64Array,
    ),
    ArrowError,
> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| ArrowError::SchemaError(format!("no {name} column")))
    };
    let partitions = column(PARTITION)?
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| ArrowError::SchemaError(format!("{PARTITION} is not Int32")))?;
    let offsets = column(OFFSET)?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| ArrowError::SchemaError(format!("{OFFSET} is not Int64")))?;
    if partitions.null_count() > 0 || offsets.null_count() > 0 {
        return Err(ArrowError::SchemaError(format!(
            "{PARTITION} or {OFFSET} holds a null"
        )));
    }
    Ok((partitions, offsets))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deltalake::arrow::array::{Int32Array, Int64Array};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(rows: &[(i32, i64)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new(PARTITION, DataType::Int32, false),
            Field::new(OFFSET, DataType::Int64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_batch_keeps_the_rows_past_the_recorded_offsets_and_records_only_what_moves() {
        let cursor = Cursor::new(Stage::Silver, "raw_orders", 3);
        // Partition 0 recorded up to 5, partition 1 up to 2, partition 2 nothing.
        let versions: TxnVersions = [
            (cursor.app_id(0), 5),
            (cursor.app_id(1), 2),
            ("framework-bronze/raw_orders/2".to_owned(), 9),
        ]
        .into_iter()
        .collect();
        let recorded = cursor.offsets(&versions);
        assert_eq!([0, 1, 2].map(|p| recorded.next(p)), [5, 2, 0]);

        let rows = batch(&[(0, 3), (0, 4), (0, 5), (1, 1), (1, 2), (2, 0), (0, 6)]);
        let fresh = recorded.rows_past(&rows).unwrap();
        assert_eq!(fresh, batch(&[(0, 5), (1, 2), (2, 0), (0, 6)]));

        let mut ends = cursor.ends();
        for (p, offset) in [(0, 6), (1, 2), (2, 0)] {
            ends.reach(p, offset + 1);
        }
        ends.reach(0, 3); // an earlier row does not move the end back
        assert_eq!(ends.iter().collect::<Vec<_>>(), [(0, 7), (1, 3), (2, 1)]);
        assert_eq!(
            ends.txns(&recorded),
            [
                ("framework-silver/raw_orders/0".to_owned(), 7),
                ("framework-silver/raw_orders/1".to_owned(), 3),
                ("framework-silver/raw_orders/2".to_owned(), 1),
            ]
        );
        // Once that commit is in, the same batch moves nothing and keeps no row.
        let after: TxnVersions = ends.txns(&recorded).into_iter().collect();
        let recorded = cursor.offsets(&after);
        assert!(ends.txns(&recorded).is_empty());
        assert_eq!(
            recorded
                .rows_past(&batch(&[(0, 6), (2, 0)]))
                .unwrap()
                .num_rows(),
            0
        );
    }

    #[test]
    fn a_partition_the_topic_gained_later_keeps_its_recorded_offset() {
        let cursor = Cursor::new(Stage::Bronze, "t", 1);
        let mut ends = cursor.ends();
        ends.reach(3, 10);
        let versions: TxnVersions = [(cursor.app_id(3), 8)].into_iter().collect();
        let recorded = ends.recorded(&versions);
        assert_eq!(recorded.next(3), 8);
        assert_eq!(
            ends.txns(&recorded),
            [("framework-bronze/t/3".to_owned(), 10)]
        );
        assert_eq!(
            recorded.rows_past(&batch(&[(3, 7), (3, 9)])).unwrap(),
            batch(&[(3, 9)])
        );
    }

    #[test]
    fn the_sql_predicate_names_every_partition() {
        let cursor = Cursor::new(Stage::Bronze, "t", 2);
        let recorded = cursor.offsets(&[(cursor.app_id(1), 40)].into_iter().collect());
        assert_eq!(
            recorded.sql_past(),
            "(_partition = 0 AND _offset >= 0) OR (_partition = 1 AND _offset >= 40)"
        );
        assert_eq!(
            Cursor::new(Stage::Bronze, "t", 0)
                .offsets(&TxnVersions::new())
                .sql_past(),
            "false"
        );
    }

    #[test]
    fn a_delivery_is_taken_in_windows_of_at_most_so_many_offsets_per_partition() {
        let cursor = Cursor::new(Stage::Silver, "t", 3);
        let done = cursor.offsets(&[(cursor.app_id(0), 10)].into_iter().collect());
        // Bronze holds partition 0 up to 25, partition 1 up to 4, partition 2 nothing new.
        let mut ends = cursor.ends();
        ends.reach(0, 25);
        ends.reach(1, 4);
        let first = ends.window(&done, 10);
        assert_eq!(first.iter().collect::<Vec<_>>(), [(0, 20), (1, 4)]);
        assert_eq!(
            done.sql_until(&first),
            "(_partition = 0 AND _offset >= 10 AND _offset < 20) OR \
             (_partition = 1 AND _offset >= 0 AND _offset < 4)"
        );
        let done = done.advanced(&first);
        let second = ends.window(&done, 10);
        assert_eq!(second.iter().collect::<Vec<_>>(), [(0, 25)]);
        assert_eq!(
            second.txns(&done),
            [("framework-silver/t/0".to_owned(), 25)]
        );
        let done = done.advanced(&second);
        assert!(ends.window(&done, 10).is_empty());
        assert_eq!(done.sql_until(&ends.window(&done, 10)), "false");
        // No window: everything at once.
        let all = ends.window(&cursor.offsets(&TxnVersions::new()), i64::MAX);
        assert_eq!(all.iter().collect::<Vec<_>>(), [(0, 25), (1, 4)]);
    }
}
