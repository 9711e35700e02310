//! `kioskctl`: the technician's client of the local socket. Readable tables by default,
//! the agent's JSON with `--json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kiosk_agent::actions::Name;
use kiosk_agent::api::client::Client;
use kiosk_agent::patrol::{Lang, PatrolReport, render_checklist_in};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "kioskctl",
    version,
    about = "Inspect and control the local kiosk-agent"
)]
struct Cli {
    /// The agent's socket.
    #[arg(
        long,
        global = true,
        env = "KIOSKCTL_SOCKET",
        default_value = "/run/kiosk-agent/kioskctl.sock"
    )]
    socket: PathBuf,
    /// Print the agent's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Terminal, broker connection, maintenance mode and open faults (worst first).
    Status,
    /// The last health report.
    Health,
    /// Run every probe now and print the patrol checklist (巡检).
    Inspect {
        /// Also record the report and publish it to the platform.
        #[arg(long)]
        publish: bool,
        /// Checklist language (default: zh when the locale is zh_CN, else en).
        #[arg(long, value_parser = ["zh", "en"])]
        lang: Option<String>,
    },
    /// Patrol reports of the last 30 days.
    Patrol {
        #[arg(long)]
        history: bool,
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// Recent events; --follow keeps printing new ones.
    Events {
        #[arg(long, short)]
        follow: bool,
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// Turn maintenance mode on or off (admin group).
    Maintenance {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The service-item catalog in force.
    Catalog,
    /// The last compliance report (--scan runs a new one).
    Compliance {
        #[arg(long)]
        scan: bool,
    },
    /// Power schedule: the next seven days, wake time and holds.
    Schedule,
    /// Installed application releases and the last update outcomes.
    Updates,
    /// Today's use of each service item (local date of the schedule's zone).
    Usage {
        /// Table language (default: zh when the locale is zh_CN, else en).
        #[arg(long, value_parser = ["zh", "en"])]
        lang: Option<String>,
    },
    /// Side-load signed documents (admin group): one envelope FILE, or a bundle DIR whose
    /// trust.dsse, policy.dsse, schedule.dsse, catalog.dsse and app-NAME.dsse are applied in
    /// that order.
    Apply {
        /// trust, policy, schedule, catalog or app/NAME; for a FILE named as in a bundle it
        /// may be left out.
        #[arg(long)]
        kind: Option<String>,
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kioskctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn request(cmd: &Cmd) -> Value {
    match cmd {
        Cmd::Status => json!({"op": Name::Status}),
        Cmd::Health => json!({"op": Name::Health}),
        Cmd::Inspect { publish, .. } => {
            json!({"op": if *publish { Name::InspectPublish } else { Name::Inspect }})
        }
        Cmd::Patrol { days, .. } => json!({"op": Name::Patrol, "days": days}),
        Cmd::Events { limit, .. } => json!({"op": Name::Events, "limit": limit}),
        Cmd::Maintenance { state, reason } => {
            json!({"op": Name::Maintenance, "on": state == "on", "reason": reason})
        }
        Cmd::Catalog => json!({"op": Name::Catalog}),
        Cmd::Compliance { scan } => {
            json!({"op": if *scan { Name::ComplianceScan } else { Name::Compliance }})
        }
        Cmd::Schedule => json!({"op": Name::Schedule}),
        Cmd::Updates => json!({"op": Name::Updates}),
        Cmd::Usage { .. } => json!({"op": Name::UsageToday}),
        // Built per file by `apply`.
        Cmd::Apply { .. } => json!({"op": Name::Apply}),
    }
}

fn lang_of(lang: &Option<String>) -> Lang {
    match lang.as_deref() {
        Some("zh") => Lang::Zh,
        Some("en") => Lang::En,
        _ => Lang::from_env(),
    }
}

/// Sends each envelope in order and prints one line per file; fails when any was refused.
fn apply(cli: &Cli, kind: Option<&str>, path: &std::path::Path) -> anyhow::Result<()> {
    let entries = if path.is_dir() {
        if kind.is_some() {
            bail!("--kind is for a single FILE; a bundle DIR names its kinds by file name");
        }
        kiosk_agent::sideload::plan(path)
            .with_context(|| format!("cannot read the bundle {}", path.display()))?
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let kind = match kind {
            Some(k) => Some(k.to_string()),
            None => Some(kiosk_agent::sideload::kind_of_file(&name).with_context(|| {
                format!("{name}: say --kind KIND (trust, policy, schedule, catalog or app/NAME)")
            })?),
        };
        vec![kiosk_agent::sideload::Entry {
            kind,
            path: path.to_path_buf(),
        }]
    };
    if entries.is_empty() {
        bail!("{}: no *.dsse envelope in it", path.display());
    }
    let mut client = Client::connect(&cli.socket)?;
    let mut rows = Vec::new();
    let mut refused = 0;
    let mut results = Vec::new();
    for e in &entries {
        let file = e
            .path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let Some(kind) = &e.kind else {
            refused += 1;
            rows.push(vec![
                file,
                "-".into(),
                "-".into(),
                "-".into(),
                "skipped".into(),
                "file name is not trust, policy, schedule, catalog or app-NAME .dsse".into(),
            ]);
            continue;
        };
        let envelope: Value = match std::fs::read(&e.path)
            .map_err(anyhow::Error::from)
            .and_then(|b| serde_json::from_slice(&b).map_err(anyhow::Error::from))
        {
            Ok(v) => v,
            Err(err) => {
                refused += 1;
                rows.push(vec![
                    file,
                    kind.clone(),
                    "-".into(),
                    "-".into(),
                    "unreadable".into(),
                    err.to_string(),
                ]);
                continue;
            }
        };
        let resp = client
            .call(&json!({"op": Name::Apply, "kind": kind, "envelope": envelope}))
            .context("request failed")?;
        let (report, status) = if resp["ok"] == json!(true) {
            (resp["data"].clone(), s(&resp["data"]["status"]))
        } else {
            refused += 1;
            let code = s(&resp["error"]["code"]);
            let status = if resp["error"]["report"].is_object() {
                format!("{} ({code})", s(&resp["error"]["report"]["status"]))
            } else {
                code
            };
            let mut report = resp["error"]["report"].clone();
            if !report.is_object() {
                report = json!({"message": resp["error"]["message"]});
            }
            (report, status)
        };
        rows.push(vec![
            file,
            kind.clone(),
            s(&report["target"]),
            s(&report["version"]),
            status,
            s(&report["message"]),
        ]);
        results.push(json!({"kind": kind, "file": e.path, "response": resp}));
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!(
            "{}",
            table(
                &["FILE", "KIND", "TARGET", "VERSION", "STATUS", "MESSAGE"],
                &rows
            )
        );
    }
    if refused > 0 {
        bail!("{refused} of {} envelope(s) not applied", entries.len());
    }
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Cmd::Apply { kind, path } = &cli.cmd {
        return apply(cli, kind.as_deref(), path);
    }
    let mut client = Client::connect(&cli.socket)?;
    let resp = client.call(&request(&cli.cmd)).context("request failed")?;
    if resp["ok"] != json!(true) {
        let code = resp["error"]["code"].as_str().unwrap_or("error");
        let msg = resp["error"]["message"].as_str().unwrap_or("");
        // Nothing received yet is a state of the terminal, not a failure of the request.
        if let Some(empty) = empty_state(&cli.cmd, code) {
            if cli.json {
                println!("null");
            } else {
                println!("{empty}");
            }
            return Ok(());
        }
        bail!("{code}: {msg}");
    }
    let data = &resp["data"];
    if cli.json {
        println!("{}", serde_json::to_string_pretty(data)?);
    } else {
        print!("{}", render(&cli.cmd, data));
    }
    if let Cmd::Events { follow: true, .. } = cli.cmd {
        client.call(&json!({"op": Name::Subscribe}))?;
        loop {
            let line = client.next_line()?;
            if line.get("ok").is_some() {
                continue;
            }
            if cli.json {
                println!("{line}");
            } else {
                // The header was printed with the recent events above.
                let rows = event_rows(std::slice::from_ref(&line));
                print!("{}", rows.split_once('\n').map(|(_, r)| r).unwrap_or(""));
            }
        }
    }
    Ok(())
}

/// The line printed (exit 0) when the agent has nothing of that kind yet.
fn empty_state(cmd: &Cmd, code: &str) -> Option<&'static str> {
    match (cmd, code) {
        (Cmd::Compliance { scan: false }, "not_found") => {
            Some("No compliance report yet: no security policy has been received.")
        }
        (Cmd::Catalog, "not_found") => Some("No service-item catalog yet: none has been received."),
        _ => None,
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Left-aligned columns sized to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            let pad = w
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c.chars().count());
            out.push_str(c);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn mib(v: &Value) -> String {
    v.as_u64()
        .map(|b| format!("{:.0} MiB", b as f64 / 1048576.0))
        .unwrap_or("-".into())
}

fn probe_rows(probes: &Value) -> String {
    let rows: Vec<Vec<String>> = probes
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                if p["ok"] == json!(true) {
                    "ok".into()
                } else {
                    "FAIL".into()
                },
                s(&p["level"]),
                s(&p["id"]),
                s(&p["kind"]),
                s(&p["detail"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "  (no probes configured)\n".into();
    }
    table(&["STATE", "GRADE", "PROBE", "KIND", "DETAIL"], &rows)
}

fn event_rows(events: &[Value]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                s(&e["ts"]),
                s(&e["seq"]),
                s(&e["severity"]),
                s(&e["code"]),
                s(&e["message"]),
            ]
        })
        .collect();
    table(&["TIME", "SEQ", "SEVERITY", "CODE", "MESSAGE"], &rows)
}

/// `Certificate   expires 2027-03-01T00:00:00Z (364 days)[, renewal requested]`.
fn cert_line(c: &Value) -> String {
    if c["client_auth"] != json!(true) {
        return "Certificate   none (no TLS client authentication)\n".into();
    }
    let renewal = match c["renewal"].as_str() {
        Some("requested") => ", renewal requested",
        Some("connecting") => ", connecting with the renewed certificate",
        _ => "",
    };
    match (c["not_after"].as_str(), c["days_left"].as_i64()) {
        (Some(na), Some(days)) if days < 0 => format!("Certificate   EXPIRED on {na}{renewal}\n"),
        (Some(na), Some(days)) => format!("Certificate   expires {na} ({days} days){renewal}\n"),
        _ => format!("Certificate   unreadable{renewal}\n"),
    }
}

/// `Clock         synchronized (max error 12 ms)`.
fn clock_line(t: &Value) -> String {
    match t["synchronized"].as_bool() {
        Some(true) => format!(
            "Clock         synchronized (max error {} ms)\n",
            s(&t["max_error_ms"])
        ),
        Some(false) => format!(
            "Clock         NOT SYNCHRONIZED (max error {} ms)\n",
            s(&t["max_error_ms"])
        ),
        None => "Clock         not read yet\n".into(),
    }
}

fn render(cmd: &Cmd, d: &Value) -> String {
    match cmd {
        Cmd::Status => {
            let m = &d["maintenance"];
            let maint = if m["on"] == json!(true) {
                format!("ON since {} ({})", s(&m["since"]), s(&m["reason"]))
            } else {
                "off".into()
            };
            let broker = format!(
                "{} ({})",
                s(&d["mqtt"]["url"]),
                if d["mqtt"]["connected"] == json!(true) {
                    "connected"
                } else {
                    "NOT CONNECTED"
                }
            );
            let mut out = format!(
                "Terminal      {}  groups: {}\nAgent         {} since {}\nBroker        {}\nMaintenance   {}\nEvents queued {}\n",
                s(&d["terminal_id"]),
                d["groups"]
                    .as_array()
                    .map(|g| g.iter().map(s).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
                s(&d["agent_version"]),
                s(&d["started_at"]),
                broker,
                maint,
                s(&d["events_pending"]),
            );
            out.push_str(&cert_line(&d["cert"]));
            out.push_str(&clock_line(&d["time"]));
            let faults = d["faults"].as_array().cloned().unwrap_or_default();
            if faults.is_empty() {
                out.push_str("Faults        none\n");
            } else {
                out.push_str("Faults (worst first)\n");
                out.push_str(&probe_rows(&Value::Array(faults)));
            }
            out
        }
        Cmd::Health => {
            let mut out = format!(
                "Report #{} at {}  uptime {}s  cpu {}% load {}\nMemory  {} used of {}\n",
                s(&d["seq"]),
                s(&d["ts"]),
                s(&d["uptime_s"]),
                s(&d["cpu"]["usage_pct"]),
                s(&d["cpu"]["load"]),
                mib(&d["memory"]["used_bytes"]),
                mib(&d["memory"]["total_bytes"]),
            );
            let disks: Vec<Vec<String>> = d["disks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    vec![
                        s(&x["mount"]),
                        mib(&x["avail_bytes"]),
                        mib(&x["total_bytes"]),
                    ]
                })
                .collect();
            out.push_str("Disks\n");
            out.push_str(&table(&["MOUNT", "FREE", "TOTAL"], &disks));
            out.push_str("Probes\n");
            out.push_str(&probe_rows(&d["probes"]));
            out
        }
        Cmd::Inspect { lang, .. } => {
            let mut out = match serde_json::from_value::<PatrolReport>(d["report"].clone()) {
                Ok(report) => {
                    let lang = lang_of(lang);
                    render_checklist_in(&report, lang, &jiff::tz::TimeZone::system())
                }
                Err(_) => probe_rows(&d["probes"]),
            };
            if let Some(p) = d["published"].as_object() {
                out.push_str(&format!(
                    "Recorded in the patrol history as report #{} and published on {}{}\n",
                    s(&d["report"]["seq"]),
                    s(&p["topic"]),
                    if p["connected"] == json!(true) {
                        ""
                    } else {
                        " (queued: the broker is not connected; it is sent on reconnect)"
                    }
                ));
            }
            out
        }
        Cmd::Patrol { days, .. } => {
            if d["history"].as_array().is_none_or(|h| h.is_empty()) {
                return format!("No patrol reports yet (none in the last {days} days).\n");
            }
            let rows: Vec<Vec<String>> = d["history"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| {
                    vec![
                        s(&h["ts"]),
                        s(&h["seq"]),
                        s(&h["items"]),
                        s(&h["failing"]),
                        s(&h["worst"]),
                        s(&h["compliance_failed"]),
                    ]
                })
                .collect();
            table(
                &["TIME", "SEQ", "ITEMS", "FAILING", "WORST", "POLICY FAILED"],
                &rows,
            )
        }
        Cmd::Events { follow, .. } => match d["events"].as_array() {
            Some(ev) if !ev.is_empty() => event_rows(ev),
            // --follow prints rows without their header from here on: give it one.
            _ if *follow => format!("No events yet; waiting for new ones.\n{}", event_rows(&[])),
            _ => "No events yet.\n".into(),
        },
        Cmd::Maintenance { .. } => format!(
            "maintenance {}\n",
            if d["on"] == json!(true) { "on" } else { "off" }
        ),
        Cmd::Catalog => kiosk_agent::catalog::render(d),
        Cmd::Compliance { .. } => kiosk_agent::policy::render_table(d),
        Cmd::Schedule => render_schedule(d),
        Cmd::Updates => render_updates(d),
        Cmd::Usage { lang } => render_usage(d, lang_of(lang)),
        Cmd::Apply { .. } => String::new(),
    }
}

fn render_usage(d: &Value, lang: Lang) -> String {
    let (title, headers, none) = match lang {
        Lang::Zh => (
            "今日事项使用统计",
            ["事项", "名称", "完成", "放弃", "失败", "总时长(秒)"],
            "  (今日暂无记录)\n",
        ),
        Lang::En => (
            "Service-item use today",
            [
                "ITEM",
                "NAME",
                "COMPLETED",
                "ABANDONED",
                "FAILED",
                "TOTAL S",
            ],
            "  (nothing recorded today)\n",
        ),
    };
    let mut out = format!("{title}  {} ({})\n", s(&d["date"]), s(&d["timezone"]));
    let rows: Vec<Vec<String>> = d["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                s(&i["id"]),
                s(&i["name"]),
                s(&i["completed"]),
                s(&i["abandoned"]),
                s(&i["failed"]),
                s(&i["duration_s_total"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str(none);
    } else {
        out.push_str(&table(&headers, &rows));
    }
    out
}

/// An RFC 3339 instant shown in the schedule's zone, as a technician on site reads a clock.
fn local(ts: &Value, zone: &str) -> String {
    let Some(t) = ts.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "-".into();
    };
    match jiff::tz::TimeZone::get(zone) {
        Ok(tz) => tz.to_datetime(t).strftime("%Y-%m-%d %a %H:%M").to_string(),
        Err(_) => s(ts),
    }
}

fn render_schedule(d: &Value) -> String {
    let sched = &d["schedule"];
    if sched.is_null() {
        return "No power schedule in force: the terminal is never switched off by the agent.\n"
            .into();
    }
    let zone = sched["timezone"].as_str().unwrap_or("UTC");
    let mut out = format!(
        "Schedule    version {} ({}), zone {zone}, off action {}, warning {} min\nNow         {}\nNext on     {}\nNext off    {}\nWake alarm  {}\nMaintenance {}\n",
        s(&sched["version"]),
        s(&sched["target"]),
        s(&sched["off_action"]),
        s(&sched["warn_minutes"]),
        if d["in_window"] == json!(true) {
            "open"
        } else {
            "closed"
        },
        local(&d["next_on"], zone),
        local(&d["next_off"], zone),
        local(&d["wake_at"], zone),
        if d["maintenance"] == json!(true) {
            "on (power-off deferred)"
        } else {
            "off"
        },
    );
    let holds = d["holds"].as_array().cloned().unwrap_or_default();
    if holds.is_empty() {
        out.push_str("Holds       none\n");
    } else {
        out.push_str("Holds\n");
        let rows: Vec<Vec<String>> = holds
            .iter()
            .map(|h| vec![s(&h["who"]), s(&h["why"]), local(&h["since"], zone)])
            .collect();
        out.push_str(&table(&["WHO", "WHY", "SINCE"], &rows));
    }
    if let Some(p) = d["pending_off"].as_object() {
        out.push_str(&format!(
            "Pending off {} (deferred: {})\n",
            local(&p["off_at"], zone),
            s(&p["reasons"])
        ));
    }
    let rows: Vec<Vec<String>> = d["windows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let hours = match (w["on"].as_str(), w["off"].as_str()) {
                (Some(on), Some(off)) => format!(
                    "{on}-{off}{}",
                    if w["ends_next_day"] == json!(true) {
                        " (+1 day)"
                    } else {
                        ""
                    }
                ),
                _ => "closed".into(),
            };
            vec![s(&w["date"]), s(&w["weekday"]), hours, s(&w["source"])]
        })
        .collect();
    out.push_str("Next seven days (local time)\n");
    out.push_str(&table(&["DATE", "DAY", "HOURS", "FROM"], &rows));
    out
}

fn render_updates(d: &Value) -> String {
    let apps: Vec<Vec<String>> = d["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let releases = a["releases"]
                .as_array()
                .map(|r| r.iter().map(s).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            vec![s(&a["name"]), s(&a["current"]), releases]
        })
        .collect();
    let mut out = String::from("Installed\n");
    out.push_str(&if apps.is_empty() {
        "  (no applications installed)\n".to_string()
    } else {
        table(&["APP", "IN FORCE", "RELEASES KEPT"], &apps)
    });
    let outcomes: Vec<Vec<String>> = d["last_outcomes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            vec![
                s(&o["ts"]),
                s(&o["name"]),
                s(&o["release"]),
                s(&o["status"]),
                s(&o["message"]),
            ]
        })
        .collect();
    out.push_str("Last outcomes\n");
    out.push_str(&if outcomes.is_empty() {
        "  (none)\n".to_string()
    } else {
        table(&["TIME", "APP", "RELEASE", "STATUS", "MESSAGE"], &outcomes)
    });
    let waiting: Vec<Vec<String>> = d["waiting_wave"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let wave = match w["wave"].as_u64() {
                Some(n) => format!("{n} of {}", s(&w["waves"])),
                None => format!("none of {}", s(&w["waves"])),
            };
            let opens = match w["not_before"].as_str() {
                Some(t) => t.to_string(),
                None => "never (no wave includes this terminal)".into(),
            };
            vec![s(&w["name"]), s(&w["release"]), wave, opens]
        })
        .collect();
    if !waiting.is_empty() {
        out.push_str("Waiting for a rollout wave\n");
        out.push_str(&table(&["APP", "RELEASE", "WAVE", "OPENS (UTC)"], &waiting));
    }
    out
}
