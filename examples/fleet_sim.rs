//! Fleet benchmark helper (used by scripts/fleet-bench; prints figures, asserts nothing).
//!
//! `sim`: one process holding many MQTT connections that each behave like kiosk-agent on the
//! wire: client id = terminal id, persistent session, the retained Last Will `offline/lost`
//! with the session counter, SUBSCRIBE only when CONNACK says no session, the retained birth,
//! retained `reported/*`, `compliance` and `patrol` at the first connect, QoS 0 health every
//! 10 s, a QoS 1 event now and then, capped exponential reconnect backoff with jitter. It
//! prints how many are connected every second and, after every loss, how long it took until
//! all were back.
//!
//! `watch`: subscribes to every terminal's state and prints when N distinct terminals are
//! online with a session counter of at least S.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::json;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.get(1).map(String::as_str) {
        Some("sim") => rt.block_on(sim(&args)),
        Some("watch") => rt.block_on(watch(&args)),
        _ => {
            eprintln!(
                "usage: fleet_sim sim --port P --terminals N --duration S [--prefix kiosk/v1] [--id-prefix sim]\n       fleet_sim watch --port P --count N --min-session S [--timeout S]"
            );
            std::process::exit(2);
        }
    }
}

/// The agent's jittered backoff: upper half of min·2^attempt, capped.
fn backoff(attempt: u32, seed: &mut u64) -> Duration {
    let step = Duration::from_secs(1)
        .saturating_mul(1 << attempt.min(16))
        .min(Duration::from_secs(60));
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let half = step / 2;
    half + Duration::from_millis(*seed % (half.as_millis() as u64 + 1))
}

struct Counters {
    connected: AtomicUsize,
    published: AtomicU64,
    received: AtomicU64,
}

async fn sim(args: &[String]) {
    let port: u16 = arg(args, "--port", "1883").parse().expect("--port");
    let n: usize = arg(args, "--terminals", "10000")
        .parse()
        .expect("--terminals");
    let duration = Duration::from_secs(arg(args, "--duration", "120").parse().expect("--duration"));
    let prefix = arg(args, "--prefix", "kiosk/v1");
    let id_prefix = arg(args, "--id-prefix", "sim");
    let rate: u64 = arg(args, "--connect-rate", "500")
        .parse()
        .expect("--connect-rate");
    let c = Arc::new(Counters {
        connected: AtomicUsize::new(0),
        published: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    let start = Instant::now();
    for i in 0..n {
        let id = format!("{id_prefix}-{i:05}");
        tokio::spawn(terminal(id, port, prefix.clone(), c.clone(), i as u64));
        // The fleet powers on over minutes, not in one instant.
        if rate > 0 && i as u64 % rate == rate - 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let mut lost_at: Option<Instant> = None;
    let mut min_since_loss = n;
    let mut all_once = false;
    let mut last_pub = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while start.elapsed() < duration {
        tick.tick().await;
        let now = c.connected.load(Ordering::Relaxed);
        let pubs = c.published.load(Ordering::Relaxed);
        println!(
            "t={:.0}s connected={now} published_per_s={}",
            start.elapsed().as_secs_f64(),
            pubs - last_pub
        );
        last_pub = pubs;
        if now == n && !all_once {
            all_once = true;
            println!(
                "ALL_CONNECTED n={n} after_s={:.1}",
                start.elapsed().as_secs_f64()
            );
        }
        if all_once && now < n && lost_at.is_none() {
            lost_at = Some(Instant::now());
            min_since_loss = now;
        }
        if let Some(t) = lost_at {
            min_since_loss = min_since_loss.min(now);
            if now == n {
                println!(
                    "ALL_BACK n={n} after_s={:.1} fewest_connected={min_since_loss}",
                    t.elapsed().as_secs_f64()
                );
                lost_at = None;
            }
        }
    }
    println!(
        "DONE published={} received={}",
        c.published.load(Ordering::Relaxed),
        c.received.load(Ordering::Relaxed)
    );
    std::process::exit(0);
}

async fn terminal(id: String, port: u16, prefix: String, c: Arc<Counters>, seed: u64) {
    let t = format!("{prefix}/t/{id}");
    let mut session: u64 = 0;
    let will = |s: u64| {
        LastWill::new(
            format!("{t}/state"),
            json!({"status": "offline", "terminal_id": id, "reason": "lost", "session": s})
                .to_string(),
            QoS::AtLeastOnce,
            true,
        )
    };
    let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    // Room for the retained documents (the agent's own limit is far above this).
    opts.set_max_packet_size(4 << 20, 4 << 20);
    opts.set_last_will(will(session + 1));
    let (client, mut el) = AsyncClient::new(opts, 64);
    let mut attempt = 0u32;
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut first = true;
    let mut is_up = false;
    let mut health = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(seed % 10_000),
        Duration::from_secs(10),
    );
    let mut seq = 0u64;
    let mut event_seq = 0u64;
    loop {
        tokio::select! {
            _ = health.tick(), if is_up => {
                seq += 1;
                let h = json!({"schema": "kiosk.health/1", "terminal_id": id, "seq": seq,
                    "ts": "2026-12-01T08:00:00Z", "uptime_s": seq * 10,
                    "cpu": {"usage_pct": 3.5, "load": [0.1, 0.2, 0.3]},
                    "memory": {"total_bytes": 4_000_000_000u64, "used_bytes": 1_200_000_000u64},
                    "disks": [{"mount": "/", "total_bytes": 64_000_000_000u64, "avail_bytes": 40_000_000_000u64}],
                    "temps": [{"label": "cpu", "celsius": 48.0}],
                    "net": [{"iface": "eth0", "up": true, "rx_bytes": 123456, "tx_bytes": 654321}],
                    "probes": [{"id": "printer", "kind": "ipp", "ok": true, "detail": "idle"},
                               {"id": "camera", "kind": "path", "ok": true, "detail": "/dev/video0"}],
                    "maintenance": false, "agent": {"version": "0.1.0", "rss_bytes": 9_000_000}});
                if client.try_publish(format!("{t}/health"), QoS::AtMostOnce, false, h.to_string()).is_ok() {
                    c.published.fetch_add(1, Ordering::Relaxed);
                }
                // An event roughly every 10 minutes per terminal.
                if (seq + seed) % 60 == 0 {
                    event_seq += 1;
                    let e = json!({"id": format!("{id}-{event_seq}"), "terminal_id": id, "seq": event_seq,
                        "ts": "2026-12-01T08:00:00Z", "severity": "minor", "code": "probe.failed",
                        "message": "printer: media-low", "details": {}});
                    if client.try_publish(format!("{t}/events"), QoS::AtLeastOnce, false, e.to_string()).is_ok() {
                        c.published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    attempt = 0;
                    session += 1;
                    el.mqtt_options.set_last_will(will(session + 1));
                    if !is_up {
                        is_up = true;
                        c.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    if !ack.session_present {
                        let subs = [
                            format!("{t}/desired/#"), format!("{t}/cmd"),
                            format!("{prefix}/g/futian/desired/#"), format!("{prefix}/g/futian/cmd"),
                            format!("{prefix}/all/desired/#"), format!("{prefix}/all/cmd"),
                        ];
                        let _ = client.try_subscribe_many(
                            subs.into_iter().map(|s| rumqttc::SubscribeFilter::new(s, QoS::AtLeastOnce)),
                        );
                    }
                    let birth = json!({"status": "online", "terminal_id": id, "agent_version": "0.1.0",
                        "boot_id": "3f1c2a3e-5b7d-4c1e-9f00-123456789abc", "started_at": "2026-12-01T08:00:00Z",
                        "groups": ["futian"], "session": session});
                    let _ = client.try_publish(format!("{t}/state"), QoS::AtLeastOnce, true, birth.to_string());
                    if first {
                        first = false;
                        for (leaf, body) in [
                            ("reported/policy", json!({"kind": "policy", "target": "all", "version": 1, "status": "applied", "message": "policy version 1 in force (14 rules); evaluating", "ts": "2026-12-01T08:00:00Z", "details": {"rules": 14}})),
                            ("reported/catalog", json!({"kind": "catalog", "target": "all", "version": 1, "status": "applied", "message": "catalog version 1 written", "ts": "2026-12-01T08:00:00Z", "details": {"items": 120, "active": 118}})),
                            ("reported/schedule", json!({"kind": "schedule", "target": "g/futian", "version": 3, "status": "applied", "message": "schedule version 3 in force", "ts": "2026-12-01T08:00:00Z", "details": {"next_on": "2026-12-02T00:30:00Z", "next_off": "2026-12-01T10:00:00Z", "timezone": "Asia/Shanghai"}})),
                            ("compliance", json!({"version": 1, "seq": 1, "ts": "2026-12-01T08:00:00Z", "passed": 12, "failed": 2, "remediated": 0, "results": []})),
                        ] {
                            let _ = client.try_publish(format!("{t}/{leaf}"), QoS::AtLeastOnce, true, body.to_string());
                        }
                    }
                    c.published.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    c.received.fetch_add(1, Ordering::Relaxed);
                    let _ = client.try_ack(&p);
                }
                Ok(_) => {}
                Err(_) => {
                    if is_up {
                        is_up = false;
                        c.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    let d = backoff(attempt, &mut rng);
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(d).await;
                }
            }
        }
    }
}

async fn watch(args: &[String]) {
    let port: u16 = arg(args, "--port", "1883").parse().expect("--port");
    let count: usize = arg(args, "--count", "200").parse().expect("--count");
    let min_session: u64 = arg(args, "--min-session", "1")
        .parse()
        .expect("--min-session");
    let timeout = Duration::from_secs(arg(args, "--timeout", "300").parse().expect("--timeout"));
    let prefix = arg(args, "--prefix", "kiosk/v1");
    let mut opts = MqttOptions::new(
        format!("fleet-watch-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 64);
    let start = Instant::now();
    let mut online: HashMap<String, u64> = HashMap::new();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => {
                let ok = online.values().filter(|s| **s >= min_session).count();
                println!("TIMEOUT online={ok} of {count} after_s={:.1}", start.elapsed().as_secs_f64());
                std::process::exit(1);
            }
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(format!("{prefix}/t/+/state"), QoS::AtMostOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else { continue };
                    let id = v["terminal_id"].as_str().unwrap_or("").to_string();
                    if v["status"] == "online" {
                        online.insert(id, v["session"].as_u64().unwrap_or(0));
                    } else {
                        online.remove(&id);
                    }
                    let ok = online.values().filter(|s| **s >= min_session).count();
                    if ok >= count {
                        println!("ONLINE n={ok} after_s={:.2}", start.elapsed().as_secs_f64());
                        std::process::exit(0);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
