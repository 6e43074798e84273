//! The bronze consumer loop: read from the committed offsets, type, commit rows and offsets
//! together.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::bus::{Bus, Chunk, EmbeddedLog, GroupMember, KafkaBus};
use crate::idcard::Table;
use crate::lake::{Lake, Layer};
use crate::offsets::{Cursor, Ends, Offsets, Stage};

use super::parse::{parse_columns, parse_messages};
use super::{Error, Result};

/// Bronze settings (runtime, not part of the idcard).
#[derive(Debug, Clone)]
pub struct BronzeOptions {
    /// Messages per Delta commit.
    pub batch_size: usize,
    /// Kafka: how long a poll waits for a first message before the run checks again whether it
    /// has caught up with the partitions the group assigned it (it also checks whenever the
    /// stream pauses).
    pub idle: Duration,
    /// Kafka: read every partition outside the consumer group from the start, instead of
    /// joining it. For a process that is its tables' one bronze reader (the gateway): after a
    /// restart, the group would hold the partitions with the dead process's member until its
    /// session ends, and a refresh would wait for that or for the take-over
    /// ([`TAKE_OVER_AFTER`]). Exactly once either way: the offsets live in bronze's commits.
    pub outside_group: bool,
}

impl Default for BronzeOptions {
    fn default() -> Self {
        Self {
            batch_size: 100_000,
            idle: Duration::from_secs(1),
            outside_group: false,
        }
    }
}

impl BronzeOptions {
    /// The defaults for a process that is its tables' one bronze reader (the gateway: its
    /// refresher and `/ingest`): every partition read outside the group.
    pub fn sole_reader() -> Self {
        Self {
            outside_group: true,
            ..Self::default()
        }
    }
}

/// What a bronze run did.
#[derive(Debug, Clone, Default)]
pub struct BronzeStats {
    /// Messages stored by this run (as rows or rejects).
    pub messages: u64,
    pub rows: u64,
    pub rejected: u64,
    pub commits: u64,
    pub seconds: f64,
}

/// Consumer group of a table's bronze consumers on Kafka.
pub fn group_id(table: &str) -> String {
    format!("framework-bronze.{table}")
}

/// Consumes `table`'s topic from the offsets committed in bronze up to its current end: on the
/// embedded log, every partition in turn; on Kafka, the partitions a consumer group assigns.
pub async fn ingest(
    bus: &Bus,
    lake: &Lake,
    table: &Table,
    options: &BronzeOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<BronzeStats> {
    match bus {
        Bus::Kafka(kafka) => ingest_group(kafka, lake, table, options, progress).await,
        Bus::Embedded(log) => {
            ingest_partitions(log, lake, table, options, progress, Batches::All).await
        }
    }
}

/// While `table` is still being produced onto the embedded log: stores the whole batches
/// (`batch_size` messages of a partition) already on the topic and leaves the rest, so that a
/// bronze that follows its producer commits batches as large as one that starts after it.
/// (On Kafka, [`ingest`] runs once producing is done: its reader stops by its own rule.)
pub async fn ingest_whole_batches(
    log: &EmbeddedLog,
    lake: &Lake,
    table: &Table,
    options: &BronzeOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<BronzeStats> {
    ingest_partitions(log, lake, table, options, progress, Batches::Whole).await
}

/// Which of the messages past the stored offsets a pass over the embedded log stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batches {
    /// Everything up to each partition's end.
    All,
    /// Only whole batches of a partition ([`ingest_whole_batches`]).
    Whole,
}

impl std::ops::AddAssign for BronzeStats {
    fn add_assign(&mut self, other: Self) {
        self.messages += other.messages;
        self.rows += other.rows;
        self.rejected += other.rejected;
        self.commits += other.commits;
        self.seconds += other.seconds;
    }
}

/// Passes over the log that a release may cut short before [`ingest_partitions`] gives up.
const PASSES: u32 = 4;

/// Reads every partition from its committed offset to its end, in batches. A read that finds
/// its messages released from the log (a vacuum, or another run's end, gave them back because
/// another reader stored them in bronze meanwhile) reads the committed offsets again and goes on
/// from there; when bronze does not hold them, the read's error is the answer (nothing to redo:
/// they are not on the log any more).
async fn ingest_partitions(
    log: &EmbeddedLog,
    lake: &Lake,
    table: &Table,
    options: &BronzeOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
    batches: Batches,
) -> Result<BronzeStats> {
    let started = Instant::now();
    let mut stats = BronzeStats::default();
    for pass in 1.. {
        let outcome = read_pass(log, lake, table, options, progress, batches, &mut stats).await;
        let (partition, start) = match &outcome {
            Err(Error::Bus {
                source:
                    crate::bus::Error::Released {
                        partition, start, ..
                    },
                ..
            }) if pass < PASSES => (*partition, *start),
            _ => {
                outcome?;
                break;
            }
        };
        let partitions = log.partitions(table.topic()).map_err(|source| Error::Bus {
            table: table.name().to_owned(),
            source,
        })?;
        let cursor = Cursor::new(Stage::Bronze, table.topic(), partitions);
        let committed = stored_offsets(lake, table.name(), &cursor).await?;
        if committed.next(partition) < start as i64 {
            outcome?;
        }
        tracing::info!(
            table = table.name(),
            partition,
            start,
            "bronze: messages released after another reader stored them; reading on from the \
             offsets committed now"
        );
    }
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// One pass of [`ingest_partitions`]: from the committed offsets to the ends seen at its start;
/// what it stores is added to `stats` batch by batch, so that a pass cut short still counts.
async fn read_pass(
    log: &EmbeddedLog,
    lake: &Lake,
    table: &Table,
    options: &BronzeOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
    batches: Batches,
    stats: &mut BronzeStats,
) -> Result<()> {
    let name = table.name();
    let topic = table.topic();
    let bus_err = |source| Error::Bus {
        table: name.to_owned(),
        source,
    };
    let partitions = log
        .ensure_topic(topic, table.config.topic.partitions)
        .map_err(bus_err)?;
    let cursor = Cursor::new(Stage::Bronze, topic, partitions);
    let committed = stored_offsets(lake, name, &cursor).await?;
    crate::fault::crash_point("bronze-after-offsets");
    // The slices to read, in order: (partition, first offset, one past the last).
    let mut slices = Vec::new();
    // At least one message a slice (an empty one would never advance).
    let batch_size = options.batch_size.max(1) as u64;
    for partition in 0..partitions {
        let mut from = committed.next(partition) as u64;
        let end = log.end_offset(topic, partition).map_err(bus_err)?;
        while from < end {
            let to = end.min(from.saturating_add(batch_size));
            if batches == Batches::Whole && to - from < batch_size {
                break;
            }
            slices.push((partition, from, to));
            from = to;
        }
    }
    // The commits: consecutive slices up to `batch_size` messages share one (a few messages
    // on each of several partitions, as the gateway brings them, are one commit, not one per
    // partition).
    let mut plan: Vec<Vec<(u32, u64, u64)>> = Vec::new();
    for slice in slices {
        let size = |step: &Vec<(u32, u64, u64)>| step.iter().map(|(_, f, t)| t - f).sum::<u64>();
        match plan.last_mut() {
            Some(step) if size(step) + (slice.2 - slice.1) <= batch_size => {
                step.push(slice);
            }
            _ => plan.push(vec![slice]),
        }
    }
    let total: u64 = stats.messages
        + plan
            .iter()
            .flatten()
            .map(|(_, from, to)| to - from)
            .sum::<u64>();
    progress(stats.messages, total);
    // Pipeline: the next batch is read and typed on a blocking thread while this one is written.
    let prepare = |step: &Vec<(u32, u64, u64)>| {
        let (log, table, topic, step) =
            (log.clone(), table.clone(), topic.to_owned(), step.clone());
        tokio::task::spawn_blocking(move || {
            let mut count = 0;
            let mut parts = Vec::new();
            for (partition, from, to) in step {
                for chunk in log.read_chunks(&topic, partition, from, (to - from) as usize)? {
                    count += chunk.len();
                    parts.push(match &chunk {
                        Chunk::Messages(messages) => {
                            parse_messages(&table, &topic, messages, Utc::now())
                        }
                        Chunk::Columns {
                            partition,
                            first,
                            batch,
                        } => parse_columns(&table, &topic, *partition, *first, batch, Utc::now()),
                    });
                }
            }
            Ok::<_, crate::bus::Error>((count, super::parse::concat(parts)))
        })
    };
    let mut upcoming = plan.first().map(prepare);
    for (i, step_slices) in plan.iter().enumerate() {
        let step = Instant::now();
        let job = upcoming.take().expect("a job per planned batch");
        upcoming = plan.get(i + 1).map(prepare);
        let (count, parsed) = job
            .await
            .map_err(|join| Error::Arrow {
                table: name.to_owned(),
                source: deltalake::arrow::error::ArrowError::ExternalError(Box::new(join)),
            })?
            .map_err(bus_err)?;
        let parsed = parsed.map_err(|source| Error::Arrow {
            table: name.to_owned(),
            source,
        })?;
        let waited_s = step.elapsed().as_secs_f64();
        let mut ends = cursor.ends();
        for &(partition, _, slice_end) in step_slices {
            ends.reach(partition, slice_end as i64);
        }
        let stored = store(lake, name, &parsed, &ends).await?;
        tracing::debug!(
            table = name,
            partitions = step_slices.len(),
            messages = count,
            waited_s,
            write_s = step.elapsed().as_secs_f64() - waited_s,
            "bronze: batch committed"
        );
        stats.add(stored);
        progress(stats.messages, total);
    }
    Ok(())
}

impl BronzeStats {
    fn add(&mut self, stored: Stored) {
        self.rows += stored.rows;
        self.rejected += stored.rejects;
        self.messages += stored.rows + stored.rejects;
        self.commits += 1;
    }
}

/// What one batch added.
#[derive(Debug, Clone, Copy)]
struct Stored {
    rows: u64,
    rejects: u64,
}

/// Stores a parsed batch: rejects first, then rows, each commit advancing the partitions' offsets
/// to `ends` and skipping what an earlier commit of those partitions already holds.
async fn store(lake: &Lake, table: &str, parsed: &super::Parsed, ends: &Ends) -> Result<Stored> {
    crate::fault::stall_point("bronze-before-store");
    let rejects = if parsed.rejects.num_rows() > 0 {
        lake.append_past(Layer::Reject, table, &parsed.rejects, &[], ends)
            .await?
    } else {
        0
    };
    let rows = lake
        .append_past(
            Layer::Bronze,
            table,
            &parsed.rows,
            &["_ingestion_date"],
            ends,
        )
        .await?;
    Ok(Stored {
        rows: rows as u64,
        rejects: rejects as u64,
    })
}

/// How long a poll that has messages waits for the next one before it returns them.
const LINGER: Duration = Duration::from_millis(100);

/// How long a member that is caught up, has no partitions, or reads outside the group waits for
/// the stored offsets to move before it fails.
const OTHERS_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a member waits for partitions that another member holds and does not store before
/// it reads them itself, outside the group.
const TAKE_OVER_AFTER: Duration = Duration::from_secs(10);

/// Joins the table's consumer group and stores what the group assigns, until caught up.
async fn ingest_group(
    kafka: &KafkaBus,
    lake: &Lake,
    table: &Table,
    options: &BronzeOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<BronzeStats> {
    let started = Instant::now();
    let name = table.name();
    let topic = table.topic();
    let bus_err = |source| Error::Bus {
        table: name.to_owned(),
        source,
    };
    let partitions = kafka
        .ensure_topic(topic, table.config.topic.partitions)
        .map_err(bus_err)?;
    let cursor = Cursor::new(Stage::Bronze, topic, partitions);
    // Where each newly assigned partition resumes: its offset recorded in bronze's Delta log.
    let start = || -> crate::bus::StartOffsets {
        let (lake, name, cursor) = (lake.clone(), name.to_owned(), cursor.clone());
        let runtime = tokio::runtime::Handle::current();
        Box::new(move |partitions: &[u32]| {
            let stored = runtime
                .block_on(stored_offsets(&lake, &name, &cursor))
                .map_err(|e| e.to_string())?;
            Ok(partitions
                .iter()
                .map(|&p| (p, stored.next(p) as u64))
                .collect())
        })
    };
    let mut outside_group = options.outside_group;
    let mut member = if outside_group {
        // Leaving nothing to wait for; looking up the start offsets reads the Delta log.
        tokio::task::block_in_place(|| kafka.read_all(topic, &group_id(name), partitions, start()))
    } else {
        kafka.join(topic, &group_id(name), start())
    }
    .map_err(bus_err)?;
    let mut stats = BronzeStats::default();
    progress(0, 0);
    let mut watch = Watch::default();
    // A full batch is stored while the next one is polled; commits stay in order.
    let mut storing: Option<tokio::task::JoinHandle<Result<StoredPoll>>> = None;
    loop {
        // Polling may run the rebalance callback, which reads the Delta log: off the async
        // workers.
        let polled =
            tokio::task::block_in_place(|| member.poll(options.batch_size, options.idle, LINGER));
        if let Some(job) = storing.take() {
            let stored = finish(job, name).await?;
            stored.record(&member, outside_group, &mut stats, progress);
        }
        let messages = polled.map_err(bus_err)?;
        tracing::trace!(table = name, messages = messages.len(), elapsed = ?started.elapsed(), "bronze: polled");
        if !messages.is_empty() {
            let full = messages.len() == options.batch_size;
            let job = tokio::spawn(store_polled(
                lake.clone(),
                table.clone(),
                messages,
                cursor.clone(),
            ));
            if full {
                // More may be waiting right behind this batch: poll it while this one is stored.
                storing = Some(job);
                continue;
            }
            let stored = finish(job, name).await?;
            stored.record(&member, outside_group, &mut stats, progress);
        }
        // The stream paused (or brought nothing): done when the whole topic is stored, instead
        // of waiting another `idle` for messages that may never come.
        let next = after_idle_poll(&member, lake, name, &cursor, outside_group, &mut watch);
        match next.await? {
            Next::Done => break,
            Next::Poll => continue,
            Next::TakeOver => {
                // Looking up the start offsets reads the Delta log, and leaving the group
                // waits for the coordinator: off the async workers.
                let reader = tokio::task::block_in_place(|| {
                    kafka.read_all(topic, &group_id(name), partitions, start())
                })
                .map_err(bus_err)?;
                let member_of_group = std::mem::replace(&mut member, reader);
                tokio::task::block_in_place(|| drop(member_of_group));
                outside_group = true;
                watch.restart();
            }
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// What storing a polled batch did, and where it left each partition.
struct StoredPoll {
    counts: Stored,
    ends: Vec<(u32, u64)>,
}

impl StoredPoll {
    /// Counts the batch, and tells the group where its partitions now stand (a reader outside
    /// the group commits nothing there).
    fn record(
        self,
        member: &GroupMember,
        outside_group: bool,
        stats: &mut BronzeStats,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) {
        if !outside_group {
            member.commit(&self.ends);
        }
        stats.add(self.counts);
        progress(stats.messages, 0);
    }
}

/// Types and stores messages polled from the group, advancing each partition to one past its
/// last message.
async fn store_polled(
    lake: Lake,
    table: Table,
    messages: Vec<crate::bus::Message>,
    cursor: Cursor,
) -> Result<StoredPoll> {
    let name = table.name();
    let mut ends = cursor.ends();
    for m in &messages {
        ends.reach(m.partition, m.offset as i64 + 1);
    }
    let parsed =
        parse_messages(&table, table.topic(), &messages, Utc::now()).map_err(|source| {
            Error::Arrow {
                table: name.to_owned(),
                source,
            }
        })?;
    drop(messages);
    let counts = store(&lake, name, &parsed, &ends).await?;
    crate::fault::crash_point("bronze-after-commit");
    Ok(StoredPoll {
        counts,
        ends: ends.iter().map(|(p, end)| (p, end as u64)).collect(),
    })
}

/// The result of a batch stored on its own task.
async fn finish(
    job: tokio::task::JoinHandle<Result<StoredPoll>>,
    table: &str,
) -> Result<StoredPoll> {
    match job.await {
        Ok(stored) => stored,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Err(Error::Arrow {
            table: table.to_owned(),
            source: deltalake::arrow::error::ArrowError::ExternalError(Box::new(join)),
        }),
    }
}

/// What a group member does once its stream pauses.
enum Next {
    /// Every partition of the topic is stored.
    Done,
    Poll,
    /// Read every partition outside the group.
    TakeOver,
}

/// When the stored offsets of a topic last moved (a member waiting for others counts their
/// progress as its own).
#[derive(Default)]
struct Watch {
    /// The sum of the stored offsets last seen, and since when.
    seen: Option<(i64, Instant)>,
}

impl Watch {
    /// Records the stored offsets; how long they have not moved.
    fn stalled_for(&mut self, stored: i64) -> Duration {
        match self.seen {
            Some((last, since)) if last == stored => since.elapsed(),
            _ => {
                self.seen = Some((stored, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// Counts from now, as if the offsets had just moved.
    fn restart(&mut self) {
        if let Some((_, since)) = &mut self.seen {
            *since = Instant::now();
        }
    }
}

/// After the stream paused. Done when the whole topic is stored, not only this
/// member's share: partitions of a member that died stay with it until its session ends, then
/// move here, and a member still waiting for a share (a racing run's member may hold every
/// partition) is done too once the whole topic is stored. Partitions held elsewhere (or that the
/// group gives no one: a broker's group can keep rebalancing while one member never completes
/// its join) whose stored offsets do not move for [`TAKE_OVER_AFTER`] are read here, outside
/// the group. No progress for [`OTHERS_TIMEOUT`] is an error.
async fn after_idle_poll(
    member: &GroupMember,
    lake: &Lake,
    table: &str,
    cursor: &Cursor,
    outside_group: bool,
    watch: &mut Watch,
) -> Result<Next> {
    let bus_err = |source| Error::Bus {
        table: table.to_owned(),
        source,
    };
    // Where every partition ends: one lookup serves this member's share and the whole topic.
    let all: Vec<u32> = (0..cursor.partitions()).collect();
    let ends = tokio::task::block_in_place(|| member.ends(&all)).map_err(bus_err)?;
    let caught_up = tokio::task::block_in_place(|| member.caught_up(&ends)).map_err(bus_err)?;
    tracing::trace!(table, caught_up, "bronze: caught up?");
    let mine = member.assigned();
    if !(caught_up || mine.is_empty() || outside_group) {
        return Ok(Next::Poll);
    }
    let stored = stored_offsets(lake, table, cursor).await?;
    let behind: Vec<u32> = all
        .iter()
        .zip(&ends)
        .filter(|(p, end)| (stored.next(**p) as u64) < **end)
        .map(|(p, _)| *p)
        .collect();
    if behind.is_empty() {
        return Ok(Next::Done);
    }
    let stalled = watch.stalled_for(all.iter().map(|&p| stored.next(p)).sum());
    if stalled > TAKE_OVER_AFTER && !outside_group && behind.iter().any(|p| !mine.contains(p)) {
        tracing::info!(
            table,
            ?behind,
            "bronze: partitions held elsewhere and not stored for {} s: reading them here",
            TAKE_OVER_AFTER.as_secs()
        );
        return Ok(Next::TakeOver);
    }
    if stalled > OTHERS_TIMEOUT {
        // A bounded run promises the whole topic stored: say it is not. Nothing is lost: what
        // is not stored stays on the topic for the next run.
        return Err(bus_err(crate::bus::Error::Group {
            topic: member.topic().to_owned(),
            reason: format!(
                "partition(s) {behind:?} still not stored in bronze after {} s without progress \
                 (held by another group member that is still running, or ending in transaction \
                 control records); their messages stay on the topic\n  hint: run again once the \
                 other members have finished",
                OTHERS_TIMEOUT.as_secs()
            ),
        }));
    }
    if caught_up {
        tracing::info!(
            table,
            ?behind,
            "bronze: waiting for partitions held by other group members"
        );
    }
    Ok(Next::Poll)
}

/// The offsets bronze records for `cursor`'s topic.
async fn stored_offsets(lake: &Lake, table: &str, cursor: &Cursor) -> Result<Offsets> {
    Ok(cursor.read(lake, Layer::Bronze, table).await?)
}
