//! `Intl` and the built-in methods Node.js bases on it (`toLocaleString`,
//! `toLocaleDateString`, `toLocaleTimeString`, `localeCompare`), against
//! Node.js itself.
//!
//! `data/intl-cases.js` runs 1,036 cases; `data/intl-node.txt` is what Node.js
//! v20.20.2 printed for them, in UTC:
//!
//! ```sh
//! cp crates/kiln-js/tests/data/intl-cases.js /tmp/ic.mjs
//! TZ=UTC node -e "import('/tmp/ic.mjs').then(m => console.log(m.cases().join('\n')))" \
//!   > crates/kiln-js/tests/data/intl-node.txt
//! ```
//!
//! Kiln must print the same, line for line, except where it is known to
//! differ ([`KILN_DIFFERS`]).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::{App, FakeHost, INDEX, err, ok, run_index};
use serde_json::json;

const CASES: &str = include_str!("data/intl-cases.js");
const NODE: &str = include_str!("data/intl-node.txt");

/// Lines where Kiln knowingly prints something else: (Node.js, Kiln).
const KILN_DIFFERS: [(&str, &str); 12] = [
    // Node 20's ICU shows midnight as 24 with `hour12: false` (hourCycle
    // h24 for en-US); Kiln uses h23, as the option means and later ICU does.
    (
        r#"dtf {"hour":"numeric","minute":"numeric","hour12":false} 2026-11-30T00:00:00.000Z => "24:00""#,
        r#"dtf {"hour":"numeric","minute":"numeric","hour12":false} 2026-11-30T00:00:00.000Z => "00:00""#,
    ),
    (
        r#"dtf {"hour":"numeric","minute":"2-digit","second":"2-digit","hour12":false} 2026-11-30T00:00:00.000Z => "24:00:00""#,
        r#"dtf {"hour":"numeric","minute":"2-digit","second":"2-digit","hour12":false} 2026-11-30T00:00:00.000Z => "00:00:00""#,
    ),
    (
        r#"dtf resolved2 => {"locale":"en","calendar":"gregory","numberingSystem":"latn","timeZone":"UTC","hourCycle":"h24","hour12":false,"hour":"2-digit"}"#,
        r#"dtf resolved2 => {"locale":"en","calendar":"gregory","numberingSystem":"latn","timeZone":"UTC","hourCycle":"h23","hour12":false,"hour":"2-digit"}"#,
    ),
    // Offset time zones: Node 20 refuses them (Node 22 takes them); Kiln does.
    (
        r#"dtf {"timeZone":"+05:30","dateStyle":"medium","timeStyle":"long"} 2026-01-05T09:03:07.045Z => RangeError"#,
        r#"dtf {"timeZone":"+05:30","dateStyle":"medium","timeStyle":"long"} 2026-01-05T09:03:07.045Z => "Jan 5, 2026, 2:33:07 PM GMT+5:30""#,
    ),
    (
        r#"dtf {"timeZone":"+05:30","dateStyle":"medium","timeStyle":"long"} 2026-11-30T00:00:00.000Z => RangeError"#,
        r#"dtf {"timeZone":"+05:30","dateStyle":"medium","timeStyle":"long"} 2026-11-30T00:00:00.000Z => "Nov 30, 2026, 5:30:00 AM GMT+5:30""#,
    ),
    (
        r#"dtf {"timeZone":"+05:30","dateStyle":"medium","timeStyle":"long"} 2026-07-04T12:30:00.000Z => RangeError"#,
        r#"dtf {"timeZone":"+05:30","dateStyle":"medium","timeStyle":"long"} 2026-07-04T12:30:00.000Z => "Jul 4, 2026, 6:00:00 PM GMT+5:30""#,
    ),
    // ICU keeps the old name of some zones as their canonical one; Kiln's
    // database (jiff's IANA data) uses the current name.
    (r#"tz resolved Asia/Kolkata => "Asia/Calcutta""#, r#"tz resolved Asia/Kolkata => "Asia/Kolkata""#),
    // Every locale is formatted as en-US.
    (
        r#"toLocaleString en-GB => "05/01/2026, 09:03:07""#,
        r#"toLocaleString en-GB => "1/5/2026, 9:03:07 AM""#,
    ),
    (
        r#"toLocaleString en-GB => "30/11/2026, 00:00:00""#,
        r#"toLocaleString en-GB => "11/30/2026, 12:00:00 AM""#,
    ),
    (
        r#"toLocaleString en-GB => "04/07/2026, 12:30:00""#,
        r#"toLocaleString en-GB => "7/4/2026, 12:30:00 PM""#,
    ),
    (r#"supported => ["en-GB","fr"]"#, r#"supported => ["en-GB"]"#),
    // The built-in methods Kiln serves are native trampolines without a
    // name (naming each would cost every fresh runtime a property).
    (
        r#"names => ["NumberFormat","toLocaleString","localeCompare","toLocaleDateString"]"#,
        r#"names => ["NumberFormat","","",""]"#,
    ),
];

fn run(code: &str) -> kiln_ipc::Outcome {
    let program = App::new().esm(INDEX, code).load();
    run_index(program, "run", &json!({}), &json!({}), FakeHost::silent()).0
}

#[test]
fn intl_formats_and_compares_as_nodejs_does_in_english() {
    let code = format!("{CASES}\nexport function run() {{ return cases(); }}\n");
    let got = ok(run(&code));
    let got: Vec<&str> = got.as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let node: Vec<&str> = NODE.lines().collect();
    assert_eq!(got.len(), node.len(), "the cases and Node's output have different lengths");
    let mut mismatches = Vec::new();
    let mut differed = Vec::new();
    for (kiln, node) in got.iter().zip(&node) {
        if kiln == node {
            continue;
        }
        if let Some(known) = KILN_DIFFERS.iter().find(|(n, k)| n == node && k == kiln) {
            differed.push(known.0);
            continue;
        }
        mismatches.push(format!("node: {node}\nkiln: {kiln}"));
    }
    assert!(
        mismatches.is_empty(),
        "{} lines differ from Node.js:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    for (node, _) in KILN_DIFFERS {
        assert!(differed.contains(&node), "a known difference no longer occurs: {node}");
    }
}

#[test]
fn the_builtin_methods_use_intl_and_can_be_wrapped_or_replaced() {
    let got = ok(run(r#"
        export function run() {
          const n = (1234.5).toLocaleString();
          const d = Object.getOwnPropertyDescriptor(Number.prototype, 'toLocaleString');
          const sorted = ['b', 'B', 'a', 'A', 'ä'].sort((x, y) => x.localeCompare(y, 'en'));
          // Assigning to one Date gives that Date its own method; others keep Kiln's.
          const mine = new Date(0);
          mine.toLocaleDateString = () => 'mine';
          const other = new Date(0).toLocaleDateString();
          const own = Object.prototype.hasOwnProperty.call(mine, 'toLocaleDateString');
          // A library that wraps a method keeps calling Kiln's through it.
          const original = Date.prototype.toLocaleTimeString;
          Date.prototype.toLocaleTimeString = function (...a) { return 'wrapped ' + original.apply(this, a); };
          const wrapped = [new Date(0).toLocaleTimeString(), new Date(0).toLocaleTimeString()];
          // Replacing the prototype's method replaces it for every string.
          String.prototype.localeCompare = function () { return 42; };
          return {
            n, descriptor: [typeof d.value, d.writable, d.enumerable, d.configurable],
            sorted, mine: mine.toLocaleDateString(), other, own, wrapped, replaced: 'a'.localeCompare('b'),
            zone: Intl.DateTimeFormat().resolvedOptions().timeZone,
          };
        }
    "#));
    assert_eq!(
        got,
        json!({
            "n": "1,234.5", "descriptor": ["function", true, false, true],
            "sorted": ["a", "A", "ä", "b", "B"], "mine": "mine", "other": "1/1/1970", "own": true,
            "wrapped": ["wrapped 12:00:00 AM", "wrapped 12:00:00 AM"], "replaced": 42, "zone": "UTC",
        })
    );
}

#[test]
fn bad_options_and_unknown_time_zones_are_errors_that_say_what_is_wrong() {
    let got = ok(run(r#"
        export function run() {
          const e = (f) => { try { f(); return 'no error'; } catch (x) { return `${x.name}: ${x.message}`; } };
          return [
            e(() => new Intl.NumberFormat('en', { style: 'currency' })),
            e(() => new Intl.NumberFormat('en', { maximumFractionDigits: 1e9 })),
            e(() => new Intl.NumberFormat('en', { style: 'bogus' })),
            e(() => new Intl.DateTimeFormat('en', { timeZone: 'Mars/Olympus_Mons' })),
            e(() => new Date(0).toLocaleString('en', { timeZone: 'Europe/Atlantis' })),
            e(() => new Intl.DateTimeFormat('en', { dateStyle: 'short', month: 'long' })),
            e(() => Intl.getCanonicalLocales('not a locale')),
            e(() => new Intl.DateTimeFormat().format(NaN)),
            new Date(NaN).toLocaleString(),
          ];
        }
    "#));
    let lines: Vec<&str> = got.as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(lines[0], "TypeError: Currency code is required with currency style.");
    assert_eq!(lines[1], "RangeError: maximumFractionDigits value is out of range.");
    assert_eq!(lines[2], "RangeError: Value bogus out of range for Intl.NumberFormat options property style");
    assert_eq!(lines[3], "RangeError: Invalid time zone specified: Mars/Olympus_Mons");
    assert_eq!(lines[4], "RangeError: Invalid time zone specified: Europe/Atlantis");
    assert_eq!(lines[5], "TypeError: Can't set option month when dateStyle is used");
    assert_eq!(lines[6], "RangeError: Incorrect locale information provided");
    assert_eq!(lines[7], "RangeError: Invalid time value");
    assert_eq!(lines[8], "Invalid Date");
}

#[test]
fn intl_is_a_global_defined_on_first_use() {
    // Until something reads it, `Intl` is an accessor: a handler that
    // formats nothing does not load the module.
    let got = ok(run(r#"
        export function run() {
          const before = typeof Object.getOwnPropertyDescriptor(globalThis, 'Intl').get;
          const tag = Object.prototype.toString.call(Intl);
          const after = Object.getOwnPropertyDescriptor(globalThis, 'Intl');
          return [before, tag, typeof after.value, after.enumerable];
        }
    "#));
    assert_eq!(got, json!(["function", "[object Intl]", "object", false]));
    let thrown = err(run("export function run() { return Intl.NumberFormat.prototype.format; }"));
    assert!(thrown.message.contains("incompatible receiver"), "{thrown:?}");
}
