//! A Kafka bus (rdkafka): the same operations as the embedded log, against a real broker.
//!
//! Partitions are chosen by [`super::partition_for`], as on the embedded log, so that both
//! buses place a key on the same partition. The producer is idempotent and batches; its
//! delivery reports also tell where each partition ends, which a bounded run trusts over the
//! broker's high watermark (some Kafka-protocol brokers, Tansu 0.6 among them, answer the
//! watermark query wrongly for batch-written partitions).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{Batch, Bytes, Error, Message, Result, partition_for};

/// The message header that carries a record's idempotency tag (see
/// [`crate::gateway`]'s Kafka keys): bronze does not read headers.
pub const TAG_HEADER: &str = "framework-idempotency";

/// How long metadata and admin requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Where each message of a batch landed (partition, offset), by its index; `None` until its
/// delivery report came.
type Placed = Vec<Option<(u32, u64)>>;

/// Records what the broker acknowledged: the last offset per (topic, partition), and failures.
#[derive(Debug, Default)]
struct Deliveries {
    last: Mutex<HashMap<(String, i32), i64>>,
    failed: Mutex<Vec<String>>,
    /// While a [`KafkaBus::send_placed`] runs: where each of its messages landed, by index.
    placed: Mutex<Option<Placed>>,
}

impl ClientContext for Tracker {}

#[derive(Debug, Clone, Default)]
struct Tracker(Arc<Deliveries>);

impl Tracker {
    /// One past the last offset of `partition` this process saw acknowledged (0 if none).
    fn delivered_end(&self, topic: &str, partition: u32) -> u64 {
        self.0
            .last
            .lock()
            .expect("not poisoned")
            .get(&(topic.to_owned(), partition as i32))
            .map_or(0, |last| (last + 1).max(0) as u64)
    }
}

impl ProducerContext for Tracker {
    /// The message's index in its batch.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        match result {
            Ok(message) => {
                if let Some(placed) = self.0.placed.lock().expect("not poisoned").as_mut()
                    && let Some(slot) = placed.get_mut(index)
                {
                    *slot = Some((message.partition() as u32, message.offset().max(0) as u64));
                }
                let mut last = self.0.last.lock().expect("not poisoned");
                let entry = last
                    .entry((message.topic().to_owned(), message.partition()))
                    .or_insert(-1);
                *entry = (*entry).max(message.offset());
            }
            Err((err, _)) => self
                .0
                .failed
                .lock()
                .expect("not poisoned")
                .push(err.to_string()),
        }
    }
}

/// Topics on a Kafka cluster.
#[derive(Clone)]
pub struct KafkaBus {
    brokers: String,
    /// librdkafka settings from the bus URL, applied to every client.
    settings: Vec<(String, String)>,
    /// The producer, created on first send. A `BaseProducer` that this bus polls itself: the
    /// threaded one's flush waits 100 ms per round for delivery reports its own thread takes.
    producer: Arc<Mutex<Option<BaseProducer<Tracker>>>>,
    /// Topic creation and metadata, created on first use and kept: an admin client's drop
    /// waits for its polling thread (up to 100 ms).
    admin: Arc<Mutex<Option<AdminClient<DefaultClientContext>>>>,
    tracker: Tracker,
    /// Partition counts of the topics seen so far.
    known: Arc<Mutex<HashMap<String, u32>>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.brokers)
            .finish()
    }
}

fn kafka(topic: &str, source: KafkaError) -> Error {
    Error::Kafka {
        topic: topic.to_owned(),
        source,
    }
}

/// The [`TAG_HEADER`] tags read from a topic ([`KafkaBus::tags`]).
#[derive(Debug, Default)]
pub struct Tags {
    /// The tagged records, in each partition's order.
    pub found: Vec<Tag>,
    /// Where each partition was read to (the next offset), by partition: its end as the broker
    /// reported it, or past it when a fetch brought more, when `complete`; else how far the
    /// read got.
    pub ends: Vec<u64>,
    /// Every partition was read to its end (`false`: the time limit came first).
    pub complete: bool,
}

/// One tagged record's place and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub partition: u32,
    pub offset: u64,
    pub value: String,
}

impl KafkaBus {
    /// A bus on the brokers `host:port[,host:port...]`; connects on first use.
    pub fn new(brokers: &str, settings: Vec<(String, String)>) -> Self {
        Self {
            brokers: brokers.to_owned(),
            settings,
            producer: Arc::new(Mutex::new(None)),
            admin: Arc::new(Mutex::new(None)),
            tracker: Tracker::default(),
            known: Arc::default(),
        }
    }

    /// A client configuration: the brokers, `defaults`, then the URL's settings (which win).
    fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.timeout.ms", "10000");
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        config
    }

    /// Runs `f` with the bus's admin client (created on first use).
    fn with_admin<T>(
        &self,
        topic: &str,
        f: impl FnOnce(&AdminClient<DefaultClientContext>) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self.admin.lock().expect("not poisoned");
        if guard.is_none() {
            *guard = Some(self.config(&[]).create().map_err(|e| kafka(topic, e))?);
        }
        f(guard.as_ref().expect("just created"))
    }

    /// The largest message the producer sends (librdkafka's `message.max.bytes`, from the bus
    /// URL's settings or its default); a larger one is refused before it is queued.
    pub fn max_message_bytes(&self) -> usize {
        self.settings
            .iter()
            .rev()
            .find(|(key, _)| key == "message.max.bytes")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(1_000_000)
    }

    /// Creates the topic with `partitions` partitions unless it exists; returns its partition count.
    pub fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        if let Some(&known) = self.known.lock().expect("not poisoned").get(topic) {
            return super::same_count(topic, partitions, known);
        }
        self.with_admin(topic, |admin| {
            let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
            let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
            let results = futures::executor::block_on(admin.create_topics([&new], &options))
                .map_err(|e| kafka(topic, e))?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => return Err(kafka(topic, KafkaError::AdminOp(code))),
                }
            }
            Ok(())
        })?;
        // A new topic's metadata can lag its creation.
        let started = Instant::now();
        loop {
            match self.partitions(topic) {
                Ok(n) if n > 0 => return super::same_count(topic, partitions, n),
                _ if started.elapsed() < REQUEST_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                other => return other,
            }
        }
    }

    /// Partition count of an existing topic (asked once per topic, then remembered).
    pub fn partitions(&self, topic: &str) -> Result<u32> {
        if let Some(&count) = self.known.lock().expect("not poisoned").get(topic) {
            return Ok(count);
        }
        let count = self.with_admin(topic, |admin| {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
                .map_err(|e| kafka(topic, e))?;
            Ok(metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len() as u32))
        })?;
        if count == 0 {
            return Err(Error::UnknownTopic {
                topic: topic.to_owned(),
            });
        }
        self.known
            .lock()
            .expect("not poisoned")
            .insert(topic.to_owned(), count);
        Ok(count)
    }

    /// Where each partition of `topic` ends (the offset its next message takes) as far as this
    /// process can tell: the broker's high watermark, or past the last message this process
    /// produced to it, whichever is further.
    pub fn topic_ends(&self, topic: &str) -> Result<Vec<u64>> {
        let partitions = self.partitions(topic)?;
        self.with_admin(topic, |admin| {
            (0..partitions)
                .map(|p| {
                    let (_, high) = admin
                        .inner()
                        .fetch_watermarks(topic, p as i32, REQUEST_TIMEOUT)
                        .map_err(|e| kafka(topic, e))?;
                    Ok((high.max(0) as u64).max(self.tracker.delivered_end(topic, p)))
                })
                .collect()
        })
    }

    /// Sends records (idempotent producer, batched), waits until the broker acknowledged all of
    /// them; returns how many went to each partition.
    pub fn send(&self, topic: &str, records: &Batch) -> Result<Vec<u64>> {
        self.send_batch(topic, records, None)
            .map(|(counts, _)| counts)
    }

    /// Sends records as [`Self::send`] does, each with its [`TAG_HEADER`] header when `tags`
    /// gives one (by index; `tags` may be shorter than the batch); returns where each one landed,
    /// in batch order (the offsets from the broker's delivery reports).
    pub fn send_placed(
        &self,
        topic: &str,
        records: &Batch,
        tags: &[Option<String>],
    ) -> Result<Vec<(u32, u64)>> {
        let (_, placed) = self.send_batch(topic, records, Some(tags))?;
        placed
            .into_iter()
            .enumerate()
            .map(|(i, at)| {
                at.ok_or_else(|| Error::Delivery {
                    topic: topic.to_owned(),
                    count: 1,
                    first: format!("no delivery report for message {i} of the batch"),
                })
            })
            .collect()
    }

    /// `placed`: tell where each message landed, and send the tags given (see
    /// [`Self::send_placed`]).
    fn send_batch(
        &self,
        topic: &str,
        records: &Batch,
        placed: Option<&[Option<String>]>,
    ) -> Result<(Vec<u64>, Placed)> {
        let (place, tags) = (placed.is_some(), placed.unwrap_or_default());
        let partitions = self.partitions(topic)?;
        let mut guard = self.producer.lock().expect("not poisoned");
        if guard.is_none() {
            let producer: BaseProducer<Tracker> = self
                .config(&[
                    ("enable.idempotence", "true"),
                    ("linger.ms", "20"),
                    ("batch.num.messages", "10000"),
                    ("queue.buffering.max.messages", "500000"),
                    // A broker that stays away fails the send within this time.
                    ("message.timeout.ms", "30000"),
                ])
                .create_with_context(self.tracker.clone())
                .map_err(|e| kafka(topic, e))?;
            *guard = Some(producer);
        }
        let producer = guard.as_ref().expect("just created");
        *self.tracker.0.placed.lock().expect("not poisoned") =
            place.then(|| vec![None; records.len()]);
        // Failures are this batch's only.
        self.tracker.0.failed.lock().expect("not poisoned").clear();
        let mut counts = vec![0; partitions as usize];
        for (i, record) in records.iter().enumerate() {
            if i % 1024 == 0 {
                // Serves delivery reports (which free their messages' queue room).
                producer.poll(Duration::ZERO);
            }
            let partition = partition_for(record.key, partitions);
            let mut next = BaseRecord::with_opaque_to(topic, i)
                .key(record.key)
                .payload(record.value)
                .partition(partition as i32)
                .timestamp(record.timestamp_ms);
            if let Some(Some(tag)) = tags.get(i) {
                next = next.headers(OwnedHeaders::new().insert(Header {
                    key: TAG_HEADER,
                    value: Some(tag.as_bytes()),
                }));
            }
            loop {
                match producer.send(next) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        next = back;
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((err, _)) => {
                        // What was queued before this message still goes out: wait for it,
                        // so the caller's next look at the topic (a retry's) sees it, and no
                        // delivery report of this batch lands in the next one's.
                        let _ = producer.flush(Duration::from_secs(60));
                        return Err(kafka(topic, err));
                    }
                }
            }
            counts[partition as usize] += 1;
        }
        producer
            .flush(Duration::from_secs(60))
            .map_err(|e| kafka(topic, e))?;
        let placed = self
            .tracker
            .0
            .placed
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_default();
        let failed = std::mem::take(&mut *self.tracker.0.failed.lock().expect("not poisoned"));
        if let Some(first) = failed.first() {
            return Err(Error::Delivery {
                topic: topic.to_owned(),
                count: failed.len(),
                first: first.clone(),
            });
        }
        Ok((counts, placed))
    }

    /// Joins the consumer group `group` on `topic`. Each partition the group assigns to this
    /// member is read from the offset `start` returns for it (the offsets committed with the
    /// rows, not the group's), so a rebalance neither skips nor repeats what was stored.
    pub fn join(&self, topic: &str, group: &str, start: StartOffsets) -> Result<GroupMember> {
        let member = self.reader(topic, group, start)?;
        member
            .consumer()
            .subscribe(&[topic])
            .map_err(|e| kafka(topic, e))?;
        Ok(member)
    }

    /// Reads every partition of `topic` outside the consumer group (assigned by hand, each from
    /// where `start` says): for a member the group leaves without partitions while no one stores
    /// them. Safe next to a group member reading the same partitions: bronze stores only what
    /// lies past the offsets it committed.
    pub fn read_all(
        &self,
        topic: &str,
        group: &str,
        partitions: u32,
        start: StartOffsets,
    ) -> Result<GroupMember> {
        let member = self.reader(topic, group, start)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p as i32);
        }
        let consumer = member.consumer();
        let context = consumer.context();
        context.take(
            consumer,
            &mut tpl,
            &mut context.state.lock().expect("not poisoned"),
        );
        member.check()?;
        tracing::info!(
            topic,
            partitions,
            "bronze: reading every partition outside the group"
        );
        Ok(member)
    }

    /// The [`TAG_HEADER`] tags on `topic` from `from` (the next offset of each partition, by
    /// partition) to the partitions' ends, in each partition's order. Read outside any group,
    /// with bronze's proof that each partition was read to its end. Past `limit`, what was read
    /// so far (`complete: false`; the caller goes on from its `ends` another time).
    pub fn tags(&self, topic: &str, from: &[u64], limit: Duration) -> Result<Tags> {
        let partitions = from.len() as u32;
        let starts = from.to_vec();
        let start: StartOffsets = Box::new(move |ps| {
            Ok(ps
                .iter()
                .map(|&p| (p, starts.get(p as usize).copied().unwrap_or(0)))
                .collect())
        });
        let member = self.read_all(topic, "framework-gateway-keys", partitions, start)?;
        let all: Vec<u32> = (0..partitions).collect();
        let ends = member.ends(&all)?;
        let started = Instant::now();
        let mut found = Vec::new();
        let tag_of = |m: &BorrowedMessage<'_>| {
            let headers = m.headers()?;
            let tag = headers.iter().find(|h| h.key == TAG_HEADER)?.value?;
            Some(Tag {
                partition: m.partition() as u32,
                offset: m.offset() as u64,
                value: String::from_utf8_lossy(tag).into_owned(),
            })
        };
        // How far each partition was read (the next offset), by partition.
        let read_to = |member: &GroupMember| -> Vec<u64> {
            let handed = member.state().handed.clone();
            from.iter()
                .enumerate()
                .map(|(p, &start)| handed.get(&(p as u32)).map_or(start, |&h| h.max(start)))
                .collect()
        };
        loop {
            let wait = Duration::from_millis(100);
            // A fetch brings whole record batches, and every record it brings is taken: a broker
            // that reports a partition's end inside its last batch (Tansu: one past the batch's
            // first offset) still has the batch read whole.
            found.extend(member.poll_map(10_000, wait, Duration::from_millis(10), tag_of)?);
            if member.caught_up(&ends)? {
                let read = read_to(&member);
                let ends = ends.iter().zip(&read).map(|(e, r)| *e.max(r)).collect();
                return Ok(Tags {
                    found,
                    ends,
                    complete: true,
                });
            }
            if started.elapsed() > limit {
                // How far each partition was read, so that the caller can go on from there.
                return Ok(Tags {
                    found,
                    ends: read_to(&member),
                    complete: false,
                });
            }
        }
    }

    /// A bronze consumer of `topic` in `group`, not yet subscribed nor assigned.
    fn reader(&self, topic: &str, group: &str, start: StartOffsets) -> Result<GroupMember> {
        let context = Member {
            topic: topic.to_owned(),
            start,
            state: Mutex::default(),
        };
        let consumer: BaseConsumer<Member> = self
            .config(&[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("enable.partition.eof", "false"),
                // Messages past a stale last-stable offset are still delivered (some
                // Kafka-protocol brokers report it late).
                ("isolation.level", "read_uncommitted"),
                // A bounded run reads to an end and stops, so a fetch need not wait long for
                // more. Some Kafka-protocol brokers (Tansu) hold every fetch for the whole wait
                // even with data ready, and answer a connection's requests in turn, so a long
                // wait also delays the end-offset lookups and leaving the group: at the 500 ms
                // default, a table's read took 5x longer.
                ("fetch.wait.max.ms", "10"),
            ])
            .create_with_context(context)
            .map_err(|e| kafka(topic, e))?;
        Ok(GroupMember {
            consumer: Some(consumer),
            topic: topic.to_owned(),
            tracker: self.tracker.clone(),
        })
    }
}

/// Looks up where to resume each of the given partitions (the next offset to read).
pub type StartOffsets =
    Box<dyn Fn(&[u32]) -> Result<HashMap<u32, u64>, String> + Send + Sync + 'static>;

/// What a group member knows about its assignment.
#[derive(Debug, Default)]
struct Assignment {
    /// Partitions assigned to this member; `None` until the group first assigned any.
    partitions: Option<BTreeSet<u32>>,
    /// Read position per assigned partition.
    next: HashMap<u32, Position>,
    /// One past the last offset this member handed out, per partition it ever held. Kept over
    /// revocations: the caller stores what it was handed, so a partition given back to this
    /// member resumes here when the stored offsets (the start) are behind, rather than hand
    /// the same messages out twice (within one poll, both copies would be stored).
    handed: HashMap<u32, u64>,
    /// A failed start-offset lookup during a rebalance.
    error: Option<String>,
}

/// A partition's read position, and whether the messages seen since it was set prove that the
/// fetch really started there.
#[derive(Debug, Clone, Copy)]
struct Position {
    next: u64,
    /// A message at or before `next` arrived: the stream covers the position.
    anchored: bool,
    /// The partition was re-read from its start once already.
    rewound: bool,
    /// When the partition was last sought to prove the position, if it was.
    sought: Option<Instant>,
}

/// How long a seek made to prove a position may stay without an answer.
const PROOF_WAIT: Duration = Duration::from_secs(5);

/// What the end-of-partition check needs before it may trust a position.
#[derive(Debug, PartialEq)]
enum Proof {
    Done,
    /// A seek is under way.
    Wait,
    Seek(Offset),
}

/// What to do with a fetched message.
#[derive(Debug, PartialEq, Eq)]
enum Accept {
    Take,
    /// Before the position: stored already.
    Skip,
    /// The first message fetched lies past the position: re-read from the start to be sure.
    Rewind,
    /// Past the position even from the start: the offsets from `.0` on are not on the topic.
    Gap(u64),
}

impl Position {
    fn at(next: u64) -> Self {
        Self {
            next,
            anchored: false,
            rewound: false,
            sought: None,
        }
    }

    /// Whether the stream is proven to cover the position of a partition that looks read to its
    /// `end`, and if not where to seek to prove it. Nothing fetched since the position was set
    /// does not prove it: a broker that answers a fetch from the middle of a record batch with
    /// the next batch (Tansu 0.6) returns nothing for the middle of the last one, and reports a
    /// high watermark short of that batch's end. Fetching from just before the position shows the
    /// rest of such a batch; if even that stays empty, reading from the start settles it.
    fn prove(&mut self, end: u64, now: Instant) -> Proof {
        if self.anchored || self.next == 0 {
            return Proof::Done;
        }
        match self.sought {
            Some(at) if now.duration_since(at) < PROOF_WAIT => Proof::Wait,
            None if !self.rewound => {
                self.sought = Some(now);
                Proof::Seek(Offset::Offset(self.next.min(end).saturating_sub(1) as i64))
            }
            _ if !self.rewound => {
                (self.rewound, self.sought) = (true, Some(now));
                Proof::Seek(Offset::Beginning)
            }
            // Nothing on the topic before the position (deleted by retention).
            _ => {
                self.anchored = true;
                Proof::Done
            }
        }
    }

    fn accept(&mut self, offset: u64) -> Accept {
        if offset < self.next {
            self.anchored = true;
            return Accept::Skip;
        }
        if offset > self.next && !self.anchored {
            if !self.rewound && self.next > 0 {
                self.rewound = true;
                return Accept::Rewind;
            }
            let from = self.next;
            (self.anchored, self.next) = (true, offset + 1);
            return Accept::Gap(from);
        }
        (self.anchored, self.next) = (true, offset + 1);
        Accept::Take
    }
}

/// The consumer context of a group member: positions newly assigned partitions.
struct Member {
    topic: String,
    start: StartOffsets,
    state: Mutex<Assignment>,
}

impl ClientContext for Member {}

impl ConsumerContext for Member {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut state = self.state.lock().expect("not poisoned");
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            // Revoked (or a rebalance error): stop fetching; the assignment is unknown until the
            // group hands out the next one.
            state.partitions = None;
            state.next.clear();
            if let Err(e) = consumer.unassign() {
                state.error = Some(format!("leaving partitions: {e}"));
            }
            return;
        }
        self.take(consumer, tpl, &mut state);
    }
}

impl Member {
    /// Takes the partitions of `tpl` on the topic: each positioned where `start` says (0 when it
    /// says nothing), recorded as this reader's assignment, then assigned to `consumer`. A failure
    /// is kept in `state` and reported by the next poll.
    fn take(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        state: &mut Assignment,
    ) {
        let partitions: Vec<u32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition() as u32)
            .collect();
        match (self.start)(&partitions) {
            Ok(starts) => {
                for &p in &partitions {
                    let stored = starts.get(&p).copied().unwrap_or(0);
                    // Fetched from the stored offset (a fetch from the middle of a record batch
                    // can come back empty from some brokers, Tansu 0.6, with nothing after the
                    // batch to prove the position by), taken from past what was handed out.
                    let resume = stored.max(state.handed.get(&p).copied().unwrap_or(0));
                    if let Err(e) = tpl.set_partition_offset(
                        &self.topic,
                        p as i32,
                        Offset::Offset(stored as i64),
                    ) {
                        state.error = Some(format!("positioning partition {p}: {e}"));
                    }
                    state.next.insert(p, Position::at(resume));
                }
            }
            Err(e) => state.error = Some(e),
        }
        tracing::info!(
            topic = self.topic,
            ?partitions,
            "bronze: partitions assigned"
        );
        state.partitions = Some(partitions.into_iter().collect());
        if let Err(e) = consumer.assign(tpl) {
            state.error = Some(format!("taking partitions: {e}"));
        }
    }
}

/// A bronze reader of one topic: a member of its consumer group ([`KafkaBus::join`]), or a reader
/// of every partition outside the group ([`KafkaBus::read_all`]). Dropping a member leaves the
/// group.
pub struct GroupMember {
    /// Present until dropped.
    consumer: Option<BaseConsumer<Member>>,
    topic: String,
    tracker: Tracker,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember")
            .field("topic", &self.topic)
            .finish()
    }
}

/// How long leaving the group may take (it waits for the coordinator, which may be gone).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for GroupMember {
    /// Leaves the group on a helper thread and waits for it at most [`LEAVE_TIMEOUT`]: with the
    /// broker gone, librdkafka's close would wait forever (the process then exits without it).
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(consumer);
            let _ = done.send(());
        });
        if wait.recv_timeout(LEAVE_TIMEOUT).is_err() {
            tracing::warn!(
                topic = self.topic,
                "left the consumer group without saying so (broker unreachable)"
            );
        }
    }
}

impl GroupMember {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn consumer(&self) -> &BaseConsumer<Member> {
        self.consumer.as_ref().expect("present until dropped")
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Assignment> {
        self.consumer()
            .context()
            .state
            .lock()
            .expect("not poisoned")
    }

    fn check(&self) -> Result<()> {
        match self.state().error.take() {
            Some(reason) => Err(Error::Group {
                topic: self.topic.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Up to `max` messages from the assigned partitions: waits up to `wait` for the first, then
    /// takes what keeps arriving without a pause longer than `linger`.
    pub fn poll(&self, max: usize, wait: Duration, linger: Duration) -> Result<Vec<Message>> {
        self.poll_map(max, wait, linger, |m| {
            Some(Message {
                partition: m.partition() as u32,
                offset: m.offset() as u64,
                timestamp_ms: m.timestamp().to_millis().unwrap_or_default(),
                key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
                value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            })
        })
    }

    /// As [`Self::poll`], keeping what `map` makes of each message it takes (every message
    /// counts for the positions, whatever `map` answers).
    fn poll_map<T>(
        &self,
        max: usize,
        wait: Duration,
        linger: Duration,
        map: impl Fn(&BorrowedMessage<'_>) -> Option<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let started = Instant::now();
        let mut last = Instant::now();
        while out.len() < max {
            let limit = if out.is_empty() {
                wait.saturating_sub(started.elapsed())
            } else {
                linger.saturating_sub(last.elapsed())
            };
            if limit.is_zero() {
                break;
            }
            match self.consumer().poll(limit.min(Duration::from_millis(100))) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    let partition = m.partition() as u32;
                    let offset = m.offset() as u64;
                    let mut state = self.state();
                    // Only messages of partitions still assigned, in order from their start.
                    let Some(at) = state.next.get_mut(&partition) else {
                        continue;
                    };
                    match at.accept(offset) {
                        Accept::Take => {}
                        Accept::Skip => continue,
                        Accept::Rewind => {
                            at.sought = Some(Instant::now());
                            // The fetch began past the position: a broker that answers a fetch
                            // from the middle of a record batch with the next batch (Tansu 0.6)
                            // would skip the rest of the batch. Read the partition from its
                            // start instead; what lies before the position is skipped.
                            drop(state);
                            tracing::info!(
                                topic = self.topic,
                                partition,
                                offset,
                                "bronze: fetch started past the position; reading the partition from its start"
                            );
                            self.seek(partition, Offset::Beginning)?;
                            continue;
                        }
                        Accept::Gap(from) => {
                            tracing::warn!(
                                topic = self.topic,
                                partition,
                                from,
                                to = offset,
                                "offsets missing on the topic (deleted by retention?)"
                            );
                        }
                    }
                    state.handed.insert(partition, offset + 1);
                    drop(state);
                    out.extend(map(&m));
                }
                Some(Err(e)) => return Err(kafka(&self.topic, e)),
                None => {}
            }
            self.check()?;
        }
        self.check()?;
        Ok(out)
    }

    /// Whether the group assigned this member its partitions and it has read each of them up to
    /// its end in `ends` (every partition of the topic's, by partition, from [`Self::ends`]).
    pub fn caught_up(&self, ends: &[u64]) -> Result<bool> {
        let Some(partitions) = self.state().partitions.clone() else {
            return Ok(false);
        };
        let partitions: Vec<u32> = partitions.into_iter().collect();
        // The consumer's own position also steps over records that are not messages (the
        // control records of transactional producers).
        let position = self
            .consumer()
            .position()
            .map_err(|e| kafka(&self.topic, e))?;
        let fetched = |partition: u32| match position
            .find_partition(&self.topic, partition as i32)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(at)) => at.max(0) as u64,
            _ => 0,
        };
        let (mut done, mut seeks) = (true, Vec::new());
        {
            let now = Instant::now();
            let mut state = self.state();
            for &partition in &partitions {
                // A partition without a known end is not read to it.
                let Some(&end) = ends.get(partition as usize) else {
                    done = false;
                    continue;
                };
                let at = state.next.entry(partition).or_insert(Position::at(0));
                if at.next.max(fetched(partition)) < end {
                    done = false;
                    continue;
                }
                match at.prove(end, now) {
                    Proof::Done => {}
                    Proof::Wait => done = false,
                    Proof::Seek(offset) => {
                        done = false;
                        seeks.push((partition, offset));
                    }
                }
            }
        }
        for (partition, offset) in seeks {
            tracing::debug!(
                topic = self.topic,
                partition,
                ?offset,
                "bronze: reading back to prove the partition is read to its end"
            );
            self.seek(partition, offset)?;
        }
        Ok(done)
    }

    /// Fetches `partition` from `offset` on.
    fn seek(&self, partition: u32, offset: Offset) -> Result<()> {
        self.consumer()
            .seek(&self.topic, partition as i32, offset, REQUEST_TIMEOUT)
            .map_err(|e| kafka(&self.topic, e))
    }

    /// Where each of `partitions` ends as far as this process can tell: the broker's high
    /// watermark, or past the last message this process produced to it, whichever is further.
    pub fn ends(&self, partitions: &[u32]) -> Result<Vec<u64>> {
        // One ListOffsets request for all partitions ("latest" is timestamp -1).
        let mut latest = TopicPartitionList::new();
        for &partition in partitions {
            latest
                .add_partition_offset(&self.topic, partition as i32, Offset::End)
                .map_err(|e| kafka(&self.topic, e))?;
        }
        let found = self
            .consumer()
            .offsets_for_times(latest, REQUEST_TIMEOUT)
            .map_err(|e| kafka(&self.topic, e))?;
        partitions
            .iter()
            .map(|&partition| {
                let high = match found
                    .find_partition(&self.topic, partition as i32)
                    .map(|e| (e.offset(), e.error()))
                {
                    Some((Offset::Offset(at), Ok(()))) => at.max(0) as u64,
                    Some((_, Err(e))) => return Err(kafka(&self.topic, e)),
                    _ => 0,
                };
                Ok(high.max(self.tracker.delivered_end(&self.topic, partition)))
            })
            .collect()
    }

    /// Partitions currently assigned to this member.
    pub fn assigned(&self) -> Vec<u32> {
        self.state().partitions.iter().flatten().copied().collect()
    }

    /// Records stored positions in the group too, so that Kafka's tools show the lag. Best
    /// effort: the positions that count are the ones committed with the rows.
    pub fn commit(&self, ends: &[(u32, u64)]) {
        let mut list = TopicPartitionList::new();
        for &(partition, end) in ends {
            let _ = list.add_partition_offset(
                &self.topic,
                partition as i32,
                Offset::Offset(end as i64),
            );
        }
        if let Err(e) = self.consumer().commit(&list, CommitMode::Async) {
            tracing::warn!(
                topic = self.topic,
                "committing offsets to the consumer group: {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Accept, Offset, PROOF_WAIT, Position, Proof};
    use std::time::Instant;

    #[test]
    fn a_fetch_that_starts_before_the_position_is_taken_from_the_position_on() {
        let mut at = Position::at(5);
        assert_eq!(at.accept(3), Accept::Skip);
        assert_eq!(at.accept(4), Accept::Skip);
        assert_eq!(at.accept(5), Accept::Take);
        // A hole inside a stream that covered the position (compaction, control records).
        assert_eq!(at.accept(8), Accept::Take);
        assert_eq!(at.next, 9);
    }

    #[test]
    fn a_fetch_that_starts_past_the_position_rewinds_once_then_reports_the_gap() {
        let mut at = Position::at(100);
        assert_eq!(at.accept(250), Accept::Rewind);
        assert_eq!(at.next, 100, "nothing taken before the rewind");
        // From the start: everything before the position is skipped, then taken in order.
        assert_eq!(at.accept(0), Accept::Skip);
        assert_eq!(at.accept(100), Accept::Take);

        let mut gone = Position::at(100);
        assert_eq!(gone.accept(250), Accept::Rewind);
        assert_eq!(gone.accept(250), Accept::Gap(100));
        assert_eq!(gone.next, 251);
        // At offset 0 there is nothing before to re-read.
        assert_eq!(Position::at(0).accept(7), Accept::Gap(0));
    }

    #[test]
    fn a_position_past_the_end_is_proven_by_reading_back_before_it_is_trusted() {
        let now = Instant::now();
        // Stored up to 120, the broker says the partition ends at 101 (Tansu: one past the base
        // of the last batch): fetch from 100 first.
        let mut at = Position::at(120);
        assert_eq!(at.prove(101, now), Proof::Seek(Offset::Offset(100)));
        assert_eq!(at.prove(101, now), Proof::Wait);
        // The batch arrives: what was stored is skipped, and that proves the position.
        assert_eq!(at.accept(100), Accept::Skip);
        assert_eq!(at.prove(101, now), Proof::Done);
        // Nothing came back: read from the start, and if that stays empty too, trust it.
        let mut empty = Position::at(120);
        assert_eq!(empty.prove(120, now), Proof::Seek(Offset::Offset(119)));
        let later = now + PROOF_WAIT;
        assert_eq!(empty.prove(120, later), Proof::Seek(Offset::Beginning));
        assert_eq!(empty.prove(120, later), Proof::Wait);
        assert_eq!(empty.prove(120, later + PROOF_WAIT), Proof::Done);
        // Offset 0 and positions a message proved need no proof.
        assert_eq!(Position::at(0).prove(0, now), Proof::Done);
        let mut read = Position::at(5);
        assert_eq!(read.accept(5), Accept::Take);
        assert_eq!(read.prove(6, now), Proof::Done);
    }
}
