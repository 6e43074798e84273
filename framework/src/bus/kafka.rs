//! A Kafka bus (rdkafka): the same operations as the embedded log, against a real broker.
//!
//! Partitions are chosen by [`super::partition_for`], as on the embedded log, so that both
//! buses place a key on the same partition. The producer is idempotent and batches; its
//! delivery reports also tell where each partition ends, which a bounded run trusts over the
//! broker's high watermark (some Kafka-protocol brokers, Tansu 0.6 among them, answer the
//! watermark query wrongly for batch-written partitions).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{Error, Message, Record, Result, partition_for};

/// How long a read waits for the next message before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long metadata and admin requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Records what the broker acknowledged: the last offset per (topic, partition), and failures.
#[derive(Debug, Default)]
struct Deliveries {
    last: Mutex<HashMap<(String, i32), i64>>,
    failed: Mutex<Vec<String>>,
}

impl ClientContext for Tracker {}

#[derive(Debug, Clone, Default)]
struct Tracker(Arc<Deliveries>);

impl ProducerContext for Tracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
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
    producer: Arc<Mutex<Option<ThreadedProducer<Tracker>>>>,
    tracker: Tracker,
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

impl KafkaBus {
    /// A bus on the brokers `host:port[,host:port...]`; connects on first use.
    pub fn new(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            producer: Arc::new(Mutex::new(None)),
            tracker: Tracker::default(),
        }
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.timeout.ms", "10000");
        config
    }

    fn consumer(&self, topic: &str) -> Result<BaseConsumer> {
        self.config()
            .set("group.id", "framework-bronze")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| kafka(topic, e))
    }

    /// Creates the topic with `partitions` partitions unless it exists; returns its partition count.
    pub fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        let admin: AdminClient<DefaultClientContext> =
            self.config().create().map_err(|e| kafka(topic, e))?;
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
        // A new topic's metadata can lag its creation.
        let started = Instant::now();
        loop {
            match self.partitions(topic) {
                Ok(n) if n > 0 => return Ok(n),
                _ if started.elapsed() < REQUEST_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                other => return other,
            }
        }
    }

    /// Partition count of an existing topic.
    pub fn partitions(&self, topic: &str) -> Result<u32> {
        let consumer = self.consumer(topic)?;
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| kafka(topic, e))?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as u32);
        if count == 0 {
            return Err(Error::UnknownTopic {
                topic: topic.to_owned(),
            });
        }
        Ok(count)
    }

    /// Sends records (idempotent producer, batched), waits until the broker acknowledged all of
    /// them; returns how many went to each partition.
    pub fn send(&self, topic: &str, records: &[Record]) -> Result<Vec<u64>> {
        let partitions = self.partitions(topic)?;
        let mut guard = self.producer.lock().expect("not poisoned");
        if guard.is_none() {
            let producer: ThreadedProducer<Tracker> = self
                .config()
                .set("enable.idempotence", "true")
                .set("linger.ms", "20")
                .set("batch.num.messages", "10000")
                .set("queue.buffering.max.messages", "500000")
                .create_with_context(self.tracker.clone())
                .map_err(|e| kafka(topic, e))?;
            *guard = Some(producer);
        }
        let producer = guard.as_ref().expect("just created");
        let mut counts = vec![0; partitions as usize];
        for record in records {
            let partition = partition_for(&record.key, partitions);
            let mut next = BaseRecord::to(topic)
                .key(&record.key)
                .payload(&record.value)
                .partition(partition as i32)
                .timestamp(record.timestamp_ms);
            loop {
                match producer.send(next) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        next = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((err, _)) => return Err(kafka(topic, err)),
                }
            }
            counts[partition as usize] += 1;
        }
        producer
            .flush(Duration::from_secs(120))
            .map_err(|e| kafka(topic, e))?;
        let failed = std::mem::take(&mut *self.tracker.0.failed.lock().expect("not poisoned"));
        if let Some(first) = failed.first() {
            return Err(Error::Delivery {
                topic: topic.to_owned(),
                count: failed.len(),
                first: first.clone(),
            });
        }
        Ok(counts)
    }

    /// Offset one past the last message of a partition: the broker's high watermark, or past
    /// the last offset this process saw acknowledged, whichever is further.
    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        let consumer = self.consumer(topic)?;
        let (_, high) = consumer
            .fetch_watermarks(topic, partition as i32, REQUEST_TIMEOUT)
            .map_err(|e| kafka(topic, e))?;
        let delivered = self
            .tracker
            .0
            .last
            .lock()
            .expect("not poisoned")
            .get(&(topic.to_owned(), partition as i32))
            .map_or(0, |last| last + 1);
        Ok(high.max(delivered).max(0) as u64)
    }

    /// Up to `max` messages of a partition from `offset` on.
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Message>> {
        let consumer = self.consumer(topic)?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64))
            .map_err(|e| kafka(topic, e))?;
        consumer.assign(&assignment).map_err(|e| kafka(topic, e))?;
        let mut out = Vec::with_capacity(max);
        let mut waited = Instant::now();
        while out.len() < max {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    waited = Instant::now();
                    out.push(Message {
                        partition,
                        offset: m.offset() as u64,
                        timestamp_ms: m.timestamp().to_millis().unwrap_or_default(),
                        key: m.key().unwrap_or_default().to_vec(),
                        value: m.payload().unwrap_or_default().to_vec(),
                    });
                }
                Some(Err(e)) => return Err(kafka(topic, e)),
                None if waited.elapsed() > READ_TIMEOUT => {
                    return Err(Error::Timeout {
                        topic: topic.to_owned(),
                        partition,
                        offset: offset + out.len() as u64,
                        waited_s: READ_TIMEOUT.as_secs(),
                    });
                }
                None => {}
            }
        }
        Ok(out)
    }
}
