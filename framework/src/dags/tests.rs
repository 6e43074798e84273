use std::path::PathBuf;

use super::{DagDefaults, check, generate, write};
use crate::gold::Models;
use crate::idcard::load_dir;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files() -> Vec<super::GeneratedFile> {
    let project = load_dir(&repo().join("idcards")).unwrap_or_else(|d| panic!("{d}"));
    let models = Models::load(&repo().join("models"), &project, Default::default())
        .unwrap_or_else(|d| panic!("{d}"));
    let defaults =
        DagDefaults::load(&repo().join("framework.yaml")).unwrap_or_else(|d| panic!("{d}"));
    generate(&project, &models, &defaults).unwrap()
}

#[test]
fn generated_dags_match_their_snapshots() {
    let files = files();
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    insta::assert_snapshot!("dag_files", names.join("\n"));
    for name in [
        "olist_pipeline.py",
        "olist_ingest_orders.py",
        "olist_gold.py",
        "framework_support.py",
    ] {
        let file = files.iter().find(|f| f.name == name).unwrap();
        insta::assert_snapshot!(name.replace('.', "_"), file.content);
    }
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(files(), files());
}

#[test]
fn the_committed_dags_generated_folder_is_up_to_date() {
    let stale = check(&repo().join("dags_generated"), &files()).unwrap();
    assert!(
        stale.is_empty(),
        "stale files in dags_generated/: {stale:?}\n  hint: run `cargo run -- generate-dags`"
    );
}

#[test]
fn a_broken_project_file_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("framework.yaml");
    std::fs::write(&path, "dags:\n  project: olist\n  retries: two\n").unwrap();
    let err = DagDefaults::load(&path).unwrap_err().to_string();
    assert!(err.contains("framework.yaml:3:"), "{err}");
    assert!(err.contains("retries"), "{err}");
    std::fs::write(&path, "dags:\n  shedule: '0 6 * * *'\n").unwrap();
    let err = DagDefaults::load(&path).unwrap_err().to_string();
    assert!(err.contains("unknown field `shedule`"), "{err}");
    assert_eq!(
        DagDefaults::load(&dir.path().join("missing.yaml")).unwrap(),
        DagDefaults::default()
    );
}

#[test]
fn check_names_changed_missing_and_orphaned_files_and_write_fixes_them() {
    let dir = tempfile::tempdir().unwrap();
    let files = files();
    assert_eq!(check(dir.path(), &files).unwrap().len(), files.len());
    write(dir.path(), &files).unwrap();
    assert!(check(dir.path(), &files).unwrap().is_empty());

    std::fs::write(dir.path().join("olist_pipeline.py"), "# edited\n").unwrap();
    std::fs::remove_file(dir.path().join("olist_ingest_orders.py")).unwrap();
    let orphan = format!("{}\n", super::generate::MARKER);
    std::fs::write(dir.path().join("olist_ingest_gone.py"), orphan).unwrap();
    std::fs::write(dir.path().join("hand_written.py"), "# mine\n").unwrap();
    assert_eq!(
        check(dir.path(), &files).unwrap(),
        [
            "olist_ingest_gone.py",
            "olist_ingest_orders.py",
            "olist_pipeline.py"
        ]
    );
    write(dir.path(), &files).unwrap();
    assert!(check(dir.path(), &files).unwrap().is_empty());
    assert!(!dir.path().join("olist_ingest_gone.py").exists());
    assert!(dir.path().join("hand_written.py").exists());
}
