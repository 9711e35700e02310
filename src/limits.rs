//! Bounds on free text taken from outside (socket requests, command arguments, signed
//! documents), so a megabyte `reason` is refused rather than stored and echoed in every
//! `status`. Refusals name the field and the limit. README lists the bounds.

use serde_json::Value;

/// `maintenance` reason, from the socket op or the command.
pub const REASON_CHARS: usize = 256;
/// `inhibit` `who`.
pub const WHO_CHARS: usize = 128;
/// `inhibit` `why`.
pub const WHY_CHARS: usize = 256;
/// Any string inside a command's `args` (URLs made for one request can be long).
pub const ARG_CHARS: usize = 4096;
/// Any string inside a signed document (certificate chains are the longest legitimate ones).
pub const DOC_STRING_CHARS: usize = 16 * 1024;

/// `Err` naming `field` when `s` is longer than `max` characters.
pub fn text(field: &str, s: &str, max: usize) -> Result<(), String> {
    let n = s.chars().count();
    if n > max {
        return Err(format!(
            "{field} is {n} characters; at most {max} are accepted"
        ));
    }
    Ok(())
}

/// Walks `v` and refuses the first string (value or object key) longer than `max`,
/// naming it by its path from `root` (`args.url`, `rules[3].title`).
pub fn strings(root: &str, v: &Value, max: usize) -> Result<(), String> {
    match v {
        Value::String(s) => text(root, s, max),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| strings(&format!("{root}[{i}]"), x, max)),
        Value::Object(m) => m.iter().try_for_each(|(k, x)| {
            let path = if root.is_empty() {
                k.clone()
            } else {
                format!("{root}.{k}")
            };
            text(&format!("a key in {root}"), k, max)?;
            strings(&path, x, max)
        }),
        _ => Ok(()),
    }
}

/// The JSON text's top level is an object: serde would otherwise take a struct in its
/// sequence form (`["a", "b"]` for `{"x": "a", "y": "b"}`), a shape this protocol never uses.
pub fn is_object_text(raw: &[u8]) -> bool {
    raw.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_field_and_the_limit() {
        assert_eq!(
            text("reason", &"x".repeat(5), 4).unwrap_err(),
            "reason is 5 characters; at most 4 are accepted"
        );
        let v = json!({"a": [{"b": "xxxxx"}]});
        assert_eq!(
            strings("", &v, 4).unwrap_err(),
            "a[0].b is 5 characters; at most 4 are accepted"
        );
        assert!(is_object_text(b" \n{\"a\":1}"));
        assert!(!is_object_text(b" [1,2]"));
    }
}
