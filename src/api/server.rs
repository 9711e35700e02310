//! The socket server: binds, authorizes each peer by `SO_PEERCRED` (deny by default) and
//! passes requests to a `Handler`. One task per connection; a subscription shares the
//! connection's writer so the kiosk UI can hold an inhibitor and watch warnings on one socket.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::proto::{self, Principal};

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
    fn handle(&self, conn: &Conn, op: &str, req: &Value) -> impl Future<Output = Value> + Send;
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
}

impl Server {
    /// Binds the socket (replacing a stale one), mode 0660, group = the read group when it exists.
    pub fn bind(path: &Path, groups: Groups) -> Result<Self, ServerError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot set socket mode 0660");
        }
        if let Some(gid) = gid_of(&groups.read) {
            if let Err(e) = nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))) {
                tracing::warn!(path = %path.display(), error = %e, "cannot give the socket to the read group");
            }
        } else {
            tracing::warn!(group = %groups.read, "local.read_group does not exist; only root can use the socket");
        }
        Ok(Self { listener, groups })
    }

    pub async fn run<H: Handler>(self, handler: Arc<H>, cancel: CancellationToken) {
        let next_id = AtomicU64::new(1);
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let conn = identify(&stream, id, &self.groups);
                        tracker.spawn(serve(stream, conn, handler.clone(), cancel.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "socket accept failed"),
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

async fn serve<H: Handler>(
    stream: UnixStream,
    conn: Conn,
    handler: Arc<H>,
    cancel: CancellationToken,
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
    loop {
        buf.clear();
        let mut limited = (&mut reader).take(MAX_LINE + 1);
        let n = tokio::select! {
            _ = cancel.cancelled() => break,
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
            Ok(req) => match req.get("op").and_then(Value::as_str) {
                None => proto::error("bad_request", "expected a JSON object with a string \"op\""),
                Some(op) if !proto::READ_OPS.contains(&op) && !proto::ADMIN_OPS.contains(&op) => {
                    proto::error("unknown_op", format!("unknown op {op:?}"))
                }
                Some(op) if !conn.principal.may(op) => proto::error(
                    "forbidden",
                    format!(
                        "uid {} may not use {op:?} (needs the technicians' or admins' group)",
                        conn.uid
                    ),
                ),
                Some("subscribe") => {
                    if subscription.is_none() {
                        subscription = Some(tokio::spawn(forward(handler.subscribe(), tx.clone())));
                    }
                    proto::ok(json!({"subscribed": true}))
                }
                Some(op) => handler.handle(&conn, op, &req).await,
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
        assert!(!Principal::Reader.may("maintenance"));
        assert!(Principal::Reader.may("inhibit"));
        assert!(!Principal::Nobody.may("status"));
    }
}
