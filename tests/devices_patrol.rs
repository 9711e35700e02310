//! The patrol report: history on disk across restarts and pruning, the schedule of the next
//! patrol, and the technician's checklist in both languages against golden files
//! (`tests/golden/patrol.{zh,en}.txt`; `KIOSK_UPDATE_GOLDEN=1` rewrites them after a deliberate
//! change).

use std::path::PathBuf;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use kiosk_agent::patrol::{
    Compliance, Lang, PatrolInputs, PatrolItem, PatrolStore, RETENTION_DAYS, next_patrol,
    render_checklist, render_checklist_in,
};
use kiosk_agent::telemetry::grade::Grade;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn item(id: &str, kind: &str, ok: bool, level: Option<Grade>, detail: &str) -> PatrolItem {
    PatrolItem {
        id: id.into(),
        kind: kind.into(),
        ok,
        level,
        detail: detail.into(),
    }
}

fn inputs(ts: &str) -> PatrolInputs {
    PatrolInputs {
        ts: t(ts),
        items: vec![
            item("id-reader", "usb", true, None, "0bda:5411 at 1-1"),
            item(
                "receipt",
                "ipp",
                true,
                Some(Grade::P3),
                "idle; Paper 12% (low)",
            ),
            item("camera", "path", true, None, "/dev/video0 present"),
            item(
                "ups",
                "nut",
                false,
                Some(Grade::P3),
                "on battery, charge 80%, runtime 20 min",
            ),
            item(
                "printer",
                "ipp",
                false,
                Some(Grade::P2),
                "stopped; out of paper; Black Toner 70%",
            ),
        ],
        compliance: Some(Compliance {
            version: "2026.03.1".into(),
            passed: 41,
            failed: 2,
        }),
        next_on: Some(t("2026-03-03T00:30:00Z")),
        next_off: Some(t("2026-03-03T10:00:00Z")),
        agent_version: "0.1.0".into(),
        uptime_s: 3 * 86_400 + 4 * 3600 + 5 * 60,
    }
}

#[test]
fn history_survives_reopen_keeps_seq_and_prunes_after_30_days() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("patrol");
    {
        let mut s = PatrolStore::open(&dir).unwrap();
        assert_eq!(s.next_seq(), 1);
        for day in 1..=3 {
            let r = s
                .record(inputs(&format!("2026-01-0{day}T23:00:00Z")))
                .unwrap();
            assert_eq!(r.seq, day);
        }
    }
    // Reopened (an agent restart): seq continues, history is all there, newest first.
    let mut s = PatrolStore::open(&dir).unwrap();
    assert_eq!(s.next_seq(), 4);
    let h = s.history(t("2026-01-04T00:00:00Z"), 30).unwrap();
    let seqs: Vec<u64> = h.iter().map(|x| x.seq).collect();
    assert_eq!(seqs, [3, 2, 1]);
    assert_eq!((h[0].items, h[0].failing, h[0].faults), (5, 2, 3));
    assert_eq!(h[0].worst, Some(Grade::P2));
    assert_eq!(h[0].compliance_failed, Some(2));
    assert_eq!(s.history(t("2026-01-04T00:00:00Z"), 1).unwrap().len(), 1);

    // 31 days after the first report, recording prunes it; the second (30 days before) stays.
    let r = s.record(inputs("2026-02-01T23:00:00Z")).unwrap();
    assert_eq!(r.seq, 4);
    assert_eq!(RETENTION_DAYS, 30);
    let seqs: Vec<u64> = s
        .history(t("2026-02-02T00:00:00Z"), 365)
        .unwrap()
        .iter()
        .map(|x| x.seq)
        .collect();
    assert_eq!(seqs, [4, 3, 2]);
    assert_eq!(s.latest().unwrap().unwrap().seq, 4);

    // A torn meta file does not send seq backwards: the report names still carry it.
    std::fs::write(dir.join("meta.json"), b"{\"last_se").unwrap();
    let s = PatrolStore::open(&dir).unwrap();
    assert_eq!(s.next_seq(), 5);
    // Strays in the directory are neither reports nor deleted.
    std::fs::write(dir.join("notes.txt"), b"x").unwrap();
    s.prune(t("2030-01-01T00:00:00Z")).unwrap();
    assert!(dir.join("notes.txt").exists());
    assert!(s.latest().unwrap().is_none(), "everything expired");
    drop(s);
    assert_eq!(
        PatrolStore::open(&dir).unwrap().next_seq(),
        5,
        "meta was repaired when reopened"
    );
}

#[test]
fn a_corrupt_report_is_skipped_not_fatal() {
    let d = tempfile::tempdir().unwrap();
    let mut s = PatrolStore::open(d.path()).unwrap();
    s.record(inputs("2026-01-01T23:00:00Z")).unwrap();
    std::fs::write(d.path().join("20260102T230000Z-2.json"), b"{not json").unwrap();
    let h = s.history(t("2026-01-03T00:00:00Z"), 30).unwrap();
    assert_eq!(h.iter().map(|x| x.seq).collect::<Vec<_>>(), [1]);
    assert_eq!(s.next_seq(), 1 + 1, "store opened before the stray");
    assert_eq!(PatrolStore::open(d.path()).unwrap().next_seq(), 3);
}

#[test]
fn next_patrol_in_shanghai() {
    let sh = TimeZone::get("Asia/Shanghai").unwrap();
    // 23:00 local on 2 March.
    let now = t("2026-03-02T15:00:00Z");
    assert_eq!(
        next_patrol(now, None, &sh, None).unwrap(),
        t("2026-03-02T23:30:00Z")
    );
    assert_eq!(
        next_patrol(now, Some("06:45"), &sh, None).unwrap(),
        t("2026-03-02T22:45:00Z")
    );
    // Opens 09:00 local on 3 March.
    assert_eq!(
        next_patrol(now, None, &sh, Some(t("2026-03-03T01:00:00Z"))).unwrap(),
        t("2026-03-03T00:30:00Z")
    );
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("KIOSK_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(actual, expected, "{} differs", path.display());
}

#[test]
fn checklist_golden_in_both_languages() {
    let d = tempfile::tempdir().unwrap();
    let mut s = PatrolStore::open(d.path()).unwrap();
    let mut with_identity = inputs("2026-03-02T23:00:00Z");
    with_identity.items.extend([
        kiosk_agent::patrol::cert_item(t("2026-05-01T00:00:00Z"), true, with_identity.ts),
        kiosk_agent::patrol::clock_item(false, 16_000),
    ]);
    let report = s.record(with_identity).unwrap();
    golden("patrol.zh.txt", &render_checklist(&report, Lang::Zh));
    golden("patrol.en.txt", &render_checklist(&report, Lang::En));

    // The same report in the kiosk's own zone.
    let local = render_checklist_in(&report, Lang::Zh, &TimeZone::get("Asia/Shanghai").unwrap());
    assert!(local.contains("2026-03-03 07:00 Asia/Shanghai"), "{local}");

    // Nothing wrong, nothing checked yet.
    let mut quiet = inputs("2026-03-02T23:00:00Z");
    quiet.items.retain(|i| i.level.is_none());
    quiet.compliance = None;
    quiet.next_on = None;
    quiet.next_off = None;
    let r = s.record(quiet).unwrap();
    let en = render_checklist(&r, Lang::En);
    assert!(en.contains("Result: all 2 checks passed"), "{en}");
    assert!(en.contains("Compliance: not checked yet"), "{en}");
    assert!(en.contains("next on none, next off none"), "{en}");
    assert!(!en.contains('✗'));
}
