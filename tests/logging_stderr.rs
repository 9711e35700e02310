//! Without systemd the agent logs readable text on stderr, without colour codes when stderr is
//! not a terminal, and the dependencies' `log` records come through the same filter.

use std::io::Read;

#[test]
fn stderr_text_bridges_log_records_and_honours_the_filter() {
    let mut file = tempfile::tempfile().unwrap();
    // SAFETY: this test binary has one test and no other thread reads the environment.
    unsafe { std::env::remove_var("JOURNAL_STREAM") };
    nix::unistd::dup2_stderr(&file).unwrap();
    kiosk_agent::logging::init(kiosk_agent::config::LogLevel::Info);
    log::warn!(target: "ureq::unit", "dependency says hello");
    log::debug!(target: "ureq::unit", "dependency debug hidden");
    tracing::warn!(code = "test.code", "agent says hello");
    assert!(kiosk_agent::logging::set_level("debug"));
    log::debug!(target: "ureq::unit", "dependency debug shown");
    assert!(!kiosk_agent::logging::set_level("shouting"));
    let mut text = String::new();
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut text).unwrap();
    assert!(text.contains("dependency says hello"), "{text}");
    assert!(text.contains("dependency debug shown"), "{text}");
    assert!(!text.contains("dependency debug hidden"), "{text}");
    assert!(
        text.contains("agent says hello") && text.contains("code=\"test.code\""),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no escape codes in a file: {text:?}"
    );
}
