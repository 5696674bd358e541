//! JavaScript strings on their way out of the engine.
//!
//! A JavaScript string is a sequence of UTF-16 code units and may hold an
//! unpaired surrogate (`'\ud83d'`, or an emoji cut in half by `slice`); Rust
//! strings, JSON on the wire and the store hold Unicode scalar values only.
//! Everything that leaves a runtime (results, console lines, error messages,
//! host-call arguments, URLs) is converted as the web platform converts a
//! string to a `USVString` (what `TextEncoder`, `URL` and `fetch` do): each
//! unpaired surrogate becomes U+FFFD. The rest of the text is unchanged.
//!
//! The conversion never runs app code: it uses the engine's own
//! `JSON.stringify` (which writes unpaired surrogates as `\uXXXX` escapes
//! and looks up nothing for a string) and repairs the escapes in Rust.
//! rquickjs's own conversions either fail on such strings or, for property
//! names (`Atom::to_string`), build an invalid Rust `String`, so app-chosen
//! property names are never converted that way here.

use rquickjs::{Ctx, FromJs, Value};

/// A JavaScript string argument as Unicode scalar values (see the module
/// documentation); a native taking `Usv` accepts exactly what one taking
/// `String` accepts.
pub(crate) struct Usv(pub(crate) String);

impl<'js> FromJs<'js> for Usv {
    fn from_js(ctx: &Ctx<'js>, value: Value<'js>) -> rquickjs::Result<Self> {
        let string = rquickjs::String::from_value(value)?;
        to_rust(ctx, &string).map(Usv)
    }
}

/// `string` as a Rust string, unpaired surrogates replaced by U+FFFD.
pub(crate) fn to_rust<'js>(ctx: &Ctx<'js>, string: &rquickjs::String<'js>) -> rquickjs::Result<String> {
    match string.to_string() {
        Err(rquickjs::Error::Utf8(_)) => {}
        other => return other,
    }
    let unrepresentable = || rquickjs::Error::new_from_js("string", "Unicode text");
    // The engine's JSON writer escapes every unpaired surrogate, so its
    // output is ASCII wherever the string was not valid Unicode.
    let json = ctx.json_stringify(string.clone())?.ok_or_else(unrepresentable)?.to_string()?;
    serde_json::from_str(&replace_lone_surrogate_escapes(&json)).map_err(|_| unrepresentable())
}

/// The text of a value the way `String(value)` would give it, for messages:
/// strings as they are (see [`to_rust`]), anything else coerced. `None` for
/// `undefined` and for values whose conversion throws.
pub(crate) fn describe_value<'js>(ctx: &Ctx<'js>, value: &Value<'js>) -> Option<String> {
    if value.is_undefined() {
        return None;
    }
    let string = match value.as_string() {
        Some(s) => s.clone(),
        None => value.get::<rquickjs::Coerced<rquickjs::String>>().ok()?.0,
    };
    to_rust(ctx, &string).ok()
}

/// JSON text with each `\uXXXX` escape of an unpaired surrogate replaced by
/// `\ufffd`. Pairs (a high surrogate escape followed at once by a low one)
/// and everything else are copied unchanged. Used on JSON written by the
/// engine, which escapes unpaired surrogates as ECMAScript requires but
/// which JSON parsers for Unicode text (serde_json's) refuse.
pub(crate) fn replace_lone_surrogate_escapes(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(at) = rest.find('\\') {
        let (before, from_backslash) = rest.split_at(at);
        out.push_str(before);
        match escaped_unit(from_backslash) {
            Some(unit) if (0xd800..0xdc00).contains(&unit) => {
                let after = from_backslash.get(6..).unwrap_or("");
                match escaped_unit(after) {
                    Some(low) if (0xdc00..0xe000).contains(&low) => {
                        out.push_str(from_backslash.get(..12).unwrap_or(""));
                        rest = from_backslash.get(12..).unwrap_or("");
                    }
                    _ => {
                        out.push_str("\\ufffd");
                        rest = after;
                    }
                }
            }
            Some(unit) if (0xdc00..0xe000).contains(&unit) => {
                out.push_str("\\ufffd");
                rest = from_backslash.get(6..).unwrap_or("");
            }
            _ => {
                // Any other escape: the backslash and the character after it
                // (which may itself be a backslash) go through unchanged.
                let len = from_backslash.chars().take(2).map(char::len_utf8).sum();
                let (escape, after) = from_backslash.split_at(len);
                out.push_str(escape);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The code unit of a `\uXXXX` escape at the start of `s`, if there is one.
fn escaped_unit(s: &str) -> Option<u32> {
    let hex = s.strip_prefix("\\u")?.get(..4)?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogate_escapes_become_replacement_characters() {
        assert_eq!(replace_lone_surrogate_escapes(r#""a\ud800b""#), r#""a\ufffdb""#);
        assert_eq!(replace_lone_surrogate_escapes(r#""\udc00""#), r#""\ufffd""#);
        assert_eq!(replace_lone_surrogate_escapes(r#""\ud800\ud800\udc00""#), r#""\ufffd\ud800\udc00""#);
        assert_eq!(replace_lone_surrogate_escapes(r#"["\uDBFF","x"]"#), r#"["\ufffd","x"]"#);
        // A high surrogate at the very end of the text.
        assert_eq!(replace_lone_surrogate_escapes(r"\ud83d"), r"\ufffd");
    }

    #[test]
    fn pairs_and_other_escapes_are_untouched() {
        for json in [
            r#""\ud83d\ude00""#,
            r#""\\ud800""#, // an escaped backslash followed by the letters "ud800"
            r#""\\\ud83d\ude00\n\"\u00e9""#,
            r#"{"k\u0041":"é 😀"}"#,
            r#""\u12""#, // malformed: left for the parser to refuse
            "",
        ] {
            assert_eq!(replace_lone_surrogate_escapes(json), json);
        }
    }

    #[test]
    fn repaired_text_parses_as_json() {
        let repaired = replace_lone_surrogate_escapes(r#"{"a\udc01":["x\ud83d","\\ud800\ud83d\ude00"]}"#);
        let value: serde_json::Value = serde_json::from_str(&repaired).expect("valid JSON after repair");
        assert_eq!(value, serde_json::json!({ "a\u{fffd}": ["x\u{fffd}", "\\ud800😀"] }));
    }
}
