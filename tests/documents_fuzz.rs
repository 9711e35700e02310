//! Property tests of the document parsers that run after a signature holds (a compromised or
//! buggy signer must still not crash a kiosk): schedule, policy, catalog and app documents never
//! panic on arbitrary input or on mutations of valid documents. `scripts/fuzz` runs these with many more cases.

use kiosk_agent::power::schedule::Schedule;
use kiosk_agent::update::AppDoc;
use proptest::prelude::*;

const SCHEDULE: &str = r#"{"kind":"schedule","version":1,"target":"all","issued_at":"2026-11-29T08:00:00Z","timezone":"Asia/Shanghai","weekly":[{"days":["mon","tue"],"on":"09:00","off":"18:00"}],"dates":[{"date":"2026-10-01","closed":true}],"off_action":"poweroff","warn_minutes":10}"#;
const APP: &str = r#"{"kind":"app","version":1,"target":"all","issued_at":"2026-11-29T08:00:00Z","name":"ui","release":"2.4.0","artifact":{"url":"http://127.0.0.1/x.tar.gz","sha256":"0000000000000000000000000000000000000000000000000000000000000000","size":10,"format":"tar.gz"},"restart_units":[],"health":{"type":"tcp","addr":"127.0.0.1:80","timeout_s":5}}"#;

fn all(bytes: &[u8]) {
    let _ = Schedule::parse(bytes);
    let _ = kiosk_agent::policy::parse(bytes);
    let _ = kiosk_agent::catalog::validate(bytes);
    let _ = AppDoc::parse(bytes);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        all(&bytes);
    }

    #[test]
    fn mutated_documents_never_panic(pos in 0usize..400, byte in any::<u8>(), which in 0usize..3) {
        let base = [SCHEDULE, APP, include_str!("../config/policy/baseline.json")][which];
        let mut b = base.as_bytes().to_vec();
        let i = pos % b.len();
        b[i] = byte;
        all(&b);
        b.truncate(i);
        all(&b);
    }

    #[test]
    fn arbitrary_json_values_never_panic(s in "\\PC{0,200}", n in any::<i64>(), t in "[0-9:]{0,6}") {
        let v = serde_json::json!({"kind": s, "version": n, "target": "all", "issued_at": s,
            "timezone": s, "weekly": [{"days": [s], "on": t, "off": t}], "rules": [{"id": s, "check": {"type": s}}],
            "items": [{"id": s, "name": s, "status": s}], "name": s, "release": s,
            "artifact": {"url": s, "sha256": s, "size": n, "format": s}});
        all(v.to_string().as_bytes());
    }
}

#[test]
fn the_valid_bases_parse() {
    assert!(Schedule::parse(SCHEDULE.as_bytes()).is_ok());
    assert!(AppDoc::parse(APP.as_bytes()).is_ok());
    assert!(kiosk_agent::policy::parse(include_bytes!("../config/policy/baseline.json")).is_ok());
}
