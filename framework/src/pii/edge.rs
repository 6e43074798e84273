//! What happens to a table's PII cells at the edge, before a message reaches the topic: the
//! column's `pad_left`, then the idcard's expectations on that column (they need the plaintext,
//! so they run here and not in silver), then encryption in place.
//!
//! A row that breaks an edge expectation whose action is `drop` or `quarantine` becomes a reject
//! (bronze's reject table, with the rule in the reason); `warn` counts; `fail` stops the
//! producer. The text of a rejected or broken record of a table with PII is encrypted whole
//! (randomized, under the domain of the table's first PII column), so no reject payload holds
//! plaintext either.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex::Regex;

use super::cipher::{CipherError, Keyring, PiiMode};
use crate::idcard::config::ExpectationConfig;
use crate::idcard::model::Step;
use crate::idcard::{Action, Table};

/// Why the edge cannot pass a record on.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(
        "table `{table}`, record {record}: expectation `{rule}` failed (action fail; checked before encryption, the value is not shown)"
    )]
    Fail {
        table: String,
        record: u64,
        rule: String,
    },
    #[error("table `{table}`, column `{column}`: {source}")]
    Cipher {
        table: String,
        column: String,
        source: CipherError,
    },
}

/// What became of one record at the edge.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its PII cells are encrypted (in [`Edge::cells`]).
    Pass,
    /// It breaks a `drop` or `quarantine` rule: it goes on as a reject with this reason.
    Reject(String),
}

enum Test {
    NotNull,
    InSet(Vec<String>),
    Matches(Regex),
}

struct Rule {
    name: String,
    action: Action,
    test: Test,
}

impl Rule {
    fn new(expectation: &ExpectationConfig) -> Option<Self> {
        let test = if expectation.not_null == Some(true) {
            Test::NotNull
        } else if let Some(values) = &expectation.in_set {
            Test::InSet(values.clone())
        } else if let Some(pattern) = &expectation.matches {
            // The idcard compiler checked the pattern.
            Test::Matches(Regex::new(pattern).ok()?)
        } else {
            return None;
        };
        Some(Self {
            name: crate::silver::sql::rule_name(expectation),
            action: expectation.action,
            test,
        })
    }

    /// As silver's SQL does: a null passes every rule but `not_null`.
    fn passes(&self, value: Option<&str>) -> bool {
        match (&self.test, value) {
            (Test::NotNull, v) => v.is_some(),
            (_, None) => true,
            (Test::InSet(values), Some(v)) => values.iter().any(|x| x == v),
            (Test::Matches(re), Some(v)) => re.is_match(v),
        }
    }
}

struct PiiColumn {
    /// Position in the schema.
    at: usize,
    name: String,
    pad: Option<(u32, char)>,
    mode: PiiMode,
    domain: String,
    /// Schema position of the column naming the subject whose key encrypts this one.
    subject: Option<usize>,
    rules: Vec<Rule>,
    /// Deterministic only: plaintext -> ciphertext, so a repeated value (a city, a zip code) is
    /// encrypted once.
    cache: HashMap<String, Arc<str>>,
}

/// Deterministic ciphertexts remembered per column.
const CACHE_LIMIT: usize = 200_000;

/// A nested column with PII leaves: its value (JSON text) is parsed, each leaf checked and
/// encrypted in place, and written back with its shape unchanged.
struct NestedColumn {
    /// Position in the schema.
    at: usize,
    name: String,
    leaves: Vec<Leaf>,
}

/// One PII path inside a nested column.
struct Leaf {
    steps: Vec<Step>,
    /// Padding is for top-level columns; the rules and the cipher are a column's.
    column: PiiColumn,
}

/// A table's edge: its PII columns and the keys to encrypt them.
pub struct Edge {
    table: String,
    columns: Vec<PiiColumn>,
    /// Domain of a rejected or broken record's whole text.
    raw_domain: String,
    keyring: Arc<Keyring>,
    /// Nested columns with PII leaves; their slots follow `columns`'.
    nested: Vec<NestedColumn>,
    /// Per schema column, its slot when it is a PII column or holds PII leaves.
    slots: Vec<Option<usize>>,
    /// The encrypted cells of the record at hand, one per slot (`None`: null); a nested
    /// column's is its JSON text with the leaves encrypted.
    cells: Vec<Option<Arc<str>>>,
    plain: String,
    /// Rows that broke a `warn` rule, per rule.
    pub warnings: BTreeMap<String, u64>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Edge({})", self.table)
    }
}

impl Edge {
    /// The edge of `table`, or `None` when it has no PII column.
    pub fn new(table: &Table, keyring: &Arc<Keyring>) -> Option<Self> {
        let rules = |path: &str| -> Vec<Rule> {
            table
                .config
                .expectations
                .iter()
                .filter(|e| e.column == path)
                .filter_map(Rule::new)
                .collect()
        };
        let pii_column =
            |at: usize, name: &str, pad, pii: &crate::idcard::model::ColumnPii| PiiColumn {
                at,
                name: name.to_owned(),
                pad,
                mode: pii.mode,
                domain: pii.domain.clone(),
                subject: pii
                    .subject
                    .as_ref()
                    .and_then(|s| table.columns.iter().position(|c| &c.name == s)),
                rules: rules(name),
                cache: HashMap::new(),
            };
        let columns: Vec<PiiColumn> = table
            .columns
            .iter()
            .enumerate()
            .filter_map(|(at, c)| Some(pii_column(at, &c.name, c.pad_left, c.pii.as_ref()?)))
            .collect();
        let nested: Vec<NestedColumn> = table
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.nested_pii.is_empty())
            .map(|(at, c)| NestedColumn {
                at,
                name: c.name.clone(),
                leaves: c
                    .nested_pii
                    .iter()
                    .map(|leaf| Leaf {
                        steps: leaf.steps.clone(),
                        column: pii_column(at, &leaf.path, None, &leaf.pii),
                    })
                    .collect(),
            })
            .collect();
        let raw_domain = columns
            .first()
            .or_else(|| {
                nested
                    .first()
                    .and_then(|n| n.leaves.first())
                    .map(|l| &l.column)
            })?
            .domain
            .clone();
        let mut slots = vec![None; table.columns.len()];
        let ats = columns
            .iter()
            .map(|c| c.at)
            .chain(nested.iter().map(|n| n.at));
        for (slot, at) in ats.enumerate() {
            slots[at] = Some(slot);
        }
        Some(Self {
            slots,
            table: table.name().to_owned(),
            cells: vec![None; columns.len() + nested.len()],
            columns,
            nested,
            raw_domain,
            keyring: keyring.clone(),
            plain: String::new(),
            warnings: BTreeMap::new(),
        })
    }

    /// Whether the column at schema position `at` is encrypted here; its slot in [`Self::cell`].
    pub fn slot(&self, at: usize) -> Option<usize> {
        self.slots.get(at).copied().flatten()
    }

    /// Whether [`Self::protect`] reads the column at schema position `at` (a PII column, one
    /// with PII leaves, or a subject column).
    pub fn reads(&self, at: usize) -> bool {
        self.slot(at).is_some()
            || self
                .columns
                .iter()
                .chain(
                    self.nested
                        .iter()
                        .flat_map(|n| n.leaves.iter().map(|l| &l.column)),
                )
                .any(|c| c.subject == Some(at))
    }

    /// Syncs the subject keys made for the records protected so far: call before sending them.
    pub fn sync(&self) -> Result<(), EdgeError> {
        self.keyring
            .sync_subjects()
            .map_err(|source| EdgeError::Cipher {
                table: self.table.clone(),
                column: "(subject keys)".to_owned(),
                source,
            })
    }

    /// The encrypted cell of PII column `slot` for the record last passed to [`Self::protect`].
    pub fn cell(&self, slot: usize) -> Option<&str> {
        self.cells[slot].as_deref()
    }

    /// Pads, checks and encrypts the PII cells of one record (`cell(at)`: the text of the
    /// column at schema position `at`, `None` for null; `record`: its line or index, for errors).
    pub fn protect<'a>(
        &mut self,
        record: u64,
        cell: impl Fn(usize) -> Option<&'a str>,
    ) -> Result<Outcome, EdgeError> {
        for slot in 0..self.columns.len() {
            let column = &mut self.columns[slot];
            let value = cell(column.at);
            self.plain.clear();
            let value = value.map(|v| {
                if let Some((width, pad)) = column.pad {
                    let short = (width as usize).saturating_sub(v.chars().count());
                    self.plain.extend(std::iter::repeat_n(pad, short));
                }
                self.plain.push_str(v);
                self.plain.as_str()
            });
            if let Some(reason) =
                check_rules(&self.table, record, column, value, &mut self.warnings)?
            {
                return Ok(Outcome::Reject(reason));
            }
            self.cells[slot] = match value {
                None => None,
                Some(plain) => {
                    let subject = match subject_of(column, &self.table, &cell) {
                        Ok(subject) => subject,
                        Err(reason) => return Ok(Outcome::Reject(reason)),
                    };
                    Some(encrypt_cell(
                        &self.table,
                        &self.keyring,
                        column,
                        plain,
                        subject,
                    )?)
                }
            };
        }
        for n in 0..self.nested.len() {
            let slot = self.columns.len() + n;
            let nested = &mut self.nested[n];
            let Some(text) = cell(nested.at) else {
                self.cells[slot] = None;
                continue;
            };
            let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) else {
                return Ok(Outcome::Reject(format!(
                    "column `{}`: not JSON (a column with PII leaves is checked at the edge)",
                    nested.name
                )));
            };
            for leaf in &mut nested.leaves {
                let mut found = Vec::new();
                collect_leaves(&mut value, &leaf.steps, &mut found);
                // A leaf that is not there (a missing field, a null struct) is a null to the rules.
                if found.is_empty()
                    && let Some(reason) =
                        check_rules(&self.table, record, &leaf.column, None, &mut self.warnings)?
                {
                    return Ok(Outcome::Reject(reason));
                }
                for target in found {
                    let plain = match &*target {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(text) => Some(text.clone()),
                        other => {
                            return Ok(Outcome::Reject(format!(
                                "column `{}`: at `{}`: expected a string (an encrypted leaf), found {}",
                                nested.name,
                                leaf.column.name,
                                crate::bronze::json_kind(other)
                            )));
                        }
                    };
                    if let Some(reason) = check_rules(
                        &self.table,
                        record,
                        &leaf.column,
                        plain.as_deref(),
                        &mut self.warnings,
                    )? {
                        return Ok(Outcome::Reject(reason));
                    }
                    if let Some(plain) = plain {
                        let subject = match subject_of(&leaf.column, &self.table, &cell) {
                            Ok(subject) => subject,
                            Err(reason) => return Ok(Outcome::Reject(reason)),
                        };
                        let sealed = encrypt_cell(
                            &self.table,
                            &self.keyring,
                            &mut leaf.column,
                            &plain,
                            subject,
                        )?;
                        *target = serde_json::Value::String(sealed.to_string());
                    }
                }
            }
            self.cells[slot] = Some(value.to_string().into());
        }
        Ok(Outcome::Pass)
    }

    /// The whole text of a rejected or broken record, encrypted (randomized).
    pub fn seal_raw(&self, raw: &str) -> Result<String, EdgeError> {
        self.keyring
            .encrypt(&self.raw_domain, PiiMode::Randomized, raw.as_bytes())
            .map_err(|source| EdgeError::Cipher {
                table: self.table.clone(),
                column: "_raw".to_owned(),
                source,
            })
    }
}

/// Checks `value` of `column` against its rules: a `warn` is counted, a `fail` is an error, a
/// `drop` or `quarantine` gives the reason the record becomes a reject.
fn check_rules(
    table: &str,
    record: u64,
    column: &PiiColumn,
    value: Option<&str>,
    warnings: &mut BTreeMap<String, u64>,
) -> Result<Option<String>, EdgeError> {
    for rule in &column.rules {
        if rule.passes(value) {
            continue;
        }
        match rule.action {
            Action::Warn => *warnings.entry(rule.name.clone()).or_default() += 1,
            Action::Fail => {
                return Err(EdgeError::Fail {
                    table: table.to_owned(),
                    record,
                    rule: rule.name.clone(),
                });
            }
            Action::Drop | Action::Quarantine => {
                return Ok(Some(format!(
                    "expectation `{}` failed (action {}; checked at the edge, before encryption)",
                    rule.name,
                    rule.action.name()
                )));
            }
        }
    }
    Ok(None)
}

/// The values at `steps` below `value` (every element of a list at `[]`); a missing field or a
/// null on the way has none.
fn collect_leaves<'v>(
    value: &'v mut serde_json::Value,
    steps: &[Step],
    out: &mut Vec<&'v mut serde_json::Value>,
) {
    match steps.split_first() {
        None => out.push(value),
        Some((Step::Field(name), rest)) => {
            if let Some(inner) = value.as_object_mut().and_then(|o| o.get_mut(name)) {
                collect_leaves(inner, rest, out);
            }
        }
        Some((Step::Each, rest)) => {
            if let Some(items) = value.as_array_mut() {
                for item in items {
                    collect_leaves(item, rest, out);
                }
            }
        }
    }
}

/// The subject whose key encrypts a value of `column` in the record at hand (`cell`: its
/// columns' text); `None` for a column without a subject; the reject reason when the record's
/// subject column is null or empty.
fn subject_of<'a>(
    column: &PiiColumn,
    table: &str,
    cell: &impl Fn(usize) -> Option<&'a str>,
) -> Result<Option<&'a str>, String> {
    let Some(at) = column.subject else {
        return Ok(None);
    };
    cell(at).map(Some).ok_or_else(|| {
        format!(
            "column `{}` of table `{table}` is encrypted under its subject's key, and the \
             record's subject column is null or empty",
            column.name
        )
    })
}

/// `plain` of `column` (a column or a nested leaf of `table`) encrypted, under `subject`'s key
/// when the column has one; a deterministic ciphertext is remembered.
fn encrypt_cell(
    table: &str,
    keyring: &Keyring,
    column: &mut PiiColumn,
    plain: &str,
    subject: Option<&str>,
) -> Result<Arc<str>, EdgeError> {
    if column.mode == PiiMode::Deterministic
        && let Some(hit) = column.cache.get(plain)
    {
        return Ok(hit.clone());
    }
    let sealed = match subject {
        Some(subject) => keyring.encrypt_for_subject(&column.domain, subject, plain.as_bytes()),
        None => keyring.encrypt(&column.domain, column.mode, plain.as_bytes()),
    };
    let sealed: Arc<str> = sealed
        .map_err(|source| EdgeError::Cipher {
            table: table.to_owned(),
            column: column.name.clone(),
            source,
        })?
        .into();
    if column.mode == PiiMode::Deterministic {
        if column.cache.len() >= CACHE_LIMIT {
            column.cache.clear();
        }
        column.cache.insert(plain.to_owned(), sealed.clone());
    }
    Ok(sealed)
}
