//! The technician's view of a compliance report (`kioskctl compliance`): a plain-text table,
//! failures first, that reads on an 80-column console. It takes the report as JSON because the
//! CLI receives it over the socket and must render whatever fields it gets without failing.

use serde_json::Value;

const OBSERVED_WIDTH: usize = 40;

fn rank(status: &str) -> u8 {
    match status {
        "fail" => 0,
        "error" => 1,
        "remediated" => 2,
        "pass" => 3,
        _ => 4,
    }
}

/// One-line rendering of an observed value, shortened with an ellipsis.
fn short(v: &Value, width: usize) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > width {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        s
    }
}

fn pad(s: &str, w: usize) -> String {
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(w.saturating_sub(n)))
}

pub fn render_table(report_json: &Value) -> String {
    let field = |k: &str| {
        report_json
            .get(k)
            .map(|v| short(v, 40))
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "policy version {}  scan {}  at {}\npassed {}  failed {}  remediated {}  errors {}\n\n",
        field("version"),
        field("seq"),
        field("ts"),
        field("passed"),
        field("failed"),
        field("remediated"),
        report_json
            .get("errors")
            .map(|v| short(v, 10))
            .unwrap_or_else(|| "0".into()),
    );
    let empty = Vec::new();
    let results = report_json
        .get("results")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut rows: Vec<(u8, [String; 4])> = results
        .iter()
        .map(|r| {
            let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
            let status = s("status");
            (
                rank(&status),
                [
                    s("id"),
                    status,
                    short(r.get("observed").unwrap_or(&Value::Null), OBSERVED_WIDTH),
                    s("clause"),
                ],
            )
        })
        .collect();
    // Stable: within a status the policy's order is kept.
    rows.sort_by_key(|(k, _)| *k);
    let header = ["RULE", "STATUS", "OBSERVED", "CLAUSE"].map(String::from);
    let mut w = [0usize; 3];
    for cols in std::iter::once(&header).chain(rows.iter().map(|(_, c)| c)) {
        for (i, wi) in w.iter_mut().enumerate() {
            *wi = (*wi).max(cols[i].chars().count());
        }
    }
    for cols in std::iter::once(&header).chain(rows.iter().map(|(_, c)| c)) {
        let line = format!(
            "{}  {}  {}  {}",
            pad(&cols[0], w[0]),
            pad(&cols[1], w[1]),
            pad(&cols[2], w[2]),
            cols[3]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no results)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failures_come_first_and_long_values_are_cut() {
        let r = json!({"version":1,"seq":9,"ts":"2026-01-01T00:00:00Z","passed":1,"failed":1,"remediated":1,
            "results":[
              {"id":"a-pass","status":"pass","observed":"0","clause":"GB/T 22239-2019 8.1.4.4"},
              {"id":"b-fix","status":"remediated","observed":{"v":1},"clause":"x"},
              {"id":"c-fail","status":"fail","observed":"x".repeat(100),"clause":"端口/服务管理"}]});
        let t = render_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("version 1") && lines[0].contains("scan 9"));
        assert!(lines[3].starts_with("RULE"));
        assert!(
            lines[4].starts_with("c-fail")
                && lines[4].contains('…')
                && lines[4].ends_with("端口/服务管理")
        );
        assert!(lines[5].starts_with("b-fix") && lines[5].contains("{\"v\":1}"));
        assert!(lines[6].starts_with("a-pass"));
        assert!(lines[4].chars().count() < 100);
    }

    #[test]
    fn garbage_input_renders_without_panicking() {
        assert!(render_table(&json!(null)).contains("(no results)"));
        assert!(render_table(&json!({"results":[1, {"id": 5}]})).contains("RULE"));
    }
}
