//! Measures how fast the update verifier hashes a file on this machine, through the same
//! streaming code a resumed download uses, so `scripts/bench` can set it beside `sha256sum`.
//!
//! Usage: `cargo run --release --example verify_throughput -- FILE`

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let path = std::env::args_os()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: verify_throughput FILE"))?;
    let start = Instant::now();
    let (digest, bytes) = kiosk_agent::update::fetch::sha256_file(path.as_ref())?;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!("{digest}  {}", std::path::Path::new(&path).display());
    println!("{bytes} bytes in {secs:.3} s: {:.1} MiB/s", mib / secs);
    Ok(())
}
