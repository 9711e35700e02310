//! The patrol report as a checklist a technician reads aloud on the phone and pastes into a
//! work order: one line per device with ✓/✗, the grade and the detail, in Chinese or English.
//! Plain text, no colour or box drawing, so it survives any ticket system.

use std::fmt::Write as _;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::report::PatrolReport;
use crate::telemetry::grade::Grade;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// Chinese when the locale (`LC_ALL`, else `LANG`) is `zh_CN…`, English otherwise.
    pub fn from_env() -> Self {
        Self::from_locale(
            std::env::var("LC_ALL").ok().as_deref(),
            std::env::var("LANG").ok().as_deref(),
        )
    }

    /// `from_env` without the environment. An empty `LC_ALL` counts as unset, as in POSIX.
    pub fn from_locale(lc_all: Option<&str>, lang: Option<&str>) -> Self {
        let effective = lc_all.filter(|s| !s.is_empty()).or(lang).unwrap_or("");
        if effective.starts_with("zh_CN") {
            Self::Zh
        } else {
            Self::En
        }
    }
}

struct Words {
    title: &'static str,
    time: &'static str,
    result: &'static str,
    devices: &'static str,
    compliance: &'static str,
    not_checked: &'static str,
    schedule: &'static str,
    agent: &'static str,
    none: &'static str,
}

const ZH: Words = Words {
    title: "巡检报告",
    time: "时间",
    result: "结论",
    devices: "设备",
    compliance: "安全合规",
    not_checked: "尚未检查",
    schedule: "开关机计划",
    agent: "终端代理",
    none: "无",
};

const EN: Words = Words {
    title: "Patrol report",
    time: "Time",
    result: "Result",
    devices: "Devices",
    compliance: "Compliance",
    not_checked: "not checked yet",
    schedule: "Power schedule",
    agent: "Agent",
    none: "none",
};

fn grade_label(g: Grade, lang: Lang) -> &'static str {
    match (lang, g) {
        (Lang::Zh, Grade::P1) => "P1 紧急",
        (Lang::Zh, Grade::P2) => "P2 严重",
        (Lang::Zh, Grade::P3) => "P3 一般",
        (Lang::Zh, Grade::P4) => "P4 提示",
        (Lang::En, Grade::P1) => "P1 urgent",
        (Lang::En, Grade::P2) => "P2 severe",
        (Lang::En, Grade::P3) => "P3 general",
        (Lang::En, Grade::P4) => "P4 advisory",
    }
}

fn kind_label(kind: &str, lang: Lang) -> &str {
    match (lang, kind) {
        (Lang::Zh, "ipp") => "打印机",
        (Lang::Zh, "nut") => "UPS 电源",
        (Lang::Zh, "usb") => "USB 设备",
        (Lang::Zh, "path") => "设备文件",
        (Lang::Zh, "tcp") => "网络服务",
        (Lang::Zh, "unit") => "系统服务",
        (Lang::Zh, "exec") => "自检命令",
        (Lang::Zh, "heartbeat") => "终端界面",
        (Lang::En, "ipp") => "printer",
        (Lang::En, "nut") => "UPS",
        (Lang::En, "usb") => "USB device",
        (Lang::En, "path") => "device file",
        (Lang::En, "tcp") => "network service",
        (Lang::En, "unit") => "system service",
        (Lang::En, "exec") => "self-test",
        (Lang::En, "heartbeat") => "kiosk screen",
        (Lang::Zh, "cert") => "客户端证书",
        (Lang::Zh, "time") => "系统时钟",
        (Lang::En, "cert") => "client certificate",
        (Lang::En, "time") => "system clock",
        (_, other) => other,
    }
}

/// Times as written in the report (UTC). Use `render_checklist_in` for local time.
pub fn render_checklist(report: &PatrolReport, lang: Lang) -> String {
    render_checklist_in(report, lang, &TimeZone::UTC)
}

/// The checklist with times shown in `tz`, the kiosk's own zone, as a technician on site reads
/// them.
pub fn render_checklist_in(report: &PatrolReport, lang: Lang, tz: &TimeZone) -> String {
    let w = match lang {
        Lang::Zh => &ZH,
        Lang::En => &EN,
    };
    let (colon, lp, rp) = match lang {
        Lang::Zh => ("：", "（", "）"),
        Lang::En => (": ", " (", ")"),
    };
    let time = |s: &str| local_time(s, tz);
    let mut out = String::new();
    let _ = writeln!(out, "{} #{}", w.title, report.seq);
    let _ = writeln!(out, "{}{colon}{}", w.time, time(&report.ts));

    let total = report.items.len();
    let attention = report
        .items
        .iter()
        .filter(|i| !i.ok || i.level.is_some())
        .count();
    let worst = report.items.iter().filter_map(|i| i.level).min();
    let verdict = match (lang, worst) {
        (Lang::Zh, None) => format!("共 {total} 项，全部正常"),
        (Lang::Zh, Some(g)) => format!(
            "共 {total} 项，{attention} 项需处理{lp}最高等级 {}{rp}",
            grade_label(g, lang)
        ),
        (Lang::En, None) => format!("all {total} checks passed"),
        (Lang::En, Some(g)) => format!(
            "{attention} of {total} checks need attention{lp}worst: {}{rp}",
            grade_label(g, lang)
        ),
    };
    let _ = writeln!(out, "{}{colon}{verdict}", w.result);

    let _ = writeln!(out);
    let _ = writeln!(out, "{}", w.devices);
    if report.items.is_empty() {
        let _ = writeln!(out, "  {}", w.none);
    }
    for (n, i) in report.items.iter().enumerate() {
        let mark = if i.ok { "✓" } else { "✗" };
        let mut line = format!(
            "{:>2}. {mark} {}{lp}{}{rp}",
            n + 1,
            i.id,
            kind_label(&i.kind, lang)
        );
        if let Some(g) = i.level {
            let _ = write!(line, " {}", grade_label(g, lang));
        }
        let detail = match i.kind.as_str() {
            "cert" => cert_words(&i.detail, &report.ts, lang),
            "time" => clock_words(&i.detail, lang),
            _ => None,
        }
        .unwrap_or_else(|| one_line(&i.detail));
        if !detail.is_empty() {
            let _ = write!(line, "{colon}{detail}");
        }
        let _ = writeln!(out, "{line}");
    }

    let _ = writeln!(out);
    let compliance = match (&report.compliance, lang) {
        (None, _) => w.not_checked.to_string(),
        (Some(c), Lang::Zh) => format!(
            "策略版本 {}，通过 {} 项，未通过 {} 项",
            c.version, c.passed, c.failed
        ),
        (Some(c), Lang::En) => format!(
            "policy {}, {} passed, {} failed",
            c.version, c.passed, c.failed
        ),
    };
    let _ = writeln!(out, "{}{colon}{compliance}", w.compliance);
    let on = report.schedule.next_on.as_deref().map(&time);
    let off = report.schedule.next_off.as_deref().map(&time);
    let schedule = match lang {
        Lang::Zh => format!(
            "下次开机 {}，下次关机 {}",
            on.as_deref().unwrap_or(w.none),
            off.as_deref().unwrap_or(w.none)
        ),
        Lang::En => format!(
            "next on {}, next off {}",
            on.as_deref().unwrap_or(w.none),
            off.as_deref().unwrap_or(w.none)
        ),
    };
    let _ = writeln!(out, "{}{colon}{schedule}", w.schedule);
    let up = uptime(report.agent.uptime_s, lang);
    let agent = match lang {
        Lang::Zh => format!("版本 {}，已运行 {up}", report.agent.version),
        Lang::En => format!("version {}, up {up}", report.agent.version),
    };
    let _ = writeln!(out, "{}{colon}{agent}", w.agent);
    out
}

/// `2027-03-01T00:00:00Z[ renewing]` (see `cert_item`) in words, days counted from the report.
fn cert_words(detail: &str, ts: &str, lang: Lang) -> Option<String> {
    let mut parts = detail.split(' ');
    let not_after: Timestamp = parts.next()?.parse().ok()?;
    let renewing = parts.next() == Some("renewing");
    let now: Timestamp = ts.parse().ok()?;
    let days = (not_after.as_second() - now.as_second()).div_euclid(86_400);
    let date = not_after.strftime("%Y-%m-%d");
    let mut s = match (lang, days < 0) {
        (Lang::Zh, false) => format!("有效期至 {date}，剩余 {days} 天"),
        (Lang::Zh, true) => format!("已于 {date} 过期"),
        (Lang::En, false) => format!("valid until {date}, {days} days left"),
        (Lang::En, true) => format!("expired on {date}"),
    };
    if renewing {
        s.push_str(match lang {
            Lang::Zh => "，正在更新",
            Lang::En => ", renewal under way",
        });
    }
    Some(s)
}

/// `synchronized 12` (see `clock_item`) in words.
fn clock_words(detail: &str, lang: Lang) -> Option<String> {
    let (state, err) = detail.split_once(' ')?;
    let err: u64 = err.parse().ok()?;
    Some(match (lang, state) {
        (Lang::Zh, "synchronized") => format!("已同步，最大误差 {err} 毫秒"),
        (Lang::Zh, _) => format!("未同步，最大误差 {err} 毫秒"),
        (Lang::En, "synchronized") => format!("synchronized, max error {err} ms"),
        (Lang::En, _) => format!("NOT synchronized, max error {err} ms"),
    })
}

/// A detail from a device could hold anything; a checklist line must stay one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect()
}

fn local_time(rfc: &str, tz: &TimeZone) -> String {
    match rfc.parse::<Timestamp>() {
        Ok(t) => {
            let z = tz.to_datetime(t);
            let name = tz.iana_name().unwrap_or("UTC");
            format!("{} {name}", z.strftime("%Y-%m-%d %H:%M"))
        }
        Err(_) => one_line(rfc),
    }
}

fn uptime(s: u64, lang: Lang) -> String {
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match lang {
        Lang::Zh if d > 0 => format!("{d} 天 {h} 小时 {m} 分钟"),
        Lang::Zh => format!("{h} 小时 {m} 分钟"),
        Lang::En if d > 0 => format!("{d} d {h} h {m} min"),
        Lang::En => format!("{h} h {m} min"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locale_choice() {
        assert_eq!(Lang::from_locale(None, Some("zh_CN.UTF-8")), Lang::Zh);
        assert_eq!(Lang::from_locale(Some("C"), Some("zh_CN.UTF-8")), Lang::En);
        assert_eq!(Lang::from_locale(Some(""), Some("zh_CN.UTF-8")), Lang::Zh);
        assert_eq!(Lang::from_locale(Some("zh_CN.GB18030"), None), Lang::Zh);
        assert_eq!(Lang::from_locale(None, Some("zh_TW.UTF-8")), Lang::En);
        assert_eq!(Lang::from_locale(None, None), Lang::En);
    }

    #[test]
    fn uptime_words() {
        assert_eq!(
            uptime(3 * 86_400 + 4 * 3600 + 5 * 60 + 9, Lang::En),
            "3 d 4 h 5 min"
        );
        assert_eq!(uptime(59, Lang::Zh), "0 小时 0 分钟");
    }
}

#[cfg(test)]
mod identity_items {
    use super::*;
    use crate::patrol::{cert_item, clock_item};

    #[test]
    fn certificate_grades_and_words() {
        let now: Timestamp = "2026-03-02T23:00:00Z".parse().unwrap();
        let expired = cert_item("2026-03-01T00:00:00Z".parse().unwrap(), false, now);
        assert_eq!((expired.ok, expired.level), (false, Some(Grade::P1)));
        let soon = cert_item("2026-03-05T00:00:00Z".parse().unwrap(), false, now);
        assert_eq!((soon.ok, soon.level), (true, Some(Grade::P2)));
        let later = cert_item("2027-03-05T00:00:00Z".parse().unwrap(), false, now);
        assert_eq!((later.ok, later.level), (true, None));
        let ts = "2026-03-02T23:00:00Z";
        assert_eq!(
            cert_words(&expired.detail, ts, Lang::En).as_deref(),
            Some("expired on 2026-03-01")
        );
        assert_eq!(
            cert_words(&soon.detail, ts, Lang::Zh).as_deref(),
            Some("有效期至 2026-03-05，剩余 2 天")
        );
        assert_eq!(cert_words("junk", ts, Lang::En), None);
        let synced = clock_item(true, 12);
        assert_eq!((synced.ok, synced.level), (true, None));
        assert_eq!(
            clock_words(&synced.detail, Lang::Zh).as_deref(),
            Some("已同步，最大误差 12 毫秒")
        );
    }
}
