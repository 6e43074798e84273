use super::*;

fn record(key: &str, value: &str) -> Record {
    Record {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        timestamp_ms: 7,
    }
}

#[test]
fn appends_and_reads_back_by_offset() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedLog::new(dir.path().to_path_buf());
    assert_eq!(bus.ensure_topic("t", 2).unwrap(), 2);
    let records: Vec<Record> = (0..100)
        .map(|i| record(&format!("k{i}"), &format!("v{i}")))
        .collect();
    let counts = bus.append("t", &records.iter().collect()).unwrap();
    assert_eq!(counts.iter().sum::<u64>(), 100);
    let mut seen = Vec::new();
    for p in 0..2 {
        assert_eq!(bus.end_offset("t", p).unwrap(), counts[p as usize]);
        let first = bus.read("t", p, 0, 7).unwrap();
        let rest = bus.read("t", p, first.len() as u64, usize::MAX).unwrap();
        for (i, m) in first.iter().chain(&rest).enumerate() {
            assert_eq!(m.offset, i as u64);
            assert_eq!(partition_for(&m.key, 2), p);
            seen.push(String::from_utf8(m.value.to_vec()).unwrap());
        }
    }
    seen.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn a_torn_append_is_cut_off_on_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.ensure_topic("t", 1).unwrap();
    log.append("t", &[record("a", "1")].iter().collect())
        .unwrap();
    // A crash after writing log bytes but before the index: garbage past the indexed end.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("t/p0.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"\x40\0\0\0partial").unwrap();
    log.append("t", &[record("b", "2")].iter().collect())
        .unwrap();
    let all = log.read("t", 0, 0, 10).unwrap();
    let values: Vec<&[u8]> = all.iter().map(|m| &m.value[..]).collect();
    assert_eq!(values, vec![b"1".as_slice(), b"2".as_slice()]);
}

#[test]
fn unknown_topic_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedLog::new(dir.path().to_path_buf());
    assert!(matches!(
        bus.partitions("nope"),
        Err(Error::UnknownTopic { .. })
    ));
}

#[test]
fn a_batch_frames_messages() {
    let mut batch = Batch::default();
    batch.push(b"k1", b"v1", 1);
    batch.push(b"", b"", 2);
    batch.push(b"", b"", 2);
    batch.push(b"k3", b"a longer value", 3);
    let seen: Vec<(&[u8], &[u8], i64)> = batch
        .iter()
        .map(|m| (m.key, m.value, m.timestamp_ms))
        .collect();
    assert_eq!(
        seen,
        vec![
            (&b"k1"[..], &b"v1"[..], 1),
            (&b""[..], &b""[..], 2),
            (&b""[..], &b""[..], 2),
            (&b"k3"[..], &b"a longer value"[..], 3),
        ]
    );
}

/// Reads partition 0 of topic `t` whole, as (offset, value) pairs.
fn values(log: &EmbeddedLog) -> Vec<(u64, String)> {
    values_from(log, 0)
}

/// Reads partition 0 of topic `t` from offset `from` on, as (offset, value) pairs.
fn values_from(log: &EmbeddedLog, from: u64) -> Vec<(u64, String)> {
    log.read("t", 0, from, usize::MAX)
        .unwrap()
        .iter()
        .map(|m| (m.offset, String::from_utf8(m.value.to_vec()).unwrap()))
        .collect()
}

#[test]
fn reads_from_inside_a_block_and_across_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.ensure_topic("t", 1).unwrap();
    let first: Vec<Record> = (0..5).map(|i| record("k", &format!("a{i}"))).collect();
    let second: Vec<Record> = (0..3).map(|i| record("k", &format!("b{i}"))).collect();
    log.append("t", &first.iter().collect()).unwrap();
    log.append("t", &second.iter().collect()).unwrap();
    let middle: Vec<(u64, String)> = log
        .read("t", 0, 3, 4)
        .unwrap()
        .iter()
        .map(|m| (m.offset, String::from_utf8(m.value.to_vec()).unwrap()))
        .collect();
    assert_eq!(
        middle,
        vec![
            (3, "a3".to_owned()),
            (4, "a4".to_owned()),
            (5, "b0".to_owned()),
            (6, "b1".to_owned()),
        ]
    );
    // The JSON-like values compress: the log is smaller than the messages.
    let big: Vec<Record> = (0..1000)
        .map(|i| record("k", &format!("{{\"column_name\":\"value {i}\"}}")))
        .collect();
    log.append("t", &big.iter().collect()).unwrap();
    let size = std::fs::metadata(dir.path().join("t/p0.log"))
        .unwrap()
        .len();
    assert!(size < 1000 * 20, "{size} bytes");
    assert_eq!(values(&log).len(), 1008);
}

/// Bytes of disk that partition 0 of topic `t` takes (its log and its index).
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    ["t/p0.log", "t/p0.idx"]
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).unwrap().blocks() * 512)
        .sum()
}

#[test]
fn a_release_gives_back_the_blocks_below_and_keeps_every_offset_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.ensure_topic("t", 1).unwrap();
    // Four blocks of 2000 messages that do not compress (64 hex digits each): offsets 0-1999,
    // 2000-3999, 4000-5999 and 6000-7999, about 140 kB apiece.
    for block in 0..4 {
        let records: Vec<Record> = (0..2000)
            .map(|i| {
                record(
                    "k",
                    &blake3::hash(format!("{block}/{i}").as_bytes()).to_hex(),
                )
            })
            .collect();
        log.append("t", &records.iter().collect()).unwrap();
    }
    let all = values(&log);
    assert_eq!(all.len(), 8000);
    let before = allocated(dir.path());

    // Below offset 4500: the two whole blocks before the one that holds it.
    let released = log.release("t", 0, 4500).unwrap();
    assert_eq!(log.start_offset("t", 0).unwrap(), 4000);
    assert!(released > 250_000, "released {released} bytes");
    assert!(allocated(dir.path()) <= before - released);
    assert_eq!(values_from(&log, 4000), all[4000..]);
    assert_eq!(values_from(&log, 4321), all[4321..]);
    let below = log.read("t", 0, 3999, 10).unwrap_err();
    assert!(
        matches!(
            below,
            Error::Released {
                offset: 3999,
                start: 4000,
                ..
            }
        ),
        "{below:?}"
    );
    let text = below.to_string();
    assert!(
        text.contains("offset 3999")
            && text.contains("starts at offset 4000")
            && text.contains("hint:"),
        "{text}"
    );

    // Past the end: everything but the last block, which an append's tail check reads.
    log.release("t", 0, u64::MAX).unwrap();
    assert_eq!(log.start_offset("t", 0).unwrap(), 6000);
    assert_eq!(values_from(&log, 6000), all[6000..]);
    assert_eq!(
        log.release("t", 0, u64::MAX).unwrap(),
        0,
        "nothing more to give back"
    );

    // Appends go on at the next offset, after a torn one as before.
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("t/p0.log"))
            .unwrap(),
        b"\x40\0\0\0partial",
    )
    .unwrap();
    log.append("t", &[record("k", "after")].iter().collect())
        .unwrap();
    let tail = values_from(&log, 6000);
    assert_eq!(tail.len(), 2001);
    assert_eq!(tail[2000], (8000, "after".to_owned()));
    assert!(allocated(dir.path()) < before / 2);
}

#[test]
fn a_crash_between_index_entries_is_completed_and_a_torn_block_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.ensure_topic("t", 1).unwrap();
    let three: Vec<Record> = (0..3).map(|i| record("k", &format!("v{i}"))).collect();
    log.append("t", &three.iter().collect()).unwrap();
    // The block is whole, but only one of its three index entries reached the disk.
    let idx = dir.path().join("t/p0.idx");
    let entries = std::fs::read(&idx).unwrap();
    std::fs::write(&idx, &entries[..8 + 3]).unwrap();
    assert_eq!(log.end_offset("t", 0).unwrap(), 1);
    // Then a block torn halfway.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("t/p0.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, &[7; 30]).unwrap();
    log.append("t", &[record("k", "v3")].iter().collect())
        .unwrap();
    let expected: Vec<(u64, String)> = (0..4).map(|i| (i, format!("v{i}"))).collect();
    assert_eq!(values(&log), expected);
}

#[test]
fn a_corrupt_block_is_an_error_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.ensure_topic("t", 1).unwrap();
    let two: Vec<Record> = (0..2).map(|i| record("k", &format!("value {i}"))).collect();
    log.append("t", &two.iter().collect()).unwrap();
    let path = dir.path().join("t/p0.log");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = log.read("t", 0, 0, 10).unwrap_err().to_string();
    assert!(
        err.contains("offset 0") && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn a_topic_of_another_log_format_is_refused_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.ensure_topic("t", 1).unwrap();
    log.append("t", &[record("k", "v")].iter().collect())
        .unwrap();
    std::fs::remove_file(dir.path().join("t/format")).unwrap();
    let before = std::fs::read(dir.path().join("t/p0.log")).unwrap();
    let err = log.ensure_topic("t", 1).unwrap_err().to_string();
    assert!(err.contains("format") && err.contains("hint"), "{err}");
    assert!(
        log.append("t", &[record("k", "w")].iter().collect())
            .is_err()
    );
    assert_eq!(std::fs::read(dir.path().join("t/p0.log")).unwrap(), before);
}

#[test]
fn index_entries_of_a_block_missing_from_the_log_are_dropped_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.ensure_topic("t", 1).unwrap();
    let first: Vec<Record> = (0..2).map(|i| record("k", &format!("v{i}"))).collect();
    let second: Vec<Record> = (2..5).map(|i| record("k", &format!("v{i}"))).collect();
    log.append("t", &first.iter().collect()).unwrap();
    let whole = std::fs::metadata(dir.path().join("t/p0.log"))
        .unwrap()
        .len();
    log.append("t", &second.iter().collect()).unwrap();
    // The second block lost its tail while its three index entries survived (a disk that does
    // not keep the promised order): the entries go, the first block stays.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("t/p0.log"))
        .unwrap();
    f.set_len(whole + 10).unwrap();
    log.append("t", &[record("k", "v5")].iter().collect())
        .unwrap();
    let expected: Vec<(u64, String)> = [(0, "v0"), (1, "v1"), (2, "v5")]
        .iter()
        .map(|(o, v)| (*o, v.to_string()))
        .collect();
    assert_eq!(values(&log), expected);
}

#[test]
fn messages_as_columns_are_one_block_read_back_as_the_json_they_stand_for() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.ensure_topic("t", 1).unwrap();
    log.append("t", &[record("f", r#"{"a":"framed"}"#)].iter().collect())
        .unwrap();
    let mut columns = Columns::new(&["a", "_raw", "b"], 1, 4);
    columns.push(5, "k1", [Some("x\"y\n"), None, None]);
    columns.push(6, "k2", [None, Some("raw"), Some("")]);
    columns.push(7, "k3", [Some("é"), None, Some("z")]);
    assert_eq!(log.append_columns("t", &columns.finish()).unwrap(), vec![3]);
    assert!(columns.is_empty());
    let index = std::fs::read(dir.path().join("t/p0.idx")).unwrap();
    let starts: Vec<&[u8]> = index.chunks(8).collect();
    assert!(starts[1] == starts[2] && starts[2] == starts[3] && starts[0] != starts[1]);
    // Null fields are null, null `_` fields left out, texts escaped as JSON.
    let expected = vec![
        (0, r#"{"a":"framed"}"#.to_owned()),
        (1, r#"{"a":"x\"y\n","b":null}"#.to_owned()),
        (2, r#"{"a":null,"_raw":"raw","b":""}"#.to_owned()),
        (3, r#"{"a":"é","b":"z"}"#.to_owned()),
    ];
    assert_eq!(values(&log), expected);
    let messages = log.read("t", 0, 2, 10).unwrap();
    let seen: Vec<(u64, &[u8], i64)> = messages
        .iter()
        .map(|m| (m.offset, &m.key[..], m.timestamp_ms))
        .collect();
    assert_eq!(seen, vec![(2, &b"k2"[..], 6), (3, &b"k3"[..], 7)]);
    // As stored: the framed block, then the columns from the offset asked for.
    let chunks = log.read_chunks("t", 0, 0, 3).unwrap();
    assert!(matches!(&chunks[0], Chunk::Messages(m) if m.len() == 1));
    match &chunks[1] {
        Chunk::Columns {
            partition,
            first,
            batch,
        } => {
            assert_eq!((*partition, *first, batch.num_rows()), (0, 1, 2));
            assert_eq!(columns::keys(batch).value(1), "k2");
        }
        other => panic!("expected columns, got {other:?}"),
    }
    let tail = log.read_chunks("t", 0, 3, 10).unwrap();
    assert!(
        matches!(&tail[..], [Chunk::Columns { first: 3, batch, .. }] if columns::keys(batch).value(0) == "k3")
    );
}

#[test]
fn columns_go_to_the_partition_of_their_key_and_a_log_of_the_version_before_is_read_and_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.ensure_topic("t", 3).unwrap();
    log.append("t", &[record("old", "v")].iter().collect())
        .unwrap();
    std::fs::write(dir.path().join("t/format"), "blocks-lz4-1").unwrap();
    assert_eq!(log.partitions("t").unwrap(), 3);
    let mut columns = Columns::new(&["a"], 3, 100);
    for i in 0..100 {
        columns.push(i, &format!("key{i}"), [Some(format!("v{i}").as_str())]);
    }
    let counts = log.append_columns("t", &columns.finish()).unwrap();
    assert_eq!(counts.iter().sum::<u64>(), 100);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("t/format")).unwrap(),
        "blocks-lz4-2"
    );
    let mut seen = 0;
    for p in 0..3 {
        for m in log.read("t", p, 0, usize::MAX).unwrap() {
            assert_eq!(partition_for(&m.key, 3), p);
            if m.key[..] != b"old"[..] {
                let i = &m.key[3..];
                assert_eq!(
                    m.value,
                    format!(r#"{{"a":"v{}"}}"#, std::str::from_utf8(i).unwrap())
                );
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 100);
    // A batch for another partition count is refused, not written to the wrong partitions.
    let mut two = Columns::new(&["a"], 2, 1);
    two.push(0, "k", [None]);
    assert!(matches!(
        log.append_columns("t", &two.finish()),
        Err(Error::PartitionCount { .. })
    ));
}

#[test]
fn keys_that_join_declared_fields_are_not_stored_twice_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.ensure_topic("t", 1).unwrap();
    // Fields that do not compress: 1 kB of hex hashes each.
    let noise = |i: u32| -> String {
        (0u32..16)
            .map(|j| {
                blake3::hash(&[i.to_le_bytes(), j.to_le_bytes()].concat())
                    .to_hex()
                    .to_string()
            })
            .collect()
    };
    let mut columns = Columns::new(&["_raw", "a", "b"], 1, 8).key_of(&["a", "b"], "|");
    let mut sent = Vec::new();
    for i in 0..200 {
        let (a, b) = (noise(i as u32), format!("b{i}"));
        let key = format!("{a}|{b}");
        columns.push(i, &key, [None, Some(a.as_str()), Some(b.as_str())]);
        sent.push(key);
    }
    // A key that is not the join (a broken record's), and one with a null field.
    columns.push(200, "_broken:9", [Some("raw"), None, None]);
    columns.push(201, "|only-b", [None, None, Some("only-b")]);
    sent.extend(["_broken:9".to_owned(), "|only-b".to_owned()]);
    log.append_columns("t", &columns.finish()).unwrap();
    // The 200 long keys are not in the log a second time (LZ4 alone finds no copy of 200 kB of
    // fields a column away, past its 64 kB window): about 200 kB of log, not 400.
    let size = std::fs::metadata(dir.path().join("t/p0.log"))
        .unwrap()
        .len();
    assert!((200_000..260_000).contains(&size), "{size} bytes");
    let keys: Vec<String> = log
        .read("t", 0, 0, usize::MAX)
        .unwrap()
        .iter()
        .map(|m| String::from_utf8(m.key.to_vec()).unwrap())
        .collect();
    assert_eq!(keys, sent);
}

#[test]
fn a_block_of_columns_that_breaks_the_layout_is_an_error_not_a_panic() {
    use std::sync::Arc;

    use deltalake::arrow::array::{Int64Array, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use deltalake::arrow::record_batch::RecordBatch;

    let block = |key_fields: &str, third: Arc<dyn deltalake::arrow::array::Array>| {
        let metadata = [
            ("framework.key_fields".to_owned(), key_fields.to_owned()),
            ("framework.key_separator".to_owned(), "|".to_owned()),
        ];
        let schema = Schema::new(vec![
            Field::new("_timestamp_ms", DataType::Int64, false),
            Field::new("_key", DataType::Utf8, true),
            Field::new("a", third.data_type().clone(), true),
        ])
        .with_metadata(metadata.into());
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![None, Some("k")])),
                third,
            ],
        )
        .unwrap();
        let mut writer =
            deltalake::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), batch.schema_ref())
                .unwrap();
        writer.write(&batch).unwrap();
        writer.into_inner().unwrap()
    };
    // A declared key over a text field: the missing key is joined again.
    let text: Arc<dyn deltalake::arrow::array::Array> =
        Arc::new(StringArray::from(vec![Some("x"), None]));
    let batch = columns::decode(block("2", text)).unwrap();
    assert_eq!(columns::keys(&batch).value(0), "x");
    // Over a field that is not text, or a field that is not there: the key stays missing.
    let number: Arc<dyn deltalake::arrow::array::Array> = Arc::new(Int64Array::from(vec![1, 2]));
    let text: Arc<dyn deltalake::arrow::array::Array> =
        Arc::new(StringArray::from(vec![Some("x"), None]));
    for bytes in [block("2", number), block("7", text)] {
        let err = columns::decode(bytes).unwrap_err();
        assert!(err.contains("_key"), "{err}");
    }
}

/// The values of a block of columns read back, as text.
fn column_values(chunks: &[Chunk]) -> Vec<String> {
    chunks
        .iter()
        .flat_map(|chunk| match chunk {
            Chunk::Columns { batch, .. } => {
                let (_, values) = columns::fields(batch).next().expect("one field");
                values
                    .iter()
                    .map(|v| v.unwrap_or("-").to_owned())
                    .collect::<Vec<_>>()
            }
            Chunk::Messages(_) => panic!("expected columns"),
        })
        .collect()
}

/// A block of columns that this log appended is read back as the file holds it: in pieces,
/// as a second log reads it; and once another log rewrote the partition (the same start,
/// offsets and count, other rows), as rewritten, not as this log kept it.
#[test]
fn a_block_of_columns_this_log_appended_reads_as_the_file_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::new(dir.path().to_path_buf());
    log.keep_for_reads();
    log.ensure_topic("t", 1).unwrap();
    let block = |values: [&str; 3]| {
        let mut columns = Columns::new(&["a"], 1, 3).key_of(&["a"], "|");
        for (i, v) in values.into_iter().enumerate() {
            match i {
                1 => columns.push(i as i64, "other", [Some(v)]),
                _ => columns.push_own(i as i64, v, [Some(v)]),
            }
        }
        columns.finish()
    };
    log.append_columns("t", &block(["a", "b", "c"])).unwrap();
    // Another log (another process) starts the topic over with other rows.
    std::fs::remove_dir_all(dir.path().join("t")).unwrap();
    let other = EmbeddedLog::new(dir.path().to_path_buf());
    other.ensure_topic("t", 1).unwrap();
    other.append_columns("t", &block(["x", "y", "z"])).unwrap();
    assert_eq!(
        column_values(&log.read_chunks("t", 0, 0, 10).unwrap()),
        ["x", "y", "z"]
    );
    log.append_columns("t", &block(["d", "e", "f"])).unwrap();
    let from_file = EmbeddedLog::new(dir.path().to_path_buf());
    for reader in [&from_file, &log] {
        let first = reader.read_chunks("t", 0, 3, 1).unwrap();
        let rest = reader.read_chunks("t", 0, 4, 10).unwrap();
        assert_eq!(column_values(&first), ["d"]);
        assert_eq!(column_values(&rest), ["e", "f"]);
        let keys: Vec<String> = reader
            .read("t", 0, 3, 10)
            .unwrap()
            .iter()
            .map(|m| String::from_utf8(m.key.to_vec()).unwrap())
            .collect();
        assert_eq!(keys, ["d", "other", "f"]);
    }
}

/// A client setting librdkafka refuses is named without its value: the value may be a
/// password, and librdkafka's own message repeats it.
#[test]
fn a_refused_kafka_setting_is_named_without_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::from_url(
        "kafka://127.0.0.1:1?sasl.pasword=TOPSECRET99",
        dir.path().join("_bus"),
    )
    .unwrap();
    let err = bus.ensure_topic("raw_t", 1).unwrap_err().to_string();
    assert!(!err.contains("TOPSECRET99"), "{err}");
    assert!(
        err.contains("the client setting `sasl.pasword` was refused")
            && err.contains("check that setting in --bus's query"),
        "{err}"
    );
}
