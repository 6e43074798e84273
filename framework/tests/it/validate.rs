//! `framework validate` from the command line.

use crate::common::*;

#[test]
fn validate_passes_on_the_repo_idcards() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = framework(dir.path());
    cmd.arg("validate");
    let out = ok(cmd);
    assert!(String::from_utf8_lossy(&out.stdout).contains("10 idcards valid"));
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
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_framework"));
    cmd.arg("--idcards").arg(&idcards).arg("validate");
    let out = output(cmd);
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
    let out = output(cmd);
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

/// `framework validate` over the repo's idcards with `sellers.yaml` replaced by `text`.
fn validate_sellers(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let idcards = idcards_with(dir.path(), "sellers.yaml", "", "");
    std::fs::write(idcards.join("sellers.yaml"), text).unwrap();
    let mut cmd = framework(&dir.path().join("lake"));
    cmd.arg("--idcards").arg(&idcards).arg("validate");
    let out = output_within(cmd, std::time::Duration::from_secs(60));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn broken_idcards_are_refused_with_the_place_and_a_hint() {
    let sellers = std::fs::read_to_string(idcards().join("sellers.yaml")).unwrap();
    let bomb = {
        let mut text =
            String::from("table: sellers\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!(
                "x{i}: &a{i} [{}]\n",
                std::iter::repeat_n(prev.as_str(), 9)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        text
    };
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "duplicate key",
            sellers.replace("mode: DIFF", "mode: DIFF\nmode: FULL"),
            &["sellers.yaml:", "duplicate"],
        ),
        (
            "tab indentation",
            sellers.replace("  partitions: 1", "\tpartitions: 1"),
            &["sellers.yaml:9:", "found a tab"],
        ),
        ("alias bomb", bomb, &["sellers.yaml:"]),
        (
            "no partitions",
            sellers.replace("partitions: 1", "partitions: 0"),
            &["sellers.yaml:10:", "topic.partitions"],
        ),
        (
            "bad cron",
            format!("{sellers}\nschedule: {{ cron: \"0 6 * *\" }}\n"),
            &[
                "sellers.yaml:",
                "schedule.cron: `0 6 * *` is not a cron expression: 4 field(s)",
            ],
        ),
        (
            "unknown type",
            sellers.replace(
                "name: seller_city, type: string",
                "name: seller_city, type: strng",
            ),
            &["sellers.yaml:14:", "strng"],
        ),
        (
            "unknown key column",
            sellers.replace("key: [seller_id]", "key: [seller]"),
            &[
                "sellers.yaml:16:",
                "key column `seller` is not in the schema",
                "hint:",
            ],
        ),
        (
            "unknown field",
            sellers.replace("mode: DIFF", "mode: DIFF\nmodes: FULL"),
            &["sellers.yaml:18:", "modes"],
        ),
        ("not YAML", "table: [sellers\n".into(), &["sellers.yaml:"]),
        ("empty", String::new(), &["sellers.yaml:"]),
    ];
    for (name, text, wanted) in cases {
        let started = std::time::Instant::now();
        let (passed, stderr) = validate_sellers(&text);
        assert!(!passed, "{name}: passed validate");
        assert!(!stderr.contains("panicked"), "{name}: panic\n{stderr}");
        for want in wanted {
            assert!(
                stderr.contains(want),
                "{name}: expected {want:?} in\n{stderr}"
            );
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{name}: took {:?}",
            started.elapsed()
        );
    }
}
