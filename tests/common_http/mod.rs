//! A tiny HTTP/1.1 (and HTTPS) file server on loopback for download tests: serves one body,
//! honours or ignores `Range`, records the `Range` header of every request, and can close
//! the connection part-way through the first response to simulate a dropped link.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Options {
    /// Answer `Range` requests with 206 (otherwise always 200 with the whole body).
    pub honour_range: bool,
    /// Close the first response after this many body bytes.
    pub cut_first_after: Option<usize>,
    /// Serve over TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub struct Server {
    pub addr: SocketAddr,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

impl Server {
    /// The `Range` header of each request so far, in order (`None` when absent).
    pub fn ranges(&self) -> Vec<Option<String>> {
        self.ranges.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}/{path}", self.addr.port())
    }
}

/// Starts the server on an ephemeral port. The thread lives until the test process exits.
pub fn serve(body: Vec<u8>, opts: Options) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    let count = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let cut = if n == 0 { opts.cut_first_after } else { None };
            match &opts.tls {
                Some(cfg) => {
                    let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    handle(&mut tls, &body, &opts, cut, &seen);
                    if cut.is_none() {
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                }
                None => {
                    let mut s: TcpStream = stream;
                    handle(&mut s, &body, &opts, cut, &seen);
                }
            }
        }
    });
    Server { addr, ranges }
}

fn handle(
    s: &mut (impl Read + Write),
    body: &[u8],
    opts: &Options,
    cut: Option<usize>,
    seen: &Mutex<Vec<Option<String>>>,
) {
    let mut req = Vec::new();
    let mut byte = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => req.push(byte[0]),
            _ => return,
        }
        if req.len() > 16 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&req).into_owned();
    let range = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("range")
            .then(|| v.trim().to_string())
    });
    seen.lock().unwrap().push(range.clone());
    let start = range
        .as_deref()
        .filter(|_| opts.honour_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let (head, slice) = match start {
        Some(st) if st >= body.len() => (
            format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            &body[..0],
        ),
        Some(st) => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                st,
                body.len() - 1,
                body.len(),
                body.len() - st
            ),
            &body[st..],
        ),
        None => (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body,
        ),
    };
    let _ = s.write_all(head.as_bytes());
    let slice = match cut {
        Some(n) => &slice[..n.min(slice.len())],
        None => slice,
    };
    let _ = s.write_all(slice);
    let _ = s.flush();
}

/// A CA and a `localhost` server certificate signed by it, generated for the test.
pub struct TestPki {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}
