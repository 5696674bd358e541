//! Every broken manifest under `tests/fixtures/manifests/invalid/` is refused,
//! and the full message (location, key, hint) matches its `.expected` golden
//! file. Set `KILN_BLESS=1` to rewrite the golden files after an intended
//! change, then review the diff.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::path::{Path, PathBuf};

use kiln_manifest::{Code, NoVariables, Pos, Severity, parse_str};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/manifests/invalid")
}

#[test]
fn every_invalid_fixture_is_refused_with_its_golden_message() {
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut seen = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    entries.sort();
    for path in entries {
        seen += 1;
        let source = std::fs::read_to_string(&path).unwrap();
        let rendered = match parse_str("manifest.yml", &source, &NoVariables) {
            Ok(_) => {
                failures.push(format!("{} was accepted", path.display()));
                continue;
            }
            Err(e) => e.to_string(),
        };
        let golden = path.with_extension("expected");
        if bless {
            std::fs::write(&golden, &rendered).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(want) if want == rendered => {}
            Ok(want) => {
                failures.push(format!("{}:\n--- expected\n{want}--- got\n{rendered}", path.display()))
            }
            Err(_) => failures
                .push(format!("{} has no golden file; run with KILN_BLESS=1\n{rendered}", path.display())),
        }
    }
    assert!(seen >= 15, "only {seen} invalid fixtures");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn first_error(source: &str) -> kiln_manifest::Diagnostic {
    let err = parse_str("manifest.yml", source, &NoVariables).expect_err("must be refused");
    err.diagnostics.into_iter().find(|d| d.severity == Severity::Error).expect("an error")
}

const HEAD: &str = "app:\n  id: ari:cloud:ecosystem::app/0b6a6f4e-1c55-4a7e-9d1e-1f2a3b4c5d6e\n  runtime:\n    name: nodejs22.x\n";

#[test]
fn unknown_scope_points_at_the_scope_and_suggests_the_nearest() {
    let d = first_error(&format!(
        "{HEAD}modules:\n  function:\n    - key: main\n      handler: index.run\npermissions:\n  scopes:\n    - read:jira-work\n    - write:jira-wrok\n"
    ));
    assert_eq!(d.code, Code::UnknownScope);
    assert_eq!(d.pos, Pos { line: 12, column: 7 });
    assert_eq!(d.path, "permissions.scopes");
    assert!(d.hint.contains("'write:jira-work'"), "{}", d.hint);
}

#[test]
fn dangling_function_reference_names_the_declared_functions() {
    let d = first_error(&format!(
        "{HEAD}modules:\n  webtrigger:\n    - key: hook\n      function: handlr\n  function:\n    - key: handler\n      handler: index.run\n"
    ));
    assert_eq!(d.code, Code::DanglingReference);
    assert_eq!(d.path, "modules.webtrigger[0].function");
    assert_eq!(d.pos, Pos { line: 8, column: 17 });
    assert!(d.hint.starts_with("did you mean 'handler'?"), "{}", d.hint);
}

#[test]
fn huge_strings_are_refused_before_parsing() {
    let big = "x".repeat(kiln_manifest::yaml::MAX_MANIFEST_BYTES);
    let d = first_error(&format!("{HEAD}  description: \"{big}\"\n"));
    assert_eq!(d.code, Code::TooLarge);
}

#[test]
fn long_description_is_refused_at_its_key() {
    let long = "x".repeat(1001);
    let d = first_error(&format!(
        "{HEAD}  description: {long}\nmodules:\n  function:\n    - key: main\n      handler: index.run\n"
    ));
    assert_eq!(d.code, Code::TooLarge);
    assert_eq!(d.path, "app.description");
    assert_eq!(d.pos.line, 5);
}

#[test]
fn wrong_types_everywhere_fail_cleanly() {
    // Each value replaced by the wrong kind of YAML; none may panic, all must
    // be refused with a wrong-type or invalid-value error.
    let cases = [
        "app: 7\nmodules: {}\n",
        "app: [a, b]\nmodules: {}\n",
        &format!("{HEAD}modules:\n  function: main\n"),
        &format!("{HEAD}modules:\n  function:\n    - key: [main]\n      handler: index.run\n"),
        &format!("{HEAD}modules:\n  function:\n    - key: main\n      handler: {{a: b}}\n"),
        &format!(
            "{HEAD}modules:\n  function:\n    - key: main\n      handler: index.run\n      timeoutSeconds: soon\n"
        ),
        &format!(
            "{HEAD}modules:\n  function:\n    - key: main\n      handler: index.run\npermissions:\n  external: [a]\n"
        ),
        &format!(
            "{HEAD}modules:\n  function:\n    - key: main\n      handler: index.run\npermissions:\n  scopes: {{read:jira-work: yes-please}}\n"
        ),
        &format!("{HEAD}modules:\n  function:\n    - main\n"),
        "app:\n  id: ari:cloud:ecosystem::app/0b6a6f4e-1c55-4a7e-9d1e-1f2a3b4c5d6e\n  runtime:\n    name: nodejs22.x\n    snapshots: sometimes\nmodules:\n  function:\n    - {key: main, handler: index.run}\n",
        &format!(
            "{HEAD}modules:\n  function:\n    - key: main\n      handler: index.run\nremotes: {{key: x}}\n"
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        let err = parse_str("manifest.yml", case, &NoVariables);
        let err = err.err().unwrap_or_else(|| panic!("case {i} was accepted:\n{case}"));
        assert!(
            err.errors().any(|d| matches!(d.code, Code::WrongType | Code::InvalidValue | Code::MissingKey)),
            "case {i}: {err}"
        );
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let err = parse_str(
        "manifest.yml",
        &format!(
            "{HEAD}modules:\n  function:\n    - key: bad key\n      handler: index.run\n    - key: main\n      handler: index\npermissions:\n  scopes: [nope:nope]\n"
        ),
        &NoVariables,
    )
    .unwrap_err();
    assert_eq!(err.errors().count(), 3, "{err}");
}
