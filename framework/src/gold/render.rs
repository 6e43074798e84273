//! One model's template rendered with minijinja: `ref`, `source`, `config`, `var`,
//! `is_incremental()`, `this`, and the macros of models/macros/. Undefined values are errors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use minijinja::value::{Kwargs, Rest, Value};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};

use super::config::Materialized;

/// Separates a message from its hint inside a minijinja error detail.
pub const HINT: char = '\u{1f}';

/// Layers a model may read with `source(layer, table)`.
pub const SOURCE_LAYERS: &[&str] = &["bronze", "silver"];

/// Macro templates, each with the names it exports.
#[derive(Debug, Clone, Default)]
pub struct Macros {
    pub templates: Vec<(String, String, Vec<String>)>,
}

impl Macros {
    /// One `{% from .. import .. %}` per macro file, on a single line so that a model's line
    /// numbers do not move when it is put in front of the model.
    fn imports(&self) -> String {
        self.templates
            .iter()
            .filter(|(_, _, names)| !names.is_empty())
            .map(|(file, _, names)| format!("{{% from {file:?} import {} %}}", names.join(", ")))
            .collect()
    }

    /// Checks each macro template and reads the names of the macros it defines.
    pub fn discover(templates: Vec<(String, String)>) -> Result<Self, Error> {
        let mut env = environment();
        let pattern =
            regex::Regex::new(r"\{%-?\s*macro\s+([A-Za-z_][A-Za-z0-9_]*)").expect("valid pattern");
        let mut out = Vec::new();
        for (name, source) in templates {
            env.add_template_owned(name.clone(), source.clone())?;
            let mut names: Vec<String> = pattern
                .captures_iter(&source)
                .map(|m| m[1].to_owned())
                .collect();
            names.sort();
            names.dedup();
            out.push((name, source, names));
        }
        Ok(Self { templates: out })
    }
}

/// What `ref` and `source` resolve against.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Model name -> its relation in SQL and how it is materialized.
    pub models: BTreeMap<String, (String, Materialized)>,
    /// Tables `source()` accepts.
    pub tables: BTreeSet<String>,
}

impl Catalog {
    /// The SQL name of a model: `<folder>.<name>`, or the CTE name of an ephemeral model.
    pub fn relation(folder: &str, name: &str, materialized: Materialized) -> String {
        if materialized == Materialized::Ephemeral {
            format!("__cte_{name}")
        } else {
            format!("{folder}.{name}")
        }
    }
}

/// What a render learnt about the model.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub refs: BTreeSet<String>,
    pub sources: BTreeSet<(String, String)>,
    pub materialized: Option<Materialized>,
    pub unique_key: Vec<String>,
}

/// One render of one model.
#[derive(Debug)]
pub struct Request<'a> {
    /// Template name: the path under models/.
    pub template: &'a str,
    pub source: &'a str,
    /// The model's own relation, `this`.
    pub this: &'a str,
    pub incremental: bool,
    pub vars: &'a BTreeMap<String, serde_json::Value>,
}

/// Template instructions one model's rendering may run: a nested loop of 10^10 steps grew
/// `compile` to 2 GB without end; the repo's models use a few thousand.
pub(crate) const RENDER_FUEL: u64 = 5_000_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(RENDER_FUEL));
    env
}

fn invalid(message: String, hint: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("{message}{HINT}{hint}"),
    )
}

/// Renders a model; returns the SQL (trimmed, without a final `;`) and what it referenced.
pub fn render(
    macros: &Macros,
    catalog: &Arc<Catalog>,
    request: &Request<'_>,
) -> Result<(String, Recorded), Error> {
    let mut env = environment();
    for (name, source, _) in &macros.templates {
        env.add_template_owned(name.clone(), source.clone())?;
    }
    let recorded = Arc::new(Mutex::new(Recorded::default()));

    let (rec, cat) = (recorded.clone(), catalog.clone());
    env.add_function("ref", move |name: String| -> Result<String, Error> {
        let Some((relation, _)) = cat.models.get(&name) else {
            let known: Vec<&str> = cat.models.keys().map(String::as_str).collect();
            return Err(invalid(
                format!("unknown model `{name}` in ref()"),
                &format!("known models: {}", known.join(", ")),
            ));
        };
        rec.lock().expect("not poisoned").refs.insert(name);
        Ok(relation.clone())
    });

    let (rec, cat) = (recorded.clone(), catalog.clone());
    env.add_function(
        "source",
        move |layer: String, table: String| -> Result<String, Error> {
            if !SOURCE_LAYERS.contains(&layer.as_str()) {
                return Err(invalid(
                    format!("unknown layer `{layer}` in source()"),
                    &format!("layers: {}", SOURCE_LAYERS.join(", ")),
                ));
            }
            if !cat.tables.contains(&table) {
                let known: Vec<&str> = cat.tables.iter().map(String::as_str).collect();
                return Err(invalid(
                    format!("unknown table `{table}` in source()"),
                    &format!("tables with an idcard: {}", known.join(", ")),
                ));
            }
            let relation = format!("{layer}.{table}");
            rec.lock()
                .expect("not poisoned")
                .sources
                .insert((layer, table));
            Ok(relation)
        },
    );

    let rec = recorded.clone();
    env.add_function("config", move |kwargs: Kwargs| -> Result<String, Error> {
        let mut rec = rec.lock().expect("not poisoned");
        if let Some(text) = kwargs.get::<Option<String>>("materialized")? {
            let Some(m) = Materialized::parse(&text) else {
                return Err(invalid(
                    format!("unknown materialization `{text}` in config()"),
                    &format!("one of: {}", Materialized::ALL.join(", ")),
                ));
            };
            rec.materialized = Some(m);
        }
        if let Some(key) = kwargs.get::<Option<Value>>("unique_key")? {
            rec.unique_key = match key.as_str() {
                Some(one) => vec![one.to_owned()],
                None => key
                    .try_iter()?
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        invalid(
                            "unique_key must be a column name or a list of names".into(),
                            "config(unique_key='order_date') or config(unique_key=['a', 'b'])",
                        )
                    })?,
            };
        }
        kwargs.assert_all_used().map_err(|e| {
            invalid(
                format!("config(): {}", e.detail().unwrap_or("unexpected argument")),
                "config() takes materialized= and unique_key=",
            )
        })?;
        Ok(String::new())
    });

    let vars = request.vars.clone();
    env.add_function(
        "var",
        move |name: String, default: Rest<Value>| -> Result<Value, Error> {
            // `Rest`, not `Option`: `var('x', none)` has a default, and it is none.
            match (vars.get(&name), default.first().cloned()) {
                (Some(value), _) => Ok(to_value(value)),
                (None, Some(default)) => Ok(default),
                (None, None) => Err(invalid(
                    format!("var `{name}` is not set and has no default"),
                    &format!("pass --vars '{name}: <value>' or write var('{name}', <default>)"),
                )),
            }
        },
    );

    let incremental = request.incremental;
    env.add_function("is_incremental", move || incremental);
    env.add_global("this", request.this);

    let text = format!("{}{}", macros.imports(), request.source);
    env.add_template_owned(request.template.to_owned(), text)?;
    let sql = env.get_template(request.template)?.render(())?;
    let sql = sql.trim().trim_end_matches(';').trim_end().to_owned();
    let recorded = recorded.lock().expect("not poisoned").clone();
    Ok((sql, recorded))
}

/// A YAML/JSON value as a template value.
fn to_value(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map_or_else(|| Value::from(n.as_f64().unwrap_or_default()), Value::from),
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => items.iter().map(to_value).collect(),
        serde_json::Value::Object(map) => {
            Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), to_value(v))))
        }
    }
}

/// Puts ephemeral models in front of `sql` as CTEs (`ctes` in dependency order), merging with
/// the model's own `WITH` when it has one.
pub fn with_ctes(sql: &str, ctes: &[(String, String)]) -> String {
    if ctes.is_empty() {
        return sql.to_owned();
    }
    let defs: Vec<String> = ctes
        .iter()
        .map(|(name, body)| format!("{name} AS (\n{body}\n)"))
        .collect();
    let defs = defs.join(",\n");
    match strip_leading_with(sql) {
        Some(rest) => format!("WITH {defs},\n{rest}"),
        None => format!("WITH {defs}\n{sql}"),
    }
}

/// The text after a leading `WITH` keyword (comments and blank space before it allowed).
fn strip_leading_with(sql: &str) -> Option<&str> {
    let mut rest = sql.trim_start();
    while let Some(comment) = rest.strip_prefix("--") {
        rest = comment.split_once('\n').map_or("", |(_, r)| r).trim_start();
    }
    let (word, after) = rest.split_at(rest.len().min(4));
    let boundary = after.chars().next().is_none_or(|c| c.is_whitespace());
    (word.eq_ignore_ascii_case("with") && boundary).then(|| after.trim_start())
}
