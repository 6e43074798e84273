//! A run's checks, each started as soon as what it reads is in: a bronze or silver check once
//! the run's tables it reads are refined, so it overlaps the silver of the tables after them;
//! a gold check once the models it reads are built, so it overlaps the models after them.

use std::collections::BTreeSet;

use crate::idcard::Table;
use crate::lake::Lake;
use crate::quality::{self, Check, CheckResult};

use super::Result;

/// Checks waiting for their tables, and those running (dropped, it stops them: they only
/// read).
pub(super) struct EarlyChecks {
    lake: Lake,
    run_id: String,
    checks: Vec<Check>,
    /// Per check, the tables (by their names in the lake) or models it reads that are not in
    /// yet.
    waits_for: Vec<BTreeSet<String>>,
    started: Vec<bool>,
    running: tokio::task::JoinSet<std::result::Result<Evaluated, (usize, super::Error)>>,
}

/// What one group of checks gave, by their positions in [`EarlyChecks::checks`].
struct Evaluated {
    results: Vec<(usize, CheckResult)>,
    /// Checks left out: a table they read is not in the lake.
    missing: Vec<usize>,
}

/// The results in the checks' order, and the names of those left out.
pub(super) struct Finished {
    pub results: Vec<CheckResult>,
    pub missing: Vec<String>,
}

impl EarlyChecks {
    /// `checks` read tables of the lake; those of `run` (the run's tables) are awaited by
    /// their names in the lake (a table's own, its tombstones', its `latest_by` tables').
    pub fn new(lake: &Lake, run_id: &str, checks: Vec<Check>, run: &[Table]) -> Self {
        let waits_for = checks.iter().map(|c| waits_for(c, run)).collect();
        Self::waiting(lake, run_id, checks, waits_for)
    }

    /// `checks` read gold models and other tables of the lake; the models of `building` (the
    /// run's) are awaited, each announced by [`EarlyChecks::done`] with its name.
    pub fn for_models(
        lake: &Lake,
        run_id: &str,
        checks: Vec<Check>,
        building: &BTreeSet<String>,
    ) -> Self {
        let waits_for = checks
            .iter()
            .map(|c| waits_for_models(c, building))
            .collect();
        Self::waiting(lake, run_id, checks, waits_for)
    }

    fn waiting(
        lake: &Lake,
        run_id: &str,
        checks: Vec<Check>,
        waits_for: Vec<BTreeSet<String>>,
    ) -> Self {
        Self {
            lake: lake.clone(),
            run_id: run_id.to_owned(),
            started: vec![false; checks.len()],
            checks,
            waits_for,
            running: tokio::task::JoinSet::new(),
        }
    }

    /// These tables (by their names in the lake) or models are in: the checks that waited
    /// only for them start.
    pub fn done(&mut self, names: &[String]) {
        for waits in &mut self.waits_for {
            for name in names {
                waits.remove(name);
            }
        }
        self.start(|waits| waits.is_empty());
    }

    /// Starts the checks not started yet whose waits pass `ready`, as one group.
    fn start(&mut self, ready: impl Fn(&BTreeSet<String>) -> bool) {
        let group: Vec<usize> = (0..self.checks.len())
            .filter(|&i| !self.started[i] && ready(&self.waits_for[i]))
            .collect();
        if group.is_empty() {
            return;
        }
        for &i in &group {
            self.started[i] = true;
        }
        let checks: Vec<(usize, Check)> =
            group.iter().map(|&i| (i, self.checks[i].clone())).collect();
        let (lake, run_id) = (self.lake.clone(), self.run_id.clone());
        let first = group[0];
        self.running.spawn(async move {
            evaluate(&lake, &run_id, checks)
                .await
                .map_err(|e| (first, e))
        });
    }

    /// Runs what has not started (its tables are in now, or never came in this run) and waits
    /// for every check; the caller records the results.
    pub async fn finish(mut self) -> Result<Finished> {
        self.start(|_| true);
        let mut results: Vec<Option<CheckResult>> = vec![None; self.checks.len()];
        let mut missing = Vec::new();
        let mut failed = None;
        while let Some(joined) = self.running.join_next().await {
            let evaluated = match joined {
                Ok(evaluated) => evaluated,
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            };
            match evaluated {
                Ok(evaluated) => {
                    for (i, result) in evaluated.results {
                        results[i] = Some(result);
                    }
                    missing.extend(evaluated.missing);
                }
                // The error of the first check in the suites' order, whichever ended first.
                Err((first, e)) => {
                    if failed.as_ref().is_none_or(|(at, _)| first < *at) {
                        failed = Some((first, e));
                    }
                }
            }
        }
        if let Some((_, e)) = failed {
            return Err(e);
        }
        let results: Vec<CheckResult> = results.into_iter().flatten().collect();
        missing.sort_unstable();
        Ok(Finished {
            results,
            missing: missing
                .into_iter()
                .map(|i| self.checks[i].name.clone())
                .collect(),
        })
    }
}

/// What the refine lane tells [`Arrivals`].
pub(super) enum Arrival<'a> {
    /// A table's delivery reached silver's lane; `large` as the lane counts it.
    Ingested { table: &'a str, large: bool },
    /// These tables, by their names in the lake, are in silver.
    In(&'a [String]),
}

/// A run's bronze and silver checks as its tables come in, in two groups: those that read
/// only tables gold reads, which gold waits for (a failed `fail` check keeps gold from being
/// built on its table), and the others, which run beside gold. Gold may start once the run's
/// tables it reads are in and every other table of the run is known to be a small delivery
/// (or is in): the silver of small deliveries no model reads (geolocation, payments in a 1%
/// delivery) then overlaps the gold models, while a large one is not refined beside gold,
/// whose memory it would add to (at scale 10, 1.90-2.00 GiB at peak instead of 1.65-1.67).
pub(super) struct Arrivals {
    /// Taken by gold when it starts; `None` when the run builds no gold.
    before_gold: Option<EarlyChecks>,
    beside_gold: EarlyChecks,
    /// The names in the lake of the run's tables gold reads that are not in yet.
    gold_waits_for: BTreeSet<String>,
    /// The run's other tables that gold waits for until their delivery is known to be small.
    gold_waits_for_size: BTreeSet<String>,
    /// Fired once they are all in; dropped unfired when the run stops before.
    gold_may_start: Option<tokio::sync::oneshot::Sender<()>>,
    /// Every check's name in the suites' order, to give the results in that order.
    order: Vec<String>,
}

impl Arrivals {
    /// `gold_reads` names the lake tables of `run` (`silver.orders` as `orders`) the run's
    /// models read, or is `None` when the run builds no gold. The receiver fires when gold may
    /// start.
    pub fn new(
        lake: &Lake,
        run_id: &str,
        checks: Vec<Check>,
        run: &[Table],
        gold_reads: Option<BTreeSet<String>>,
    ) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let order = checks.iter().map(|c| c.name.clone()).collect();
        let builds_gold = gold_reads.is_some();
        let gold_waits_for = gold_reads.unwrap_or_default();
        let gold_waits_for_size = run
            .iter()
            .filter(|t| builds_gold && !t.lake_names().iter().any(|n| gold_waits_for.contains(n)))
            .map(|t| t.name().to_owned())
            .collect();
        let (before, beside): (Vec<Check>, Vec<Check>) = checks
            .into_iter()
            .partition(|c| builds_gold && waits_for(c, run).is_subset(&gold_waits_for));
        let (fire, fired) = tokio::sync::oneshot::channel();
        let mut arrivals = Self {
            before_gold: builds_gold.then(|| EarlyChecks::new(lake, run_id, before, run)),
            beside_gold: EarlyChecks::new(lake, run_id, beside, run),
            gold_waits_for,
            gold_waits_for_size,
            gold_may_start: builds_gold.then_some(fire),
            order,
        };
        arrivals.fire_when_ready();
        (arrivals, fired)
    }

    /// Tables in: the checks that waited only for them start, and gold once they were the
    /// last it waited for. A small delivery ingested: gold need not wait for its silver.
    pub fn arrive(&mut self, arrival: Arrival<'_>) {
        match arrival {
            Arrival::Ingested { table, large } => {
                if !large {
                    self.gold_waits_for_size.remove(table);
                }
            }
            Arrival::In(names) => {
                if let Some(before) = &mut self.before_gold {
                    before.done(names);
                }
                self.beside_gold.done(names);
                for name in names {
                    self.gold_waits_for.remove(name);
                    self.gold_waits_for_size.remove(name);
                }
            }
        }
        self.fire_when_ready();
    }

    fn fire_when_ready(&mut self) {
        if self.gold_waits_for.is_empty()
            && self.gold_waits_for_size.is_empty()
            && let Some(fire) = self.gold_may_start.take()
        {
            let _ = fire.send(());
        }
    }

    /// The run's tables are in or never will be: gold starts now or not at all.
    pub fn close(&mut self) {
        self.gold_may_start = None;
    }

    /// The checks gold waits for; taken once gold may start.
    pub fn take_before_gold(&mut self) -> Option<EarlyChecks> {
        self.before_gold.take()
    }

    /// Waits for the checks beside gold (and those before it, when gold did not take them) and
    /// gives every result in the suites' order, `before_gold`'s included.
    pub async fn finish(mut self, before_gold: Option<Finished>) -> Result<Finished> {
        let mut finished = self.beside_gold.finish().await?;
        let before = match (before_gold, self.before_gold.take()) {
            (Some(done), _) => Some(done),
            (None, Some(waiting)) => Some(waiting.finish().await?),
            (None, None) => None,
        };
        if let Some(before) = before {
            finished.results.extend(before.results);
            finished.missing.extend(before.missing);
        }
        let position = |name: &str| self.order.iter().position(|n| n == name);
        finished.results.sort_by_key(|r| position(&r.check));
        finished.missing.sort_by_key(|name| position(name));
        Ok(finished)
    }
}

/// The tables of `run` that `check` reads, by their names in the lake.
fn waits_for(check: &Check, run: &[Table]) -> BTreeSet<String> {
    check
        .relations()
        .into_iter()
        .map(|(_, name)| name)
        .filter(|name| run.iter().any(|t| t.lake_names().contains(name)))
        .collect()
}

/// The models of `building` that `check` reads.
fn waits_for_models(check: &Check, building: &BTreeSet<String>) -> BTreeSet<String> {
    check
        .relations()
        .into_iter()
        .filter(|(schema, name)| schema == "gold" && building.contains(name))
        .map(|(_, name)| name)
        .collect()
}

async fn evaluate(lake: &Lake, run_id: &str, checks: Vec<(usize, Check)>) -> Result<Evaluated> {
    let refs: Vec<&Check> = checks.iter().map(|(_, c)| c).collect();
    let (ready, waiting) = quality::runnable(lake, &refs).await?;
    let position = |check: &Check| {
        checks
            .iter()
            .find(|(_, c)| std::ptr::eq(c, check))
            .map(|(i, _)| *i)
            .expect("a check of this group")
    };
    let missing = waiting.iter().map(|c| position(c)).collect();
    let results = quality::evaluate_checks(lake, &ready, run_id).await?;
    Ok(Evaluated {
        results: ready.iter().map(|c| position(c)).zip(results).collect(),
        missing,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::gold::Models;
    use crate::quality::Checks;

    #[test]
    fn a_check_waits_for_the_tables_of_the_run_it_reads() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let project = crate::idcard::load_dir(&repo.join("idcards")).unwrap();
        let models = Models::load(&repo.join("models"), &project, BTreeMap::new()).unwrap();
        let checks = Checks::load(&repo.join("expectations"), &project, &models)
            .unwrap_or_else(|d| panic!("{d}"));
        let run: Vec<Table> = ["customers", "orders"]
            .iter()
            .map(|n| project.table(n).unwrap().clone())
            .collect();
        let waits = |layer: crate::quality::SuiteLayer, table: &str| -> Vec<String> {
            let check = checks
                .checks
                .iter()
                .find(|c| c.layer == layer && c.table.as_deref() == Some(table))
                .unwrap_or_else(|| panic!("a {layer:?} check on {table}"));
            waits_for(check, &run).into_iter().collect()
        };
        use crate::quality::SuiteLayer::{Bronze, Silver};
        assert_eq!(waits(Bronze, "orders"), ["orders"]);
        // A `latest_by` table is awaited by its own name: silver announces it after its
        // table's.
        assert_eq!(waits(Silver, "customers_unique"), ["customers_unique"]);
        // A table this run does not load is not waited for.
        assert!(waits(Silver, "products").is_empty());
        // A relationship waits for both sides.
        let synthetic = Check {
            rule: crate::quality::Rule::InRelation {
                column: "customer_id".into(),
                relation: "silver.customers".into(),
                field: "customer_id".into(),
            },
            ..checks.checks[0].clone()
        };
        let mut both = Check {
            relation: Some("silver.orders".into()),
            ..synthetic
        };
        both.table = Some("orders".into());
        assert_eq!(
            waits_for(&both, &run).into_iter().collect::<Vec<_>>(),
            ["customers", "orders"]
        );

        // A gold check waits for the models it reads that the run builds, not for the silver
        // tables it also reads (they are in before gold starts).
        let revenue = checks
            .checks
            .iter()
            .find(|c| c.name == "daily_sales_revenue_equals_silver")
            .unwrap();
        let building: BTreeSet<String> = ["gold_daily_sales", "gold_customer_rfm"]
            .map(String::from)
            .into();
        assert_eq!(
            waits_for_models(revenue, &building)
                .into_iter()
                .collect::<Vec<_>>(),
            ["gold_daily_sales"]
        );
        let others: BTreeSet<String> = ["gold_customer_rfm".to_owned()].into();
        assert!(waits_for_models(revenue, &others).is_empty());
    }

    #[test]
    fn gold_starts_once_its_tables_are_in_and_the_others_are_small_or_in() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let project = crate::idcard::load_dir(&repo.join("idcards")).unwrap();
        let run: Vec<Table> = ["customers", "orders", "geolocation", "payments"]
            .iter()
            .map(|n| project.table(n).unwrap().clone())
            .collect();
        let table = |name: &str| project.table(name).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::at(&dir.path().to_string_lossy());
        let reads: BTreeSet<String> = ["customers", "orders"].map(String::from).into();
        let (mut arrivals, mut fired) = Arrivals::new(&lake, "r", vec![], &run, Some(reads));
        let mut fired_now = || fired.try_recv().is_ok();
        arrivals.arrive(Arrival::Ingested {
            table: "payments",
            large: false,
        });
        arrivals.arrive(Arrival::In(&table("customers").lake_names()));
        // Orders' own silver is enough; a large geolocation is still being refined.
        arrivals.arrive(Arrival::In(&table("orders").refined_names()));
        arrivals.arrive(Arrival::Ingested {
            table: "geolocation",
            large: true,
        });
        assert!(!fired_now(), "gold started beside a large delivery");
        arrivals.arrive(Arrival::In(&table("geolocation").lake_names()));
        assert!(
            fired_now(),
            "gold did not start once the large delivery was in"
        );

        // Without gold, nothing fires; a run that stops early drops the signal.
        let (mut arrivals, mut fired) = Arrivals::new(&lake, "r", vec![], &run, None);
        arrivals.close();
        assert!(fired.try_recv().is_err());
    }
}
