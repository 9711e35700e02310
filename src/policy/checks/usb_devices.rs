//! `usb_devices`: every USB device under `/sys/bus/usb/devices` is a registered peripheral
//! (`allow`: `"vvvv:pppp"` or `"vvvv:*"`), and no device or interface has a denied class
//! (`deny_classes`, default `["08"]`, mass storage: a registered reader that also exposes a
//! storage interface is still refused). Root hubs (`usbN`) are the host controller and skipped.
//! Never remediated: deauthorising a device could cut off the touch screen or card reader.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Check, Ctx, Outcome, spec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    allow: Vec<String>,
    #[serde(default)]
    deny_classes: Option<Vec<String>>,
}

#[derive(Debug)]
pub struct UsbDevices {
    allow: Vec<(String, Option<String>)>,
    deny_classes: Vec<String>,
}

fn hex4(s: &str) -> bool {
    s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Debug, Default)]
struct Device {
    id: String,
    class: String,
    iface_classes: Vec<String>,
}

fn attr(dir: &std::path::Path, name: &str) -> String {
    crate::policy::text::read_text(&dir.join(name))
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

impl UsbDevices {
    pub fn build(v: Value) -> Result<Self, String> {
        let s: Spec = spec(v)?;
        let allow = s
            .allow
            .iter()
            .map(|a| {
                let a = a.to_ascii_lowercase();
                match a.split_once(':') {
                    Some((v, "*")) if hex4(v) => Ok((v.to_string(), None)),
                    Some((v, p)) if hex4(v) && hex4(p) => Ok((v.to_string(), Some(p.to_string()))),
                    _ => Err(format!("allow entry {a:?} is not vvvv:pppp or vvvv:*")),
                }
            })
            .collect::<Result<_, _>>()?;
        let deny_classes = s
            .deny_classes
            .unwrap_or_else(|| vec!["08".into()])
            .into_iter()
            .map(|c| c.to_ascii_lowercase())
            .collect::<Vec<_>>();
        if deny_classes
            .iter()
            .any(|c| c.len() != 2 || !c.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("deny_classes entries are two hex digits".into());
        }
        Ok(Self {
            allow,
            deny_classes,
        })
    }

    fn allowed(&self, id: &str) -> bool {
        let Some((v, p)) = id.split_once(':') else {
            return false;
        };
        self.allow
            .iter()
            .any(|(av, ap)| av == v && ap.as_deref().is_none_or(|ap| ap == p))
    }
}

impl Check for UsbDevices {
    fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        let base = ctx.host.resolve("/sys/bus/usb/devices");
        let rd = match std::fs::read_dir(&base) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Outcome::pass(json!({"devices": []}), "no USB bus");
            }
            Err(e) => return Outcome::error(format!("cannot list /sys/bus/usb/devices: {e}")),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .collect();
        names.sort();
        let mut devices: BTreeMap<String, Device> = BTreeMap::new();
        for n in &names {
            let dir = base.join(n);
            if let Some((dev, _)) = n.split_once(':') {
                let c = attr(&dir, "bInterfaceClass");
                if !c.is_empty() {
                    devices
                        .entry(dev.to_string())
                        .or_default()
                        .iface_classes
                        .push(c);
                }
            } else if !n.starts_with("usb") {
                let (v, p) = (attr(&dir, "idVendor"), attr(&dir, "idProduct"));
                if v.is_empty() {
                    continue;
                }
                let d = devices.entry(n.clone()).or_default();
                d.id = format!("{v}:{p}");
                d.class = attr(&dir, "bDeviceClass");
            }
        }
        let mut seen = Vec::new();
        let mut bad = Vec::new();
        for (port, d) in devices.iter().filter(|(_, d)| !d.id.is_empty()) {
            seen.push(format!("{port} {}", d.id));
            let denied: Vec<&String> = std::iter::once(&d.class)
                .chain(d.iface_classes.iter())
                .filter(|c| self.deny_classes.contains(c))
                .collect();
            if let Some(c) = denied.first() {
                bad.push(format!("{port} {} class {c} denied", d.id));
            } else if !self.allowed(&d.id) {
                bad.push(format!("{port} {} not registered", d.id));
            }
        }
        if bad.is_empty() {
            Outcome::pass(
                json!({"devices": seen}),
                format!("{} registered device(s)", seen.len()),
            )
        } else {
            Outcome::fail(json!({"devices": seen, "not_allowed": bad}), bad.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CheckStatus;
    use super::super::testutil::{FakeRunner, Fx};
    use super::*;

    #[test]
    fn unregistered_and_mass_storage_devices_fail() {
        let fx = Fx::new(&[
            ("/sys/bus/usb/devices/usb1/idVendor", "1d6b\n"),
            ("/sys/bus/usb/devices/1-1/idVendor", "0BDA\n"),
            ("/sys/bus/usb/devices/1-1/idProduct", "5411\n"),
            ("/sys/bus/usb/devices/1-1/bDeviceClass", "09\n"),
            ("/sys/bus/usb/devices/1-1:1.0/bInterfaceClass", "09\n"),
            ("/sys/bus/usb/devices/1-2/idVendor", "0781\n"),
            ("/sys/bus/usb/devices/1-2/idProduct", "5567\n"),
            ("/sys/bus/usb/devices/1-2/bDeviceClass", "00\n"),
            ("/sys/bus/usb/devices/1-2:1.0/bInterfaceClass", "08\n"),
            ("/sys/bus/usb/devices/1-3/idVendor", "\u{0}\n"),
        ]);
        let r = FakeRunner::default();
        let ctx = Ctx {
            host: &fx.host,
            runner: &r,
        };
        let c = UsbDevices::build(json!({"allow":["0bda:5411","0781:*"]})).unwrap();
        let o = c.evaluate(&ctx);
        assert_eq!(o.status, CheckStatus::Fail);
        // a device whose ids are garbage cannot be registered: it is reported too
        assert_eq!(
            o.observed["not_allowed"],
            json!(["1-2 0781:5567 class 08 denied", "1-3 \u{0}: not registered"])
        );
        std::fs::remove_dir_all(fx.host.resolve("/sys/bus/usb/devices/1-2:1.0")).unwrap();
        std::fs::remove_dir_all(fx.host.resolve("/sys/bus/usb/devices/1-3")).unwrap();
        assert_eq!(c.evaluate(&ctx).status, CheckStatus::Pass);
        let strict = UsbDevices::build(json!({"allow":["0bda:5411"]})).unwrap();
        assert_eq!(
            strict.evaluate(&ctx).observed["not_allowed"],
            json!(["1-2 0781:5567 not registered"])
        );
        assert!(
            matches!(UsbDevices::build(json!({"allow":["xyz"]})), Err(ref e) if e.contains("is not vvvv:pppp or vvvv:*"))
        );
        assert!(
            matches!(UsbDevices::build(json!({"allow":[],"deny_classes":["8"]})), Err(ref e) if e.contains("deny_classes entries are two hex digits"))
        );
    }
}
