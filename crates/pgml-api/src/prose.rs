//! Doc comments as `kubectl explain` should show them: Rust doc comments are hard-wrapped
//! at the source's width, and `kubectl explain` wraps again at the terminal's, so the
//! source's line breaks show as ragged lines. Lines of one paragraph are joined; blank
//! lines (paragraph breaks), list items and fenced code keep their own lines.

use serde_json::Value;

/// Joins the hard-wrapped lines of each paragraph of `text` into one line.
pub fn unwrap(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    // Whether the last line taken may be continued by the next one.
    let mut open = false;
    let mut fenced = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            fenced = !fenced;
            out.push(line.to_string());
            open = false;
            continue;
        }
        if fenced {
            out.push(line.to_string());
            continue;
        }
        if t.is_empty() {
            out.push(String::new());
            open = false;
            continue;
        }
        if open && !starts_item(t) {
            let last = out.last_mut().expect("an open line exists");
            last.push(' ');
            last.push_str(t);
        } else {
            out.push(line.trim_end().to_string());
            open = true;
        }
    }
    out.join("\n")
}

/// A Markdown list item: `- `, `* `, `+ `, `1. `, `1) `.
fn starts_item(t: &str) -> bool {
    if t.starts_with("- ") || t.starts_with("* ") || t.starts_with("+ ") {
        return true;
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && (t[digits..].starts_with(". ") || t[digits..].starts_with(") "))
}

/// Applies [`unwrap`] to every `description` string of a JSON schema (a field named
/// `description` under `properties` is a schema, not a string, and is walked instead).
pub fn unwrap_descriptions(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match child {
                    Value::String(s) if k == "description" => *s = unwrap(s),
                    _ => unwrap_descriptions(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_are_joined_and_breaks_lists_and_code_kept() {
        let doc = "Datasets created in the pool. Default: `pgdata` and\n`pgwal`. Names must be unique.\n\nSecond paragraph\nwrapped.\n- one item\n  continued\n- two\n1. first\n2) second\n```\nkeep\n  this\n```\nafter";
        assert_eq!(
            unwrap(doc),
            "Datasets created in the pool. Default: `pgdata` and `pgwal`. Names must be unique.\n\nSecond paragraph wrapped.\n- one item continued\n- two\n1. first\n2) second\n```\nkeep\n  this\n```\nafter"
        );
        assert_eq!(unwrap("one line"), "one line");
    }

    #[test]
    fn every_description_string_is_unwrapped_and_a_field_named_description_walked() {
        let mut v = serde_json::json!({
            "description": "a\nb",
            "properties": {"description": {"type": "string", "description": "c\nd"}},
            "items": [{"description": "e\nf"}]
        });
        unwrap_descriptions(&mut v);
        assert_eq!(v["description"], "a b");
        assert_eq!(v["properties"]["description"]["description"], "c d");
        assert_eq!(v["items"][0]["description"], "e f");
    }
}
