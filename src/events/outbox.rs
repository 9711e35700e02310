//! The durable, bounded, ordered outbox and its delivery bookkeeping, in one owner.
//!
//! An [`Outbox`] is a cheap handle on one queue directory (`queue.jsonl` + `meta.json`). It
//! holds, behind one short lock that never covers disk I/O, everything about the queue: the
//! records not yet acknowledged (oldest first), the sequence numbers, which records are on
//! disk, which are handed to the MQTT client, which packet id carries which record and which
//! the broker confirmed. The files themselves belong to a writer thread: producers hand records
//! over without waiting for the disk (a slow card must not stall the task that polls MQTT),
//! the writer appends them (group commit: one fsync per batch) and only then are they offered
//! to the transport, so nothing reaches the platform before it is on disk. Acknowledgements move `meta.json` and compaction happens there too.
//!
//! Events and usage statistics use the same type: same durability, same in-order,
//! at-least-once delivery.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use super::EventsError;
use crate::state::{StateError, write_atomic};

/// What an outbox can hold: a JSON line with a sequence number assigned at push time.
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    fn seq(&self) -> u64;
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Meta {
    /// Highest seq the broker acknowledged (everything up to it is delivered).
    acked_seq: u64,
    /// Highest seq ever assigned; survives compaction so seq never goes backwards.
    last_seq: u64,
}

/// What opening the outbox found, for the `agent.started`/`events.recovered` events.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub pending: usize,
    pub corrupt_lines: usize,
    pub meta_reset: bool,
}

/// The oldest records given up to make room (`events.dropped`, `stats.dropped`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub count: usize,
    pub first: u64,
    pub last: u64,
}

const LOG: &str = "queue.jsonl";
const META: &str = "meta.json";
/// Acknowledged lines in the log before it is rewritten without them.
const COMPACT_AFTER: usize = 256;

/// What the writer thread is asked to do, in order.
enum Op<T> {
    Append(Vec<T>),
    /// The whole queue as it is now (acknowledged or dropped records gone).
    Rewrite(Vec<T>, Meta),
    Meta(Meta),
    /// Answered once everything asked before is on disk.
    Flush(oneshot::Sender<()>),
}

/// Everything known about the queue; changed only under the lock, never across disk I/O.
struct Book<T> {
    queue: VecDeque<T>,
    meta: Meta,
    capacity: usize,
    /// Highest seq the writer has on disk: only records up to it are offered for delivery.
    durable_seq: u64,
    /// Lines in the log file that are already acknowledged (compaction trigger).
    stale_lines: usize,
    /// Seqs handed to the MQTT client and not yet acknowledged.
    in_flight: BTreeSet<u64>,
    /// Packet id → seq of the publish that carries it.
    pkids: HashMap<u16, u64>,
    /// Acknowledged out of order: waiting for the records before them.
    delivered: BTreeSet<u64>,
}

type Tx<T> = std_mpsc::Sender<Op<T>>;

fn send<T>(tx: &Tx<T>, op: Op<T>) {
    // The writer lives as long as any handle; a send fails only while the process ends.
    let _ = tx.send(op);
}

impl<T: Record> Book<T> {
    fn snapshot(&self) -> Vec<T> {
        self.queue.iter().cloned().collect()
    }

    fn push(&mut self, rec: T, tx: &Tx<T>) -> Option<Dropped> {
        let mut dropped = None;
        if self.queue.len() >= self.capacity {
            // At least two, so the `events.dropped` event that follows always fits.
            let n = (self.capacity / 10).max(2);
            let first = self.queue.front().map(Record::seq).unwrap_or(0);
            let mut last = first;
            for _ in 0..n {
                if let Some(e) = self.queue.pop_front() {
                    last = e.seq();
                    self.in_flight.remove(&last);
                    self.delivered.remove(&last);
                }
            }
            self.pkids.retain(|_, s| *s > last);
            // Dropped records count as acknowledged: they will never be sent.
            self.meta.acked_seq = self.meta.acked_seq.max(last);
            self.stale_lines = 0;
            send(tx, Op::Rewrite(self.snapshot(), self.meta));
            dropped = Some(Dropped {
                count: n,
                first,
                last,
            });
        }
        self.meta.last_seq = self.meta.last_seq.max(rec.seq());
        self.queue.push_back(rec.clone());
        send(tx, Op::Append(vec![rec]));
        dropped
    }

    /// Only the contiguous prefix moves `acked_seq`, so a crash never skips an undelivered
    /// record.
    fn deliver(&mut self, seq: u64, tx: &Tx<T>) {
        self.in_flight.remove(&seq);
        if seq <= self.meta.acked_seq {
            return;
        }
        self.delivered.insert(seq);
        let mut moved = false;
        while let Some(front) = self.queue.front() {
            if self.delivered.remove(&front.seq()) {
                self.meta.acked_seq = front.seq();
                self.queue.pop_front();
                self.stale_lines += 1;
                moved = true;
            } else {
                break;
            }
        }
        if !moved {
            return;
        }
        if self.stale_lines >= COMPACT_AFTER && self.stale_lines >= self.queue.len() {
            self.stale_lines = 0;
            send(tx, Op::Rewrite(self.snapshot(), self.meta));
        } else {
            send(tx, Op::Meta(self.meta));
        }
    }
}

struct Shared<T> {
    book: Mutex<Book<T>>,
    /// Woken when records became durable (something new to publish).
    wakeup: Arc<Notify>,
}

impl<T> Shared<T> {
    fn book(&self) -> MutexGuard<'_, Book<T>> {
        // Memory only changes under the lock and every disk write is append+fsync or atomic,
        // so a panic while holding it leaves a usable state.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ends the writer when the last handle goes: everything handed over is written first.
struct Owner<T> {
    tx: Tx<T>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T> Drop for Owner<T> {
    fn drop(&mut self) {
        // Closing the channel (the only sender) lets the writer finish and return.
        let (closed, _) = std_mpsc::channel();
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The handle on one outbox: producers push, the transport asks what to send and says what
/// the broker confirmed. Cheap to clone.
pub struct Outbox<T: Record> {
    shared: Arc<Shared<T>>,
    owner: Arc<Owner<T>>,
}

impl<T: Record> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            owner: self.owner.clone(),
        }
    }
}

impl<T: Record> std::fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

/// The producer's view while it assigns seqs: the lock is held, so seqs and order agree.
pub struct Producer<'a, T: Record> {
    book: MutexGuard<'a, Book<T>>,
    tx: &'a Tx<T>,
}

impl<T: Record> Producer<'_, T> {
    pub fn next_seq(&self) -> u64 {
        self.book.meta.last_seq + 1
    }

    /// Highest seq ever assigned (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.book.meta.last_seq
    }

    /// Queues a record (its seq should be `next_seq()`); it is written to disk by the writer,
    /// not here. Returns what was dropped to make room, if anything.
    pub fn push(&mut self, rec: T) -> Option<Dropped> {
        self.book.push(rec, self.tx)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EventsError + '_ {
    move |source| EventsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl<T: Record> Outbox<T> {
    /// Reads the queue (at start, on the caller's thread) and starts its writer.
    pub fn open(dir: &Path, capacity: usize) -> Result<(Self, Recovery), EventsError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut rec = Recovery::default();
        let meta: Meta = match fs::read(dir.join(META)) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|_| {
                rec.meta_reset = true;
                Meta::default()
            }),
            Err(_) => Meta::default(),
        };
        let log_path = dir.join(LOG);
        let mut queue: VecDeque<T> = VecDeque::new();
        let mut last_seq = meta.last_seq;
        let mut stale = 0;
        if let Ok(f) = File::open(&log_path) {
            for line in BufReader::new(f).split(b'\n') {
                let Ok(line) = line else {
                    rec.corrupt_lines += 1;
                    break;
                };
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<T>(&line) {
                    // Keep order strictly increasing: a line that goes backwards is corrupt.
                    Ok(ev)
                        if ev.seq() > meta.acked_seq
                            && queue.back().is_none_or(|b| ev.seq() > b.seq()) =>
                    {
                        last_seq = last_seq.max(ev.seq());
                        queue.push_back(ev);
                    }
                    Ok(ev) if ev.seq() <= meta.acked_seq => {
                        last_seq = last_seq.max(ev.seq());
                        stale += 1;
                    }
                    _ => rec.corrupt_lines += 1,
                }
            }
        }
        while queue.len() > capacity {
            queue.pop_front();
        }
        rec.pending = queue.len();
        let meta = Meta {
            acked_seq: meta.acked_seq,
            last_seq,
        };
        if rec.corrupt_lines > 0 || stale > 0 {
            // Rewrite so the torn tail is gone and appends start on a clean line.
            rewrite(dir, queue.iter(), &meta)?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let (tx, rx) = std_mpsc::channel();
        let shared = Arc::new(Shared {
            book: Mutex::new(Book {
                queue,
                meta,
                capacity: capacity.max(2),
                durable_seq: last_seq,
                stale_lines: 0,
                in_flight: BTreeSet::new(),
                pkids: HashMap::new(),
                delivered: BTreeSet::new(),
            }),
            wakeup: Arc::new(Notify::new()),
        });
        let writer = Writer {
            dir: dir.to_path_buf(),
            log,
            shared: shared.clone(),
        };
        let name = format!(
            "outbox-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("queue")
        );
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || writer.run(rx))
            .map_err(io_err(dir))?;
        let owner = Owner {
            tx,
            thread: Some(thread),
        };
        Ok((
            Self {
                shared,
                owner: Arc::new(owner),
            },
            rec,
        ))
    }

    fn tx(&self) -> &Tx<T> {
        &self.owner.tx
    }

    /// For the one producer: assign seqs and push under one lock.
    pub fn lock(&self) -> Producer<'_, T> {
        Producer {
            book: self.shared.book(),
            tx: self.tx(),
        }
    }

    /// Woken when something new can be published.
    pub fn wakeup(&self) -> Arc<Notify> {
        self.shared.wakeup.clone()
    }

    /// Records not yet acknowledged (on disk or about to be).
    pub fn pending(&self) -> usize {
        self.shared.book().queue.len()
    }

    pub fn next_seq(&self) -> u64 {
        self.shared.book().meta.last_seq + 1
    }

    pub fn last_seq(&self) -> u64 {
        self.shared.book().meta.last_seq
    }

    /// Up to `n` records not yet acknowledged, oldest first.
    pub fn unacked_head(&self, n: usize) -> Vec<T> {
        self.shared.book().queue.iter().take(n).cloned().collect()
    }

    /// Waits until everything pushed or acknowledged so far is on disk.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        send(self.tx(), Op::Flush(tx));
        let _ = rx.await;
    }

    // --- delivery, for the transport ---

    /// The oldest durable records not handed to the client yet, so that at most `window` are
    /// in flight. Call [`Outbox::handed_over`] for each one the client took.
    pub fn next_unsent(&self, window: usize) -> Vec<T> {
        let b = self.shared.book();
        let room = window.saturating_sub(b.in_flight.len());
        b.queue
            .iter()
            .take_while(|r| r.seq() <= b.durable_seq)
            .filter(|r| !b.in_flight.contains(&r.seq()) && !b.delivered.contains(&r.seq()))
            .take(room)
            .cloned()
            .collect()
    }

    /// The client took the publish of `seq`; its packet id follows with [`Outbox::published`].
    pub fn handed_over(&self, seq: u64) {
        self.shared.book().in_flight.insert(seq);
    }

    /// `seq` goes out as packet `pkid`.
    pub fn published(&self, seq: u64, pkid: u16) {
        let mut b = self.shared.book();
        if b.in_flight.contains(&seq) {
            b.pkids.insert(pkid, seq);
        }
    }

    /// The broker acknowledged packet `pkid`. False when it carried none of our records.
    pub fn acked(&self, pkid: u16) -> bool {
        let mut b = self.shared.book();
        match b.pkids.remove(&pkid) {
            Some(seq) => {
                b.deliver(seq, self.tx());
                true
            }
            None => false,
        }
    }

    /// Marks one record delivered by its seq (acknowledgements may come out of order).
    pub fn delivered(&self, seq: u64) {
        self.shared.book().deliver(seq, self.tx());
    }

    /// The broker lost the session: whatever was in flight is sent again, in order.
    pub fn session_lost(&self) {
        let mut b = self.shared.book();
        b.in_flight.clear();
        b.pkids.clear();
    }

    /// Records handed to the client and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.shared.book().in_flight.len()
    }
}

/// Owns the two files; runs on its own thread so fsync never blocks an async task.
struct Writer<T> {
    dir: PathBuf,
    log: File,
    shared: Arc<Shared<T>>,
}

impl<T: Record> Writer<T> {
    fn run(mut self, rx: std_mpsc::Receiver<Op<T>>) {
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            ops.extend(rx.try_iter().take(4096));
            self.batch(ops);
        }
    }

    fn batch(&mut self, ops: Vec<Op<T>>) {
        let mut lines = Vec::new();
        let mut fresh: Vec<T> = Vec::new();
        let mut meta = None;
        let mut flushes = Vec::new();
        for op in ops {
            match op {
                Op::Append(recs) => {
                    for r in recs {
                        match serde_json::to_vec(&r) {
                            Ok(l) => {
                                lines.extend_from_slice(&l);
                                lines.push(b'\n');
                            }
                            Err(e) => {
                                tracing::error!(error = %e, seq = r.seq(), "cannot encode a queued record")
                            }
                        }
                        fresh.push(r);
                    }
                }
                Op::Rewrite(queue, m) => {
                    // The snapshot holds every line appended before it that still matters.
                    lines.clear();
                    meta = None;
                    if let Err(e) = rewrite(&self.dir, queue.iter(), &m) {
                        tracing::error!(error = %e, "cannot compact the queue");
                    }
                    match OpenOptions::new().append(true).open(self.dir.join(LOG)) {
                        Ok(f) => self.log = f,
                        Err(e) => tracing::error!(error = %e, "cannot reopen the queue"),
                    }
                }
                Op::Meta(m) => meta = Some(m),
                Op::Flush(tx) => flushes.push(tx),
            }
        }
        if !lines.is_empty()
            && let Err(e) = self
                .log
                .write_all(&lines)
                .and_then(|_| self.log.sync_data())
        {
            // Still published from memory; lost only if the agent stops before delivery.
            tracing::error!(path = %self.dir.join(LOG).display(), error = %e,
                "queue write failed; records are kept in memory only");
        }
        if let Some(m) = meta
            && let Err(e) = save_meta(&self.dir, &m)
        {
            tracing::error!(error = %e, "cannot record acknowledgements; they will be sent again");
        }
        if let Some(last) = fresh.last() {
            let mut b = self.shared.book();
            b.durable_seq = b.durable_seq.max(last.seq());
        }
        if !fresh.is_empty() {
            self.shared.wakeup.notify_one();
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

fn encode_error(dir: &Path) -> impl FnOnce(serde_json::Error) -> StateError + '_ {
    move |source| StateError::Encode {
        path: dir.to_path_buf(),
        source,
    }
}

fn save_meta(dir: &Path, meta: &Meta) -> Result<(), EventsError> {
    let bytes = serde_json::to_vec(meta).map_err(encode_error(dir))?;
    write_atomic(&dir.join(META), &bytes, Some(0o640))?;
    Ok(())
}

fn rewrite<'a, T: Record>(
    dir: &Path,
    queue: impl Iterator<Item = &'a T>,
    meta: &Meta,
) -> Result<(), EventsError> {
    let mut buf = Vec::new();
    for ev in queue {
        if let Ok(l) = serde_json::to_vec(ev) {
            buf.extend_from_slice(&l);
            buf.push(b'\n');
        }
    }
    save_meta(dir, meta)?;
    write_atomic(&dir.join(LOG), &buf, Some(0o640))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Rec {
        seq: u64,
    }

    impl Record for Rec {
        fn seq(&self) -> u64 {
            self.seq
        }
    }

    fn push(ob: &Outbox<Rec>, n: usize) {
        for _ in 0..n {
            let mut p = ob.lock();
            let seq = p.next_seq();
            p.push(Rec { seq });
        }
    }

    fn seqs(v: Vec<Rec>) -> Vec<u64> {
        v.into_iter().map(|r| r.seq).collect()
    }

    #[tokio::test]
    async fn packets_acknowledge_records_and_a_lost_session_resends_what_was_in_flight() {
        let d = tempfile::tempdir().unwrap();
        let (ob, _) = Outbox::<Rec>::open(d.path(), 100).unwrap();
        push(&ob, 4);
        ob.flush().await;
        let first = seqs(ob.next_unsent(2));
        assert_eq!(first, vec![1, 2], "at most the window");
        for (seq, pkid) in [(1, 10), (2, 11)] {
            ob.handed_over(seq);
            ob.published(seq, pkid);
        }
        assert_eq!(seqs(ob.next_unsent(2)), Vec::<u64>::new(), "window full");
        assert!(ob.acked(11), "out of order");
        assert!(!ob.acked(99), "not one of ours");
        assert_eq!(ob.pending(), 4, "2 waits for 1");
        ob.session_lost();
        assert_eq!(
            seqs(ob.next_unsent(3)),
            vec![1, 3, 4],
            "1 again; 2 is confirmed already"
        );
        ob.handed_over(1);
        ob.published(1, 12);
        assert!(ob.acked(12));
        assert_eq!(seqs(ob.unacked_head(10)), vec![3, 4]);
        ob.flush().await;
        drop(ob);
        let (ob, rec) = Outbox::<Rec>::open(d.path(), 100).unwrap();
        assert_eq!(rec.pending, 2);
        assert_eq!(seqs(ob.unacked_head(10)), vec![3, 4]);
        assert_eq!(ob.next_seq(), 5);
    }

    #[tokio::test]
    async fn only_durable_records_are_offered() {
        let d = tempfile::tempdir().unwrap();
        let (ob, _) = Outbox::<Rec>::open(d.path(), 100).unwrap();
        let log = d.path().join(LOG);
        // Before the writer has run nothing may be offered; after a flush all of it is.
        {
            let mut p = ob.lock();
            p.push(Rec { seq: 1 });
            p.push(Rec { seq: 2 });
            assert!(
                seqs(ob_unsent_locked(&p)).is_empty(),
                "not on disk yet while the producer still holds the lock"
            );
        }
        ob.flush().await;
        assert_eq!(seqs(ob.next_unsent(10)), vec![1, 2]);
        assert_eq!(
            fs::read_to_string(&log).unwrap().lines().count(),
            2,
            "what is offered is in the file"
        );
    }

    /// What `next_unsent` would answer, read through the producer's own guard.
    fn ob_unsent_locked(p: &Producer<'_, Rec>) -> Vec<Rec> {
        p.book
            .queue
            .iter()
            .take_while(|r| r.seq() <= p.book.durable_seq)
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_tenth_on_disk_too() {
        let d = tempfile::tempdir().unwrap();
        let (ob, _) = Outbox::<Rec>::open(d.path(), 20).unwrap();
        push(&ob, 20);
        let mut p = ob.lock();
        let seq = p.next_seq();
        let dropped = p.push(Rec { seq });
        drop(p);
        assert_eq!(
            dropped,
            Some(Dropped {
                count: 2,
                first: 1,
                last: 2
            })
        );
        ob.flush().await;
        drop(ob);
        let (ob, rec) = Outbox::<Rec>::open(d.path(), 20).unwrap();
        assert_eq!((rec.pending, rec.corrupt_lines), (19, 0));
        assert_eq!(ob.unacked_head(1)[0].seq, 3);
        assert_eq!(ob.next_seq(), 22);
    }
}
