//! The model project: every `*.sql` under models/ (macros/ holds macros), their configuration
//! and dependencies, in dependency order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::idcard::position::Pos;
use crate::idcard::{Diagnostic, Diagnostics, Project};

use super::config::{Materialized, ModelConfig};
use super::render::{self, Catalog, HINT, Macros, Request};

/// One model file.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    /// Path under models/ with `/` separators; also its template name.
    pub path: String,
    /// First folder under models/ (staging, intermediate, gold); also its SQL schema.
    pub folder: String,
    /// The template text.
    pub template: String,
    pub config: ModelConfig,
    /// Models it refs.
    pub refs: BTreeSet<String>,
    /// `(layer, table)` pairs it reads with `source()`.
    pub sources: BTreeSet<(String, String)>,
}

impl Model {
    /// Its SQL name, as `ref()` renders it.
    pub fn relation(&self) -> String {
        Catalog::relation(&self.folder, &self.name, self.config.materialized)
    }
}

/// Every model, in dependency order, with what rendering them needs.
#[derive(Debug, Clone)]
pub struct Models {
    pub dir: PathBuf,
    pub models: Vec<Model>,
    pub vars: BTreeMap<String, serde_json::Value>,
    macros: Macros,
    catalog: Arc<Catalog>,
}

impl Models {
    /// Reads models/ and checks it: templates render, refs name models, sources name tables with
    /// an idcard, no cycle. Every problem is collected before failing.
    pub fn load(
        dir: &Path,
        project: &Project,
        vars: BTreeMap<String, serde_json::Value>,
    ) -> Result<Self, Diagnostics> {
        let files = sql_files(dir).map_err(|e| {
            one(
                dir,
                1,
                format!("cannot read the models folder: {e}"),
                Some("pass it with --models"),
            )
        })?;
        let mut macro_files = Vec::new();
        let mut model_files = Vec::new();
        for (path, text) in files {
            if path.starts_with("macros/") {
                macro_files.push((path, text));
            } else {
                model_files.push((path, text));
            }
        }
        let macros =
            Macros::discover(macro_files).map_err(|e| Diagnostics(vec![diagnostic(dir, &e)]))?;

        let mut diagnostics = Vec::new();
        let mut models: Vec<Model> = Vec::new();
        for (path, template) in model_files {
            let name = path
                .rsplit('/')
                .next()
                .unwrap_or(&path)
                .trim_end_matches(".sql")
                .to_owned();
            if let Some(other) = models.iter().find(|m| m.name == name) {
                diagnostics.push(diagnostic_at(
                    dir,
                    &path,
                    1,
                    format!("model name `{name}` is also used by {}", other.path),
                    Some("model names are file names and must be unique across folders"),
                ));
                continue;
            }
            let folder = path.split_once('/').map_or("public", |(f, _)| f).to_owned();
            let config = ModelConfig {
                materialized: Materialized::default_for(&folder),
                unique_key: Vec::new(),
            };
            models.push(Model {
                name,
                path,
                folder,
                template,
                config,
                refs: BTreeSet::new(),
                sources: BTreeSet::new(),
            });
        }

        // First render: learn config, refs and sources (with is_incremental() both ways, so
        // that refs inside either branch count).
        let mut tables: BTreeSet<String> =
            project.names().iter().map(|n| (*n).to_owned()).collect();
        for table in &project.tables {
            tables.extend(table.config.latest_by.iter().map(|l| l.name.clone()));
        }
        let mut catalog = Catalog {
            models: models
                .iter()
                .map(|m| (m.name.clone(), (m.relation(), m.config.materialized)))
                .collect(),
            tables,
        };
        let shared = Arc::new(catalog.clone());
        for model in &mut models {
            for incremental in [false, true] {
                match render_model(&macros, &shared, model, incremental, &vars) {
                    Ok((_, recorded)) => {
                        if let Some(m) = recorded.materialized {
                            model.config.materialized = m;
                        }
                        model.config.unique_key = recorded.unique_key;
                        model.refs.extend(recorded.refs);
                        model.sources.extend(recorded.sources);
                    }
                    Err(err) => {
                        diagnostics.push(diagnostic(dir, &err));
                        break;
                    }
                }
                if model.config.materialized != Materialized::Incremental {
                    break;
                }
            }
            if model.config.materialized == Materialized::Incremental
                && model.config.unique_key.is_empty()
            {
                diagnostics.push(diagnostic_at(
                    dir,
                    &model.path,
                    line_of(&model.template, "config("),
                    "an incremental model needs a unique_key".into(),
                    Some("config(materialized='incremental', unique_key='order_date')"),
                ));
            }
        }
        if !diagnostics.is_empty() {
            return Err(Diagnostics(diagnostics));
        }
        let models = order(dir, models)?;
        catalog.models = models
            .iter()
            .map(|m| (m.name.clone(), (m.relation(), m.config.materialized)))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            models,
            vars,
            macros,
            catalog: Arc::new(catalog),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }

    /// The model's SQL as it runs: rendered, with the ephemeral models it reads inlined as CTEs.
    pub fn render(&self, model: &Model, incremental: bool) -> Result<String, Diagnostics> {
        self.render_reading(model, incremental, &BTreeSet::new())
    }

    /// As [`Self::render`], but the ephemeral models named in `registered` are not inlined: the
    /// session holds their rows under their relation's name (see `build`).
    pub fn render_reading(
        &self,
        model: &Model,
        incremental: bool,
        registered: &BTreeSet<String>,
    ) -> Result<String, Diagnostics> {
        let ephemerals: Vec<&Model> = self
            .ancestors(&model.name)
            .into_iter()
            .filter(|m| m.config.materialized == Materialized::Ephemeral)
            .filter(|m| !registered.contains(&m.name))
            .collect();
        let mut ctes = Vec::new();
        for ephemeral in ephemerals {
            ctes.push((ephemeral.relation(), self.render_one(ephemeral, false)?));
        }
        Ok(render::with_ctes(
            &self.render_one(model, incremental)?,
            &ctes,
        ))
    }

    fn render_one(&self, model: &Model, incremental: bool) -> Result<String, Diagnostics> {
        render_model(&self.macros, &self.catalog, model, incremental, &self.vars)
            .map(|(sql, _)| sql)
            .map_err(|e| Diagnostics(vec![diagnostic(&self.dir, &e)]))
    }

    /// Models `name` reads, directly or not, in dependency order (without `name`).
    pub fn ancestors(&self, name: &str) -> Vec<&Model> {
        let mut wanted = BTreeSet::new();
        let mut stack = vec![name.to_owned()];
        while let Some(next) = stack.pop() {
            if let Some(model) = self.get(&next) {
                for r in &model.refs {
                    if wanted.insert(r.clone()) {
                        stack.push(r.clone());
                    }
                }
            }
        }
        self.models
            .iter()
            .filter(|m| wanted.contains(&m.name))
            .collect()
    }

    /// The `(layer, table)` sources `name` reads, itself or through the models it reads.
    pub fn sources_read(&self, name: &str) -> BTreeSet<&(String, String)> {
        let mut reads = self.ancestors(name);
        reads.extend(self.get(name));
        reads.iter().flat_map(|m| &m.sources).collect()
    }

    /// Models that read `name`, directly or not, in dependency order (without `name`).
    pub fn descendants(&self, name: &str) -> Vec<&Model> {
        let mut found: BTreeSet<&str> = BTreeSet::from([name]);
        let mut out = Vec::new();
        for model in &self.models {
            if model.refs.iter().any(|r| found.contains(r.as_str())) {
                found.insert(&model.name);
                out.push(model);
            }
        }
        out
    }
}

fn render_model(
    macros: &Macros,
    catalog: &Arc<Catalog>,
    model: &Model,
    incremental: bool,
    vars: &BTreeMap<String, serde_json::Value>,
) -> Result<(String, render::Recorded), minijinja::Error> {
    let this = model.relation();
    let request = Request {
        template: &model.path,
        source: &model.template,
        this: &this,
        incremental,
        vars,
    };
    render::render(macros, catalog, &request)
}

/// `(path under dir, text)` of every `*.sql` below `dir`, sorted.
fn sql_files(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "sql") {
                let relative = path.strip_prefix(dir).unwrap_or(&path);
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((name, crate::files::read_text(&path)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Sorts models so that each comes after the models it refs; a cycle is an error at the `ref`
/// that closes it.
fn order(dir: &Path, models: Vec<Model>) -> Result<Vec<Model>, Diagnostics> {
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    let mut left = models;
    while !left.is_empty() {
        let (ready, waiting): (Vec<Model>, Vec<Model>) = left
            .into_iter()
            .partition(|m| m.refs.iter().all(|r| placed.contains(r)));
        if ready.is_empty() {
            return Err(Diagnostics(
                cycle_members(&waiting)
                    .into_iter()
                    .map(|(model, next, path)| {
                        diagnostic_at(
                            dir,
                            &model.path,
                            line_of_ref(&model.template, next),
                            format!("dependency cycle: {}", path.join(" -> ")),
                            Some("a model cannot read itself through ref(); remove one ref of the cycle"),
                        )
                    })
                    .collect(),
            ));
        }
        placed.extend(ready.iter().map(|m| m.name.clone()));
        out.extend(ready);
        left = waiting;
    }
    Ok(out)
}

/// The models on one cycle among `waiting`: each with the ref it follows and the cycle's path.
fn cycle_members(waiting: &[Model]) -> Vec<(&Model, &str, Vec<String>)> {
    let by_name: BTreeMap<&str, &Model> = waiting.iter().map(|m| (m.name.as_str(), m)).collect();
    // Follow unplaced refs from the first model until a name repeats.
    let mut path: Vec<&str> = vec![waiting[0].name.as_str()];
    loop {
        let current = by_name[path.last().expect("not empty")];
        let next = current
            .refs
            .iter()
            .map(String::as_str)
            .find(|r| by_name.contains_key(r))
            .expect("a waiting model refs another waiting model");
        if let Some(start) = path.iter().position(|p| *p == next) {
            let cycle: Vec<&str> = path[start..].to_vec();
            let mut shown: Vec<String> = cycle.iter().map(|s| (*s).to_owned()).collect();
            shown.push(next.to_owned());
            return cycle
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let follows = cycle.get(i + 1).copied().unwrap_or(next);
                    (by_name[name], follows, shown.clone())
                })
                .collect();
        }
        path.push(next);
    }
}

/// 1-based line of the first `ref('name')` in a template (1 when not written literally).
fn line_of_ref(template: &str, name: &str) -> usize {
    let pattern = regex::Regex::new(&format!(r#"ref\(\s*['"]{}['"]\s*\)"#, regex::escape(name)))
        .expect("valid pattern");
    pattern
        .find(template)
        .map_or(1, |m| template[..m.start()].lines().count().max(1))
        .max(1)
}

fn line_of(template: &str, needle: &str) -> usize {
    template
        .find(needle)
        .map_or(1, |at| template[..at].matches('\n').count() + 1)
}

fn one(file: &Path, line: usize, message: String, hint: Option<&str>) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        file: file.to_path_buf(),
        pos: Pos { line, column: 1 },
        field: String::new(),
        message,
        hint: hint.map(str::to_owned),
    }])
}

fn diagnostic_at(
    dir: &Path,
    path: &str,
    line: usize,
    message: String,
    hint: Option<&str>,
) -> Diagnostic {
    one(&dir.join(path), line, message, hint).0.remove(0)
}

/// A minijinja error as a diagnostic at its template and line.
pub fn diagnostic(dir: &Path, err: &minijinja::Error) -> Diagnostic {
    let detail = err.detail().unwrap_or_default();
    let (message, hint) = match detail.split_once(HINT) {
        Some((message, hint)) => (message.to_owned(), Some(hint.to_owned())),
        None => {
            let what = match err.kind() {
                minijinja::ErrorKind::SyntaxError => "template syntax error",
                minijinja::ErrorKind::UndefinedError => "undefined value",
                minijinja::ErrorKind::UnknownFunction => "unknown function",
                minijinja::ErrorKind::TemplateNotFound => "template not found",
                minijinja::ErrorKind::OutOfFuel => "the template ran too long (out of fuel)",
                _ => "template error",
            };
            let hint = match err.kind() {
                minijinja::ErrorKind::UndefinedError => {
                    Some("every name must be defined; parameters come from var('name', default)".to_owned())
                }
                minijinja::ErrorKind::UnknownFunction => Some(
                    "functions: ref, source, config, var, is_incremental, and the macros of models/macros/".to_owned(),
                ),
                minijinja::ErrorKind::SyntaxError => Some(
                    "every {% if %}, {% for %} and {% macro %} needs its {% end... %}; {{ }} and {% %} must be closed".to_owned(),
                ),
                minijinja::ErrorKind::OutOfFuel => Some(format!(
                    "a model's template may run {} steps: look for a loop over a large range",
                    super::render::RENDER_FUEL
                )),
                _ => None,
            };
            let message = if detail.is_empty() {
                what.to_owned()
            } else {
                format!("{what}: {detail}")
            };
            (message, hint)
        }
    };
    Diagnostic {
        file: dir.join(err.name().unwrap_or_default()),
        pos: Pos {
            line: err.line().unwrap_or(1),
            column: 1,
        },
        field: String::new(),
        message,
        hint,
    }
}
