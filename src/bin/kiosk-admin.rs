//! Platform-side tool for operators and scripts: make signing keys, sign documents into DSSE
//! envelopes, and check an envelope the way a kiosk would (docs/protocol.md §2, §7).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Parser, Subcommand};
use kiosk_agent::trust::{
    DEFAULT_CLOCK_SKEW_S, DEFAULT_MAX_BYTES, Keyring, Role, TrustError, keyid_of, sign_envelope,
    verify_document, verify_envelope,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

#[derive(Parser)]
#[command(
    name = "kiosk-admin",
    version,
    about = "Keys, signing and verification for kiosk-agent messages"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a new Ed25519 private key (PKCS#8 v1 PEM, as openssl writes; mode 0600) and print its trust entry.
    Keygen {
        /// Key file to create; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the DSSE envelope of FILE's exact bytes, signed by every --key.
    Sign {
        /// PKCS#8 PEM Ed25519 private key (v1 as written by openssl, or v2); repeat for more signatures.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Role the document is signed as: trust, policy, schedule, catalog, app or command.
        #[arg(long = "type")]
        role: Role,
        file: PathBuf,
    },
    /// Check an envelope against a trust root as a kiosk would and print its payload.
    Verify {
        /// Trust root file (a bare trust document).
        #[arg(long)]
        trust: PathBuf,
        #[arg(long = "type")]
        role: Role,
        /// Also check the document fields for this scope (`t/ID`, `g/GROUP`, `all`) at the current time.
        #[arg(long)]
        target: Option<String>,
        envelope: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiosk-admin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Keygen { out } => keygen(&out),
        Cmd::Sign { keys, role, file } => sign(&keys, role, &file),
        Cmd::Verify {
            trust,
            role,
            target,
            envelope,
        } => verify(&trust, role, target.as_deref(), &envelope),
    }
}

fn keygen(out: &Path) -> Result<()> {
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| anyhow!("the system random source failed"))?;
    let der = pkcs8_v1(&seed);
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| anyhow!("generated key is unusable: {e}"))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key is never overwritten)",
                out.display()
            )
        })?;
    file.write_all(pem_encode(&der).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    let public = pair.public_key().as_ref();
    let entry = serde_json::json!({
        "keyid": keyid_of(public),
        "public_key": STANDARD.encode(public),
        "roles": [],
    });
    println!("{entry}");
    Ok(())
}

/// RFC 8410 PKCS#8 v1 (the seed only), the form openssl and most libraries write and read.
/// ring's own v2 encoding is refused by some of them, and platform tools in any language must
/// be able to load these keys.
fn pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

fn sign(key_files: &[PathBuf], role: Role, file: &Path) -> Result<()> {
    let pairs = key_files
        .iter()
        .map(|p| load_key(p))
        .collect::<Result<Vec<_>>>()?;
    let payload = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let refs: Vec<&Ed25519KeyPair> = pairs.iter().collect();
    println!("{}", sign_envelope(role, &payload, &refs).to_json());
    Ok(())
}

fn verify(trust_file: &Path, role: Role, target: Option<&str>, envelope: &Path) -> Result<()> {
    let keyring = Keyring::load(trust_file).map_err(refusal)?;
    let raw =
        std::fs::read(envelope).with_context(|| format!("cannot read {}", envelope.display()))?;
    let payload = match target {
        None => verify_envelope(&raw, role, &keyring, DEFAULT_MAX_BYTES)
            .map_err(refusal)?
            .into_payload(),
        Some(target) => verify_document(
            &raw,
            role,
            target,
            &keyring,
            jiff::Timestamp::now(),
            DEFAULT_CLOCK_SKEW_S,
            DEFAULT_MAX_BYTES,
        )
        .map_err(refusal)?
        .payload()
        .to_vec(),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&payload)
        .and_then(|()| out.flush())
        .context("cannot write the payload to stdout")
}

/// Puts the stable code first so scripts can match on it.
fn refusal(e: TrustError) -> anyhow::Error {
    anyhow!("refused ({}): {e}", e.code())
}

fn load_key(path: &Path) -> Result<Ed25519KeyPair> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key {}", path.display()))?;
    let der = pem_decode(&text)
        .with_context(|| format!("{} is not a PEM private key", path.display()))?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| {
        anyhow!(
            "{} is not a PKCS#8 Ed25519 private key: {e}",
            path.display()
        )
    })
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::from(PEM_BEGIN);
    pem.push('\n');
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

fn pem_decode(text: &str) -> Result<Vec<u8>> {
    let start = text.find(PEM_BEGIN).context("no BEGIN PRIVATE KEY line")? + PEM_BEGIN.len();
    let len = text[start..]
        .find(PEM_END)
        .context("no END PRIVATE KEY line")?;
    let body: String = text[start..start + len].split_whitespace().collect();
    if body.is_empty() {
        bail!("empty key body");
    }
    STANDARD.decode(body).context("key body is not base64")
}
