//! Local-time `Date` methods in a jailed worker. The C library reads the
//! time zone from a file the first time it is asked; a worker that had not
//! asked before lockdown was killed for the forbidden `openat` the first
//! time app code called `getHours()` (public Forge apps do, e.g. a scheduled
//! trigger comparing the hour of day). Intl's time zones come from a
//! database compiled into the binary, so they too must work after lockdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use kiln_sandbox::Sandbox;

const LOCAL_TIME: &str = r"
export const run = () => {
  const d = new Date(Date.UTC(2024, 0, 15, 9, 30));
  const local = new Date(2024, 0, 15, 9, 30);
  return {
    offsetAgrees: (d.getHours() * 60 + d.getMinutes() + d.getTimezoneOffset() + 1440) % 1440 === 9 * 60 + 30,
    localFields: [local.getFullYear(), local.getMonth(), local.getDate(), local.getHours(), local.getMinutes()],
    toStringHasGmt: d.toString().includes('GMT'),
    localeDate: typeof d.toLocaleDateString(),
  };
};
";

fn local_time_methods_work_in(sandbox: &Sandbox) {
    let app = common::app(LOCAL_TIME);
    for _ in 0..2 {
        let outcome = common::invoke(sandbox, &common::app_id(1), &app, serde_json::json!({})).unwrap();
        assert_eq!(
            common::ok(outcome),
            serde_json::json!({
                "offsetAgrees": true,
                "localFields": [2024, 0, 15, 9, 30],
                "toStringHasGmt": true,
                "localeDate": "string",
            })
        );
    }
}

#[test]
fn local_time_date_methods_do_not_kill_a_forked_worker() {
    local_time_methods_work_in(&common::sandbox_with(0));
}

#[test]
fn local_time_date_methods_do_not_kill_a_worker_that_resets() {
    local_time_methods_work_in(&common::sandbox_with(common::Mode { fork_above_bytes: 0, reset: true }));
}

#[test]
fn local_time_date_methods_do_not_kill_an_in_place_worker() {
    local_time_methods_work_in(&common::sandbox_with(usize::MAX));
}

const TIME_ZONES: &str = r"
export const run = () => {
  const d = new Date(Date.UTC(2026, 6, 4, 12, 30));
  return [
    d.toLocaleString('en-US', { timeZone: 'America/New_York', timeZoneName: 'short' }),
    new Intl.DateTimeFormat('en-US', { timeZone: 'Australia/Sydney', timeStyle: 'long' }).format(d),
    ['b', 'A', 'a'].sort((x, y) => x.localeCompare(y)),
  ];
};
";

#[test]
fn intl_time_zones_work_in_jailed_workers_of_both_kinds() {
    for (mode, fork_above_bytes) in common::MODES {
        let sandbox = common::sandbox_with(fork_above_bytes);
        let app = common::app(TIME_ZONES);
        for _ in 0..2 {
            let outcome = common::invoke(&sandbox, &common::app_id(1), &app, serde_json::json!({})).unwrap();
            assert_eq!(
                common::ok(outcome),
                serde_json::json!(["7/4/2026, 8:30:00 AM EDT", "10:30:00 PM GMT+10", ["a", "A", "b"]]),
                "{mode}"
            );
        }
    }
}
