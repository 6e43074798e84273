//! `--select`: which models to build, in dbt's syntax.

use std::collections::BTreeSet;

use super::{Error, Models, Result};

/// The models named by `selectors` (every model when empty), in dependency order. A selector is
/// a model name; `+name` adds the models it reads, `name+` the models that read it;
/// `source:<table>+` the models that read a silver or bronze table, and everything downstream.
pub fn select(models: &Models, selectors: &[String]) -> Result<BTreeSet<String>> {
    if selectors.is_empty() {
        return Ok(models.models.iter().map(|m| m.name.clone()).collect());
    }
    let mut out = BTreeSet::new();
    for selector in selectors {
        let (up, rest) = match selector.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, selector.as_str()),
        };
        let (down, name) = match rest.strip_suffix('+') {
            Some(name) => (true, name),
            None => (false, rest),
        };
        if let Some(table) = name.strip_prefix("source:") {
            for model in &models.models {
                if model.sources.iter().any(|(_, t)| t == table) {
                    out.insert(model.name.clone());
                    if down {
                        out.extend(
                            models
                                .descendants(&model.name)
                                .iter()
                                .map(|m| m.name.clone()),
                        );
                    }
                }
            }
            continue;
        }
        if models.get(name).is_none() {
            return Err(Error::UnknownSelection {
                name: name.to_owned(),
                known: models.names().join(", "),
            });
        }
        out.insert(name.to_owned());
        if up {
            out.extend(models.ancestors(name).iter().map(|m| m.name.clone()));
        }
        if down {
            out.extend(models.descendants(name).iter().map(|m| m.name.clone()));
        }
    }
    Ok(out)
}
