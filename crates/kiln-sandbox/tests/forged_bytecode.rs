//! A compromised compile worker hands back forged bytecode. Loading QuickJS
//! bytecode is as powerful as running native code in the engine, so Kiln's
//! defence is where it may go: only into jailed workers of the app whose
//! bundle it was compiled from. These tests play that compiler (through
//! `Sandbox::insert_program`, which only the `testing` feature has) and show
//! that forged bytecode for one app never reaches another app with the same
//! bundle, and that garbage, truncated and bit-flipped bytecode is contained:
//! the server survives, each forged invocation ends with a result or a
//! structured error within its deadline, and healthy apps keep working.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::time::{Duration, Instant};

use common::{App, app, app_id, sandbox};
use kiln_ipc::{CompiledModule, Outcome, Program};
use kiln_sandbox::{Sandbox, SandboxError};

const CODE: &str =
    "export function run(payload) { return { sum: payload.a + payload.b, tag: 'genuine' }; }\n";

fn invoke(sandbox: &Sandbox, id: &str, app: &App) -> Result<Outcome, SandboxError> {
    common::invoke(sandbox, id, app, serde_json::json!({ "a": 2, "b": 3 }))
}

fn genuine(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Ok { result } if result.contains("\"sum\":5") && result.contains("genuine"))
}

/// Replace the bytecode of the app's own module (not Kiln's built-ins).
fn forge(program: &Program, f: impl Fn(&[u8]) -> Vec<u8>) -> Program {
    let mut forged = program.clone();
    let index = forged.modules.iter().position(|m| m.name.contains("index")).expect("the app's module");
    let CompiledModule { name, code } = &forged.modules[index];
    forged.modules[index] = CompiledModule { name: name.clone(), code: f(code) };
    forged
}

#[test]
fn forged_bytecode_for_one_app_never_reaches_another_with_the_same_bundle() {
    let sandbox = sandbox();
    let app = app(CODE);
    let real = sandbox.program(&app_id(1), &app.bundle.hash, &app.bundle.bundle).unwrap();
    // The compiler of app 1 was compromised: its program now returns a lie.
    let liar = common::app("export function run() { return { sum: 5, tag: 'forged' }; }\n");
    let lie = sandbox.program(&app_id(99), &liar.bundle.hash, &liar.bundle.bundle).unwrap();
    let mut forged = (*real).clone();
    forged.modules = lie.modules.clone();
    sandbox.insert_program(&app_id(1), &app.bundle.hash, forged);

    let outcome = invoke(&sandbox, &app_id(1), &app).unwrap();
    assert!(matches!(&outcome, Outcome::Ok { result } if result.contains("forged")), "{outcome:?}");
    // App 2 deploys the very same bundle (same digest): it gets its own
    // compile, not app 1's bytecode.
    let outcome = invoke(&sandbox, &app_id(2), &app).unwrap();
    assert!(genuine(&outcome), "app 2 ran app 1's forged bytecode: {outcome:?}");
}

#[test]
fn garbage_truncated_and_bit_flipped_bytecode_is_contained() {
    let sandbox = sandbox();
    let app = app(CODE);
    let real = sandbox.program(&app_id(1), &app.bundle.hash, &app.bundle.bundle).unwrap();
    assert!(genuine(&invoke(&sandbox, &app_id(1), &app).unwrap()));

    let mut forgeries: Vec<(String, Program)> = vec![
        ("empty".into(), forge(&real, |_| Vec::new())),
        ("garbage".into(), forge(&real, |c| (0..c.len()).map(|i| (i * 151 + 7) as u8).collect())),
        ("truncated".into(), forge(&real, |c| c[..c.len() / 2].to_vec())),
        ("one byte".into(), forge(&real, |c| c[..1].to_vec())),
    ];
    // Flip one byte at spread-out positions, each with a different pattern.
    // QuickJS checks a checksum over the bytecode (bytes 1..5) but accepts
    // 0xFFFFFFFF as "unchecked", so a forger can skip it: half of these do,
    // and reach the parser and the interpreter with corrupt bytecode.
    let len = real.modules.iter().find(|m| m.name.contains("index")).unwrap().code.len();
    for k in 0..48 {
        let at = 5 + (k * 7919 + 13) % (len - 5);
        let mask = [0x01u8, 0x80, 0xff, 0x10][k % 4];
        let skip_checksum = k % 2 == 0;
        forgeries.push((
            format!("byte {at} ^ {mask:#04x}{}", if skip_checksum { ", checksum skipped" } else { "" }),
            forge(&real, move |c| {
                let mut c = c.to_vec();
                c[at] ^= mask;
                if skip_checksum {
                    c[1..5].copy_from_slice(&[0xff; 4]);
                }
                c
            }),
        ));
    }

    let mut contained = [0usize; 4]; // ok, structured error, refused at start, genuine anyway
    for (n, (what, program)) in forgeries.into_iter().enumerate() {
        let id = app_id(1000 + n);
        sandbox.insert_program(&id, &app.bundle.hash, program);
        let started = Instant::now();
        let result = invoke(&sandbox, &id, &app);
        // Deadline 1 s; killing and reporting a stuck worker takes a little more.
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: took {:?}", started.elapsed());
        match result {
            Ok(outcome) if genuine(&outcome) => contained[3] += 1,
            Ok(Outcome::Ok { .. }) => contained[0] += 1,
            Ok(Outcome::Err(e)) => {
                let message: String = e.message.chars().take(120).collect();
                eprintln!("{what}: {:?} {message}", e.code);
                contained[1] += 1;
            }
            Err(SandboxError::Platform(_) | SandboxError::Jail(_)) => contained[2] += 1,
            Err(e) => panic!("{what}: unexpected {e}"),
        }
        // The server survives and a healthy app still runs.
        assert!(genuine(&invoke(&sandbox, &app_id(1), &app).unwrap()), "after {what}");
    }
    eprintln!(
        "forged bytecode: {} returned something, {} ended in a structured error, {} were refused at worker start, {} ran as if genuine",
        contained[0], contained[1], contained[2], contained[3]
    );
    assert!(
        contained[1] + contained[2] > 0,
        "no forgery was even detected: is the forged module the one that runs?"
    );
}
