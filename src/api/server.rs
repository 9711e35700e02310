//! The socket server: binds, authorizes each peer by `SO_PEERCRED` (deny by default) and
//! passes requests to a `Handler`. One task per connection; a subscription shares the
//! connection's writer so the kiosk UI can hold an inhibitor and watch warnings on one socket.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::proto::{self, Local, Name, Principal};

/// A request line may not exceed this; a longer one is refused and the connection closed.
const MAX_LINE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a connection knows about its peer.
#[derive(Debug, Clone)]
pub struct Conn {
    pub id: u64,
    pub principal: Principal,
    pub uid: u32,
}

pub trait Handler: Send + Sync + 'static {
    fn handle(&self, conn: &Conn, op: Name, req: &Value) -> impl Future<Output = Value> + Send;
    /// The connection is gone: drop what it held (inhibitors).
    fn closed(&self, conn: &Conn);
    fn subscribe(&self) -> broadcast::Receiver<Arc<str>>;
}

#[derive(Debug, Clone)]
pub struct Groups {
    pub read: String,
    pub admin: String,
}

pub struct Server {
    listener: UnixListener,
    groups: Groups,
    max_connections: usize,
    idle_timeout: Duration,
}

/// File descriptors kept free beside socket clients: state files, downloads, journald, MQTT.
const FD_RESERVE: u64 = 64;
/// Refusals and accept failures are logged at most once per this interval, with a count.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The connection cap actually used: the configured one, kept below the open-file limit so
/// socket clients can never take the descriptors the rest of the agent needs.
pub fn effective_cap(configured: usize) -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let room = soft.saturating_sub(FD_RESERVE).max(8) as usize;
    configured.min(room)
}

/// Counts what happened since the last log line, so a flood costs one line per interval.
struct Throttled {
    what: &'static str,
    count: u64,
    last: Option<Instant>,
}

impl Throttled {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            count: 0,
            last: None,
        }
    }

    fn hit(&mut self, detail: &dyn std::fmt::Display) {
        self.count += 1;
        let now = Instant::now();
        if self.last.is_none_or(|l| now.duration_since(l) >= LOG_EVERY) {
            tracing::warn!(count = self.count, "{}: {detail}", self.what);
            self.count = 0;
            self.last = Some(now);
        }
    }
}

impl Server {
    /// Binds `path` with the `[local]` section: who may connect and the connection limits.
    pub fn bind_local(path: &Path, local: &crate::config::Local) -> Result<Self, ServerError> {
        let groups = Groups {
            read: local.read_group.clone(),
            admin: local.admin_group.clone(),
        };
        Ok(Self::bind(path, groups)?.with_limits(
            local.max_connections,
            Duration::from_secs(local.idle_timeout_s),
        ))
    }

    /// Binds the socket (replacing a stale one), mode 0660, group = the read group when it exists.
    pub fn bind(path: &Path, groups: Groups) -> Result<Self, ServerError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // Bound under a temporary name and renamed into place once its mode and group are set,
        // so no client ever finds the socket with other permissions than its final ones.
        let mut staged = path.as_os_str().to_owned();
        staged.push(".new");
        let staged = PathBuf::from(staged);
        let _ = std::fs::remove_file(&staged);
        let listener = UnixListener::bind(&staged).map_err(|source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        if let Err(e) = std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot set socket mode 0660");
        }
        if let Some(gid) = gid_of(&groups.read) {
            if let Err(e) = nix::unistd::chown(&staged, None, Some(nix::unistd::Gid::from_raw(gid)))
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot give the socket to the read group");
            }
        } else {
            tracing::warn!(group = %groups.read, "local.read_group does not exist; only root can use the socket");
        }
        std::fs::rename(&staged, path).map_err(|source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            listener,
            groups,
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
        })
    }

    /// Connection cap (see [`effective_cap`]) and idle timeout (config `local.*`).
    pub fn with_limits(mut self, max_connections: usize, idle_timeout: Duration) -> Self {
        self.max_connections = max_connections;
        self.idle_timeout = idle_timeout;
        self
    }

    pub async fn run<H: Handler>(self, handler: Arc<H>, cancel: CancellationToken) {
        let next_id = AtomicU64::new(1);
        let tracker = tokio_util::task::TaskTracker::new();
        let cap = effective_cap(self.max_connections);
        let open = Arc::new(AtomicUsize::new(0));
        let mut refused = Throttled::new("socket connection refused: too many open connections");
        let mut failed = Throttled::new("socket accept failed; backing off");
        let mut pause = Duration::ZERO;
        loop {
            if !pause.is_zero() {
                // Out of descriptors (EMFILE/ENFILE) or another accept error: the pending
                // connection stays in the backlog, so retrying at once would only spin.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        pause = Duration::ZERO;
                        if open.load(Ordering::Relaxed) >= cap {
                            refused.hit(&format_args!("cap {cap}"));
                            refuse(stream, cap);
                            continue;
                        }
                        open.fetch_add(1, Ordering::Relaxed);
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let conn = identify(&stream, id, &self.groups);
                        let open = open.clone();
                        let idle = self.idle_timeout;
                        let (h, c) = (handler.clone(), cancel.clone());
                        tracker.spawn(async move {
                            serve(stream, conn, h, c, idle).await;
                            open.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(e) => {
                        failed.hit(&e);
                        pause = (pause * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
                    }
                }
            }
        }
        tracker.close();
        tracker.wait().await;
    }
}

fn gid_of(group: &str) -> Option<u32> {
    nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// The peer's groups: its primary gid plus the supplementary groups from `/proc/<pid>/status`.
fn peer_groups(gid: u32, pid: Option<i32>) -> Vec<u32> {
    let mut groups = vec![gid];
    if let Some(pid) = pid
        && let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        && let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:"))
    {
        groups.extend(
            line.split_whitespace()
                .filter_map(|g| g.parse::<u32>().ok()),
        );
    }
    groups
}

pub fn authorize(
    uid: u32,
    peer_groups: &[u32],
    admin_gid: Option<u32>,
    read_gid: Option<u32>,
) -> Principal {
    if uid == 0 || admin_gid.is_some_and(|g| peer_groups.contains(&g)) {
        Principal::Admin
    } else if read_gid.is_some_and(|g| peer_groups.contains(&g)) {
        Principal::Reader
    } else {
        Principal::Nobody
    }
}

fn identify(stream: &UnixStream, id: u64, groups: &Groups) -> Conn {
    match stream.peer_cred() {
        Ok(cred) => {
            let pg = peer_groups(cred.gid(), cred.pid());
            Conn {
                id,
                principal: authorize(cred.uid(), &pg, gid_of(&groups.admin), gid_of(&groups.read)),
                uid: cred.uid(),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; refusing");
            Conn {
                id,
                principal: Principal::Nobody,
                uid: u32::MAX,
            }
        }
    }
}

/// Tells a connection over the cap why it is closed, without waiting on it.
fn refuse(stream: UnixStream, cap: usize) {
    let mut line = proto::error(
        "busy",
        format!("too many open connections to the agent (at most {cap}); try again shortly"),
    )
    .to_string();
    line.push('\n');
    let _ = stream.try_write(line.as_bytes());
}

async fn serve<H: Handler>(
    stream: UnixStream,
    conn: Conn,
    handler: Arc<H>,
    cancel: CancellationToken,
    idle: Duration,
) {
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let writer = tokio::spawn(async move {
        while let Some(mut line) = rx.recv().await {
            line.push('\n');
            if wr.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(rd);
    let mut subscription: Option<tokio::task::JoinHandle<()>> = None;
    let mut buf = Vec::new();
    // Held inhibitors; while any is held (or a subscription runs) the connection is long-lived
    // by design and the idle timeout does not apply.
    let mut holds = 0u8;
    loop {
        buf.clear();
        let mut limited = (&mut reader).take(MAX_LINE + 1);
        let long_lived = subscription.is_some() || holds > 0;
        let timer = async {
            if long_lived {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(idle).await
            }
        };
        let n = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = timer => {
                let _ = tx
                    .send(
                        proto::error(
                            "idle_timeout",
                            format!("no request for {} s; connection closed", idle.as_secs()),
                        )
                        .to_string(),
                    )
                    .await;
                break;
            }
            n = limited.read_until(b'\n', &mut buf) => n,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() != Some(&b'\n') {
            let _ = tx
                .send(
                    proto::error(
                        "request_too_large",
                        format!("a request line is limited to {MAX_LINE} bytes"),
                    )
                    .to_string(),
                )
                .await;
            break;
        }
        let response = match serde_json::from_slice::<Value>(&buf) {
            Ok(req) => match req
                .get("op")
                .and_then(Value::as_str)
                .map(|op| (op, Name::parse(op)))
            {
                None => proto::error("bad_request", "expected a JSON object with a string \"op\""),
                Some((op, name)) if name.is_none_or(|n| n.local() == Local::No) => {
                    proto::error("unknown_op", format!("unknown op {op:?}"))
                }
                Some((_, Some(op))) if !conn.principal.may(op) => proto::error(
                    "forbidden",
                    format!(
                        "uid {} may not use {op:?} (needs the technicians' or admins' group)",
                        conn.uid
                    ),
                ),
                Some((_, Some(Name::Subscribe))) => {
                    if subscription.is_none() {
                        subscription = Some(tokio::spawn(forward(handler.subscribe(), tx.clone())));
                    }
                    proto::ok(json!({"subscribed": true}))
                }
                Some((_, Some(op))) => {
                    let r = handler.handle(&conn, op, &req).await;
                    if r.get("ok") == Some(&Value::Bool(true)) {
                        match op {
                            Name::Inhibit => holds = 1,
                            // `release` drops every inhibitor this connection held.
                            Name::Release => holds = 0,
                            _ => {}
                        }
                    }
                    r
                }
                Some((op, None)) => proto::error("unknown_op", format!("unknown op {op:?}")),
            },
            Err(e) => proto::error("bad_request", format!("not JSON: {e}")),
        };
        if tx.send(response.to_string()).await.is_err() {
            break;
        }
    }
    if let Some(s) = subscription {
        s.abort();
    }
    handler.closed(&conn);
    drop(tx);
    let _ = writer.await;
}

async fn forward(mut rx: broadcast::Receiver<Arc<str>>, tx: mpsc::Sender<String>) {
    loop {
        let line = match rx.recv().await {
            Ok(l) => l.to_string(),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                json!({"code": "subscribe.lagged", "message": format!("{n} lines missed"), "details": {"missed": n}})
                    .to_string()
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if tx.send(line).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_by_default() {
        assert_eq!(authorize(0, &[0], None, None), Principal::Admin);
        assert_eq!(
            authorize(1000, &[1000, 50], Some(60), Some(50)),
            Principal::Reader
        );
        assert_eq!(
            authorize(1000, &[1000, 60], Some(60), Some(50)),
            Principal::Admin
        );
        assert_eq!(
            authorize(1000, &[1000], Some(60), Some(50)),
            Principal::Nobody
        );
        assert!(!Principal::Reader.may(Name::Maintenance));
        assert!(Principal::Reader.may(Name::Inhibit));
        assert!(!Principal::Nobody.may(Name::Status));
    }
}
