//! `framework validate` from the command line.

use crate::common::*;

#[test]
fn validate_passes_on_the_repo_idcards() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = framework(dir.path());
    cmd.arg("validate");
    let out = ok(cmd);
    assert!(String::from_utf8_lossy(&out.stdout).contains("9 idcards valid"));
}

#[test]
fn validate_fails_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let idcards = dir.path().join("idcards");
    std::fs::create_dir_all(&idcards).unwrap();
    for entry in std::fs::read_dir(crate::common::idcards()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, idcards.join(path.file_name().unwrap())).unwrap();
        }
    }
    let orders = idcards.join("orders.yaml");
    let text = std::fs::read_to_string(&orders)
        .unwrap()
        .replace("mode: DIFF", "mode: UPSERT");
    std::fs::write(&orders, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_framework"))
        .arg("--idcards")
        .arg(&idcards)
        .arg("validate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("orders.yaml:22:7: mode: \"UPSERT\" is not a valid value"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: use one of"), "{stderr}");
}

#[test]
fn an_unknown_table_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = framework(dir.path());
    cmd.args(["run", "--table", "ordrs"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown table `ordrs`") && stderr.contains("known tables:"),
        "{stderr}"
    );
}

#[test]
fn produce_streams_with_the_idcard_delay_and_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = framework(dir.path());
    cmd.args([
        "produce", "--table", "sellers", "--limit", "5", "--seed", "3", "--data",
    ])
    .arg(sample());
    let started = std::time::Instant::now();
    let out = ok(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("for 5 rows to raw_sellers"), "{stdout}");
    // Five pauses of at least the idcard's 50 ms minimum.
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    let messages = topic_messages(dir.path(), "raw_sellers", 1);
    assert!((5..=10).contains(&messages), "{messages}");
}
