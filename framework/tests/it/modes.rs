//! Silver modes on values: hand-made deliveries of a small table and the expected silver table
//! written out row by row, for DIFF, APPEND and FULL.
//!
//! The table is keyed by `id`, versioned by `version` (`sequence_by`). Tie rule: of two versions
//! of a key with the same `sequence_by`, the one that arrived later on the topic wins (a key
//! always lands on the same partition, so "later" is the higher offset).

use std::path::{Path, PathBuf};

use framework::lake::Layer;

use crate::common::*;

/// A project of one table, `accounts`, in the given mode, with no models and no suites.
struct Project {
    dir: PathBuf,
}

impl Project {
    fn new(dir: &Path, mode: &str) -> Self {
        Self::with(dir, mode, "", "id", "")
    }

    /// With `extra_columns` (schema lines) and `extra` (idcard lines) added, keyed by `key`
    /// (columns, comma separated).
    fn with(dir: &Path, mode: &str, extra_columns: &str, key: &str, extra: &str) -> Self {
        let idcards = dir.join("idcards");
        for folder in ["idcards", "models", "expectations", "data"] {
            std::fs::create_dir_all(dir.join(folder)).unwrap();
        }
        std::fs::write(
            idcards.join("accounts.yaml"),
            format!(
                "table: accounts
source: {{ format: csv, path: accounts.csv }}
topic: {{ name: raw_accounts, partitions: 2 }}
schema:
  - {{ name: id, type: string, nullable: false }}
  - {{ name: name, type: string }}
  - {{ name: version, type: int }}
{extra_columns}key: [{key}]
mode: {mode}
sequence_by: version
{extra}"
            ),
        )
        .unwrap();
        Self {
            dir: dir.to_owned(),
        }
    }

    /// An APPEND table keyed by `id` and a coordinate, `lat` (a double), as geolocation is.
    fn keyed_by_coordinate(dir: &Path) -> Self {
        Self::with(
            dir,
            "APPEND",
            "  - { name: lat, type: double }\n",
            "id, lat",
            "",
        )
    }

    /// A DIFF table keyed by `id` and a coordinate, `lat` (a double), whose `op = 'D'` rows are
    /// deletes.
    fn diff_keyed_by_coordinate(dir: &Path) -> Self {
        Self::with(
            dir,
            "DIFF",
            "  - { name: lat, type: double }\n  - { name: op, type: string }\n",
            "id, lat",
            "delete_when: \"op = 'D'\"\n",
        )
    }

    /// A DIFF table with an `op` column whose `D` rows are deletes ([`Self::deliver_ops`]).
    fn with_deletes(dir: &Path) -> Self {
        Self::with(
            dir,
            "DIFF",
            "  - { name: op, type: string }\n",
            "id",
            "delete_when: \"op = 'D'\"\n",
        )
    }

    /// Delivers `id,name,version,op` rows to a [`Self::with_deletes`] table; the run succeeds.
    fn deliver_ops(&self, rows: &[&str]) {
        succeeded(self.deliver_with_header("id,name,version,op", rows));
    }

    /// Delivers `rows` (CSV lines after the header) and runs the table up to silver.
    fn deliver(&self, rows: &[&str]) -> std::process::Output {
        self.deliver_with_header("id,name,version", rows)
    }

    fn deliver_with_header(&self, header: &str, rows: &[&str]) -> std::process::Output {
        self.write_delivery(header, rows);
        output(self.run())
    }

    /// Writes the source file: `header`, then `rows` (CSV lines after it).
    fn write_delivery(&self, header: &str, rows: &[&str]) {
        let mut csv = format!("{header}\n");
        for row in rows {
            csv.push_str(row);
            csv.push('\n');
        }
        std::fs::write(self.dir.join("data/accounts.csv"), csv).unwrap();
    }

    fn run(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_framework"));
        cmd.arg("--idcards")
            .arg(self.dir.join("idcards"))
            .arg("--models")
            .arg(self.dir.join("models"))
            .arg("--expectations")
            .arg(self.dir.join("expectations"))
            .arg("--lake")
            .arg(self.lake())
            .args(["run", "--table", "accounts", "--data"])
            .arg(self.dir.join("data"));
        cmd
    }

    fn lake(&self) -> PathBuf {
        self.dir.join("lake")
    }

    /// The stored `_sequence` of `id` in silver, in microseconds (compared as a number: text
    /// would put `...:00.2Z` after `...:00.25Z`).
    fn sequence_of(&self, id: &str) -> i64 {
        let text = query(
            &self.lake(),
            Layer::Silver,
            "accounts",
            &format!("SELECT CAST(_sequence AS BIGINT) FROM t WHERE id = '{id}'"),
        );
        // A one-cell table: the header, then the value.
        text.lines()
            .filter(|line| line.starts_with('|'))
            .nth(1)
            .and_then(|line| {
                line.trim_matches(|c: char| c == '|' || c.is_whitespace())
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("the sequence of {id}: {text:?}"))
    }

    /// Silver as `id | name | version` lines, sorted.
    /// The newest commit of silver's Delta log, as written.
    fn last_silver_commit(&self) -> String {
        std::fs::read_to_string(self.silver_commits().last().unwrap()).unwrap()
    }

    /// The commit files of silver's Delta log, oldest first.
    fn silver_commits(&self) -> Vec<PathBuf> {
        delta_commits(&self.lake().join("silver/accounts"))
    }

    fn silver(&self) -> Vec<String> {
        self.silver_rows("SELECT id, name, version FROM t")
    }

    /// The rows of `sql` over silver `accounts` (as `t`), as text lines, sorted.
    fn silver_rows(&self, sql: &str) -> Vec<String> {
        batch_rows(&batches(&self.lake(), Layer::Silver, "accounts", sql))
    }
}

fn succeeded(out: std::process::Output) {
    assert!(
        out.status.success(),
        "run failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first delivery of every test: in one batch, an older version after a newer one (`c`)
/// and two versions with the same sequence (`d`: the later line wins).
const FIRST: &[&str] = &[
    "a,Ann,1", "b,Bob,1", "c,Cid,2", "c,Cyd,1", "d,Dan,1", "d,Dee,1",
];

/// The second: a newer version (`a`), an older one arriving late (`b`), an exact duplicate
/// (`c`), the same sequence again with other content (`d`) and a new key (`e`).
const SECOND: &[&str] = &["a,Anna,2", "b,Bobby,0", "c,Cid,2", "d,Dot,1", "e,Eve,1"];

/// The actions of the latest commit of silver `accounts`, one JSON object each.
fn last_commit(project: &Project) -> Vec<serde_json::Value> {
    project
        .last_silver_commit()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The kinds of action (`add`, `remove`, `txn`, ...) of the latest commit of silver `accounts`.
fn last_commit_actions(project: &Project) -> Vec<String> {
    let mut kinds: Vec<String> = last_commit(project)
        .iter()
        .map(|action| action.as_object().unwrap().keys().next().unwrap().clone())
        .filter(|kind| kind != "commitInfo")
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// The operation (`WRITE`, `MERGE`, ...) of the latest commit of silver `accounts`.
fn last_commit_operation(project: &Project) -> String {
    last_commit(project)
        .iter()
        .find_map(|action| {
            action["commitInfo"]["operation"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap()
}

#[test]
fn diff_ordered_by_arrival_commits_only_the_rows_that_change_silver() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path(), "DIFF");
    // Versions ordered by the message time (the default), not by a column.
    let idcard = dir.path().join("idcards/accounts.yaml");
    let text = std::fs::read_to_string(&idcard).unwrap();
    std::fs::write(&idcard, text.replace("sequence_by: version\n", "")).unwrap();
    let sequence_of = |id: &str| project.sequence_of(id);
    let first = ["a,Ann,1", "b,Bob,1", "c,Cid,1"];
    succeeded(project.deliver(&first));
    let (a, b) = (sequence_of("a"), sequence_of("b"));
    // The same rows again (in another order: a file already delivered is not sent twice),
    // newer: nothing to change, the commit records only the offsets.
    succeeded(project.deliver(&["c,Cid,1", "a,Ann,1", "b,Bob,1"]));
    assert_eq!(
        project.silver(),
        ["a | Ann | 1", "b | Bob | 1", "c | Cid | 1"]
    );
    assert_eq!(last_commit_actions(&project), ["txn"]);
    assert_eq!((sequence_of("a"), sequence_of("b")), (a, b));
    // New keys only: a plain append, no file rewritten.
    succeeded(project.deliver(&["a,Ann,1", "d,Dan,1"]));
    assert_eq!(last_commit_actions(&project), ["add", "txn"]);
    // A changed row: merged (its file rewritten); the unchanged one keeps its sequence.
    succeeded(project.deliver(&["a,Ann,1", "b,Bobby,2", "e,Eve,1"]));
    assert_eq!(
        project.silver(),
        [
            "a | Ann | 1",
            "b | Bobby | 2",
            "c | Cid | 1",
            "d | Dan | 1",
            "e | Eve | 1"
        ]
    );
    assert!(last_commit_actions(&project).contains(&"remove".to_owned()));
    assert_eq!(sequence_of("a"), a);
    assert!(
        sequence_of("b") > b,
        "the changed row takes the newer sequence"
    );
}

#[test]
fn diff_keeps_the_newest_version_of_each_key_and_the_later_arrival_on_a_tie() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path(), "DIFF");
    succeeded(project.deliver(FIRST));
    assert_eq!(
        project.silver(),
        ["a | Ann | 1", "b | Bob | 1", "c | Cid | 2", "d | Dee | 1"]
    );
    succeeded(project.deliver(SECOND));
    assert_eq!(
        project.silver(),
        [
            "a | Anna | 2",
            "b | Bob | 1",
            "c | Cid | 2",
            "d | Dot | 1",
            "e | Eve | 1"
        ]
    );
    // Re-running with nothing new changes nothing.
    let mut again = project.run();
    again.arg("--no-produce");
    ok(again);
    assert_eq!(project.silver().len(), 5);
    assert_eq!(project.silver()[0], "a | Anna | 2");
}

#[test]
fn a_delivery_refined_one_offset_per_commit_keeps_the_newest_version_of_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path(), "DIFF");
    // Every bronze offset its own silver commit: the duplicates of `c` and `d` meet only in
    // the MERGE, not in one batch's dedup.
    let mut first = Vec::new();
    for rows in [FIRST, SECOND] {
        project.write_delivery("id,name,version", rows);
        let mut run = project.run();
        run.args(["--silver-batch-size", "1"]);
        succeeded(output(run));
        first.push(project.silver());
    }
    assert_eq!(
        first,
        [
            vec!["a | Ann | 1", "b | Bob | 1", "c | Cid | 2", "d | Dee | 1"],
            vec![
                "a | Anna | 2",
                "b | Bob | 1",
                "c | Cid | 2",
                "d | Dot | 1",
                "e | Eve | 1"
            ]
        ]
    );
}

#[test]
fn the_sample_refined_in_small_commits_gives_the_silver_and_quarantine_of_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let many = dir.path().join("many");
    // The sample plus three customers that break a quarantine rule, far apart in the file.
    let data = dir.path().join("data");
    copy_dir(&sample(), &data);
    let customers = data.join("olist_customers_dataset.csv");
    let mut csv = std::fs::read_to_string(&customers).unwrap();
    for (i, bad) in [
        "q1,u1,ABCDE,sao paulo,SP",
        "q2,u2,01001,sao paulo,sp",
        "q3,u3,12a45,rio de janeiro,RJ",
    ]
    .iter()
    .enumerate()
    {
        let at = csv.len() * i / 3;
        let at = csv[at..].find('\n').map_or(csv.len(), |n| at + n + 1);
        csv.insert_str(at, &format!("{bad}\n"));
    }
    std::fs::write(&customers, csv).unwrap();
    // One bronze (late and duplicate messages included), refined twice.
    let mut bronze = framework(&one);
    bronze.args(["run", "--all", "--simulate", "--until", "bronze", "--data"]);
    bronze.arg(&data);
    ok(bronze);
    copy_dir(&one, &many);
    for (lake, batch) in [(&one, "500000"), (&many, "400")] {
        let mut silver = framework(lake);
        silver.args(["run", "--all", "--no-produce", "--until", "silver"]);
        silver.args(["--silver-batch-size", batch, "--data"]);
        silver.arg(&data);
        ok(silver);
    }
    let project = project();
    for table in &project.tables {
        // APPEND never replaces a stored key, so which of a key's versions a delivery stores
        // depends on which commit met it first: the same keys, not the same versions. DIFF
        // leaves a stored row alone when a later commit brings an identical copy of it (a
        // duplicate or late message), so its `_sequence` and offset are those of the first
        // commit that met it: the same rows, not the same bookkeeping.
        let columns = match table.mode() {
            framework::idcard::Mode::Append => table.key().join(", "),
            framework::idcard::Mode::Diff => {
                "* EXCLUDE (_sequence, _partition, _offset)".to_owned()
            }
            framework::idcard::Mode::Full => "*".to_owned(),
        };
        let table = table.name();
        let sql = format!("SELECT {columns} FROM t");
        let versions = |lake: &Path| batch_rows(&batches(lake, Layer::Silver, table, &sql));
        let expected = versions(&one);
        assert!(!expected.is_empty(), "{table}: silver is empty");
        assert_eq!(versions(&many), expected, "{table}: silver differs");
    }
    let quarantined = |lake: &Path| {
        batch_rows(&batches(
            lake,
            Layer::Quarantine,
            "customers",
            "SELECT DISTINCT customer_id, _failed_rule FROM t",
        ))
    };
    // q1 and q3 break the zip rule, which runs at the edge (the zip is PII, encrypted before
    // the topic): they are rejects, not rows; q2 breaks the state rule, checked in silver.
    let expected = ["q2 | customer_state_matches"];
    assert_eq!(quarantined(&one), expected);
    assert_eq!(quarantined(&many), expected);
    let edge_rejects = query(
        &one,
        Layer::Reject,
        "customers",
        "SELECT count(*) AS n FROM t WHERE _reason LIKE 'expectation `customer_zip_code_prefix_matches` failed%'",
    );
    assert!(
        !edge_rejects.contains("| 0 ") && !edge_rejects.contains("| 1 "),
        "q1 and q3 (and their duplicates) are rejects: {edge_rejects}"
    );
    // Exactly once: as many quarantined rows as messages of those customers.
    let messages = |lake: &Path| {
        query(
            lake,
            Layer::Bronze,
            "customers",
            "SELECT count(*) FROM t WHERE customer_id IN ('q1', 'q2', 'q3')",
        )
    };
    for lake in [&one, &many] {
        assert_eq!(
            query(
                lake,
                Layer::Quarantine,
                "customers",
                "SELECT count(*) FROM t"
            ),
            messages(lake)
        );
    }
}

#[test]
fn append_adds_new_keys_and_never_changes_a_stored_row() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path(), "APPEND");
    succeeded(project.deliver(FIRST));
    assert_eq!(
        project.silver(),
        ["a | Ann | 1", "b | Bob | 1", "c | Cid | 2", "d | Dee | 1"]
    );
    succeeded(project.deliver(SECOND));
    assert_eq!(
        project.silver(),
        [
            "a | Ann | 1",
            "b | Bob | 1",
            "c | Cid | 2",
            "d | Dee | 1",
            "e | Eve | 1"
        ]
    );
}

#[test]
fn full_replaces_the_table_by_each_delivered_snapshot_and_refuses_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path(), "FULL");
    succeeded(project.deliver(FIRST));
    assert_eq!(
        project.silver(),
        ["a | Ann | 1", "b | Bob | 1", "c | Cid | 2", "d | Dee | 1"]
    );
    // The snapshot is the truth: an older `b` replaces a newer one, and keys it lacks go.
    succeeded(project.deliver(SECOND));
    assert_eq!(
        project.silver(),
        [
            "a | Anna | 2",
            "b | Bobby | 0",
            "c | Cid | 2",
            "d | Dot | 1",
            "e | Eve | 1"
        ]
    );
    succeeded(project.deliver(&["f,Fay,1", "a,Ann,3"]));
    assert_eq!(project.silver(), ["a | Ann | 3", "f | Fay | 1"]);
    let replaced = project.last_silver_commit();
    assert!(replaced.contains("\"remove\""), "{replaced}");
    // The same snapshot again (its rows in another order): silver records the delivery's
    // offsets and keeps its file, so the gold models reading it are not rebuilt.
    succeeded(project.deliver(&["a,Ann,3", "f,Fay,1"]));
    assert_eq!(project.silver(), ["a | Ann | 3", "f | Fay | 1"]);
    let kept = project.last_silver_commit();
    assert!(
        kept.contains("\"txn\"") && !kept.contains("\"add\"") && !kept.contains("\"remove\""),
        "{kept}"
    );
    // A header without rows would empty the table: refused, and silver keeps its snapshot.
    let out = project.deliver(&[]);
    assert!(!out.status.success(), "an empty snapshot was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("accounts.csv") && err.contains("no rows") && err.contains("FULL"),
        "{err}"
    );
    assert_eq!(project.silver(), ["a | Ann | 3", "f | Fay | 1"]);
}

#[test]
fn diff_deletes_obey_the_sequence_rule_and_a_deleted_key_stays_deleted_for_older_versions() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::with_deletes(dir.path());
    let deliver = |rows: &[&str]| project.deliver_ops(rows);
    deliver(&["a,Ann,1,I", "b,Bob,1,I", "c,Cid,1,I"]);
    assert_eq!(
        project.silver(),
        ["a | Ann | 1", "b | Bob | 1", "c | Cid | 1"]
    );
    // A newer delete removes `a`; a late (older) delete of `b` is ignored; in one batch, `c`'s
    // newer insert wins over its older delete.
    deliver(&["a,,2,D", "b,,0,D", "c,Cyd,3,I", "c,,2,D"]);
    assert_eq!(project.silver(), ["b | Bob | 1", "c | Cyd | 3"]);
    // An older version of `a` arriving after its delete is not inserted again; a delete of a
    // key never stored, with the same sequence as an insert before it, wins (it came later).
    deliver(&["a,Ann,1,I", "d,Dee,1,I", "d,,1,D"]);
    assert_eq!(project.silver(), ["b | Bob | 1", "c | Cyd | 3"]);
    // A newer version after the delete is a new life for the key.
    deliver(&["a,Anew,5,I", "d,Dot,2,I"]);
    assert_eq!(
        project.silver(),
        ["a | Anew | 5", "b | Bob | 1", "c | Cyd | 3", "d | Dot | 2"]
    );
}

#[test]
fn diff_changes_to_most_of_a_small_table_rewrite_it_whole_with_the_merge_rules() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::with_deletes(dir.path());
    let deliver = |rows: &[&str]| project.deliver_ops(rows);
    deliver(&[
        "a,Ann,1,I",
        "b,Bob,1,I",
        "c,Cid,1,I",
        "d,Dan,1,I",
        "e,Eve,1,I",
        "f,Fay,1,I",
        "g,Gus,1,I",
        "h,Hal,1,I",
    ]);
    let sequence_of = |id: &str| project.sequence_of(id);
    let d = sequence_of("d");
    // Five stored keys change (newer versions of a, e and f, a newer delete of c, the same
    // sequence with other content for g: the later arrival wins) in a table of one file: the
    // MERGE would rewrite that file, so silver is rewritten whole. The rules are the MERGE's:
    // an older version (b) is ignored, an unchanged newer row (d) leaves the stored one as it
    // is, a new key (i) is inserted, a delete of a key never stored (j) inserts nothing.
    deliver(&[
        "a,Anna,2,I",
        "b,Bobby,0,I",
        "c,,2,D",
        "d,Dan,1,I",
        "e,Eva,2,I",
        "f,Faye,3,I",
        "g,Guy,1,I",
        "i,Ivy,1,I",
        "j,,1,D",
    ]);
    assert_eq!(last_commit_operation(&project), "WRITE");
    assert_eq!(
        project.silver(),
        [
            "a | Anna | 2",
            "b | Bob | 1",
            "d | Dan | 1",
            "e | Eva | 2",
            "f | Faye | 3",
            "g | Guy | 1",
            "h | Hal | 1",
            "i | Ivy | 1"
        ]
    );
    assert_eq!(
        sequence_of("d"),
        d,
        "an unchanged row keeps its stored sequence"
    );
    // Fewer changes than that: merged, same rules (a deleted key stays deleted for an older
    // version).
    deliver(&["a,Ann,3,I", "c,Cid,1,I"]);
    assert_eq!(last_commit_operation(&project), "MERGE");
    assert_eq!(project.silver()[0], "a | Ann | 3");
    assert_eq!(project.silver().len(), 8);
}

#[test]
fn diff_rewrites_only_the_files_that_hold_a_delivered_key() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::with_deletes(dir.path());
    // 40 000 keys: silver stores them in arrival order in files of 16 384 rows, three files.
    let first: Vec<String> = (0..40_000).map(|i| format!("k{i:05},N{i},1,I")).collect();
    project.deliver_ops(&first.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        parquet_files(&project.lake().join("silver/accounts")),
        3,
        "the first load is three files"
    );
    // The oldest keys change, as the merge rules say: newer versions (k00000-k00009), a newer
    // delete (k00010), an older version (k00011, ignored), an unchanged row (k00012), and two
    // new keys. Only the first file holds a delivered key, so it alone is replaced.
    let mut second: Vec<String> = (0..10).map(|i| format!("k{i:05},M{i},2,I")).collect();
    second.extend([
        "k00010,,2,D".to_owned(),
        "k00011,Old,0,I".to_owned(),
        "k00012,N12,1,I".to_owned(),
        "n0,New0,1,I".to_owned(),
        "n1,New1,1,I".to_owned(),
    ]);
    project.deliver_ops(&second.iter().map(String::as_str).collect::<Vec<_>>());
    let mut expected: Vec<String> = (0..40_000)
        .filter(|&i| i != 10)
        .map(|i| match i {
            0..10 => format!("k{i:05} | M{i} | 2"),
            _ => format!("k{i:05} | N{i} | 1"),
        })
        .collect();
    expected.extend(["n0 | New0 | 1".to_owned(), "n1 | New1 | 1".to_owned()]);
    expected.sort();
    assert_eq!(project.silver(), expected);
    let removed = last_commit(&project)
        .iter()
        .filter(|action| action.get("remove").is_some())
        .count();
    assert_eq!(removed, 1, "one file of three replaced");
    // New keys only: no file holds one, none is replaced, the rows are added.
    project.deliver_ops(&["n2,New2,1,I", "n3,New3,1,I"]);
    assert!(
        last_commit(&project)
            .iter()
            .all(|a| a.get("remove").is_none())
    );
    expected.extend(["n2 | New2 | 1".to_owned(), "n3 | New3 | 1".to_owned()]);
    expected.sort();
    assert_eq!(project.silver(), expected);
}

#[test]
fn a_crash_while_files_are_replaced_neither_loses_nor_repeats_a_row() {
    let first: Vec<String> = (0..40_000).map(|i| format!("k{i:05},N{i},1,I")).collect();
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let second = ["k00000,M0,2,I", "k00001,,2,D", "n0,New0,1,I"];
    let mut expected: Vec<String> = (2..40_000).map(|i| format!("k{i:05} | N{i} | 1")).collect();
    expected.extend(["k00000 | M0 | 2".to_owned(), "n0 | New0 | 1".to_owned()]);
    expected.sort();
    // Before the commit (the new files written, not yet in the log) and after it.
    for point in ["lake-files-written:accounts", "silver-after-merge:accounts"] {
        let dir = tempfile::tempdir().unwrap();
        let project = Project::with_deletes(dir.path());
        project.deliver_ops(&first);
        project.write_delivery("id,name,version,op", &second);
        let mut crashing = project.run();
        crashing.env("FRAMEWORK_CRASH_AT", point);
        assert_crashed_at(&output(crashing), point);
        // The next run finds the delivery in bronze (it is not sent again) and applies it once.
        succeeded(output(project.run()));
        assert_eq!(project.silver(), expected, "after a crash at {point}");
    }
}

#[test]
fn an_append_delivery_is_committed_in_windows_of_half_the_silver_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path(), "APPEND");
    let rows: Vec<String> = (0..12).map(|i| format!("k{i:02},N{i},1")).collect();
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    project.write_delivery("id,name,version", &rows);
    let mut run = project.run();
    run.args(["--silver-batch-size", "4"]);
    succeeded(output(run));
    assert_eq!(project.silver().len(), 12);
    // Windows of 2 offsets per partition: as many commits as the fuller partition has pairs.
    let per_partition = batch_rows(&batches(
        &project.lake(),
        Layer::Bronze,
        "accounts",
        "SELECT count(*) FROM t GROUP BY _partition",
    ));
    let fullest: usize = per_partition
        .iter()
        .map(|count| count.trim().parse::<usize>().unwrap())
        .max()
        .unwrap();
    let commits = project.silver_commits().len();
    assert_eq!(
        commits,
        fullest.div_ceil(2),
        "bronze per partition: {per_partition:?}"
    );
}

/// An APPEND table whose key holds a double (joined through its bits, see
/// `silver::sql::key_match_joinable`): a second delivery stores only the keys whose values
/// differ, a coordinate one digit longer among them, and `-0.0` is the stored `0.0`.
#[test]
fn append_keyed_by_a_double_stores_only_keys_whose_values_differ() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::keyed_by_coordinate(dir.path());
    let header = "id,name,version,lat";
    succeeded(
        project.deliver_with_header(header, &["a,Ann,1,-23.5", "b,Bob,1,0.0", "c,Cid,1,12.25"]),
    );
    succeeded(project.deliver_with_header(
        header,
        &[
            "a,Ann,1,-23.5",
            "b,Bob,1,-0.0",
            "c,Cid,1,12.25",
            "a,Ann,1,-23.50000000000001",
            "d,Dee,1,7.5",
        ],
    ));
    let silver = project.silver_rows("SELECT id, name, lat FROM t");
    assert_eq!(
        silver,
        [
            "a | Ann | -23.5",
            "a | Ann | -23.50000000000001",
            "b | Bob | 0.0",
            "c | Cid | 12.25",
            "d | Dee | 7.5"
        ]
    );
}

/// A DIFF table keyed by a double matches keys by value: `-0.0` updates the row stored at
/// `0.0`, a coordinate one digit longer is a new key, a delete removes its own coordinate only.
#[test]
fn diff_keyed_by_a_double_updates_and_deletes_the_keys_whose_values_are_equal() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::diff_keyed_by_coordinate(dir.path());
    let header = "id,name,version,lat,op";
    succeeded(project.deliver_with_header(
        header,
        &[
            "a,Ann,1,-23.5,U",
            "b,Bob,1,0.0,U",
            "c,Cid,1,12.25,U",
            "c,Cid,1,12.5,U",
        ],
    ));
    succeeded(project.deliver_with_header(
        header,
        &[
            "b,Bobby,2,-0.0,U",
            "a,Ann Long,1,-23.50000000000001,U",
            "c,Cid,2,12.25,D",
            "d,Dee,1,7.5,U",
        ],
    ));
    let silver = project.silver_rows("SELECT id, name, version, abs(lat) FROM t");
    assert_eq!(
        silver,
        [
            "a | Ann Long | 1 | 23.50000000000001",
            "a | Ann | 1 | 23.5",
            "b | Bobby | 2 | 0.0",
            "c | Cid | 1 | 12.5",
            "d | Dee | 1 | 7.5"
        ]
    );
}

/// A first APPEND load in several windows checks a key whose hash an earlier window wrote
/// against that window's files only: a row delivered again in a later window is still found
/// and not stored twice, and every new key is stored once.
#[test]
fn an_append_first_load_in_windows_stores_a_key_delivered_twice_once() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path(), "APPEND");
    // 16 keys, then four of them again (the same rows, as geolocation repeats its rows), then
    // two new keys: with windows of two offsets per partition, the repeats come windows later.
    let mut rows: Vec<String> = (0..16).map(|i| format!("k{i:02},N{i},1")).collect();
    rows.extend([0, 5, 9, 15].map(|i| format!("k{i:02},N{i},1")));
    rows.extend(["n0,New0,1".to_owned(), "n1,New1,1".to_owned()]);
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    project.write_delivery("id,name,version", &rows);
    let mut run = project.run();
    run.args(["--silver-batch-size", "4"]);
    succeeded(output(run));
    assert!(project.silver_commits().len() >= 5, "several windows");
    let mut expected: Vec<String> = (0..16).map(|i| format!("k{i:02} | N{i} | 1")).collect();
    expected.extend(["n0 | New0 | 1".to_owned(), "n1 | New1 | 1".to_owned()]);
    expected.sort();
    assert_eq!(project.silver(), expected);
}

/// Silver finds where a delivery ends from the offsets bronze records with its rows. A bronze
/// table written without those records (by another writer) is read to its last offset instead:
/// every row still reaches silver.
#[test]
fn a_bronze_table_without_offset_records_is_refined_to_its_last_row() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut run = framework(&lake);
    run.args(["run", "--table", "sellers", "--until", "bronze", "--data"])
        .arg(sample());
    ok(run);
    let rows = batches(&lake, Layer::Bronze, "sellers", "SELECT * FROM t");
    assert!(rows.iter().map(|b| b.num_rows()).sum::<usize>() > 100);
    // The same rows, written again without the offsets; the topic emptied, so that bronze
    // takes nothing new.
    std::fs::remove_dir_all(lake.join("bronze/sellers")).unwrap();
    std::fs::remove_dir_all(lake.join("_bus")).unwrap();
    runtime().block_on(async {
        framework::lake::Lake::new(&lake)
            .write(Layer::Bronze, "sellers", rows, &[], vec![], false)
            .await
            .unwrap();
    });
    let mut refine = framework(&lake);
    refine.args([
        "run",
        "--table",
        "sellers",
        "--no-produce",
        "--until",
        "silver",
    ]);
    ok(refine);
    assert_eq!(
        count(&lake, Layer::Silver, "sellers"),
        distinct_keys_from_csv(&sample(), &project(), "sellers")
    );
}

/// The live files of the lake's deliveries record, from its Delta log.
fn deliveries_files(project: &Project) -> usize {
    let mut live = std::collections::BTreeSet::new();
    for commit in delta_commits(&project.lake().join("_meta/deliveries")) {
        for line in std::fs::read_to_string(commit).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(path) = action["add"]["path"].as_str() {
                live.insert(path.to_owned());
            }
            if let Some(path) = action["remove"]["path"].as_str() {
                live.remove(path);
            }
        }
    }
    live.len()
}

/// Each run records the files it sent in the lake's deliveries record, a small file per run,
/// and every later run reads them all to know what it sent before: the record is compacted
/// once it holds more than eight files, and still knows every delivery.
#[test]
fn the_deliveries_record_stays_a_few_files_and_knows_every_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project::new(dir.path(), "DIFF");
    let most = (1..=12)
        .map(|run| {
            succeeded(project.deliver(&[&format!("k{run},Name{run},1")]));
            deliveries_files(&project)
        })
        .max()
        .unwrap();
    assert!(most <= 8, "the record held {most} files after a run");
    let recorded = batch_rows(&batches(
        &project.lake(),
        Layer::Meta,
        "deliveries",
        "SELECT \"table\", count(DISTINCT hash), sum(messages) FROM t GROUP BY \"table\"",
    ));
    assert_eq!(recorded, ["accounts | 12 | 12"]);
    // The first delivery's file again: known, not sent.
    project.write_delivery("id,name,version", &["k1,Name1,1"]);
    let out = output(project.run());
    succeeded(out.clone());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("was already ingested unchanged"),
        "{stdout}"
    );
}
