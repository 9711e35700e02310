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
        /// Roles to put in the printed trust entry (trust, policy, schedule, catalog, app, command, cert); repeatable.
        #[arg(long = "role")]
        roles: Vec<Role>,
    },
    /// Print the DSSE envelope of FILE's exact bytes, signed by every --key.
    Sign {
        /// PKCS#8 PEM Ed25519 private key (v1 as written by openssl, or v2); repeat for more signatures.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Role the document is signed as: trust, policy, schedule, catalog, app, command or cert.
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
    /// Write a side-loading bundle (a USB stick) for `kioskctl apply DIR`: each envelope copied
    /// byte for byte as KIND.dsse / app-NAME.dsse, each --artifact under artifacts/. Nothing
    /// signed is rewritten: an app document must already point at the file:// path the stick
    /// will have on the kiosk (see --mount).
    Bundle {
        /// Directory to write (created; existing envelope files are not overwritten).
        #[arg(long)]
        out: PathBuf,
        /// An application artifact an app document refers to by file:// URL; repeatable.
        #[arg(long = "artifact")]
        artifacts: Vec<PathBuf>,
        /// Where the bundle directory will be mounted on the kiosk, e.g. /media/kiosk-usb: each
        /// app document's URL must then be file://MOUNT/artifacts/FILE.
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Signed envelopes (trust, policy, schedule, catalog, app), in any order.
        #[arg(required = true)]
        envelopes: Vec<PathBuf>,
    },
    /// Show which rollout wave each terminal falls in and when it may start (PROTOCOL §8).
    Waves {
        /// An app document (plain JSON or its DSSE envelope) carrying name, release and rollout.
        #[arg(long, conflicts_with_all = ["name", "release", "rollout"])]
        app: Option<PathBuf>,
        #[arg(long, requires_all = ["release", "rollout"])]
        name: Option<String>,
        #[arg(long)]
        release: Option<String>,
        /// A file holding the `rollout` object (`{"start", "waves": [...]}`).
        #[arg(long)]
        rollout: Option<PathBuf>,
        /// File of terminal ids, one per line (`-` for stdin); ids may also be given as arguments.
        #[arg(long)]
        ids: Option<PathBuf>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        terminals: Vec<String>,
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
        Cmd::Keygen { out, roles } => keygen(&out, &roles),
        Cmd::Sign { keys, role, file } => sign(&keys, role, &file),
        Cmd::Verify {
            trust,
            role,
            target,
            envelope,
        } => verify(&trust, role, target.as_deref(), &envelope),
        Cmd::Bundle {
            out,
            artifacts,
            mount,
            envelopes,
        } => bundle(&out, &artifacts, mount.as_deref(), &envelopes),
        Cmd::Waves {
            app,
            name,
            release,
            rollout,
            ids,
            json,
            terminals,
        } => waves(
            app.as_deref(),
            name,
            release,
            rollout.as_deref(),
            ids.as_deref(),
            json,
            terminals,
        ),
    }
}

/// See `kiosk_agent::sideload` for the layout.
fn bundle(
    out: &Path,
    artifacts: &[PathBuf],
    mount: Option<&Path>,
    envelopes: &[PathBuf],
) -> Result<()> {
    use kiosk_agent::sideload;
    let mut planned: Vec<(String, PathBuf, Vec<u8>)> = Vec::new();
    let mut wanted: Vec<(String, kiosk_agent::update::doc::Artifact)> = Vec::new();
    for path in envelopes {
        let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let env = kiosk_agent::trust::Envelope::parse(&raw, DEFAULT_MAX_BYTES)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let role = env
            .payload_type
            .strip_prefix("application/vnd.kiosk.")
            .and_then(|r| r.strip_suffix("+json"))
            .and_then(|r| r.parse::<Role>().ok())
            .with_context(|| {
                format!(
                    "{}: payloadType {:?} is not a kiosk role",
                    path.display(),
                    env.payload_type
                )
            })?;
        let kind = match role {
            Role::Trust | Role::Policy | Role::Schedule | Role::Catalog => {
                role.as_str().to_string()
            }
            Role::App => {
                let doc = kiosk_agent::update::AppDoc::parse(&env.payload)
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
                wanted.push((doc.name.clone(), doc.artifact.clone()));
                format!("app/{}", doc.name)
            }
            other => bail!(
                "{}: a {other} envelope cannot be side-loaded",
                path.display()
            ),
        };
        if planned.iter().any(|(k, _, _)| *k == kind) {
            bail!(
                "{}: a second {kind} envelope; a bundle holds one per kind",
                path.display()
            );
        }
        planned.push((kind, path.clone(), raw));
    }
    // Every file:// artifact must be given and match its document, and sit where the URL says.
    let mut copies = Vec::new();
    for (name, a) in &wanted {
        let Some(url_path) = a.url.strip_prefix("file://") else {
            eprintln!(
                "kiosk-admin: note: app {name} is fetched from {} (not from the stick)",
                a.url
            );
            continue;
        };
        let file = Path::new(url_path)
            .file_name()
            .with_context(|| format!("app {name}: {} names no file", a.url))?;
        let src = artifacts
            .iter()
            .find(|p| p.file_name() == Some(file))
            .with_context(|| {
                format!(
                    "app {name}: give the artifact {} with --artifact",
                    file.to_string_lossy()
                )
            })?;
        let (sha, size) = kiosk_agent::update::fetch::sha256_file(src)
            .with_context(|| format!("cannot read {}", src.display()))?;
        if !sha.eq_ignore_ascii_case(&a.sha256) || size != a.size {
            bail!(
                "app {name}: {} does not match the signed sha256/size",
                src.display()
            );
        }
        if let Some(m) = mount {
            let expected = m.join(sideload::ARTIFACTS).join(file);
            if Path::new(url_path) != expected {
                bail!(
                    "app {name}: the signed url is {} but the stick will hold it at file://{}",
                    a.url,
                    expected.display()
                );
            }
        }
        copies.push((src.clone(), file.to_os_string()));
    }
    std::fs::create_dir_all(out.join(sideload::ARTIFACTS))
        .with_context(|| format!("cannot create {}", out.display()))?;
    for (src, file) in copies {
        let dst = out.join(sideload::ARTIFACTS).join(&file);
        std::fs::copy(&src, &dst)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
        println!("{}", dst.display());
    }
    for (kind, src, raw) in planned {
        let name = sideload::file_name(&kind)
            .with_context(|| format!("{}: no bundle name for {kind}", src.display()))?;
        let dst = out.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dst)
            .with_context(|| {
                format!(
                    "cannot create {} (existing files are not overwritten)",
                    dst.display()
                )
            })?;
        f.write_all(&raw)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", dst.display()))?;
        println!("{}", dst.display());
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}

fn waves(
    app: Option<&Path>,
    name: Option<String>,
    release: Option<String>,
    rollout: Option<&Path>,
    ids_file: Option<&Path>,
    json: bool,
    mut ids: Vec<String>,
) -> Result<()> {
    use kiosk_agent::fleet::Rollout;
    let (name, release, rollout) = match (app, name, release, rollout) {
        (Some(path), _, _, _) => {
            let mut doc = read_json(path)?;
            // An envelope: its payload is the document.
            if let Some(p) = doc.get("payload").and_then(|p| p.as_str()) {
                let bytes = STANDARD
                    .decode(p)
                    .context("envelope payload is not base64")?;
                doc = serde_json::from_slice(&bytes).context("envelope payload is not JSON")?;
            }
            let field = |k: &str| {
                doc[k]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("app document has no {k}"))
            };
            let r: Rollout =
                serde_json::from_value(doc["rollout"].clone()).context("app document: rollout")?;
            (field("name")?, field("release")?, r)
        }
        (None, Some(n), Some(r), Some(path)) => {
            let v = read_json(path)?;
            let v = v.get("rollout").cloned().unwrap_or(v);
            (n, r, serde_json::from_value(v).context("rollout")?)
        }
        _ => bail!("give --app FILE, or --name, --release and --rollout FILE"),
    };
    rollout.validate().map_err(|e| anyhow!(e))?;
    if let Some(p) = ids_file {
        let text = if p == Path::new("-") {
            std::io::read_to_string(std::io::stdin()).context("read stdin")?
        } else {
            std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?
        };
        ids.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    if ids.is_empty() {
        bail!("no terminal ids: give them as arguments or with --ids FILE");
    }
    let mut out = String::new();
    if !json {
        out.push_str(&format!(
            "{name} {release}: {} wave(s) from {}\n{:<24} {:>9} {:>6}  NOT BEFORE (UTC)\n",
            rollout.waves.len(),
            kiosk_agent::host::rfc3339(rollout.start),
            "TERMINAL",
            "POSITION",
            "WAVE"
        ));
    }
    for id in &ids {
        if !kiosk_agent::config::valid_id(id) {
            bail!("{id:?} is not a terminal id ([a-z0-9][a-z0-9-]{{0,63}})");
        }
        let p = rollout.place(id, &name, &release);
        let not_before = p.not_before.map(kiosk_agent::host::rfc3339);
        if json {
            out.push_str(
                &serde_json::json!({
                    "terminal_id": id, "position": p.position,
                    "wave": p.wave.map(|w| w + 1), "not_before": not_before,
                })
                .to_string(),
            );
            out.push('\n');
        } else {
            out.push_str(&format!(
                "{id:<24} {:>9.4} {:>6}  {}\n",
                p.position,
                p.wave
                    .map(|w| (w + 1).to_string())
                    .unwrap_or_else(|| "-".into()),
                not_before.unwrap_or_else(|| "never".into())
            ));
        }
    }
    print!("{out}");
    Ok(())
}

fn keygen(out: &Path, roles: &[Role]) -> Result<()> {
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
        "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
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
