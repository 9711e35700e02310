//! Downloads an artifact into a partial file, hashing it as it streams.
//!
//! Kiosks sit on thin, flaky links, so a download must survive a dropped connection and an
//! agent restart without starting over: the partial file lives under the state directory and a
//! later call continues it with an HTTP `Range` request. The declared size is a hard cap (the
//! server is not trusted to stop), the SHA-256 is computed over the bytes exactly once (the
//! existing partial first, then the rest as it arrives), and nothing is ever held in memory
//! whole. Integrity comes from the hash, never from TLS; TLS only keeps the artifact private.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};

const CHUNK: usize = 64 * 1024;
/// fsync the partial file this often so a power cut loses at most this much progress.
const SYNC_EVERY: u64 = 8 * 1024 * 1024;
/// Room left on the file system beyond the artifact itself, so a download never fills the
/// disk the agent's own state and the kiosk's logs live on.
const DISK_MARGIN: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unsupported artifact url {0:?}: scheme must be https, http or file")]
    Scheme(String),
    #[error("cannot read the CA file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("cannot use the system certificate store: {0}")]
    SystemCerts(String),
    #[error("not enough disk space in {path}: {needed} bytes needed, {available} available")]
    DiskSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("cannot check free space in {path}: {source}")]
    Statvfs { path: PathBuf, source: nix::Error },
    #[error("download of {url} failed: {message}; the partial download is kept and will resume")]
    Transfer { url: String, message: String },
    #[error("server answered {status} for {url}")]
    Status { url: String, status: u16 },
    #[error(
        "size mismatch: the document declares {expected} bytes but the source {detail}; the download was discarded"
    )]
    SizeMismatch { expected: u64, detail: String },
    #[error(
        "download of {url} stopped after {got} of {expected} bytes; the partial download is kept and will resume"
    )]
    Incomplete {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error("sha256 mismatch: expected {expected}, got {actual}; the download was discarded")]
    HashMismatch { expected: String, actual: String },
    #[error("cannot write the download to {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("download cancelled; the partial download is kept")]
    Cancelled,
    #[error("download of {url} stalled: {message}; the partial download is kept and will resume")]
    Stalled { url: String, message: String },
    #[error(
        "download of {url} did not finish within its deadline of {deadline_s} s ({got} of {expected} bytes); the partial download is kept and will resume"
    )]
    Deadline {
        url: String,
        deadline_s: u64,
        got: u64,
        expected: u64,
    },
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp {
        attempts: u32,
        last: Box<FetchError>,
    },
}

impl FetchError {
    /// A failure of the link or the server that another attempt may get past.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Transfer { .. }
            | FetchError::Incomplete { .. }
            | FetchError::Stalled { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            FetchError::GaveUp { last, .. } => last.is_transient(),
            _ => false,
        }
    }

    /// The error behind retries.
    pub fn root(&self) -> &FetchError {
        match self {
            FetchError::GaveUp { last, .. } => last.root(),
            e => e,
        }
    }
}

/// How downloads are made; built once from `config::Updates`.
///
/// A server that trickles must not hold an install forever: a read that brings nothing for
/// `idle_timeout` fails the attempt, so does an average below `min_rate_bps` once an attempt
/// has run for `idle_timeout`, and the whole download (every attempt and the pauses between
/// them) has a deadline derived from the declared size, see [`deadline`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Bandwidth cap in kilobytes (1000 bytes) per second; 0 is unlimited.
    pub max_kbps: u64,
    /// PEM bundle of CAs trusted for `https` artifacts; `None` uses the system store.
    pub ca_file: Option<PathBuf>,
    /// Set to stop a download at the next chunk (shutdown); the partial file is kept.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Longest wait for the connection, the response or the next bytes.
    pub idle_timeout: Duration,
    /// Slowest average accepted once an attempt is `idle_timeout` old; 0 is no floor.
    pub min_rate_bps: u64,
    /// Further attempts after a transient failure (each resumes with `Range`).
    pub retries: u32,
    /// Pause before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            max_kbps: 0,
            ca_file: None,
            cancel: None,
            idle_timeout: Duration::from_secs(60),
            min_rate_bps: 0,
            retries: 0,
            retry_backoff: Duration::from_secs(10),
        }
    }
}

impl FetchOptions {
    pub fn from_config(c: &crate::config::Updates) -> Self {
        Self {
            max_kbps: c.max_kbps,
            ca_file: c.ca_file.clone(),
            cancel: None,
            idle_timeout: Duration::from_secs(c.download_idle_timeout_s),
            min_rate_bps: c.download_min_rate_bps,
            retries: c.download_retries,
            retry_backoff: Duration::from_secs(c.download_retry_backoff_s),
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The deadline of a whole download of `size` bytes: the time it takes at the slowest rate
/// still acceptable (the larger of `min_rate_bps` and a quarter of `max_kbps`, at least
/// 1 kB/s), plus room for every retry's pause and two idle periods.
pub fn deadline(size: u64, opts: &FetchOptions) -> Duration {
    let floor = opts
        .min_rate_bps
        .max(opts.max_kbps.saturating_mul(1000) / 4)
        .max(1000);
    let transfer = Duration::from_secs(size.div_ceil(floor));
    let mut pauses = Duration::ZERO;
    for i in 0..opts.retries.min(16) {
        pauses += backoff(opts.retry_backoff, i);
    }
    transfer + pauses + opts.idle_timeout * 2
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF)
}

/// What was fetched: the verified file and how much of it came from an earlier attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    pub resumed_from: u64,
}

/// Downloads `url` into `partial` until it holds exactly `size` bytes whose SHA-256 is
/// `sha256` (lowercase or uppercase hex). An interrupted transfer leaves the partial file for
/// the next call; a size or hash mismatch deletes it, because resuming wrong bytes can only
/// produce wrong bytes again.
pub fn fetch(
    url: &str,
    sha256: &str,
    size: u64,
    partial: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(u8),
) -> Result<Fetched, FetchError> {
    let scheme = crate::update::doc::url_scheme(url).unwrap_or_default();
    if !matches!(scheme, "https" | "http" | "file") {
        return Err(FetchError::Scheme(url.to_string()));
    }
    let io_err = |source| FetchError::Io {
        path: partial.to_path_buf(),
        source,
    };
    if let Some(dir) = partial.parent() {
        fs::create_dir_all(dir).map_err(io_err)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(partial)
        .map_err(io_err)?;
    let mut have = file.metadata().map_err(io_err)?.len();
    if have > size {
        file.set_len(0).map_err(io_err)?;
        have = 0;
    }
    let mut hasher = Context::new(&SHA256);
    if have > 0 {
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let hashed = hash_into(&mut (&mut file).take(have), &mut hasher).map_err(io_err)?;
        if hashed != have {
            // The file shrank under us; trust nothing of it.
            file.set_len(0).map_err(io_err)?;
            hasher = Context::new(&SHA256);
            have = 0;
        }
    }
    let resumed_from = have;
    if have < size {
        check_space(partial.parent().unwrap_or(Path::new(".")), size - have)?;
    }

    if have < size {
        let deadline_after = deadline(size, opts);
        let deadline_at = Instant::now() + deadline_after;
        let mut sink = Sink {
            file: &mut file,
            hasher: &mut hasher,
            written: have,
            size,
            last_sync: have,
            last_percent: None,
            progress,
            throttle: Throttle::new(opts.max_kbps),
            cancel: opts.cancel.clone(),
            idle_timeout: opts.idle_timeout,
            min_rate_bps: opts.min_rate_bps,
            deadline_at,
            deadline_after,
            url: url.to_string(),
        };
        let mut attempt = 0u32;
        let result = loop {
            sink.throttle = Throttle::new(opts.max_kbps);
            let r = match scheme {
                "file" => fetch_file(url, size, &mut sink),
                _ => fetch_http(url, size, opts, &mut sink),
            };
            let e = match r {
                Ok(()) => break Ok(()),
                Err(e) => e,
            };
            if scheme == "file" || !e.is_transient() || opts.cancelled() {
                break Err(e);
            }
            if attempt >= opts.retries {
                break Err(if attempt == 0 {
                    e
                } else {
                    FetchError::GaveUp {
                        attempts: attempt + 1,
                        last: Box::new(e),
                    }
                });
            }
            let pause = backoff(opts.retry_backoff, attempt);
            attempt += 1;
            if Instant::now() + pause >= deadline_at {
                break Err(sink.deadline_error());
            }
            tracing::info!(url, attempt, error = %e, pause_s = pause.as_secs(), "download failed; retrying");
            if !sleep_unless_cancelled(pause, opts) {
                break Err(FetchError::Cancelled);
            }
        };
        if let Err(e) = result {
            let _ = file.sync_data();
            if matches!(e, FetchError::SizeMismatch { .. }) {
                drop(file);
                let _ = fs::remove_file(partial);
            }
            return Err(e);
        }
    } else {
        progress(100);
    }
    file.sync_all().map_err(io_err)?;
    drop(file);

    let actual = hex::encode(hasher.finish().as_ref());
    if !actual.eq_ignore_ascii_case(sha256) {
        let _ = fs::remove_file(partial);
        return Err(FetchError::HashMismatch {
            expected: sha256.to_ascii_lowercase(),
            actual,
        });
    }
    Ok(Fetched {
        path: partial.to_path_buf(),
        resumed_from,
    })
}

/// Sleeps `d` in short steps; false when cancelled meanwhile.
fn sleep_unless_cancelled(d: Duration, opts: &FetchOptions) -> bool {
    let end = Instant::now() + d;
    loop {
        if opts.cancelled() {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Hashes a whole file with the same streaming loop downloads use on resume; exists so the
/// throughput of verification can be measured against `sha256sum` on the target hardware.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut ctx = Context::new(&SHA256);
    let n = hash_into(&mut f, &mut ctx)?;
    Ok((hex::encode(ctx.finish().as_ref()), n))
}

fn hash_into(r: &mut dyn Read, ctx: &mut Context) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.update(&buf[..n]);
        total += n as u64;
    }
}

/// Fails unless the file system holding `dir` has room for `bytes` plus a safety margin.
pub(crate) fn check_space(dir: &Path, bytes: u64) -> Result<(), FetchError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|source| FetchError::Statvfs {
        path: dir.to_path_buf(),
        source,
    })?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between libcs
    let available = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    let needed = bytes.saturating_add(DISK_MARGIN);
    if available < needed {
        return Err(FetchError::DiskSpace {
            path: dir.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

/// Paces a transfer to an average rate since it started; sleeping here is the point, not a
/// synchronisation.
struct Throttle {
    bytes_per_s: u64,
    start: Instant,
    sent: u64,
}

impl Throttle {
    fn new(max_kbps: u64) -> Self {
        Self {
            bytes_per_s: max_kbps.saturating_mul(1000),
            start: Instant::now(),
            sent: 0,
        }
    }

    fn account(&mut self, n: usize) {
        if self.bytes_per_s == 0 {
            return;
        }
        self.sent += n as u64;
        let due = Duration::from_secs_f64(self.sent as f64 / self.bytes_per_s as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// Where streamed bytes go: the partial file and the hash, in lock-step, never past `size`.
struct Sink<'a> {
    file: &'a mut File,
    hasher: &'a mut Context,
    written: u64,
    size: u64,
    last_sync: u64,
    last_percent: Option<u8>,
    progress: &'a mut dyn FnMut(u8),
    throttle: Throttle,
    cancel: Option<Arc<AtomicBool>>,
    idle_timeout: Duration,
    min_rate_bps: u64,
    deadline_at: Instant,
    deadline_after: Duration,
    url: String,
}

/// Why `pump` stopped a transfer that was still moving.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("average rate {rate} B/s over {secs} s is below the minimum of {min} B/s")]
    TooSlow { rate: u64, secs: u64, min: u64 },
    #[error("deadline passed")]
    Deadline,
}

enum Pumped {
    /// Exactly `size` bytes arrived and the source has nothing more.
    Complete,
    /// The source ended early.
    Short,
}

impl Sink<'_> {
    /// Copies from `r` until `size` bytes are in the file. Reads never ask for more than what
    /// is still missing; once complete, one extra byte is asked for to tell "exactly the
    /// declared size" from "longer than declared" without storing it.
    fn pump(&mut self, r: &mut dyn Read) -> Result<Pumped, io::Error> {
        let mut buf = vec![0u8; CHUNK];
        let started = Instant::now();
        let from = self.written;
        while self.written < self.size {
            let now = Instant::now();
            if now >= self.deadline_at {
                return Err(io::Error::other(Stop::Deadline));
            }
            let elapsed = now.duration_since(started);
            if self.min_rate_bps > 0 && elapsed >= self.idle_timeout && !elapsed.is_zero() {
                let rate = ((self.written - from) as f64 / elapsed.as_secs_f64()) as u64;
                if rate < self.min_rate_bps {
                    return Err(io::Error::other(Stop::TooSlow {
                        rate,
                        secs: elapsed.as_secs(),
                        min: self.min_rate_bps,
                    }));
                }
            }
            if self
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
            }
            let want = usize::try_from(self.size - self.written)
                .unwrap_or(CHUNK)
                .min(CHUNK);
            let n = match r.read(&mut buf[..want]) {
                Ok(0) => return Ok(Pumped::Short),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.file.write_all(&buf[..n])?;
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
            if self.written - self.last_sync >= SYNC_EVERY {
                self.file.sync_data()?;
                self.last_sync = self.written;
            }
            let pct = (self.written.saturating_mul(100) / self.size) as u8;
            if self.last_percent != Some(pct) {
                self.last_percent = Some(pct);
                (self.progress)(pct);
            }
            self.throttle.account(n);
        }
        let mut probe = [0u8; 1];
        loop {
            match r.read(&mut probe) {
                Ok(0) => return Ok(Pumped::Complete),
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "source is longer than declared",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn deadline_error(&self) -> FetchError {
        FetchError::Deadline {
            url: self.url.clone(),
            deadline_s: self.deadline_after.as_secs(),
            got: self.written,
            expected: self.size,
        }
    }

    fn restart(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        *self.hasher = Context::new(&SHA256);
        self.written = 0;
        self.last_sync = 0;
        Ok(())
    }
}

fn too_long(size: u64) -> FetchError {
    FetchError::SizeMismatch {
        expected: size,
        detail: "holds more".into(),
    }
}

fn finish(url: &str, sink: &Sink<'_>, r: io::Result<Pumped>) -> Result<(), FetchError> {
    match r {
        Ok(Pumped::Complete) => Ok(()),
        Ok(Pumped::Short) => Err(FetchError::Incomplete {
            url: url.to_string(),
            got: sink.written,
            expected: sink.size,
        }),
        Err(_) if sink.is_cancelled() => Err(FetchError::Cancelled),
        Err(e) if e.get_ref().is_some_and(|i| i.is::<Stop>()) => {
            match e.get_ref().and_then(|i| i.downcast_ref::<Stop>()) {
                Some(Stop::Deadline) => Err(sink.deadline_error()),
                _ => Err(FetchError::Stalled {
                    url: url.to_string(),
                    message: e.to_string(),
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::TimedOut || e.to_string().contains("timeout") => {
            Err(FetchError::Stalled {
                url: url.to_string(),
                message: format!(
                    "nothing received for {} s ({e})",
                    sink.idle_timeout.as_secs()
                ),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData && sink.written == sink.size => {
            Err(too_long(sink.size))
        }
        Err(e) => Err(FetchError::Transfer {
            url: url.to_string(),
            message: e.to_string(),
        }),
    }
}

fn fetch_file(url: &str, size: u64, sink: &mut Sink<'_>) -> Result<(), FetchError> {
    let path = PathBuf::from(url.trim_start_matches("file://"));
    let transfer = |e: io::Error| FetchError::Transfer {
        url: url.to_string(),
        message: e.to_string(),
    };
    let mut src = File::open(&path).map_err(transfer)?;
    let len = src.metadata().map_err(transfer)?.len();
    if len != size {
        return Err(FetchError::SizeMismatch {
            expected: size,
            detail: format!("holds {len}"),
        });
    }
    src.seek(SeekFrom::Start(sink.written)).map_err(transfer)?;
    let r = sink.pump(&mut src);
    finish(url, sink, r)
}

pub(crate) fn http_agent(opts: &FetchOptions) -> Result<ureq::Agent, FetchError> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let roots: Vec<Certificate<'static>> = match &opts.ca_file {
        Some(path) => {
            let pem = fs::read(path).map_err(|e| FetchError::CaFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(FetchError::CaFile {
                    path: path.clone(),
                    message: "no PEM certificate in it".into(),
                });
            }
            certs
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            if loaded.certs.is_empty() {
                return Err(FetchError::SystemCerts(format!("{:?}", loaded.errors)));
            }
            loaded
                .certs
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect()
        }
    };
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_connect(Some(opts.idle_timeout))
        .timeout_recv_response(Some(opts.idle_timeout))
        .timeout_per_read(Some(opts.idle_timeout))
        .user_agent(format!("kiosk-agent/{}", crate::VERSION))
        .build();
    Ok(config.into())
}

fn fetch_http(
    url: &str,
    size: u64,
    opts: &FetchOptions,
    sink: &mut Sink<'_>,
) -> Result<(), FetchError> {
    let agent = http_agent(opts)?;
    let transfer = |message: String| FetchError::Transfer {
        url: url.to_string(),
        message,
    };
    let io_err = |e: io::Error| transfer(e.to_string());
    // One retry from zero is allowed when the server refuses the range (416): the partial
    // file belongs to this hash, so a refusal means it is stale, not that the server is wrong.
    for _attempt in 0..2 {
        let left = sink.deadline_at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(sink.deadline_error());
        }
        let mut req = agent.get(url);
        if sink.written > 0 {
            req = req.header("Range", format!("bytes={}-", sink.written));
        }
        // No attempt outlives the download's deadline, however the server paces its bytes.
        let req = req.config().timeout_global(Some(left)).build();
        let resp = req.call().map_err(|e| match e {
            ureq::Error::Timeout(t) => FetchError::Stalled {
                url: url.to_string(),
                message: format!("timeout: {t}"),
            },
            e => transfer(e.to_string()),
        })?;
        let status = resp.status().as_u16();
        let content_length = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match status {
            200 => {
                if sink.written > 0 {
                    tracing::info!(
                        url,
                        "server ignored the range request; downloading from the start"
                    );
                    sink.restart().map_err(io_err)?;
                }
                if let Some(len) = content_length.filter(|l| *l != size) {
                    return Err(FetchError::SizeMismatch {
                        expected: size,
                        detail: format!("announces {len}"),
                    });
                }
            }
            206 => {
                let start = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range_start);
                if start != Some(sink.written) {
                    return Err(transfer(format!(
                        "partial response starts at {start:?}, expected byte {}",
                        sink.written
                    )));
                }
                if let Some(len) = content_length.filter(|l| *l != size - sink.written) {
                    return Err(FetchError::SizeMismatch {
                        expected: size,
                        detail: format!("announces {} in total", sink.written + len),
                    });
                }
            }
            416 if sink.written > 0 => {
                sink.restart().map_err(io_err)?;
                continue;
            }
            _ => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status,
                });
            }
        }
        let mut body = resp.into_body().into_reader();
        let r = sink.pump(&mut body);
        return finish(url, sink, r);
    }
    Err(transfer("server refused the range request twice".into()))
}

/// `bytes 100-199/200` → 100.
fn parse_content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        hex::encode(ring::digest::digest(&SHA256, b).as_ref())
    }

    #[test]
    fn file_url_fetch_resumes_and_hashes_once_overall() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let src = d.path().join("src.bin");
        fs::write(&src, &data).unwrap();
        let part = d.path().join("dl/x.part");
        fs::create_dir_all(part.parent().unwrap()).unwrap();
        fs::write(&part, &data[..70_000]).unwrap();
        let mut seen = vec![];
        let got = fetch(
            &format!("file://{}", src.display()),
            &sha(&data),
            data.len() as u64,
            &part,
            &FetchOptions::default(),
            &mut |p| seen.push(p),
        )
        .unwrap();
        assert_eq!(got.resumed_from, 70_000);
        assert_eq!(fs::read(&part).unwrap(), data);
        assert_eq!(seen.last(), Some(&100));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn file_url_of_wrong_size_is_refused_and_discarded() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src.bin");
        fs::write(&src, b"hello world").unwrap();
        let part = d.path().join("x.part");
        let err = fetch(
            &format!("file://{}", src.display()),
            &sha(b"hello world"),
            5,
            &part,
            &FetchOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, FetchError::SizeMismatch { expected: 5, .. }),
            "{err}"
        );
        assert!(!part.exists());
    }

    #[test]
    fn hash_mismatch_discards_with_actionable_message() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src.bin");
        fs::write(&src, b"hello").unwrap();
        let part = d.path().join("x.part");
        let err = fetch(
            &format!("file://{}", src.display()),
            &"0".repeat(64),
            5,
            &part,
            &FetchOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&sha(b"hello")) && msg.contains("discarded"),
            "{msg}"
        );
        assert!(!part.exists());
    }

    #[test]
    fn cancelled_download_keeps_the_partial() {
        let d = tempfile::tempdir().unwrap();
        let data = vec![7u8; 300_000];
        let src = d.path().join("src.bin");
        fs::write(&src, &data).unwrap();
        let part = d.path().join("x.part");
        let cancel = Arc::new(AtomicBool::new(false));
        let opts = FetchOptions {
            cancel: Some(cancel.clone()),
            ..Default::default()
        };
        let err = fetch(
            &format!("file://{}", src.display()),
            &sha(&data),
            data.len() as u64,
            &part,
            &opts,
            &mut |_| cancel.store(true, Ordering::Relaxed),
        )
        .unwrap_err();
        assert!(matches!(err, FetchError::Cancelled), "{err}");
        let kept = fs::metadata(&part).unwrap().len();
        assert!(kept > 0 && kept < data.len() as u64);
    }

    #[test]
    fn sha256_file_matches_digest() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            (
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(),
                3
            )
        );
    }

    #[test]
    fn content_range_start() {
        assert_eq!(parse_content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(parse_content_range_start("bytes */200"), None);
    }
}
