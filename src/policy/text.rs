//! Reading host text files the way their owners do: comments, key/value separators, sshd's
//! `Include` and first-value-wins, systemd-style drop-in directories and last-value-wins, and the
//! value comparisons rules ask for. Host files may be garbage; nothing here panics on them.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::host::HostPaths;

/// Host config files above this size are refused rather than read whole.
pub const READ_CAP: u64 = 4 * 1024 * 1024;

/// Reads a host path under `paths.root`, lossy UTF-8, capped. The path is confined first (the
/// same rule as remediation: no symlink may lead out of the root), then opened as in
/// [`open_regular`]. A path that resolves outside the root is refused with `PermissionDenied`.
pub fn read_host(host: &HostPaths, host_path: &str) -> io::Result<String> {
    read_text(&confined(host, host_path)?)
}

/// [`crate::policy::remediate::confine`] as an I/O error: outside the root is
/// `PermissionDenied`, a dangling link `NotFound` (nothing readable is there).
pub fn confined(host: &HostPaths, host_path: &str) -> io::Result<PathBuf> {
    use crate::policy::remediate::RemediateError;
    match crate::policy::remediate::confine(host, host_path) {
        Ok(p) => Ok(p),
        Err(RemediateError::Io { source, .. }) => Err(source),
        Err(e @ RemediateError::Refused { .. }) => {
            Err(io::Error::new(io::ErrorKind::NotFound, e.to_string()))
        }
        Err(e) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            e.to_string(),
        )),
    }
}

/// Reads a host file (already resolved under the root), lossy UTF-8, capped.
pub fn read_text(path: &Path) -> io::Result<String> {
    let f = open_regular(path)?;
    let mut buf = Vec::new();
    f.take(READ_CAP + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > READ_CAP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file larger than 4 MiB",
        ));
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// What a file type is called in a refusal.
pub fn type_name(t: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Opens a file for reading without ever blocking on it: anything but a regular file (a FIFO
/// a local user planted, a socket, a device) is refused before it is opened (`lstat`), and
/// again after (`fstat` on the descriptor, so a swap in between is caught). The open itself
/// is non-blocking, does not follow a final symlink swapped in after the check, and never
/// takes a controlling terminal. The error kind is `InvalidInput` with the type in the text.
pub fn open_regular(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |t: fs::FileType| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is a {}, not a regular file; not read", type_name(t)),
        )
    };
    // A symlink is followed here (the caller confined it), but what it names must be a file.
    let before = fs::metadata(path)?;
    if !before.file_type().is_file() {
        return Err(refuse(before.file_type()));
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)?;
    let after = f.metadata()?;
    if !after.file_type().is_file() {
        return Err(refuse(after.file_type()));
    }
    Ok(f)
}

fn libc_flags() -> i32 {
    use nix::fcntl::OFlag;
    (OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits()
}

/// Reads a host file for rewriting: it must be valid UTF-8, or a rewrite could corrupt it.
pub fn read_for_rewrite(path: &Path) -> io::Result<Option<String>> {
    let f = match open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut b = Vec::new();
    f.take(READ_CAP + 1).read_to_end(&mut b)?;
    if b.len() as u64 > READ_CAP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file larger than 4 MiB; not rewritten",
        ));
    }
    String::from_utf8(b)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8; not rewritten"))
}

/// Maps a path under the root back to the host path it stands for.
pub fn host_path_of(host: &HostPaths, p: &Path) -> String {
    match p.strip_prefix(host.root()) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => p.display().to_string(),
    }
}

/// Lists `dir/*.<ext>` under the root, sorted by name (the order systemd, modprobe and sshd use).
pub fn list_dir_sorted(host: &HostPaths, dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match fs::read_dir(host.resolve(dir)) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some(ext))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// How a key and its value are separated on a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Separator {
    Whitespace,
    Str(String),
}

impl Separator {
    pub fn from_option(s: Option<&str>) -> Self {
        match s {
            None | Some("") | Some(" ") | Some("whitespace") => Separator::Whitespace,
            Some(other) => Separator::Str(other.to_string()),
        }
    }

    /// How the agent writes a line it adds.
    pub fn join(&self, key: &str, value: &str) -> String {
        match self {
            Separator::Whitespace => format!("{key} {value}"),
            Separator::Str(s) => format!("{key}{s}{value}"),
        }
    }
}

/// Splits an uncommented line into key and value; `None` for blanks, comments and section headers.
pub fn split_kv<'a>(line: &'a str, sep: &Separator) -> Option<(&'a str, &'a str)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') || t.starts_with(';') || t.starts_with('[') {
        return None;
    }
    match sep {
        Separator::Whitespace => {
            let (k, v) = t.split_once(|c: char| c.is_whitespace()).unwrap_or((t, ""));
            Some((k, v.trim()))
        }
        Separator::Str(s) => {
            let (k, v) = t.split_once(s.as_str())?;
            Some((k.trim(), v.trim()))
        }
    }
}

/// Where a key's effective value was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The host path of the file (`/etc/ssh/sshd_config.d/x.conf`).
    pub file: String,
    /// 0-based line index in that file.
    pub line: usize,
    pub value: String,
}

/// Last-value-wins lookup (login.defs, journald.conf and its drop-ins): the main file, then
/// each `dropin_dir/*.conf` in name order; a later line overrides an earlier one.
pub fn lookup_last(
    host: &HostPaths,
    path: &str,
    dropin_dir: Option<&str>,
    key: &str,
    sep: &Separator,
) -> io::Result<Option<Found>> {
    let mut files = vec![path.to_string()];
    if let Some(d) = dropin_dir {
        files.extend(
            list_dir_sorted(host, d, "conf")
                .iter()
                .map(|p| host_path_of(host, p)),
        );
    }
    let mut found = None;
    for f in &files {
        let text = match read_host(host, f) {
            Ok(t) => t,
            // A missing file sets nothing: the key then takes the program's built-in default,
            // which the rule cannot vouch for, so the caller sees "not set".
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for (n, line) in text.lines().enumerate() {
            if let Some((k, v)) = split_kv(line, sep) {
                if k == key {
                    found = Some(Found {
                        file: f.clone(),
                        line: n,
                        value: v.to_string(),
                    });
                }
            }
        }
    }
    Ok(found)
}

fn sshd_kv(line: &str) -> Option<(&str, &str)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let end = t
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(t.len());
    let (k, rest) = t.split_at(end);
    let v = rest.trim_start();
    let v = v.strip_prefix('=').unwrap_or(v).trim();
    let v = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(v);
    Some((k, v))
}

/// sshd's effective global value: first value wins, `Include` is followed in place (globs in
/// name order, relative paths under `/etc/ssh`), and nothing inside a `Match` block counts.
pub fn lookup_sshd(host: &HostPaths, path: &str, key: &str) -> io::Result<Option<Found>> {
    sshd_walk(host, path, key, 0, true)
}

fn sshd_walk(
    host: &HostPaths,
    path: &str,
    key: &str,
    depth: usize,
    required: bool,
) -> io::Result<Option<Found>> {
    if depth > 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "Include nested too deeply",
        ));
    }
    let text = match read_host(host, path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for (n, line) in text.lines().enumerate() {
        let Some((k, v)) = sshd_kv(line) else {
            continue;
        };
        if k.eq_ignore_ascii_case("match") {
            // The rest of this file is conditional; it never sets a global value.
            return Ok(None);
        }
        if k.eq_ignore_ascii_case("include") {
            for pat in v.split_whitespace() {
                let abs = if pat.starts_with('/') {
                    pat.to_string()
                } else {
                    format!("/etc/ssh/{pat}")
                };
                for inc in expand_glob(host, &abs) {
                    if let Some(f) = sshd_walk(host, &inc, key, depth + 1, false)? {
                        return Ok(Some(f));
                    }
                }
            }
            continue;
        }
        if k.eq_ignore_ascii_case(key) {
            return Ok(Some(Found {
                file: path.to_string(),
                line: n,
                value: v.to_string(),
            }));
        }
    }
    Ok(None)
}

/// Expands a host-path glob under the root; returns host paths in name order.
pub fn expand_glob(host: &HostPaths, host_pattern: &str) -> Vec<String> {
    let root = glob::Pattern::escape(&host.root().display().to_string());
    let rel = host_pattern.trim_start_matches('/');
    let full = if root.ends_with('/') {
        format!("{root}{rel}")
    } else {
        format!("{root}/{rel}")
    };
    let mut out: Vec<String> = match glob::glob(&full) {
        Ok(paths) => paths
            .filter_map(|p| p.ok())
            .map(|p| host_path_of(host, &p))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Replaces line `index` of `text` with `new_line`, or appends it when `index` is `None`,
/// keeping every other byte and the final newline.
pub fn set_line(text: &str, index: Option<usize>, new_line: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    match index {
        Some(i) if i < lines.len() => lines[i] = new_line,
        _ => lines.push(new_line),
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// A comparison a rule asks for between an observed and an expected value.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq(String),
    Le(f64, String),
    Ge(f64, String),
    In(Vec<String>),
}

impl Op {
    /// Builds from `op` and `value` (a string, number or, for `in`, a list).
    pub fn from_json(op: Option<&str>, value: &serde_json::Value) -> Result<Op, String> {
        let scalar = |v: &serde_json::Value| -> Result<String, String> {
            match v {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                serde_json::Value::Bool(b) => Ok(b.to_string()),
                _ => Err("value must be a string or number".into()),
            }
        };
        match op.unwrap_or("eq") {
            "eq" => Ok(Op::Eq(scalar(value)?)),
            o @ ("le" | "ge") => {
                let s = scalar(value)?;
                let n =
                    parse_quantity(&s).ok_or(format!("value {s:?} is not a number or duration"))?;
                Ok(if o == "le" {
                    Op::Le(n, s)
                } else {
                    Op::Ge(n, s)
                })
            }
            "in" => match value {
                serde_json::Value::Array(a) if !a.is_empty() => {
                    Ok(Op::In(a.iter().map(scalar).collect::<Result<_, _>>()?))
                }
                _ => Err("op in needs a non-empty list value".into()),
            },
            other => Err(format!("unknown op {other:?} (eq, le, ge, in)")),
        }
    }

    /// Whether `observed` satisfies the comparison; `ci` compares strings ignoring ASCII case.
    pub fn holds(&self, observed: &str, ci: bool) -> bool {
        let eq = |a: &str, b: &str| {
            let a = norm_ws(a);
            let b = norm_ws(b);
            if ci {
                a.eq_ignore_ascii_case(&b)
            } else {
                a == b
            }
        };
        match self {
            Op::Eq(v) => eq(observed, v),
            Op::In(vs) => vs.iter().any(|v| eq(observed, v)),
            Op::Le(n, _) => parse_quantity(observed).is_some_and(|o| o <= *n),
            Op::Ge(n, _) => parse_quantity(observed).is_some_and(|o| o >= *n),
        }
    }

    /// The value the agent writes when it fixes the setting.
    pub fn target(&self) -> &str {
        match self {
            Op::Eq(v) | Op::Le(_, v) | Op::Ge(_, v) => v,
            Op::In(vs) => vs.first().map(String::as_str).unwrap_or(""),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Op::Eq(v) => format!("= {v}"),
            Op::Le(_, v) => format!("<= {v}"),
            Op::Ge(_, v) => format!(">= {v}"),
            Op::In(vs) => format!("one of {}", vs.join(", ")),
        }
    }
}

/// Collapses runs of whitespace so `4096\t65535` equals `4096 65535`.
pub fn norm_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A plain number, or a systemd time span (`184d`, `6month`, `1h 30min`) in seconds.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return n.is_finite().then_some(n);
    }
    let mut total = 0.0;
    let mut any = false;
    for tok in s.split_whitespace() {
        let split = tok
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(tok.len());
        let (num, unit) = tok.split_at(split);
        let n: f64 = num.parse().ok()?;
        let mult = match unit {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "week" | "weeks" => 604_800.0,
            "M" | "month" | "months" => 2_629_800.0,
            "y" | "year" | "years" => 31_557_600.0,
            _ => return None,
        };
        total += n * mult;
        any = true;
    }
    any.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_with(files: &[(&str, &str)]) -> (tempfile::TempDir, HostPaths) {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let full = d.path().join(p.trim_start_matches('/'));
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(full, c).unwrap();
        }
        let h = HostPaths::new(d.path());
        (d, h)
    }

    #[test]
    fn last_value_wins_and_dropins_override() {
        let (_d, h) = host_with(&[
            (
                "/etc/login.defs",
                "# PASS_MAX_DAYS 1\nPASS_MAX_DAYS\t99999\nPASS_MAX_DAYS 120\n",
            ),
            (
                "/etc/j.conf",
                "[Journal]\n#Storage=auto\nStorage=volatile\n",
            ),
            ("/etc/j.conf.d/50-a.conf", "[Journal]\nStorage=persistent\n"),
            ("/etc/j.conf.d/10-b.conf", "[Journal]\nStorage=none\n"),
        ]);
        let f = lookup_last(
            &h,
            "/etc/login.defs",
            None,
            "PASS_MAX_DAYS",
            &Separator::Whitespace,
        )
        .unwrap()
        .unwrap();
        assert_eq!((f.value.as_str(), f.line), ("120", 2));
        let eq = Separator::Str("=".into());
        let f = lookup_last(&h, "/etc/j.conf", Some("/etc/j.conf.d"), "Storage", &eq)
            .unwrap()
            .unwrap();
        assert_eq!(f.value, "persistent");
        assert_eq!(f.file, "/etc/j.conf.d/50-a.conf");
        assert_eq!(
            lookup_last(&h, "/etc/missing", None, "X", &eq).unwrap(),
            None
        );
    }

    #[test]
    fn sshd_first_value_wins_through_includes_and_ignores_match() {
        let (_d, h) = host_with(&[
            (
                "/etc/ssh/sshd_config",
                "Include /etc/ssh/sshd_config.d/*.conf\npermitrootlogin yes\nX11Forwarding=yes\nMatch User bob\n  PasswordAuthentication yes\n",
            ),
            (
                "/etc/ssh/sshd_config.d/20-b.conf",
                "PermitRootLogin prohibit-password\n",
            ),
            (
                "/etc/ssh/sshd_config.d/10-a.conf",
                "# nothing\nPermitRootLogin no\n",
            ),
        ]);
        let f = lookup_sshd(&h, "/etc/ssh/sshd_config", "PermitRootLogin")
            .unwrap()
            .unwrap();
        assert_eq!(f.value, "no");
        assert_eq!(f.file, "/etc/ssh/sshd_config.d/10-a.conf");
        let f = lookup_sshd(&h, "/etc/ssh/sshd_config", "x11forwarding")
            .unwrap()
            .unwrap();
        assert_eq!((f.value.as_str(), f.line), ("yes", 2));
        assert_eq!(
            lookup_sshd(&h, "/etc/ssh/sshd_config", "PasswordAuthentication").unwrap(),
            None
        );
    }

    #[test]
    fn sshd_include_loops_are_bounded() {
        let (_d, h) = host_with(&[("/etc/ssh/sshd_config", "Include sshd_config\n")]);
        assert!(
            matches!(lookup_sshd(&h, "/etc/ssh/sshd_config", "X"), Err(ref e) if e.kind() == std::io::ErrorKind::InvalidData && e.to_string().contains("Include nested too deeply"))
        );
    }

    #[test]
    fn ops_compare_numbers_durations_and_lists() {
        let ge = Op::from_json(Some("ge"), &serde_json::json!("184d")).unwrap();
        // six calendar months average 182.6 days: short of the 184 the law can mean
        assert!(!ge.holds("6month", false));
        assert!(ge.holds("1y", false));
        assert!(!ge.holds("1month", false));
        assert!(!ge.holds("garbage", false));
        let le = Op::from_json(Some("le"), &serde_json::json!(90)).unwrap();
        assert!(le.holds("90", false) && !le.holds("99999", false));
        let eq = Op::from_json(None, &serde_json::json!("no")).unwrap();
        assert!(eq.holds("NO", true) && !eq.holds("NO", false));
        let inn = Op::from_json(Some("in"), &serde_json::json!(["1", "2"])).unwrap();
        assert!(inn.holds("2", false) && !inn.holds("3", false));
        assert_eq!(inn.target(), "1");
        assert!(
            matches!(Op::from_json(Some("like"), &serde_json::json!("x")), Err(ref e) if e.contains("unknown op"))
        );
        assert!(
            matches!(Op::from_json(Some("ge"), &serde_json::json!("lots")), Err(ref e) if e.contains("is not a number or duration"))
        );
        assert!(
            matches!(Op::from_json(Some("in"), &serde_json::json!("x")), Err(ref e) if e.contains("op in needs a non-empty list value"))
        );
        assert!(Op::Eq("4096 65535".into()).holds("4096\t65535", false));
    }

    #[test]
    fn set_line_replaces_or_appends() {
        assert_eq!(set_line("a\nb\n", Some(1), "c"), "a\nc\n");
        assert_eq!(set_line("a", None, "c"), "a\nc\n");
        assert_eq!(set_line("", None, "c"), "c\n");
    }
}
