//! The latest row per key of a batch, in one pass: the key's groups found as GROUP BY finds them.
//!
//! A row wins over another of its key when its `_sequence` is greater, or equal with a greater
//! `_offset` (a key's messages share a partition, so the later offset arrived later). A null
//! `_sequence` is the oldest. The order is compared on Arrow's row format, so any column type
//! works and no value is copied into a Rust type.

use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, BooleanArray};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::Schema;
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::arrow::row::{RowConverter, Rows, SortField};
use deltalake::datafusion::physical_plan::aggregates::group_values::new_group_values;
use deltalake::datafusion::physical_plan::aggregates::order::GroupOrdering;

/// The latest row of each `key` in `batches` (which share one schema holding the key columns,
/// `_sequence` and `_offset`), in the order the winning rows arrived, as at least one batch: a
/// batch all of whose rows won is passed on as it is, the others filtered (a first load holds
/// few duplicates, so most rows are not copied at all).
pub fn latest_per_key(
    batches: &[RecordBatch],
    key: &[String],
) -> Result<Vec<RecordBatch>, ArrowError> {
    let Some(first) = batches.first() else {
        return Err(ArrowError::InvalidArgumentError(
            "latest_per_key: no batch".into(),
        ));
    };
    let schema = first.schema();
    let positions = |names: &[&str]| -> Result<Vec<usize>, ArrowError> {
        names
            .iter()
            .map(|name| {
                schema.index_of(name).map_err(|_| {
                    ArrowError::SchemaError(format!("latest_per_key: no column `{name}`"))
                })
            })
            .collect()
    };
    let key_names: Vec<&str> = key.iter().map(String::as_str).collect();
    let key_positions = positions(&key_names)?;
    let order = rows_of(batches, &positions(&["_sequence", "_offset"])?)?;
    // The key's groups as DataFusion's GROUP BY finds them (vectorised hashing and equality per
    // column); group ids are dense, in the order the groups first appear.
    let key_schema = Schema::new(
        key_positions
            .iter()
            .map(|&at| schema.field(at).clone())
            .collect::<Vec<_>>(),
    );
    let mut key_groups = new_group_values(Arc::new(key_schema), &GroupOrdering::None)
        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    let mut winners: Vec<u32> = Vec::new();
    let mut groups = Vec::new();
    let mut i = 0usize;
    for batch in batches {
        let columns: Vec<ArrayRef> = key_positions
            .iter()
            .map(|&at| batch.column(at).clone())
            .collect();
        key_groups
            .intern(&columns, &mut groups)
            .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        for &group in &groups {
            match winners.get_mut(group) {
                None => winners.push(i as u32),
                Some(winner) => {
                    if order.row(i) > order.row(*winner as usize) {
                        *winner = i as u32;
                    }
                }
            }
            i += 1;
        }
    }
    drop(key_groups);
    // Each batch keeps its winners: whole when every row won (no copy), filtered otherwise.
    let mut won = vec![false; i];
    for winner in winners {
        won[winner as usize] = true;
    }
    let mut out = Vec::with_capacity(batches.len());
    let mut start = 0;
    for batch in batches {
        let mask = &won[start..start + batch.num_rows()];
        start += batch.num_rows();
        if mask.iter().all(|&w| w) {
            out.push(batch.clone());
        } else if mask.iter().any(|&w| w) {
            out.push(filter_record_batch(
                batch,
                &BooleanArray::from(mask.to_vec()),
            )?);
        }
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(schema));
    }
    Ok(out)
}

/// Arrow's comparable row encoding of the columns at `positions` of every batch, in order
/// (ascending, nulls first: a null is the smallest).
fn rows_of(batches: &[RecordBatch], positions: &[usize]) -> Result<Rows, ArrowError> {
    let schema = batches[0].schema();
    let converter = RowConverter::new(
        positions
            .iter()
            .map(|&at| SortField::new(schema.field(at).data_type().clone()))
            .collect(),
    )?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut out = converter.empty_rows(rows, rows * 8 * positions.len());
    for batch in batches {
        let columns: Vec<ArrayRef> = positions
            .iter()
            .map(|&at| batch.column(at).clone())
            .collect();
        converter.append(&mut out, &columns)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deltalake::arrow::array::{AsArray, Int64Array, StringArray};
    use deltalake::arrow::compute::concat_batches;
    use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    fn batch(keys: &[&str], sequence: &[Option<i64>], offsets: &[i64]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("_sequence", DataType::Int64, true),
            Field::new("_offset", DataType::Int64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(sequence.to_vec())),
                Arc::new(Int64Array::from(offsets.to_vec())),
            ],
        )
        .expect("valid batch")
    }

    #[test]
    fn the_newest_sequence_then_the_later_offset_wins_and_null_is_oldest() {
        let input = [
            batch(&["a", "b", "a"], &[Some(5), Some(1), Some(9)], &[0, 1, 2]),
            batch(
                &["b", "a", "c", "c", "d", "d"],
                &[Some(1), Some(3), None, Some(0), Some(2), Some(2)],
                &[3, 4, 5, 6, 7, 8],
            ),
        ];
        let out = latest_per_key(&input, &["k".to_owned()]).expect("dedup");
        let out = concat_batches(&input[0].schema(), &out).unwrap();
        let keys: Vec<&str> = out.column(0).as_string::<i32>().iter().flatten().collect();
        let offsets: Vec<i64> = out.column(2).as_primitive::<Int64Type>().values().to_vec();
        // a: sequence 9 (offset 2); b: tie on 1 -> offset 3; c: 0 beats null; d: tie -> 8.
        assert_eq!(keys, ["a", "b", "c", "d"]);
        assert_eq!(offsets, [2, 3, 6, 8]);
    }

    /// A key of two columns (a text and a number): rows are the same key only when both match.
    #[test]
    fn a_key_of_two_columns_matches_on_both() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("_sequence", DataType::Int64, true),
            Field::new("_offset", DataType::Int64, false),
        ]));
        let batch = |k: &[&str], n: &[i64], offsets: &[i64]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(k.to_vec())),
                    Arc::new(Int64Array::from(n.to_vec())),
                    Arc::new(Int64Array::from(vec![Some(1); k.len()])),
                    Arc::new(Int64Array::from(offsets.to_vec())),
                ],
            )
            .expect("valid batch")
        };
        let input = [
            batch(&["a", "a", "b"], &[1, 2, 1], &[0, 1, 2]),
            batch(&["a", "b", "b"], &[1, 2, 1], &[3, 4, 5]),
        ];
        let key = ["k".to_owned(), "n".to_owned()];
        let out = latest_per_key(&input, &key).expect("dedup");
        let out = concat_batches(&input[0].schema(), &out).unwrap();
        let offsets: Vec<i64> = out.column(3).as_primitive::<Int64Type>().values().to_vec();
        // (a,2) at 1, (a,1) again at 3, (b,2) at 4, (b,1) again at 5.
        assert_eq!(offsets, [1, 3, 4, 5]);
    }
}
