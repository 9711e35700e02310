//! Times one read-only scan of a policy against a host root and prints the technician's table.
//!
//! `cargo run --release --example policy_scan -- [POLICY] [ROOT] [ROUNDS]`
//! defaults: `config/policy/baseline.json`, `tests/fixtures/hosts/stock-debian`, 1.
//! Never remediates: it is for benchmarks and for trying a policy on a copy of a host.

use std::time::Instant;

use anyhow::Context;
use kiosk_agent::host::HostPaths;
use kiosk_agent::policy::{Engine, FsRemediator, parse, render_table};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let policy_path = args
        .next()
        .unwrap_or_else(|| "config/policy/baseline.json".into());
    let root = args
        .next()
        .unwrap_or_else(|| "tests/fixtures/hosts/stock-debian".into());
    let rounds: u32 = args.next().map(|r| r.parse()).transpose()?.unwrap_or(1);
    let bytes = std::fs::read(&policy_path).with_context(|| format!("reading {policy_path}"))?;
    let policy = parse(&bytes).with_context(|| format!("parsing {policy_path}"))?;
    let host = HostPaths::new(&root);
    let engine = Engine::new(host.clone());
    let rem = FsRemediator::new(host);
    let mut report = None;
    let start = Instant::now();
    for seq in 1..=rounds.max(1) {
        report =
            Some(engine.evaluate(&policy, &rem, false, u64::from(seq), jiff::Timestamp::now()));
    }
    let elapsed = start.elapsed();
    if let Some(r) = report {
        print!("{}", render_table(&r.to_json()));
    }
    eprintln!(
        "{} rule(s), {} scan(s), {:.3} ms per scan",
        policy.rules.len(),
        rounds.max(1),
        elapsed.as_secs_f64() * 1000.0 / f64::from(rounds.max(1))
    );
    Ok(())
}
