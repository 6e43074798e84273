//! Each table's two lanes in the gateway: a committer that appends ingested records to the
//! table's topic, and a refresher that brings bronze, silver and gold up to date from it.
//!
//! The committer is one thread per table. The requests that arrive while it writes wait in its
//! queue, and its next append takes all of them at once (up to [`GROUP_RECORDS`] records): one
//! block and one sync per partition for the whole group, whatever the number of requests (a
//! group commit). It records the group's `Idempotency-Key`s first ([`super::keys`]), and answers
//! each request with the offsets of its records once they are synced.
//!
//! The refresher is one thread per table too. Each time it wakes it takes everything in its
//! queue and runs [`crate::pipeline::refresh`] once for all of it, so that concurrent requests
//! share one bronze, one silver and one gold commit; requests that wait for visibility are
//! answered after that run, with their rejected and quarantined records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::bus::{Batch, Bus, partition_for};
use crate::idcard::Table;
use crate::lake::Layer;
use crate::pii::{Edge, Keyring};

use super::Gateway;
use super::ingest::{self, Refused};
use super::kafka_keys::{self, KafkaKeys};
use super::keys::{Check, Idempotency, Keyed, Keys};
use super::problem::Problem;

/// Records one group commit takes at most.
pub const GROUP_RECORDS: usize = 50_000;

/// Every this many refreshes, bronze and silver of the table are compacted ...
const COMPACT_EVERY: u64 = 16;
/// ... when they hold more than this many files (each refresh adds a few small ones).
const COMPACT_ABOVE: usize = 32;

/// Where one record landed on the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// What an append answers: where each record landed, and whether this is the answer to an
/// earlier request with the same `Idempotency-Key` (nothing appended this time).
#[derive(Debug, Clone)]
pub struct Appended {
    pub positions: Vec<Position>,
    pub replayed: bool,
}

/// What a request waiting for visibility learns once bronze, silver and gold hold its records.
#[derive(Debug, Clone)]
pub struct Visible {
    pub rejected: Vec<Refused>,
    pub quarantined: Vec<Refused>,
    /// Delta versions after the refresh: bronze, silver and the gold models that read the table.
    pub versions: Value,
}

struct Append {
    records: Vec<Value>,
    idempotency: Option<Idempotency>,
    /// Hand the table to the refresher afterwards (`/ingest_fast`); `/ingest` runs the pipeline
    /// itself.
    refresh: bool,
    reply: oneshot::Sender<Result<Appended, Problem>>,
}

/// Work for the refresher. `seq`: the count of appends (see [`Lanes`]) the item needs
/// covered; a refresh that started after that many appends covers it.
enum Refresh {
    /// New records are on the topic.
    Kick { seq: u64 },
    /// Answer once these positions are visible.
    Wait {
        positions: Vec<Position>,
        seq: u64,
        /// The refused tables' versions read before the records were appended, if known.
        refused_before: Option<RefusedVersions>,
        reply: oneshot::Sender<Result<Visible, Problem>>,
    },
}

/// The versions of a table's reject and quarantine tables (`None`: not written yet). When both
/// are the same after a refresh as before a request's records were appended, none of its
/// records was refused, and its answer needs no read of those tables.
pub type RefusedVersions = (Option<i64>, Option<i64>);

/// A table's two lanes.
#[derive(Debug, Clone)]
pub struct Lanes {
    /// The table's name, for answers.
    table: String,
    /// How long an append waits for the committer ([`super::Limits::durable_timeout`]).
    durable_timeout: std::time::Duration,
    appends: mpsc::UnboundedSender<Append>,
    refreshes: mpsc::UnboundedSender<Refresh>,
    /// Appends the committer has made: the refresher skips a refresh when one that started
    /// after the appends an item needs has already run (a kick that arrives after the wait
    /// it came with, say).
    appended: Arc<AtomicU64>,
    /// The refused tables' versions as the refresher last read them (see [`RefusedVersions`]).
    refused: Arc<std::sync::Mutex<Option<RefusedVersions>>>,
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append")
            .field("records", &self.records.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Refresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Kick { .. } => "Kick",
            Self::Wait { .. } => "Wait",
        })
    }
}

fn gone() -> Problem {
    Problem::unavailable("the gateway is shutting down")
}

impl Lanes {
    /// Starts `table`'s committer and refresher threads; they end when every clone of the lanes
    /// is dropped, the refresher once it has run what its queue holds. The [`Ended`]s tell when.
    pub fn start(gateway: &Arc<Gateway>, table: &Table) -> std::io::Result<(Self, [Ended; 2])> {
        let (appends, append_queue) = mpsc::unbounded_channel();
        let (refreshes, refresh_queue) = mpsc::unbounded_channel();
        let name = table.name().to_owned();
        let appended = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(std::sync::Mutex::new(None));
        let (committed, committer_ended) = Ended::pair(format!("commit-{name}"));
        let (refreshed, refresher_ended) = Ended::pair(format!("refresh-{name}"));
        {
            let (bus, table, refreshes) = (gateway.bus.clone(), table.clone(), refreshes.clone());
            let pii = gateway.keys.clone();
            let appended = appended.clone();
            let state_dir = gateway.state_dir.clone();
            std::thread::Builder::new()
                .name(format!("commit-{name}"))
                .spawn(move || {
                    let _ended = committed;
                    let mut keys = TopicKeys {
                        state_dir,
                        ..TopicKeys::default()
                    };
                    committer(
                        &bus,
                        &table,
                        &pii,
                        &mut keys,
                        append_queue,
                        &refreshes,
                        &appended,
                    )
                })?;
        }
        {
            let (gateway, table) = (Arc::downgrade(gateway), table.clone());
            let runtime = tokio::runtime::Handle::current();
            let (appended, refused) = (appended.clone(), refused.clone());
            std::thread::Builder::new()
                .name(format!("refresh-{name}"))
                .spawn(move || {
                    let _ended = refreshed;
                    let shared = Shared {
                        appended: &appended,
                        refused: &refused,
                    };
                    refresher(&gateway, &table, refresh_queue, &runtime, shared)
                })?;
        }
        let lanes = Self {
            table: name,
            durable_timeout: gateway.limits.durable_timeout,
            appends,
            refreshes,
            appended,
            refused,
        };
        Ok((lanes, [committer_ended, refresher_ended]))
    }

    /// Appends `records` to the topic (with the group that is forming); answers once they are
    /// synced, or with a 504 past the gateway's durable timeout (the group may still be
    /// appended: the committer goes on without this request). `refresh`: hand the table to the
    /// refresher afterwards.
    pub async fn append(
        &self,
        records: Vec<Value>,
        idempotency: Option<Idempotency>,
        refresh: bool,
    ) -> Result<Appended, Problem> {
        let (reply, answer) = oneshot::channel();
        self.appends
            .send(Append {
                records,
                idempotency,
                refresh,
                reply,
            })
            .map_err(|_| gone())?;
        let limit = self.durable_timeout;
        tokio::time::timeout(limit, answer)
            .await
            .map_err(|_| super::not_durable_in_time(&self.table, limit))?
            .map_err(|_| gone())?
    }

    /// The refused tables' versions as last read: taken before an append, for [`Self::visible`].
    pub fn refused_versions(&self) -> Option<RefusedVersions> {
        *self
            .refused
            .lock()
            .expect("the refused versions are never poisoned")
    }

    /// Answers once the records at `positions` (already on the topic) are in bronze, silver and
    /// the gold models that read the table.
    /// `replayed`: the records were appended before (maybe by an earlier process), so a
    /// refresh runs whatever this process has covered. `refused_before`:
    /// [`Self::refused_versions`] taken before the records were appended.
    pub async fn visible(
        &self,
        positions: Vec<Position>,
        replayed: bool,
        refused_before: Option<RefusedVersions>,
    ) -> Result<Visible, Problem> {
        let (reply, answer) = oneshot::channel();
        let seq = if replayed {
            u64::MAX
        } else {
            self.appended.load(Ordering::SeqCst)
        };
        // Replayed records were appended before that reading: it proves nothing about them.
        let refused_before = refused_before.filter(|_| !replayed);
        self.refreshes
            .send(Refresh::Wait {
                positions,
                seq,
                refused_before,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Has the refresher bring the table up to date (what a crash left on the topic).
    pub fn kick(&self) {
        let _ = self.refreshes.send(Refresh::Kick { seq: u64::MAX });
    }
}

/// Tells when a lane's thread has ended: the thread holds the sending half and drops it as it
/// ends (however it ends).
#[derive(Debug)]
pub struct Ended {
    thread: String,
    signal: std::sync::mpsc::Receiver<()>,
}

impl Ended {
    fn pair(thread: String) -> (std::sync::mpsc::Sender<()>, Self) {
        let (sender, signal) = std::sync::mpsc::channel();
        (sender, Self { thread, signal })
    }

    /// Waits until the thread has ended or `deadline` has passed; `Err` names the thread when
    /// it is still running.
    pub fn wait_until(self, deadline: std::time::Instant) -> Result<(), String> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match self.signal.recv_timeout(left) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(self.thread),
            _ => Ok(()),
        }
    }
}

/// A table's idempotency keys, read on first need: beside its topic on the embedded log, under
/// the gateway's state folder on Kafka.
#[derive(Debug, Default)]
struct TopicKeys {
    embedded: Option<Keys>,
    kafka: Option<KafkaKeys>,
    state_dir: Option<std::path::PathBuf>,
    /// The Kafka keys were opened (or tried) once in this process.
    kafka_tried: bool,
}

/// The committer thread: one group commit per wake-up.
fn committer(
    bus: &Bus,
    table: &Table,
    pii: &Arc<Keyring>,
    keys: &mut TopicKeys,
    mut queue: mpsc::UnboundedReceiver<Append>,
    refreshes: &mpsc::UnboundedSender<Refresh>,
    appended: &AtomicU64,
) {
    // The table's PII columns are encrypted here, before the topic; one edge serves every group
    // (its rules compiled once, its deterministic ciphertexts remembered across requests).
    let mut edge = Edge::new(table, pii);
    let mut groups = 0u64;
    while let Some(first) = queue.blocking_recv() {
        groups += 1;
        // `gateway-group:<table>:<n>`: before the table's n-th group since start-up (1, 2, ...).
        crate::fault::crash_point(&format!("gateway-group:{}:{groups}", table.name()));
        let mut records = first.records.len();
        let mut group = vec![first];
        while records < GROUP_RECORDS {
            match queue.try_recv() {
                Ok(next) => {
                    records += next.records.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let refresh = group.iter().any(|a| a.refresh);
        commit_group(bus, table, &mut edge, keys, group, appended);
        if refresh {
            let seq = appended.load(Ordering::SeqCst);
            let _ = refreshes.send(Refresh::Kick { seq });
        }
    }
}

/// A request of a group, once its records have positions.
struct Placed {
    reply: oneshot::Sender<Result<Appended, Problem>>,
    positions: Vec<Position>,
    /// An earlier request of the same group had its key and body.
    replayed: bool,
}

/// Appends one group and answers each of its requests.
fn commit_group(
    bus: &Bus,
    table: &Table,
    edge: &mut Option<Edge>,
    topic_keys: &mut TopicKeys,
    group: Vec<Append>,
    appended: &AtomicU64,
) {
    let fail_all = |group: Vec<Append>, problem: Problem| {
        for append in group {
            let _ = append.reply.send(Err(problem.clone()));
        }
    };
    let topic = table.topic();
    let bus_problem = |e: &dyn std::fmt::Display| Problem::internal(format!("topic {topic}: {e}"));
    let partitions = match bus.ensure_topic(topic, table.config.topic.partitions) {
        Ok(partitions) => partitions,
        Err(e) => {
            fail_all(group, bus_problem(&e));
            return;
        }
    };
    let log = match bus {
        Bus::Embedded(log) => log,
        Bus::Kafka(kafka) => {
            send_to_kafka(kafka, table, edge, partitions, group, topic_keys, appended);
            return;
        }
    };
    let keys = &mut topic_keys.embedded;
    let _lease = match bus.producer_lease(topic) {
        Ok(lease) => lease,
        Err(e) => {
            fail_all(group, bus_problem(&e));
            return;
        }
    };
    if keys.is_none() {
        match Keys::open(log, topic) {
            Ok(opened) => *keys = Some(opened),
            Err(e) => {
                fail_all(
                    group,
                    bus_problem(&format!("reading its idempotency keys: {e}")),
                );
                return;
            }
        }
    }
    let opened = keys.as_mut().expect("opened above");
    let starts = match bus.ends(topic) {
        Ok(starts) => starts,
        Err(e) => {
            fail_all(group, bus_problem(&e));
            return;
        }
    };
    let Placement {
        batch,
        placed,
        keyed,
    } = place_group(table, edge, partitions, &starts, opened, group);
    let answer = |placed: Vec<Placed>, problem: Option<Problem>| {
        for p in placed {
            let _ = p.reply.send(match &problem {
                Some(problem) => Err(problem.clone()),
                None => Ok(Appended {
                    positions: p.positions,
                    replayed: p.replayed,
                }),
            });
        }
    };
    if batch.is_empty() {
        // Every request was a replay.
        answer(placed, None);
        return;
    }
    // The subject keys of the group's records are on disk before the records are appended.
    if let Some(Err(e)) = edge.as_ref().map(Edge::sync) {
        answer(placed, Some(Problem::internal(e.to_string())));
        return;
    }
    if !keyed.is_empty()
        && let Err(e) = opened.begin(
            &first_in_each_partition(&batch, partitions, &starts),
            &keyed,
        )
    {
        answer(
            placed,
            Some(bus_problem(&format!("recording the idempotency keys: {e}"))),
        );
        // What the file holds now is settled against the log when it is opened again.
        *keys = None;
        return;
    }
    let sent = bus.send(topic, &batch);
    // Some partitions may hold their records even when the append failed.
    appended.fetch_add(1, Ordering::SeqCst);
    match sent {
        Ok(_) => answer(placed, None),
        Err(e) => {
            answer(
                placed,
                Some(bus_problem(&e).with_hint(
                    "the append failed part way or not at all; retry with the same \
                     Idempotency-Key to append exactly what is missing",
                )),
            );
            // The group's line is settled against the log (all, some or none of its partitions)
            // when the keys are opened for the next group.
            *keys = None;
        }
    }
}

/// What a request's `Idempotency-Key` asks of its group: the rules both buses share (the
/// embedded log's keys, [`super::keys`], and Kafka's, [`super::kafka_keys`]).
#[derive(Debug, PartialEq, Eq)]
enum Verdict<K> {
    /// No key, or a key not seen before: append every record.
    Fresh,
    /// The same key and body earlier in this group (a retry while the first is queued): answered
    /// with that request, by its index in the group.
    Follows(usize),
    /// Known whole: answered with where its records are; nothing appended.
    Replay(K),
    /// Known in part (an earlier attempt reached the topic with some records only): the rest
    /// is appended.
    Complete(K),
    /// The key was used with another body (or, from a foreign tag or an edited keys file,
    /// another record count): a 422.
    Reused,
}

/// What a bus's keys know of a request.
trait Settled {
    fn body(&self) -> &str;
    fn records(&self) -> usize;
    /// Every record of the request is on the topic.
    fn whole(&self) -> bool;
}

impl Settled for super::keys::Known {
    fn body(&self) -> &str {
        &self.body
    }
    fn records(&self) -> usize {
        self.positions.len()
    }
    fn whole(&self) -> bool {
        self.missing.is_empty()
    }
}

impl Settled for kafka_keys::Known {
    fn body(&self) -> &str {
        &self.body
    }
    fn records(&self) -> usize {
        self.positions.len()
    }
    fn whole(&self) -> bool {
        kafka_keys::Known::whole(self)
    }
}

/// The verdict on a request of `records` records with key `id`: `earlier`, the index and body
/// of a request of this group with the same key; `known`, what the keys hold of it.
fn verdict<'k, K: Settled>(
    id: Option<&Idempotency>,
    earlier: Option<(usize, &str)>,
    known: Option<&'k K>,
    records: usize,
) -> Verdict<&'k K> {
    let Some(id) = id else {
        return Verdict::Fresh;
    };
    if let Some((first, body)) = earlier {
        return if body == id.body {
            Verdict::Follows(first)
        } else {
            Verdict::Reused
        };
    }
    match known {
        None => Verdict::Fresh,
        Some(k) if k.body() != id.body || k.records() != records => Verdict::Reused,
        Some(k) if k.whole() => Verdict::Replay(k),
        Some(k) => Verdict::Complete(k),
    }
}

/// A group's messages, where each lands, and the keys to record before the append.
struct Placement {
    batch: Batch,
    /// The requests to answer once the batch is appended.
    placed: Vec<Placed>,
    keyed: Vec<Keyed>,
}

/// Places the records of a group from `starts`, the partitions' ends. Requests answered by their
/// key alone (a replay, a key reused with another body) are answered here; a retry of a group
/// that reached some partitions only appends the records of the others (see [`super::keys`]).
fn place_group(
    table: &Table,
    edge: &mut Option<Edge>,
    partitions: u32,
    starts: &[u64],
    keys: &Keys,
    group: Vec<Append>,
) -> Placement {
    let mut next = starts.to_vec();
    let mut place = |partition: u32| {
        let offset = next[partition as usize];
        next[partition as usize] += 1;
        Position { partition, offset }
    };
    let mut batch = Batch::default();
    let mut placed: Vec<Placed> = Vec::new();
    let mut keyed: Vec<Keyed> = Vec::new();
    // Keys of this group (index in `placed`, body), for a retry that arrives while the first
    // request is still queued.
    let mut in_group: HashMap<String, (usize, String)> = HashMap::new();
    for append in group {
        let id = append.idempotency.as_ref();
        let earlier = id
            .and_then(|id| in_group.get(&id.key))
            .map(|(first, body)| (*first, body.as_str()));
        let known = id.and_then(|id| keys.get(&id.key));
        let positions = match verdict(id, earlier, known, append.records.len()) {
            Verdict::Reused => {
                let _ = append.reply.send(Err(reused_key()));
                continue;
            }
            Verdict::Follows(first) => {
                let positions = placed[first].positions.clone();
                placed.push(Placed {
                    reply: append.reply,
                    positions,
                    replayed: true,
                });
                continue;
            }
            Verdict::Replay(known) => {
                let _ = append.reply.send(Ok(Appended {
                    positions: to_positions(&known.positions),
                    replayed: true,
                }));
                continue;
            }
            // An earlier attempt reached some partitions only: append the records of the others.
            Verdict::Complete(known) => {
                let mut scratch = Batch::default();
                let partition_of =
                    ingest::push_messages(table, edge, &append.records, partitions, &mut scratch);
                let mut positions = to_positions(&known.positions);
                for ((message, partition), position) in
                    scratch.iter().zip(partition_of).zip(&mut positions)
                {
                    if known.missing.contains(&partition) {
                        batch.push(message.key, message.value, message.timestamp_ms);
                        *position = place(partition);
                    }
                }
                positions
            }
            Verdict::Fresh => {
                ingest::push_messages(table, edge, &append.records, partitions, &mut batch)
                    .into_iter()
                    .map(&mut place)
                    .collect::<Vec<_>>()
            }
        };
        if let Some(id) = append.idempotency {
            in_group.insert(id.key.clone(), (placed.len(), id.body.clone()));
            keyed.push(Keyed {
                key: id.key,
                body: id.body,
                positions: positions.iter().map(|p| (p.partition, p.offset)).collect(),
            });
        }
        placed.push(Placed {
            reply: append.reply,
            positions,
            replayed: false,
        });
    }
    Placement {
        batch,
        placed,
        keyed,
    }
}

/// The group's first message in each partition it appends to, where it will land.
fn first_in_each_partition(batch: &Batch, partitions: u32, starts: &[u64]) -> Vec<Check> {
    let mut checks: Vec<Check> = Vec::new();
    for message in batch.iter() {
        let partition = partition_for(message.key, partitions);
        if !checks.iter().any(|c| c.partition == partition) {
            checks.push(Check::new(
                partition,
                starts[partition as usize],
                message.value,
            ));
        }
    }
    checks
}

/// A request of a group on Kafka, while its group is sent.
struct Sending {
    reply: oneshot::Sender<Result<Appended, Problem>>,
    idempotency: Option<Idempotency>,
    /// Where each record landed, by index; `None` until the broker acknowledges it.
    positions: Vec<Option<(u32, u64)>>,
    /// The records this send appends: (index in the request, index in the batch).
    sent: Vec<(usize, usize)>,
    /// Later requests of the group with the same key and body, answered as replays.
    followers: Vec<oneshot::Sender<Result<Appended, Problem>>>,
}

impl Sending {
    /// Answers the request and its followers.
    fn answer(self, result: Result<(), Problem>) {
        let positions: Vec<(u32, u64)> = self.positions.iter().flatten().copied().collect();
        let answer = |replayed| {
            result.clone().map(|()| Appended {
                positions: to_positions(&positions),
                replayed,
            })
        };
        for follower in self.followers {
            let _ = follower.send(answer(true));
        }
        let _ = self.reply.send(answer(false));
    }
}

/// A group on Kafka: one batch through the idempotent producer, each request answered with
/// where the broker put its records (from the delivery reports). Keyed requests are settled
/// against the keys first and their records tagged ([`super::kafka_keys`]); the group's keys
/// are recorded once the broker acknowledged it.
fn send_to_kafka(
    kafka: &crate::bus::KafkaBus,
    table: &Table,
    edge: &mut Option<Edge>,
    partitions: u32,
    group: Vec<Append>,
    topic_keys: &mut TopicKeys,
    appended: &AtomicU64,
) {
    let topic = table.topic();
    let group = with_kafka_keys(kafka, topic, partitions, group, topic_keys);
    let keys = &mut topic_keys.kafka;
    let Gathered {
        batch,
        tags,
        mut sending,
    } = gather(kafka, table, edge, partitions, group, keys.as_ref());
    if batch.is_empty() {
        // Only requests with no records left.
        for s in sending {
            s.answer(Ok(()));
        }
        return;
    }
    // The subject keys of the group's records are on disk before the records are sent.
    if let Some(Err(e)) = edge.as_ref().map(Edge::sync) {
        let problem = Problem::internal(e.to_string());
        for s in sending {
            s.answer(Err(problem.clone()));
        }
        return;
    }
    let sent = kafka.send_placed(topic, &batch, &tags);
    appended.fetch_add(1, Ordering::SeqCst);
    let placed = match sent {
        Ok(placed) => placed,
        Err(e) => {
            let problem = Problem::unavailable(format!("topic {topic}: {e}")).with_hint(
                "the brokers did not acknowledge every record; retry with the same \
                 Idempotency-Key to append exactly what is missing (without one, a resend may \
                 store some records twice in bronze; silver keeps one row per key)",
            );
            for s in sending {
                s.answer(Err(problem.clone()));
            }
            // Read again, with what reached the topic, before the next keyed group.
            *keys = None;
            return;
        }
    };
    for s in &mut sending {
        for &(index, at) in &s.sent {
            if let (Some(slot), Some(&place)) = (s.positions.get_mut(index), placed.get(at)) {
                *slot = Some(place);
            }
        }
    }
    let done: Vec<(String, kafka_keys::Known)> = sending
        .iter()
        .filter_map(|s| {
            let id = s.idempotency.as_ref()?;
            Some((
                id.key.clone(),
                kafka_keys::Known {
                    body: id.body.clone(),
                    positions: s.positions.clone(),
                },
            ))
        })
        .collect();
    if let Some(opened) = keys.as_mut()
        && let Err(e) = opened.placed(&placed, done)
    {
        // The records are on the topic with their tags: the next open reads them from there.
        tracing::warn!("recording the idempotency keys of {topic}: {e}");
        *keys = None;
    }
    for s in sending {
        s.answer(Ok(()));
    }
}

/// Opens the topic's Kafka keys when the group needs them: at the table's first group (so that
/// every group after it moves the keys file's ends), and at the first keyed request after they
/// were closed (a failed send, a failed write of the keys file, or a failed open). Returns the group less the keyed requests that cannot be served without them
/// (answered here with a 503).
fn with_kafka_keys(
    kafka: &crate::bus::KafkaBus,
    topic: &str,
    partitions: u32,
    group: Vec<Append>,
    topic_keys: &mut TopicKeys,
) -> Vec<Append> {
    let TopicKeys {
        kafka: keys,
        state_dir,
        kafka_tried,
        ..
    } = topic_keys;
    let keyed_needed = group.iter().any(|a| a.idempotency.is_some());
    let failure = match state_dir {
        Some(_) if keys.is_some() || (*kafka_tried && !keyed_needed) => return group,
        Some(dir) => {
            *kafka_tried = true;
            let limit = if keyed_needed {
                kafka_keys::SCAN_LIMIT
            } else {
                kafka_keys::EAGER_SCAN_LIMIT
            };
            match KafkaKeys::open(kafka, topic, partitions, dir, limit) {
                Ok(opened) => {
                    *keys = Some(opened);
                    return group;
                }
                Err(e) => {
                    tracing::warn!("gateway: reading the idempotency keys of {topic}: {e}");
                    Problem::unavailable(format!(
                        "topic {topic}: reading its idempotency keys: {e}"
                    ))
                    .with_hint("retry the request with the same Idempotency-Key")
                }
            }
        }
        None => Problem::unavailable(format!(
            "topic {topic}: no state folder for the idempotency keys"
        )),
    };
    // Requests without a key do not need them.
    let (keyed, plain): (Vec<_>, Vec<_>) = group.into_iter().partition(|a| a.idempotency.is_some());
    for append in keyed {
        let _ = append.reply.send(Err(failure.clone()));
    }
    plain
}

/// A group's batch for Kafka, with each record's tag and what each request sends.
struct Gathered {
    batch: Batch,
    tags: Vec<Option<String>>,
    sending: Vec<Sending>,
}

/// Gathers a group's records into one batch by the key rules ([`verdict`]); requests answered
/// without sending (a replay, a follower, a reused key, a record too large) are answered here.
/// `keys` is open whenever the group holds a keyed request (see [`with_kafka_keys`]).
fn gather(
    kafka: &crate::bus::KafkaBus,
    table: &Table,
    edge: &mut Option<Edge>,
    partitions: u32,
    group: Vec<Append>,
    keys: Option<&KafkaKeys>,
) -> Gathered {
    let max_bytes = kafka.max_message_bytes();
    let mut batch = Batch::default();
    let mut tags: Vec<Option<String>> = Vec::new();
    let mut sending: Vec<Sending> = Vec::new();
    for append in group {
        let Append {
            records,
            idempotency,
            reply,
            ..
        } = append;
        // What the tags and the keys file hold.
        let idempotency = match (idempotency, keys) {
            (Some(id), Some(keys)) => Some(keys.seal(&id)),
            (None, _) => None,
            // Not expected: `with_kafka_keys` answers these. Never sent as if it had no key.
            (Some(_), None) => {
                let _ = reply.send(Err(Problem::unavailable(
                    "the idempotency keys are not open; retry with the same Idempotency-Key",
                )));
                continue;
            }
        };
        let earlier = idempotency.as_ref().and_then(|id| {
            sending.iter().enumerate().find_map(|(i, s)| {
                let other = s.idempotency.as_ref()?;
                (other.key == id.key).then_some((i, other.body.as_str()))
            })
        });
        let known = idempotency.as_ref().and_then(|id| keys?.get(&id.key));
        let positions = match verdict(idempotency.as_ref(), earlier, known, records.len()) {
            Verdict::Reused => {
                let _ = reply.send(Err(reused_key()));
                continue;
            }
            Verdict::Follows(first) => {
                sending[first].followers.push(reply);
                continue;
            }
            Verdict::Replay(known) => {
                let positions: Vec<(u32, u64)> =
                    known.positions.iter().flatten().copied().collect();
                let _ = reply.send(Ok(Appended {
                    positions: to_positions(&positions),
                    replayed: true,
                }));
                continue;
            }
            // Some records reached the topic in an earlier attempt: the others are appended.
            Verdict::Complete(known) => known.positions.clone(),
            Verdict::Fresh => vec![None; records.len()],
        };
        let mut scratch = Batch::default();
        ingest::push_messages(table, edge, &records, partitions, &mut scratch);
        // The records still to send (an earlier attempt may have placed some).
        let unsent = |index: usize| !positions.get(index).is_some_and(Option::is_some);
        if let Some(problem) = oversized(&scratch, max_bytes, unsent) {
            let _ = reply.send(Err(problem));
            continue;
        }
        let mut sent = Vec::new();
        for (index, message) in scratch.iter().enumerate() {
            if !unsent(index) {
                continue;
            }
            sent.push((index, batch.len()));
            batch.push(message.key, message.value, message.timestamp_ms);
            tags.push(
                idempotency
                    .as_ref()
                    .map(|id| kafka_keys::tag(id, index, records.len())),
            );
        }
        sending.push(Sending {
            reply,
            idempotency,
            positions,
            sent,
            followers: Vec::new(),
        });
    }
    Gathered {
        batch,
        tags,
        sending,
    }
}

/// A 413 for a request one of whose messages is larger than the producer sends (librdkafka
/// would refuse it, and with it the whole group).
fn oversized(
    messages: &Batch,
    max_bytes: usize,
    to_send: impl Fn(usize) -> bool,
) -> Option<Problem> {
    // Room for the record's framing and the idempotency tag.
    const OVERHEAD: usize = 512;
    let (index, size) = messages
        .iter()
        .map(|m| m.key.len() + m.value.len() + OVERHEAD)
        .enumerate()
        .find(|&(index, size)| size > max_bytes && to_send(index))?;
    Some(
        Problem::too_large(format!(
            "record {index} is {size} bytes as a message; the Kafka producer sends at most \
             {max_bytes} bytes (message.max.bytes)"
        ))
        .with_hint(
            "split the record, or raise message.max.bytes in the bus URL \
             (kafka://host:port?message.max.bytes=N) and the brokers' limit with it",
        ),
    )
}

fn reused_key() -> Problem {
    Problem::unprocessable("this Idempotency-Key was used before with another body")
        .with_hint("use a new key for a new batch; a retry sends the same body")
}

fn to_positions(pairs: &[(u32, u64)]) -> Vec<Position> {
    pairs
        .iter()
        .map(|&(partition, offset)| Position { partition, offset })
        .collect()
}

/// Background refreshes (after durable appends, nobody waiting) start at most this often: under
/// a stream of `/ingest_fast` requests each refresh (bronze, silver, the gold models reading
/// the table) would otherwise follow the last at once and take CPU from the ingests. A request
/// waiting for visibility does not wait for it.
const BACKGROUND_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_millis(1000);

/// How long after the last answers went out a refresh that requests wait for may hold its start
/// for the requests that refresh answered (see [`refresher`]): a client that stops costs the
/// next refresh this much at most, and a request after a longer pause nothing.
const LINGER: std::time::Duration = std::time::Duration::from_millis(50);

/// A request waiting for visibility: its records' positions, the refused tables' versions
/// before they were appended, and where to answer.
type Waiting = (
    Vec<Position>,
    Option<RefusedVersions>,
    oneshot::Sender<Result<Visible, Problem>>,
);

/// What a table's lanes share with its refresher.
#[derive(Clone, Copy)]
struct Shared<'a> {
    /// Appends the committer has made.
    appended: &'a AtomicU64,
    /// The refused tables' versions the refresher read last.
    refused: &'a std::sync::Mutex<Option<RefusedVersions>>,
}

/// Adds a refresher's work item to the waits and the appends needed.
fn take(refresh: Refresh, waits: &mut Vec<Waiting>, needed: &mut u64) {
    match refresh {
        Refresh::Kick { seq } => *needed = (*needed).max(seq),
        Refresh::Wait {
            positions,
            seq,
            refused_before,
            reply,
        } => {
            *needed = (*needed).max(seq);
            waits.push((positions, refused_before, reply));
        }
    }
}

/// Takes every work item queued now ([`take`]).
fn take_queued(
    queue: &mut mpsc::UnboundedReceiver<Refresh>,
    waits: &mut Vec<Waiting>,
    needed: &mut u64,
) {
    while let Ok(next) = queue.try_recv() {
        take(next, waits, needed);
    }
}

/// The next work item queued before `deadline`; `None` once it passed or the queue closed.
fn next_before(
    runtime: &tokio::runtime::Handle,
    queue: &mut mpsc::UnboundedReceiver<Refresh>,
    deadline: std::time::Instant,
) -> Option<Refresh> {
    let left = deadline.checked_duration_since(std::time::Instant::now())?;
    // The timer is made inside the runtime: this thread is not one of its workers.
    runtime
        .block_on(async { tokio::time::timeout(left, queue.recv()).await })
        .ok()
        .flatten()
}

/// The refresher thread: one refresh per wake-up, for everything queued.
///
/// Concurrent clients that wait for visibility send their next request as soon as they are
/// answered, a few milliseconds after the next refresh started; those that arrived during a
/// refresh are already queued for it. So, taking only what is queued, the clients split into
/// two groups served by alternate refreshes, and each request waited about two refreshes. A
/// refresh that requests wait for therefore lingers (until [`LINGER`] after the last answers)
/// until as many wait as the last refresh answered plus those that came during it: each
/// refresh then serves every client, and a request waits about one. One client alone (nothing
/// came during its refresh) never lingers. Lingering usually lasts 2-6 ms. With 16 clients
/// sending batches of 10 `orders` on the sample lake (`scripts/bench-gateway`, 2026-12-06):
/// p50 255 ms against 512 ms, 591 records/s against 317; one client alone 217-289 ms,
/// unchanged.
fn refresher(
    gateway: &Weak<Gateway>,
    table: &Table,
    mut queue: mpsc::UnboundedReceiver<Refresh>,
    runtime: &tokio::runtime::Handle,
    shared: Shared<'_>,
) {
    if let Some(gateway) = gateway.upgrade() {
        let read = runtime.block_on(refused_versions(&gateway.lake, table.name()));
        *shared
            .refused
            .lock()
            .expect("the refused versions are never poisoned") = read.ok();
    }
    // Appends covered by the last refresh that succeeded.
    let mut covered = 0;
    let mut refreshes: u64 = 0;
    let mut last_end: Option<std::time::Instant> = None;
    // What came during the last refresh (for the next one), and how many requests the next one
    // lingers for.
    let mut came = Vec::new();
    let mut came_needed = 0;
    let mut expected = 0;
    // When the last answers went out: the linger counts from then, so that after a pause no
    // request waits for clients that left.
    let mut answered_at = std::time::Instant::now();
    loop {
        let mut waits = std::mem::take(&mut came);
        let mut needed = std::mem::take(&mut came_needed);
        if waits.is_empty() && needed == 0 {
            let Some(first) = queue.blocking_recv() else {
                break;
            };
            take(first, &mut waits, &mut needed);
        }
        take_queued(&mut queue, &mut waits, &mut needed);
        // Nobody waits: a background refresh after durable appends. It starts at most every
        // BACKGROUND_REFRESH_EVERY, taking what arrives meanwhile, unless a request that waits
        // for visibility comes first.
        if let Some(ready_at) = last_end.map(|end| end + BACKGROUND_REFRESH_EVERY) {
            while waits.is_empty() {
                let Some(next) = next_before(runtime, &mut queue, ready_at) else {
                    break;
                };
                take(next, &mut waits, &mut needed);
            }
            take_queued(&mut queue, &mut waits, &mut needed);
        }
        if !waits.is_empty() {
            let until = answered_at + LINGER;
            while waits.len() < expected {
                let Some(next) = next_before(runtime, &mut queue, until) else {
                    break;
                };
                take(next, &mut waits, &mut needed);
            }
        }
        let Some(gateway) = gateway.upgrade() else {
            break;
        };
        let asking: Vec<(&[Position], Option<RefusedVersions>)> = waits
            .iter()
            .map(|(p, before, _)| (p.as_slice(), *before))
            .collect();
        let run = needed > covered;
        let starts_at = shared.appended.load(Ordering::SeqCst);
        let outcome = runtime.block_on(refresh_visible(
            &gateway,
            table,
            &asking,
            run,
            shared.refused,
        ));
        if run {
            last_end = Some(std::time::Instant::now());
        }
        if run && outcome.is_ok() {
            covered = starts_at;
            refreshes += 1;
        }
        let compact = run && outcome.is_ok() && refreshes.is_multiple_of(COMPACT_EVERY);
        // Taken before the answers go out, so that it holds no request they prompt.
        take_queued(&mut queue, &mut came, &mut came_needed);
        expected = waits.len() + came.len();
        match outcome {
            Ok(visible) => {
                for ((_, _, reply), visible) in waits.into_iter().zip(visible) {
                    let _ = reply.send(Ok(visible));
                }
            }
            Err(problem) => {
                tracing::warn!("refreshing {}: {}", table.name(), problem.detail);
                for (_, _, reply) in waits {
                    let _ = reply.send(Err(problem.clone()));
                }
            }
        }
        answered_at = std::time::Instant::now();
        if compact {
            // After the answers: the next refresh waits for it, not this one's requests.
            for layer in [Layer::Bronze, Layer::Silver] {
                match runtime.block_on(gateway.lake.compact(layer, table.name(), COMPACT_ABOVE)) {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(
                        table = table.name(),
                        %layer,
                        removed,
                        "refresh: small files compacted"
                    ),
                    Err(e) => tracing::warn!("compacting {layer}/{}: {e}", table.name()),
                }
            }
        }
    }
}

/// The versions of `table`'s reject and quarantine tables.
async fn refused_versions(
    lake: &crate::lake::Lake,
    table: &str,
) -> Result<RefusedVersions, Problem> {
    let internal = |e: crate::lake::Error| Problem::internal(e.to_string());
    let (reject, quarantine) = futures::join!(
        lake.version(Layer::Reject, table),
        lake.version(Layer::Quarantine, table)
    );
    Ok((reject.map_err(internal)?, quarantine.map_err(internal)?))
}

/// Runs the refresh, then tells each waiting request what was kept out of its records and the
/// versions written. A request whose `refused_before` equals the refused tables' versions now
/// had none of its records refused: only the others' positions are looked up in those tables.
/// The versions read now are kept in `refused` for the requests to come.
async fn refresh_visible(
    gateway: &Gateway,
    table: &Table,
    waits: &[(&[Position], Option<RefusedVersions>)],
    run: bool,
    refused: &std::sync::Mutex<Option<RefusedVersions>>,
) -> Result<Vec<Visible>, Problem> {
    let name = table.name();
    if run {
        crate::pipeline::refresh(
            &gateway.project,
            &gateway.models,
            table,
            &gateway.bus,
            &gateway.lake,
            &gateway.keys,
        )
        .await
        .map_err(|e| {
            Problem::internal(format!("bringing {name} up to date: {e}")).with_hint(
                "the records are durable on the topic; the next successful run makes them visible",
            )
        })?;
    }
    if waits.is_empty() && !run {
        return Ok(Vec::new());
    }
    let answering = std::time::Instant::now();
    let now = refused_versions(&gateway.lake, name).await?;
    *refused
        .lock()
        .expect("the refused versions are never poisoned") = Some(now);
    if waits.is_empty() {
        return Ok(Vec::new());
    }
    let unrefused = |before: &Option<RefusedVersions>| *before == Some(now);
    let looked_up: Vec<Position> = waits
        .iter()
        .filter(|(_, before)| !unrefused(before))
        .flat_map(|(positions, _)| positions.iter().copied())
        .collect();
    let (rejected, quarantined) = futures::try_join!(
        ingest::reasons_at(&gateway.lake, Layer::Reject, table, &looked_up),
        ingest::reasons_at(&gateway.lake, Layer::Quarantine, table, &looked_up)
    )?;
    let models: Vec<String> = crate::gold::select(&gateway.models, &[format!("source:{name}+")])
        .map_err(|e| Problem::internal(e.to_string()))?
        .into_iter()
        .collect();
    let versions = ingest::versions(&gateway.lake, name, &models).await?;
    tracing::debug!(
        table = name,
        requests = waits.len(),
        looked_up = looked_up.len(),
        seconds = answering.elapsed().as_secs_f64(),
        "refresh: rejects, quarantine and versions read for the answers"
    );
    Ok(waits
        .iter()
        .map(|(positions, _)| Visible {
            rejected: ingest::by_index(positions, &rejected),
            quarantined: ingest::by_index(positions, &quarantined),
            versions: versions.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(body: &str, positions: Vec<Option<(u32, u64)>>) -> kafka_keys::Known {
        kafka_keys::Known {
            body: body.into(),
            positions,
        }
    }

    #[test]
    fn a_key_decides_by_the_same_rules_on_both_buses() {
        let id = Idempotency {
            key: "k".into(),
            body: "b".into(),
        };
        let whole = known("b", vec![Some((0, 1)), Some((1, 4))]);
        let part = known("b", vec![Some((0, 1)), None]);
        let other = known("c", vec![Some((0, 1)), Some((1, 4))]);
        let none: Option<&kafka_keys::Known> = None;
        assert_eq!(
            verdict(None, None, Some(&whole), 2),
            Verdict::Fresh,
            "no key"
        );
        assert_eq!(
            verdict(Some(&id), None, none, 2),
            Verdict::Fresh,
            "a new key"
        );
        assert_eq!(
            verdict(Some(&id), Some((3, "b")), Some(&whole), 2),
            Verdict::Follows(3),
            "the same key and body earlier in the group comes first"
        );
        assert_eq!(verdict(Some(&id), Some((3, "x")), none, 2), Verdict::Reused);
        assert_eq!(
            verdict(Some(&id), None, Some(&whole), 2),
            Verdict::Replay(&whole)
        );
        assert_eq!(
            verdict(Some(&id), None, Some(&part), 2),
            Verdict::Complete(&part)
        );
        assert_eq!(verdict(Some(&id), None, Some(&other), 2), Verdict::Reused);
        assert_eq!(
            verdict(Some(&id), None, Some(&whole), 3),
            Verdict::Reused,
            "another record count"
        );
        // The embedded log's keys: whole when no partition is missing.
        let embedded = |missing: Vec<u32>| super::super::keys::Known {
            body: "b".into(),
            positions: vec![(0, 1), (1, 4)],
            missing,
        };
        let (all, some) = (embedded(vec![]), embedded(vec![1]));
        assert_eq!(
            verdict(Some(&id), None, Some(&all), 2),
            Verdict::Replay(&all)
        );
        assert_eq!(
            verdict(Some(&id), None, Some(&some), 2),
            Verdict::Complete(&some)
        );
    }
}
