//! The only owner of the MQTT client (rumqttc).
//!
//! Connects (plain or rustls with ring, optionally mutual TLS) with a persistent session and the
//! Last Will, announces the birth state (with the session counter the Will carries too) on every
//! ConnAck, subscribes only when the broker holds no session for us (re-subscribing makes it
//! re-send every retained document), reconnects with capped exponential backoff plus jitter (a
//! fleet of thousands must not reconnect in lock-step after a broker restart), hands inbound
//! messages to a channel without ever waiting on the application and acknowledges a QoS 1
//! message only once the application took it in (a full channel is backpressure, never loss),
//! queues every publish that the client has no room for (retained topics coalesced to their
//! latest value) and drains the durable outboxes (events, statistics) in order: it asks each
//! outbox what to send and tells it which packet carries what and what the broker confirmed;
//! the outbox keeps that bookkeeping. It never interprets a downstream message.

mod outq;
mod session;
pub mod tls;
pub mod topics;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::events::{EventSink, Outbox, Record};
use outq::{Item, Kind, OutQueue};
use session::SessionState;
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
///
/// A QoS 1 message is acknowledged to the broker only when the receiver calls [`Inbound::done`]
/// after acting on it: until then the broker keeps it, so a crash or a full queue loses nothing.
#[derive(Debug)]
pub struct Inbound {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    ack: Option<Ack>,
}

impl Inbound {
    /// The message has been taken in: acknowledge it to the broker.
    pub fn done(&mut self) {
        if let Some(a) = self.ack.take() {
            let _ = a.tx.send(a.token);
        }
    }
}

#[derive(Debug)]
struct Ack {
    token: AckToken,
    tx: mpsc::UnboundedSender<AckToken>,
}

/// A downstream pkid and the broker session it belongs to (a pkid of a lost session must
/// never acknowledge a message of the new one).
#[derive(Debug, Clone, Copy)]
struct AckToken {
    pkid: u16,
    epoch: u64,
}

/// Why a publish was queued, so the broker's PubAck can be matched to what it confirms.
#[derive(Debug, Clone)]
enum Tag {
    Untracked,
    Event(u64),
    Stats(u64),
    Offline,
    /// An outbox item kept until confirmed: re-queued if the broker loses the session.
    Item(Box<Item>),
}

/// Room for large downstream documents; the agent's own limit (`security.max_message_bytes`)
/// is enforced above this so an oversized message is refused and reported instead of
/// tearing the connection down in a loop.
const MAX_INCOMING_PACKET: usize = 64 * 1024 * 1024;
const REQUEST_CAPACITY: usize = 256;
const STOP_FLUSH: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Shared {
    out: OutQueue,
}

/// Cheap handle for publishing; the rest of the agent never sees rumqttc. Publishing never
/// fails for lack of room: the transport queues, coalesces and hands over as the client takes.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, topic: String, qos: QoS, retain: bool, payload: Vec<u8>, kind: Kind) -> bool {
        self.lock().out.push(Item {
            topic,
            qos,
            retain,
            payload,
            kind,
            generation: 0,
        });
        self.wake.notify_one();
        true
    }

    fn send_json(&self, topic: String, retain: bool, value: &Value) -> bool {
        self.push(
            topic,
            QoS::AtLeastOnce,
            retain,
            value.to_string().into_bytes(),
            Kind::Tracked,
        )
    }

    /// Health is telemetry: QoS 0, and skipped while offline (a stale report is worthless).
    pub fn health(&self, report: &Value) -> bool {
        self.is_connected()
            && self.push(
                self.topics.health(),
                QoS::AtMostOnce,
                false,
                report.to_string().into_bytes(),
                Kind::Health,
            )
    }

    pub fn reported(&self, kind: &str, value: &Value) -> bool {
        self.send_json(self.topics.reported(kind), true, value)
    }

    /// True when the broker acknowledged the latest `reported/{kind}` given in this process.
    pub fn reported_settled(&self, kind: &str) -> bool {
        self.lock().out.settled(&self.topics.reported(kind))
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
    client: AsyncClient,
    publisher: Publisher,
    connected_tx: watch::Sender<bool>,
    inbound: mpsc::Sender<Inbound>,
    /// The events' outbox: it decides what to send and keeps the delivery bookkeeping.
    events: Outbox<crate::events::Event>,
    birth: Value,
    offline: Value,
    will: Value,
    session: SessionState,
    backoff: Backoff,
    tls: bool,
    url: String,
    events_in_flight: usize,
    /// Tags in the order publishes were handed to the client: rumqttc reports
    /// `Outgoing::Publish(pkid)` in that same order, which is how a pkid is tied back to what
    /// it carries. Only this task hands publishes over, so the order cannot interleave.
    tags: VecDeque<Tag>,
    /// pkid → tag for QoS 1 publishes the broker has not acknowledged yet.
    unacked: HashMap<u16, Tag>,
    offline_acked: bool,
    /// Downstream messages received and not yet given to the application (its queue was full).
    held: VecDeque<Inbound>,
    /// Downstream pkids given to the application → whether it has finished with them; a
    /// redelivery of one of them (after a reconnect) is not given twice.
    taken: HashMap<u16, bool>,
    /// Acknowledgements the client has not taken yet.
    acks: VecDeque<u16>,
    ack_tx: mpsc::UnboundedSender<AckToken>,
    ack_rx: mpsc::UnboundedReceiver<AckToken>,
    /// Bumped whenever the broker starts a new session for us.
    epoch: u64,
    /// The broker confirmed our subscriptions in the session it holds.
    subscribed: bool,
    first_connect: bool,
    swaps: mpsc::Receiver<TlsSwap>,
    swaps_tx: mpsc::Sender<TlsSwap>,
    swapping: Option<TlsSwap>,
    /// The usage-statistics outbox, drained beside the events' with the same rules.
    stats: Option<crate::usage::StatsOutbox>,
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
        let session = SessionState::load(
            crate::state::StateStore::open(&cfg.paths.state_dir)
                .map_err(|e| tracing::error!(error = %e, "session counter not persisted"))
                .ok(),
        );
        let mut opts = MqttOptions::new(cfg.terminal.id.clone(), url.host.clone(), url.port);
        opts.set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_s));
        opts.set_clean_session(false);
        opts.set_manual_acks(true);
        opts.set_max_packet_size(MAX_INCOMING_PACKET, MAX_INCOMING_PACKET);
        opts.set_request_channel_capacity(REQUEST_CAPACITY);
        let will = json!({"status": "offline", "terminal_id": cfg.terminal.id, "reason": "lost"});
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
            let (cert, key) = crate::identity::active_pair(&cfg.paths.state_dir, &cfg.mqtt);
            let tls_config =
                tls::client_config(cfg.mqtt.ca_file.as_deref(), cert.as_deref(), key.as_deref())?;
            opts.set_transport(rustls_transport(tls_config));
        }
        let (client, eventloop) = AsyncClient::new(opts, REQUEST_CAPACITY);
        let (connected_tx, connected_rx) = watch::channel(false);
        let publisher = Publisher {
            shared: Arc::new(Mutex::new(Shared::default())),
            wake: Arc::new(Notify::new()),
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
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let mut t = Self {
            eventloop,
            client,
            publisher: publisher.clone(),
            connected_tx,
            inbound,
            events: events.outbox(),
            birth,
            offline,
            will,
            session,
            backoff: Backoff::new(
                Duration::from_secs(cfg.mqtt.reconnect_min_s),
                Duration::from_secs(cfg.mqtt.reconnect_max_s),
            ),
            tls: url.tls,
            url: cfg.mqtt.url.clone(),
            events_in_flight: cfg.mqtt.events_in_flight,
            tags: VecDeque::new(),
            unacked: HashMap::new(),
            offline_acked: false,
            held: VecDeque::new(),
            taken: HashMap::new(),
            acks: VecDeque::new(),
            ack_tx,
            ack_rx,
            epoch: 0,
            subscribed: false,
            first_connect: true,
            stats: None,
            swaps,
            swaps_tx,
            swapping: None,
        };
        t.arm_will();
        Ok((t, publisher))
    }

    /// The Last Will is part of CONNECT: register, for the next attempt, the session number
    /// that connection will carry in its birth.
    fn arm_will(&mut self) {
        let mut will = self.will.clone();
        will["session"] = json!(self.session.next());
        let topic = self.publisher.topics.state();
        self.eventloop.mqtt_options.set_last_will(LastWill::new(
            topic,
            will.to_string(),
            QoS::AtLeastOnce,
            true,
        ));
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
        self.stats = Some(outbox);
        self
    }

    /// Outbox records handed to the client and not yet acknowledged.
    fn outbox_in_flight(&self) -> usize {
        self.events.in_flight() + self.stats.as_ref().map_or(0, Outbox::in_flight)
    }

    /// Polls the connection until `cancel`, then says goodbye: offline/`shutdown` (retained),
    /// flushes queued events within a bounded time, disconnects.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut stop_deadline: Option<Instant> = None;
        let wakeup = self.events.wakeup();
        let stats_wakeup = self.stats.as_ref().map(Outbox::wakeup).unwrap_or_default();
        let out_wake = self.publisher.wake.clone();
        let inbound = self.inbound.clone();
        let mut failures: u32 = 0;
        loop {
            let connected = self.connected();
            let holding = !self.held.is_empty();
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if stop_deadline.is_none() => {
                    if !connected {
                        break;
                    }
                    let offline = self.offline.clone();
                    self.publisher.push(
                        self.publisher.topics.state(),
                        QoS::AtLeastOnce,
                        true,
                        offline.to_string().into_bytes(),
                        Kind::Offline,
                    );
                    self.feed();
                    self.pump_stats();
                    stop_deadline = Some(Instant::now() + STOP_FLUSH);
                }
                _ = sleep_until_opt(stop_deadline) => {
                    tracing::warn!(pending = self.outbox_in_flight(), "stop: broker did not confirm everything in time");
                    break;
                }
                permit = inbound.reserve(), if holding => {
                    if let (Ok(permit), Some(msg)) = (permit, self.held.pop_front()) {
                        permit.send(msg);
                    }
                }
                Some(token) = self.ack_rx.recv() => self.on_app_ack(token),
                _ = wakeup.notified(), if connected => self.pump_events(),
                _ = stats_wakeup.notified(), if connected => self.pump_stats(),
                _ = out_wake.notified(), if connected => self.feed(),
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
                        if stop_deadline.is_some() && self.offline_acked && self.outbox_in_flight() == 0 {
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
            let _ = self.client.try_disconnect();
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

    fn on_connack(&mut self, session_present: bool) {
        if !session_present {
            // rumqttc drops what it had queued for a session the broker no longer has: forget
            // those tags, put tracked reports and replies back in the queue, send the events
            // again from the outbox, and forget downstream pkids of the old session.
            let lost: Vec<Tag> = self
                .unacked
                .drain()
                .map(|(_, t)| t)
                .chain(self.tags.drain(..))
                .collect();
            {
                let mut sh = self.publisher.lock();
                for tag in lost {
                    if let Tag::Item(item) = tag {
                        sh.out.push_front(*item);
                    }
                }
            }
            self.events.session_lost();
            if let Some(st) = &self.stats {
                st.session_lost();
            }
            self.offline_acked = false;
            self.taken.clear();
            self.acks.clear();
            self.epoch += 1;
            self.subscribed = false;
        }
        let session = self.session.connected();
        self.arm_will();
        let _ = self.connected_tx.send(true);
        self.backoff.reset();
        let subs = self.publisher.topics.subscriptions();
        // A present session already holds our subscriptions; subscribing again would make the
        // broker re-send every retained document (MQTT 3.1.1 §3.8.4): a storm across a fleet.
        let held_by_session =
            self.subscribed || (self.first_connect && self.session.subscriptions_match(&subs));
        let resubscribe = !session_present || !held_by_session;
        self.first_connect = false;
        if resubscribe {
            let filters = subs
                .into_iter()
                .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce));
            if let Err(e) = self.client.try_subscribe_many(filters) {
                tracing::error!(error = %e, "cannot queue subscriptions");
            }
        } else {
            self.subscribed = true;
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
        birth["session"] = json!(session);
        self.publisher.lock().out.push_front(Item {
            topic: self.publisher.topics.state(),
            qos: QoS::AtLeastOnce,
            retain: false,
            payload: birth.to_string().into_bytes(),
            kind: Kind::Birth,
            generation: 0,
        });
        self.feed();
        self.pump_stats();
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => self.on_connack(ack.session_present),
            Event::Incoming(Packet::SubAck(_)) => {
                self.subscribed = true;
                let subs = self.publisher.topics.subscriptions();
                self.session.subscribed(&subs);
            }
            Event::Incoming(Packet::Publish(p)) => self.on_publish(p),
            Event::Incoming(Packet::PubAck(ack)) => {
                match self.unacked.remove(&ack.pkid) {
                    Some(Tag::Event(_)) => {
                        self.events.acked(ack.pkid);
                        self.pump_events();
                    }
                    Some(Tag::Stats(_)) => {
                        if let Some(s) = &self.stats {
                            s.acked(ack.pkid);
                        }
                        self.pump_stats();
                    }
                    Some(Tag::Offline) => self.offline_acked = true,
                    Some(Tag::Item(item)) if item.retain => self
                        .publisher
                        .lock()
                        .out
                        .acknowledged(&item.topic, item.generation),
                    _ => {}
                }
                self.feed();
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                // A pkid we already track is rumqttc re-sending after a reconnect.
                if pkid != 0 && self.unacked.contains_key(&pkid) {
                    return;
                }
                let tag = self.tags.pop_front().unwrap_or(Tag::Untracked);
                if pkid != 0 {
                    match &tag {
                        Tag::Event(seq) => self.events.published(*seq, pkid),
                        Tag::Stats(seq) => {
                            if let Some(s) = &self.stats {
                                s.published(*seq, pkid);
                            }
                        }
                        _ => {}
                    }
                    self.unacked.insert(pkid, tag);
                }
                self.feed();
            }
            Event::Outgoing(Outgoing::PubAck(pkid)) => {
                self.taken.remove(&pkid);
                self.feed();
            }
            Event::Outgoing(_) => self.feed(),
            _ => {}
        }
    }

    fn on_publish(&mut self, p: rumqttc::Publish) {
        let qos1 = p.qos != QoS::AtMostOnce;
        if qos1 && let Some(&finished) = self.taken.get(&p.pkid) {
            // Redelivered after a reconnect: the application has it already.
            if finished {
                self.acks.push_back(p.pkid);
                self.feed();
            }
            return;
        }
        let ack = qos1.then(|| Ack {
            token: AckToken {
                pkid: p.pkid,
                epoch: self.epoch,
            },
            tx: self.ack_tx.clone(),
        });
        if qos1 {
            self.taken.insert(p.pkid, false);
        }
        let msg = Inbound {
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            retain: p.retain,
            ack,
        };
        // Never wait on the application here: hold the message (unacknowledged, so the broker
        // stops at its in-flight window) until the queue has room.
        if self.held.is_empty() {
            match self.inbound.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m)) => self.held.push_back(m),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        } else {
            self.held.push_back(msg);
        }
    }

    fn on_app_ack(&mut self, token: AckToken) {
        if token.epoch != self.epoch {
            return;
        }
        if let Some(finished) = self.taken.get_mut(&token.pkid) {
            *finished = true;
            self.acks.push_back(token.pkid);
            self.feed();
        }
    }

    /// Hands over to the client what it has room for: acknowledgements first, then the
    /// birth and queued publishes in order, then events. Whatever does not fit waits.
    fn feed(&mut self) {
        if !self.connected() {
            return;
        }
        while let Some(&pkid) = self.acks.front() {
            let mut p = rumqttc::Publish::new("", QoS::AtLeastOnce, Vec::new());
            p.pkid = pkid;
            if self.client.try_ack(&p).is_err() {
                return;
            }
            self.acks.pop_front();
        }
        loop {
            let Some(item) = self.publisher.lock().out.pop() else {
                break;
            };
            let tag = match item.kind {
                Kind::Tracked => Tag::Item(Box::new(item.clone())),
                Kind::Offline => Tag::Offline,
                Kind::Health | Kind::Birth => Tag::Untracked,
            };
            if !rumqttc::valid_topic(&item.topic) {
                tracing::error!(topic = %item.topic, "not a valid topic; publish dropped");
                continue;
            }
            let retain = item.retain || item.kind == Kind::Birth;
            // With a valid topic, try_publish fails only when the request channel is full.
            match self.client.try_publish(
                item.topic.clone(),
                item.qos,
                retain,
                item.payload.clone(),
            ) {
                Ok(()) => self.tags.push_back(tag),
                Err(_) => {
                    self.publisher.lock().out.push_front(item);
                    return;
                }
            }
        }
        self.pump_events();
    }

    /// Hands the client the oldest durable events not sent yet, keeping at most
    /// `events_in_flight` unacknowledged.
    fn pump_events(&mut self) {
        let topic = self.publisher.topics.events();
        let events = self.events.clone();
        self.pump(&events, topic, Tag::Event);
    }

    /// The same for the usage-statistics periods.
    fn pump_stats(&mut self) {
        if let Some(stats) = self.stats.clone() {
            let topic = self.publisher.topics.stats();
            self.pump(&stats, topic, Tag::Stats);
        }
    }

    fn pump<T: Record>(&mut self, outbox: &Outbox<T>, topic: String, tag: fn(u64) -> Tag) {
        if !self.connected() {
            return;
        }
        for rec in outbox.next_unsent(self.events_in_flight) {
            let Ok(bytes) = serde_json::to_vec(&rec) else {
                continue;
            };
            if self
                .client
                .try_publish(topic.clone(), QoS::AtLeastOnce, false, bytes)
                .is_err()
            {
                break;
            }
            outbox.handed_over(rec.seq());
            self.tags.push_back(tag(rec.seq()));
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
    use std::collections::BTreeSet;

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
