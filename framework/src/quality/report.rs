//! How check results read in the terminal.

use comfy_table::{Table as Grid, presets::UTF8_FULL_CONDENSED};

use super::CheckResult;
use crate::idcard::Action;

/// A table of results and a closing line with the counts.
pub fn render_summary(results: &[CheckResult]) -> String {
    let mut grid = Grid::new();
    grid.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "suite",
        "check",
        "action",
        "result",
        "observed",
        "failing keys",
    ]);
    for r in results {
        grid.add_row(vec![
            r.suite.clone(),
            r.check.clone(),
            r.action.name().to_owned(),
            outcome(r).to_owned(),
            r.observed_value.clone(),
            r.failing_keys.join(", "),
        ]);
    }
    let failed = results.iter().filter(|r| r.is_fatal()).count();
    let passed = results.iter().filter(|r| r.passed).count();
    format!(
        "{grid}\nchecks: {passed} passed, {} warned, {failed} failed",
        results.len() - passed - failed
    )
}

fn outcome(r: &CheckResult) -> &'static str {
    match (r.passed, r.action) {
        (true, _) => "pass",
        (false, Action::Fail) => "FAIL",
        (false, Action::Warn) => "warn",
        (false, Action::Drop) => "dropped",
        (false, Action::Quarantine) => "quarantined",
    }
}

/// The error text for the checks that failed with action `fail`, or `None`.
pub fn failure_message(results: &[CheckResult]) -> Option<String> {
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.is_fatal())
        .map(|r| {
            let keys = if r.failing_keys.is_empty() {
                String::new()
            } else {
                format!("; first: {}", r.failing_keys.join(", "))
            };
            format!("  {} / {}: {}{keys}", r.suite, r.check, r.observed_value)
        })
        .collect();
    (!failed.is_empty()).then(|| {
        format!(
            "{} quality check(s) with action `fail` failed:\n{}\n  hint: the results are in <lake>/quality/results; fix the data or relax the check",
            failed.len(),
            failed.join("\n")
        )
    })
}
