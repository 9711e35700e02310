//! The inventory in the birth: what an asset register (统一终端) wants and the terminal knows
//! cheaply. Each part is best-effort: an unreadable one is left out, never guessed.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};

use crate::host::HostPaths;

/// `{"os", "kernel", "arch", "apps", "docs"}` plus `dmi` and the primary interface when readable.
pub fn inventory(
    host: &HostPaths,
    apps_dir: &Path,
    docs: &BTreeMap<String, u64>,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("os".into(), json!(os_name(host)));
    m.insert("kernel".into(), json!(kernel_release()));
    m.insert("arch".into(), json!(std::env::consts::ARCH));
    m.insert("apps".into(), json!(apps(apps_dir)));
    m.insert("docs".into(), json!(docs));
    let dmi = dmi(host);
    if !dmi.is_empty() {
        m.insert("dmi".into(), Value::Object(dmi));
    }
    if let Some(iface) = primary_interface(host) {
        if let Some(mac) = read_trim(&host.resolve(format!("/sys/class/net/{iface}/address"))) {
            m.insert("mac".into(), json!(mac));
        }
        m.insert("primary_iface".into(), json!(iface));
    }
    m
}

fn read_trim(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// `PRETTY_NAME` of os-release (`/etc`, else `/usr/lib`); `"unknown"` when neither says.
pub fn os_name(host: &HostPaths) -> String {
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        let Ok(text) = std::fs::read_to_string(host.resolve(p)) else {
            continue;
        };
        let field = |key: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        };
        if let Some(name) = field("PRETTY_NAME").or_else(|| field("NAME")) {
            return name;
        }
    }
    "unknown".into()
}

/// The running kernel's release (uname -r).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// App name → release in force (the `current` link).
pub fn apps(apps_dir: &Path) -> BTreeMap<String, String> {
    crate::update::list_releases(apps_dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| Some((a.name, a.current?)))
        .collect()
}

/// Vendor, product and serial from `/sys/class/dmi/id` (the serial is readable by root only).
fn dmi(host: &HostPaths) -> Map<String, Value> {
    let mut m = Map::new();
    for (key, file) in [
        ("vendor", "sys_vendor"),
        ("product", "product_name"),
        ("serial", "product_serial"),
    ] {
        if let Some(v) = read_trim(&host.resolve(format!("/sys/class/dmi/id/{file}"))) {
            m.insert(key.into(), json!(v));
        }
    }
    m
}

/// The interface of the default route with the lowest metric, from `/proc/net/route`.
pub fn primary_interface(host: &HostPaths) -> Option<String> {
    let text = std::fs::read_to_string(host.resolve("/proc/net/route")).ok()?;
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            let (iface, dest, flags, metric, mask) =
                (f.first()?, f.get(1)?, f.get(3)?, f.get(6)?, f.get(7)?);
            let up = u32::from_str_radix(flags, 16).ok()? & 0x1 != 0;
            (*dest == "00000000" && *mask == "00000000" && up && valid_iface(iface))
                .then(|| (metric.parse::<u64>().unwrap_or(u64::MAX), iface.to_string()))
        })
        .min()
        .map(|(_, i)| i)
}

/// A kernel interface name (at most 15 bytes, no `/`): safe to put in a `/sys` path.
fn valid_iface(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && !s.contains('/') && s != "." && s != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fixture_host() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w(
            "etc/os-release",
            "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n",
        );
        w("sys/class/dmi/id/sys_vendor", "LENOVO\n");
        w("sys/class/dmi/id/product_name", "X200\n");
        w(
            "proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
             eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n",
        );
        w("sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        let host = HostPaths::new(d.path());
        let docs = BTreeMap::from([("policy".to_string(), 3u64)]);
        let inv = inventory(&host, &d.path().join("apps"), &docs);
        assert_eq!(inv["os"], "Debian GNU/Linux 13 (trixie)");
        assert_eq!(inv["dmi"], json!({"vendor": "LENOVO", "product": "X200"}));
        assert_eq!(inv["primary_iface"], "eth0");
        assert_eq!(inv["mac"], "52:54:00:12:34:56");
        assert_eq!(inv["docs"], json!({"policy": 3}));
        assert_eq!(inv["apps"], json!({}));
        assert!(inv["kernel"].is_string() && inv["arch"].is_string());
        let empty = HostPaths::new(d.path().join("nothing"));
        assert_eq!(os_name(&empty), "unknown");
        assert_eq!(primary_interface(&empty), None);
    }
}
