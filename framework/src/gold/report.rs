//! The closing summary of a gold build.

use comfy_table::{Table as Grid, presets::UTF8_FULL_CONDENSED};

use super::ModelReport;

/// A table of the built models, for the terminal.
pub fn render_summary(reports: &[ModelReport]) -> String {
    let mut grid = Grid::new();
    grid.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "model",
        "materialized",
        "run",
        "rows computed",
        "rows",
        "seconds",
    ]);
    for r in reports {
        grid.add_row(vec![
            r.model.clone(),
            r.materialized.to_string(),
            if r.unchanged {
                "unchanged"
            } else if r.incremental {
                "incremental"
            } else {
                "full"
            }
            .to_owned(),
            r.rows_computed.to_string(),
            r.rows.to_string(),
            format!("{:.2}", r.seconds),
        ]);
    }
    grid.to_string()
}
