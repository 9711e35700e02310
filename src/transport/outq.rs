//! What the agent has asked to publish and the client has not taken yet.
//!
//! rumqttc's request channel is bounded; a report that does not fit must wait here, never be
//! dropped. Retained topics (`reported/*`, `compliance`, `patrol`, `state`) and health keep only
//! their latest value: an older value is worthless once a newer one exists, which also bounds
//! the queue by the number of topics while the broker is away. Replies are kept in order.
//! The queue also remembers which retained topics the broker has acknowledged, so a document
//! redelivered at an equal version republishes its report only when that report never arrived.

use std::collections::{HashMap, VecDeque};

use rumqttc::QoS;

/// Replies kept while the broker is away; beyond this the oldest go (a platform that has not
/// heard back for that many commands resends them, and the ids keep them at most once).
const MAX_PLAIN: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Tracked until the broker's PubAck; sent again if the session is lost.
    Tracked,
    /// Telemetry: latest only, never tracked.
    Health,
    Birth,
    Offline,
}

#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub payload: Vec<u8>,
    pub kind: Kind,
    /// Generation of a retained topic's value (0 for others).
    pub generation: u64,
}

impl Item {
    fn coalesces(&self) -> bool {
        self.retain || self.kind == Kind::Health
    }
}

#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    queue: VecDeque<Item>,
    /// Retained topic → generation of the latest value handed to the queue.
    latest: HashMap<String, u64>,
    /// Retained topic → generation the broker acknowledged last.
    acked: HashMap<String, u64>,
    next_generation: u64,
    dropped: u64,
}

impl OutQueue {
    /// Queues a publish; a retained (or health) value replaces a queued one on the same topic.
    pub fn push(&mut self, mut item: Item) {
        if item.retain {
            self.next_generation += 1;
            item.generation = self.next_generation;
            self.latest.insert(item.topic.clone(), item.generation);
        }
        if item.coalesces()
            && let Some(old) = self
                .queue
                .iter_mut()
                .find(|q| q.topic == item.topic && q.coalesces())
        {
            *old = item;
            return;
        }
        if !item.coalesces() {
            let plain = self.queue.iter().filter(|q| !q.coalesces()).count();
            if plain >= MAX_PLAIN
                && let Some(pos) = self.queue.iter().position(|q| !q.coalesces())
            {
                self.queue.remove(pos);
                self.dropped += 1;
                tracing::error!(
                    dropped = self.dropped,
                    "publish queue full while the broker is away: oldest reply dropped"
                );
            }
        }
        self.queue.push_back(item);
    }

    /// Puts back at the front what the client would not take (or lost with the session),
    /// unless a newer value of the same retained topic is already waiting.
    pub fn push_front(&mut self, item: Item) {
        if item.retain && self.latest.get(&item.topic) != Some(&item.generation) {
            return;
        }
        if item.coalesces()
            && self
                .queue
                .iter()
                .any(|q| q.topic == item.topic && q.coalesces())
        {
            return;
        }
        self.queue.push_front(item);
    }

    pub fn pop(&mut self) -> Option<Item> {
        self.queue.pop_front()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The broker confirmed this value of a retained topic.
    pub fn acknowledged(&mut self, topic: &str, generation: u64) {
        let e = self.acked.entry(topic.to_string()).or_insert(0);
        *e = (*e).max(generation);
    }

    /// True when the latest value given for `topic` has been acknowledged by the broker.
    pub fn settled(&self, topic: &str) -> bool {
        match (self.latest.get(topic), self.acked.get(topic)) {
            (Some(l), Some(a)) => a >= l,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(topic: &str, retain: bool, body: &str) -> Item {
        Item {
            topic: topic.into(),
            qos: QoS::AtLeastOnce,
            retain,
            payload: body.as_bytes().to_vec(),
            kind: Kind::Tracked,
            generation: 0,
        }
    }

    #[test]
    fn retained_topics_keep_the_latest_value_replies_keep_order() {
        let mut q = OutQueue::default();
        q.push(item("r/a", true, "1"));
        q.push(item("replies", false, "x"));
        q.push(item("r/a", true, "2"));
        q.push(item("replies", false, "y"));
        let got: Vec<_> = std::iter::from_fn(|| q.pop())
            .map(|i| (i.topic, String::from_utf8(i.payload).unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("r/a".to_string(), "2".to_string()),
                ("replies".into(), "x".into()),
                ("replies".into(), "y".into())
            ]
        );
    }

    #[test]
    fn settled_only_once_the_latest_value_is_acknowledged() {
        let mut q = OutQueue::default();
        assert!(!q.settled("r/a"));
        q.push(item("r/a", true, "1"));
        let first = q.pop().unwrap();
        q.push(item("r/a", true, "2"));
        q.acknowledged("r/a", first.generation);
        assert!(!q.settled("r/a"), "the newer value is not confirmed yet");
        let second = q.pop().unwrap();
        // A stale value lost with the session is not put back over a newer one.
        q.push_front(first);
        assert_eq!(q.len(), 0);
        q.acknowledged("r/a", second.generation);
        assert!(q.settled("r/a"));
    }
}
