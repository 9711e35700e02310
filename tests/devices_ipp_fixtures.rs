//! Recorded printer answers (`tests/fixtures/ipp/*.bin`, raw IPP response bodies) → readings
//! and grades. `cups-*.bin` were captured from a real CUPS (see `devices_cups.rs`); the others
//! describe printer conditions CUPS cannot be made to report on a file backend (marker levels,
//! jams, an empty tray) and were written with the encoder: regenerate them with
//! `cargo test --test devices_ipp_fixtures -- --ignored`.

use std::path::PathBuf;

use kiosk_agent::events::Severity;
use kiosk_agent::telemetry::grade::{DeviceReading, Grade, SupplyState, grade};
use kiosk_agent::telemetry::ipp::{
    Attribute, Message, PrinterStatus, Value, printer_response, tag,
};
use serde_json::json;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ipp")
}

fn reading(name: &str) -> DeviceReading {
    let bytes = std::fs::read(dir().join(format!("{name}.bin"))).unwrap();
    let msg = Message::decode(&bytes).unwrap();
    PrinterStatus::from_message(&msg).unwrap().reading()
}

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

#[test]
fn toner_low_is_ok_with_the_level_for_planning() {
    let r = reading("toner-low");
    assert!(r.ok, "{r:?}");
    assert_eq!(r.level, Some(Grade::P3));
    assert_eq!(r.event_code, None);
    assert_eq!(
        r.details["markers"],
        json!([
            {"name": "Black Toner", "type": "toner", "level": 12},
            {"name": "Cyan Toner", "type": "toner", "level": 60},
            {"name": "Waste Toner", "type": "waste-toner", "level": 5},
        ])
    );
    assert_eq!(
        r.detail,
        "idle; Black Toner 12% (low); Cyan Toner 60%; Waste Toner 5%"
    );
    assert_eq!(r.consumables.len(), 1);
    assert_eq!(
        (
            r.consumables[0].kind.as_str(),
            r.consumables[0].state,
            r.consumables[0].level
        ),
        ("toner", SupplyState::Low, Some(12))
    );
    // Left a whole day, a P3 becomes P2.
    let now = at("2026-03-03T08:00:00Z");
    assert_eq!(
        grade(
            "ipp",
            Severity::Major,
            r.ok,
            r.level,
            Some(at("2026-03-03T00:00:00Z")),
            now
        ),
        Some(Grade::P3)
    );
    assert_eq!(
        grade(
            "ipp",
            Severity::Major,
            r.ok,
            r.level,
            Some(at("2026-03-02T08:00:00Z")),
            now
        ),
        Some(Grade::P2)
    );
}

#[test]
fn paper_low() {
    let r = reading("media-low");
    assert_eq!((r.ok, r.level), (true, Some(Grade::P3)));
    assert_eq!(r.detail, "idle; paper low; Black Toner 70%");
    assert_eq!(r.consumables[0].kind, "paper");
}

#[test]
fn paper_empty_is_a_supplies_job() {
    let r = reading("media-empty");
    assert!(!r.ok);
    assert_eq!(r.level, Some(Grade::P2));
    assert_eq!(r.event_code, Some("device.consumable"));
    assert_eq!(
        r.detail,
        "stopped; out of paper; Black Toner 70%; Tray 1 empty"
    );
    assert_eq!(
        (r.consumables[0].kind.as_str(), r.consumables[0].state),
        ("paper", SupplyState::Empty)
    );
}

#[test]
fn toner_at_zero_is_empty() {
    let r = reading("marker-empty");
    assert_eq!(
        (r.ok, r.level, r.event_code),
        (false, Some(Grade::P2), Some("device.consumable"))
    );
    assert_eq!(r.detail, "idle; Black Toner empty");
}

#[test]
fn jam_needs_a_technician() {
    let r = reading("media-jam");
    assert_eq!(
        (r.ok, r.level, r.event_code),
        (false, Some(Grade::P2), Some("probe.failed"))
    );
    assert_eq!(
        r.detail,
        "stopped; paper jam; Black Toner 40%; Jam in tray 2"
    );
    assert!(r.consumables.is_empty());
}

#[test]
fn captured_from_cups() {
    let r = reading("cups-idle");
    assert_eq!((r.ok, r.level), (true, None), "{r:?}");
    assert_eq!(r.details["accepting"], true);
    let r = reading("cups-paused");
    assert_eq!(
        (r.ok, r.level, r.event_code),
        (false, Some(Grade::P2), Some("probe.failed"))
    );
    assert!(r.detail.starts_with("stopped"), "{r:?}");
}

#[test]
fn every_prefix_of_every_fixture_is_handled() {
    for e in std::fs::read_dir(dir()).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        for n in 0..bytes.len() {
            if let Ok(m) = Message::decode(&bytes[..n]) {
                let _ = PrinterStatus::from_message(&m).map(|s| s.reading());
            }
        }
    }
}

fn a(name: &str, values: Vec<Value>) -> Attribute {
    Attribute {
        name: name.into(),
        values,
    }
}

fn printer(state: i32, reasons: &[&str], markers: &[(&str, &str, i32)], message: &str) -> Message {
    let mut attrs = vec![
        a("printer-state", vec![Value::enumeration(state)]),
        a(
            "printer-state-reasons",
            reasons.iter().map(|r| Value::keyword(r)).collect(),
        ),
        a(
            "printer-state-message",
            vec![Value::string(tag::TEXT, message)],
        ),
        a("printer-is-accepting-jobs", vec![Value::boolean(true)]),
    ];
    if !markers.is_empty() {
        attrs.push(a(
            "marker-names",
            markers
                .iter()
                .map(|m| Value::string(tag::NAME, m.0))
                .collect(),
        ));
        attrs.push(a(
            "marker-types",
            markers.iter().map(|m| Value::keyword(m.1)).collect(),
        ));
        attrs.push(a(
            "marker-levels",
            markers.iter().map(|m| Value::integer(m.2)).collect(),
        ));
        attrs.push(a(
            "marker-low-levels",
            markers.iter().map(|_| Value::integer(15)).collect(),
        ));
    }
    printer_response(attrs)
}

#[test]
#[ignore = "writes the constructed fixtures"]
fn regenerate_constructed_fixtures() {
    let black = ("Black Toner", "toner", 70);
    let cases = [
        (
            "toner-low",
            printer(
                3,
                &["toner-low-report"],
                &[black.0, "Cyan Toner", "Waste Toner"]
                    .iter()
                    .zip(["toner", "toner", "waste-toner"])
                    .zip([12, 60, 5])
                    .map(|((n, t), l)| (*n, t, l))
                    .collect::<Vec<_>>(),
                "",
            ),
        ),
        ("media-low", printer(3, &["media-low-report"], &[black], "")),
        (
            "media-empty",
            printer(5, &["media-empty-error"], &[black], "Tray 1 empty"),
        ),
        (
            "marker-empty",
            printer(3, &["none"], &[("Black Toner", "toner-cartridge", 0)], ""),
        ),
        (
            "media-jam",
            printer(
                5,
                &["media-jam-error"],
                &[("Black Toner", "toner", 40)],
                "Jam in tray 2",
            ),
        ),
    ];
    for (name, msg) in cases {
        std::fs::write(dir().join(format!("{name}.bin")), msg.encode()).unwrap();
    }
}
