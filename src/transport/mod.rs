//! The only owner of the MQTT client (rumqttc).
//!
//! Connects (plain or rustls with ring, optionally mutual TLS) with a persistent session and the
//! Last Will, re-subscribes and re-announces the birth state on every ConnAck, reconnects with
//! capped exponential backoff plus jitter (a fleet of thousands must not reconnect in lock-step
//! after a broker restart), hands inbound messages to a channel without ever waiting on the
//! application, and drains the durable event outbox in order, acknowledging each event only when
//! the broker confirmed it. It never interprets a downstream message.

pub mod tls;
pub mod topics;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::events::EventSink;
pub use topics::{Downstream, Scope, Topics};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("mqtt.password_file {path}: {source}")]
    Password {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A message the broker delivered on one of our subscriptions.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// Why a publish was queued, so the broker's PubAck can be matched to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Other,
    Event(u64),
    Stats(u64),
    Offline,
}

/// Room for large downstream documents; the agent's own limit (`security.max_message_bytes`)
/// is enforced above this so an oversized message is refused and reported instead of
/// tearing the connection down in a loop.
const MAX_INCOMING_PACKET: usize = 64 * 1024 * 1024;
const REQUEST_CAPACITY: usize = 256;
const STOP_FLUSH: Duration = Duration::from_secs(5);

/// Cheap handle for publishing; the rest of the agent never sees rumqttc.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    /// Tags in the order publishes were queued: rumqttc reports `Outgoing::Publish(pkid)` in
    /// that same order, which is how a pkid is tied back to an event.
    tags: Arc<Mutex<VecDeque<Tag>>>,
    connected: watch::Receiver<bool>,
    topics: Arc<Topics>,
    /// Fields other parts add to the birth (inventory, `cert_not_after`), sent on every ConnAck.
    birth_extra: Arc<Mutex<Map<String, Value>>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    pub fn connected_watch(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    fn send(&self, topic: String, qos: QoS, retain: bool, payload: Vec<u8>, tag: Tag) -> bool {
        let mut tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        match self.client.try_publish(topic.clone(), qos, retain, payload) {
            Ok(()) => {
                tags.push_back(tag);
                true
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "publish not queued");
                false
            }
        }
    }

    fn send_json(&self, topic: String, retain: bool, value: &Value) -> bool {
        self.send(
            topic,
            QoS::AtLeastOnce,
            retain,
            value.to_string().into_bytes(),
            Tag::Other,
        )
    }

    /// Health is telemetry: QoS 0, and skipped while offline (a stale report is worthless).
    pub fn health(&self, report: &Value) -> bool {
        self.is_connected()
            && self.send(
                self.topics.health(),
                QoS::AtMostOnce,
                false,
                report.to_string().into_bytes(),
                Tag::Other,
            )
    }

    pub fn reported(&self, kind: &str, value: &Value) -> bool {
        self.send_json(self.topics.reported(kind), true, value)
    }

    pub fn reply(&self, value: &Value) -> bool {
        self.send_json(self.topics.replies(), false, value)
    }

    pub fn compliance(&self, value: &Value) -> bool {
        self.send_json(self.topics.compliance(), true, value)
    }

    pub fn patrol(&self, value: &Value) -> bool {
        self.send_json(self.topics.patrol(), true, value)
    }

    pub fn csr(&self, value: &Value) -> bool {
        self.send_json(self.topics.csr(), false, value)
    }

    /// Changes the birth (state) sent on the next ConnAck; `f` gets the extra fields only.
    pub fn update_birth(&self, f: impl FnOnce(&mut Map<String, Value>)) {
        f(&mut self.birth_extra.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A request to reconnect with another TLS client identity (certificate renewal, §9).
pub struct TlsSwap {
    pub new: rustls::ClientConfig,
    /// Put back, and the connection retried with it, when the broker refuses `new`.
    pub previous: rustls::ClientConfig,
    /// Birth fields that hold once `new` is in force (`cert_not_after`).
    pub birth: Map<String, Value>,
    /// `Ok` once the broker accepted `new` (ConnAck), `Err` with the connection error otherwise.
    pub done: oneshot::Sender<Result<(), String>>,
}

/// Sends [`TlsSwap`]s to the transport.
#[derive(Clone, Debug)]
pub struct TlsSwitch(mpsc::Sender<TlsSwap>);

impl TlsSwitch {
    /// Swaps the identity and waits for the broker's verdict on it.
    pub async fn swap(
        &self,
        new: rustls::ClientConfig,
        previous: rustls::ClientConfig,
        birth: Map<String, Value>,
    ) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.0
            .send(TlsSwap {
                new,
                previous,
                birth,
                done,
            })
            .await
            .map_err(|_| "the MQTT connection is stopping".to_string())?;
        rx.await
            .map_err(|_| "the MQTT connection is stopping".to_string())?
    }
}

fn rustls_transport(c: rustls::ClientConfig) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(c)))
}

/// What the birth and will messages say about this process.
#[derive(Debug, Clone)]
pub struct Identity {
    pub boot_id: String,
    pub started_at: String,
}

pub struct Transport {
    eventloop: EventLoop,
    publisher: Publisher,
    connected_tx: watch::Sender<bool>,
    inbound: mpsc::Sender<Inbound>,
    events: EventSink,
    birth: Value,
    offline: Value,
    backoff: Backoff,
    tls: bool,
    url: String,
    events_in_flight: usize,
    /// pkid → tag for QoS 1 publishes the broker has not acknowledged yet.
    unacked: HashMap<u16, Tag>,
    /// Event seqs queued and not yet acknowledged.
    events_sent: BTreeSet<u64>,
    delivered: BTreeSet<u64>,
    offline_acked: bool,
    swaps: mpsc::Receiver<TlsSwap>,
    swaps_tx: mpsc::Sender<TlsSwap>,
    swapping: Option<TlsSwap>,
    stats: Option<StatsPump>,
}

/// The usage-statistics outbox, drained beside the events' with the same rules.
struct StatsPump {
    outbox: crate::usage::StatsOutbox,
    sent: BTreeSet<u64>,
    delivered: BTreeSet<u64>,
}

impl Transport {
    pub fn new(
        cfg: &Config,
        identity: &Identity,
        events: EventSink,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<(Self, Publisher), TransportError> {
        let url = config::parse_broker_url(&cfg.mqtt.url).map_err(TransportError::Url)?;
        let topics = Topics::new(
            &cfg.mqtt.topic_prefix,
            &cfg.terminal.id,
            &cfg.terminal.groups,
        );
        let mut opts = MqttOptions::new(cfg.terminal.id.clone(), url.host.clone(), url.port);
        opts.set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_s));
        opts.set_clean_session(false);
        opts.set_max_packet_size(MAX_INCOMING_PACKET, MAX_INCOMING_PACKET);
        opts.set_request_channel_capacity(REQUEST_CAPACITY);
        let offline_lost =
            json!({"status": "offline", "terminal_id": cfg.terminal.id, "reason": "lost"});
        opts.set_last_will(LastWill::new(
            topics.state(),
            offline_lost.to_string(),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(user) = &cfg.mqtt.username {
            let password = match &cfg.mqtt.password_file {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|source| TransportError::Password {
                        path: p.clone(),
                        source,
                    })?
                    .trim_end()
                    .to_string(),
                None => String::new(),
            };
            opts.set_credentials(user.clone(), password);
        }
        if url.tls {
            // A renewed pair in force (identity/active.json) replaces the provisioned one.
            let (cert, key) = crate::identity::active_pair(cfg);
            let tls_config =
                tls::client_config(cfg.mqtt.ca_file.as_deref(), cert.as_deref(), key.as_deref())?;
            opts.set_transport(rustls_transport(tls_config));
        }
        let (client, eventloop) = AsyncClient::new(opts, REQUEST_CAPACITY);
        let (connected_tx, connected_rx) = watch::channel(false);
        let publisher = Publisher {
            client,
            tags: Arc::new(Mutex::new(VecDeque::new())),
            connected: connected_rx,
            topics: Arc::new(topics),
            birth_extra: Arc::new(Mutex::new(Map::new())),
        };
        let (swaps_tx, swaps) = mpsc::channel(1);
        let birth = json!({
            "status": "online",
            "terminal_id": cfg.terminal.id,
            "agent_version": crate::VERSION,
            "boot_id": identity.boot_id,
            "started_at": identity.started_at,
            "groups": cfg.terminal.groups,
        });
        let offline =
            json!({"status": "offline", "terminal_id": cfg.terminal.id, "reason": "shutdown"});
        Ok((
            Self {
                eventloop,
                publisher: publisher.clone(),
                connected_tx,
                inbound,
                events,
                birth,
                offline,
                backoff: Backoff::new(
                    Duration::from_secs(cfg.mqtt.reconnect_min_s),
                    Duration::from_secs(cfg.mqtt.reconnect_max_s),
                ),
                tls: url.tls,
                url: cfg.mqtt.url.clone(),
                events_in_flight: cfg.mqtt.events_in_flight,
                unacked: HashMap::new(),
                events_sent: BTreeSet::new(),
                delivered: BTreeSet::new(),
                offline_acked: false,
                stats: None,
                swaps,
                swaps_tx,
                swapping: None,
            },
            publisher,
        ))
    }

    fn connected(&self) -> bool {
        *self.connected_tx.borrow()
    }

    /// The handle certificate renewal uses to reconnect with a new pair.
    pub fn tls_switch(&self) -> TlsSwitch {
        TlsSwitch(self.swaps_tx.clone())
    }

    /// Drops the connection and reconnects with `swap.new` at the next poll.
    fn start_swap(&mut self, swap: TlsSwap) {
        tracing::info!(url = %self.url, "reconnecting with a new client certificate");
        self.eventloop
            .mqtt_options
            .set_transport(rustls_transport(swap.new.clone()));
        self.eventloop.clean();
        let _ = self.connected_tx.send(false);
        self.swapping = Some(swap);
    }

    /// Also drains the usage-statistics outbox onto `stats` (QoS 1, in order, acknowledged).
    pub fn with_stats(mut self, outbox: crate::usage::StatsOutbox) -> Self {
        self.stats = Some(StatsPump {
            outbox,
            sent: BTreeSet::new(),
            delivered: BTreeSet::new(),
        });
        self
    }

    fn stats_in_flight(&self) -> usize {
        self.stats.as_ref().map_or(0, |s| s.sent.len())
    }

    /// Polls the connection until `cancel`, then says goodbye: offline/`shutdown` (retained),
    /// flushes queued events within a bounded time, disconnects.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut stop_deadline: Option<Instant> = None;
        let wakeup = self.events.publish_wakeup.clone();
        let stats_wakeup = self
            .stats
            .as_ref()
            .map(|s| s.outbox.wakeup.clone())
            .unwrap_or_default();
        let mut failures: u32 = 0;
        loop {
            let connected = self.connected();
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if stop_deadline.is_none() => {
                    if !connected {
                        break;
                    }
                    self.publisher.send(
                        self.publisher.topics.state(),
                        QoS::AtLeastOnce,
                        true,
                        self.offline.to_string().into_bytes(),
                        Tag::Offline,
                    );
                    self.pump_events();
                    self.pump_stats();
                    stop_deadline = Some(Instant::now() + STOP_FLUSH);
                }
                _ = sleep_until_opt(stop_deadline) => {
                    tracing::warn!(pending = self.events_sent.len(), "stop: broker did not confirm everything in time");
                    break;
                }
                _ = wakeup.notified(), if connected => self.pump_events(),
                _ = stats_wakeup.notified(), if connected => self.pump_stats(),
                Some(swap) = self.swaps.recv(), if self.tls && self.swapping.is_none() && stop_deadline.is_none() => {
                    self.start_swap(swap);
                }
                ev = self.eventloop.poll() => match ev {
                    Ok(event) => {
                        if let Event::Incoming(Packet::ConnAck(_)) = &event {
                            if failures > 0 {
                                tracing::info!(url = %self.url, "broker connection restored");
                            } else {
                                tracing::info!(url = %self.url, "connected to broker");
                            }
                            failures = 0;
                            if let Some(swap) = self.swapping.take() {
                                self.publisher.update_birth(|b| b.extend(swap.birth));
                                let _ = swap.done.send(Ok(()));
                            }
                        }
                        self.on_event(event);
                        if stop_deadline.is_some() && self.offline_acked && self.events_sent.is_empty()
                            && self.stats_in_flight() == 0
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = self.connected_tx.send(false);
                        if stop_deadline.is_some() {
                            break;
                        }
                        if let Some(swap) = self.swapping.take() {
                            tracing::warn!(url = %self.url, "the broker refused the new client certificate ({e}); back to the previous one");
                            self.eventloop
                                .mqtt_options
                                .set_transport(rustls_transport(swap.previous));
                            self.eventloop.clean();
                            let _ = swap.done.send(Err(e.to_string()));
                            continue;
                        }
                        failures += 1;
                        let delay = self.backoff.next_delay();
                        let hint = if self.tls {
                            " (TLS: check mqtt.ca_file, cert_file, key_file and the broker's certificate)"
                        } else {
                            ""
                        };
                        if failures <= 3 || failures.is_power_of_two() {
                            tracing::warn!(url = %self.url, attempt = failures, retry_in_ms = delay.as_millis() as u64,
                                "broker connection failed: {e}{hint}");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = cancel.cancelled() => break,
                        }
                    }
                }
            }
        }
        if self.connected() {
            let _ = self.publisher.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    match self.eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        let _ = self.connected_tx.send(false);
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if !ack.session_present {
                    // rumqttc drops what it had queued for a session the broker no longer has:
                    // forget those tags and send the events again from the outbox. While we
                    // were disconnected only untagged publishes could have been queued.
                    self.publisher
                        .tags
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                    self.unacked.clear();
                    self.events_sent.clear();
                    if let Some(s) = &mut self.stats {
                        s.sent.clear();
                    }
                    self.offline_acked = false;
                }
                let _ = self.connected_tx.send(true);
                self.backoff.reset();
                let subs = self
                    .publisher
                    .topics
                    .subscriptions()
                    .into_iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce));
                if let Err(e) = self.publisher.client.try_subscribe_many(subs) {
                    tracing::error!(error = %e, "cannot queue subscriptions");
                }
                let mut birth = self.birth.clone();
                if let Some(obj) = birth.as_object_mut() {
                    let extra = self
                        .publisher
                        .birth_extra
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    obj.extend(extra);
                }
                self.publisher.send(
                    self.publisher.topics.state(),
                    QoS::AtLeastOnce,
                    true,
                    birth.to_string().into_bytes(),
                    Tag::Other,
                );
                self.pump_events();
                self.pump_stats();
            }
            Event::Incoming(Packet::Publish(p)) => {
                let msg = Inbound {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    retain: p.retain,
                };
                if let Err(e) = self.inbound.try_send(msg) {
                    tracing::warn!(topic = %p.topic, error = %e, "inbound queue full; message dropped");
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => match self.unacked.remove(&ack.pkid) {
                Some(Tag::Event(seq)) => {
                    self.events_sent.remove(&seq);
                    self.events.ack(seq, &mut self.delivered);
                    self.pump_events();
                }
                Some(Tag::Stats(seq)) => {
                    if let Some(s) = &mut self.stats {
                        s.sent.remove(&seq);
                        s.outbox.ack(seq, &mut s.delivered);
                    }
                    self.pump_stats();
                }
                Some(Tag::Offline) => self.offline_acked = true,
                _ => {}
            },
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                // A pkid we already track is rumqttc re-sending after a reconnect.
                if pkid != 0 && self.unacked.contains_key(&pkid) {
                    return;
                }
                let tag = self
                    .publisher
                    .tags
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop_front()
                    .unwrap_or(Tag::Other);
                if pkid != 0 {
                    self.unacked.insert(pkid, tag);
                }
            }
            _ => {}
        }
    }

    /// Queues the oldest unsent events, keeping at most `events_in_flight` unacknowledged.
    fn pump_events(&mut self) {
        if !self.connected() {
            return;
        }
        let room = self.events_in_flight.saturating_sub(self.events_sent.len());
        if room == 0 {
            return;
        }
        let head = self.events.unacked_head(self.events_sent.len() + room);
        for ev in head {
            if self.events_sent.contains(&ev.seq) {
                continue;
            }
            let Ok(bytes) = serde_json::to_vec(&ev) else {
                continue;
            };
            if !self.publisher.send(
                self.publisher.topics.events(),
                QoS::AtLeastOnce,
                false,
                bytes,
                Tag::Event(ev.seq),
            ) {
                break;
            }
            self.events_sent.insert(ev.seq);
        }
    }
}

impl Transport {
    /// Queues the oldest unsent statistics periods, as `pump_events` does for events.
    fn pump_stats(&mut self) {
        if !self.connected() {
            return;
        }
        let Some(stats) = &mut self.stats else {
            return;
        };
        let room = self.events_in_flight.saturating_sub(stats.sent.len());
        if room == 0 {
            return;
        }
        for rec in stats.outbox.unacked_head(stats.sent.len() + room) {
            if stats.sent.contains(&rec.seq) {
                continue;
            }
            let Ok(bytes) = serde_json::to_vec(&rec) else {
                continue;
            };
            if !self.publisher.send(
                self.publisher.topics.stats(),
                QoS::AtLeastOnce,
                false,
                bytes,
                Tag::Stats(rec.seq),
            ) {
                break;
            }
            stats.sent.insert(rec.seq);
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Capped exponential backoff with jitter: each delay is drawn uniformly from the upper half
/// of the current step, so terminals that lost the broker together spread their returns.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + Duration::from_millis(random_u64() % (half.as_millis() as u64 + 1))
    }
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = b.next_delay();
        }
        assert!(last >= Duration::from_secs(30) && last <= Duration::from_secs(60));
        let samples: BTreeSet<u128> = (0..20)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(8), Duration::from_secs(8));
                b.next_delay().as_millis()
            })
            .collect();
        assert!(samples.len() > 1, "delays are jittered");
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
