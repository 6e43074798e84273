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
    let counts = bus.append("t", &records).unwrap();
    assert_eq!(counts.iter().sum::<u64>(), 100);
    let mut seen = Vec::new();
    for p in 0..2 {
        assert_eq!(bus.end_offset("t", p).unwrap(), counts[p as usize]);
        let first = bus.read("t", p, 0, 7).unwrap();
        let rest = bus.read("t", p, first.len() as u64, usize::MAX).unwrap();
        for (i, m) in first.iter().chain(&rest).enumerate() {
            assert_eq!(m.offset, i as u64);
            assert_eq!(partition_for(&m.key, 2), p);
            seen.push(String::from_utf8(m.value.clone()).unwrap());
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
    log.append("t", &[record("a", "1")]).unwrap();
    // A crash after writing log bytes but before the index: garbage past the indexed end.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("t/p0.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"\x40\0\0\0partial").unwrap();
    log.append("t", &[record("b", "2")]).unwrap();
    let all = log.read("t", 0, 0, 10).unwrap();
    let values: Vec<&[u8]> = all.iter().map(|m| m.value.as_slice()).collect();
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
