//! The `kiln` binary end to end: the commands a user types, their output,
//! their exit status, and what they leave in the data directory.
//!
//! Golden files live in `tests/golden/`; set `KILN_BLESS=1` to rewrite them
//! after an intended change, then review the diff.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{KillOnDrop, Kiln, code, listening, repo, text};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn valid_apps() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/fixtures/apps/valid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("manifest.yml").exists())
        .collect();
    dirs.sort();
    dirs.insert(0, repo().join("examples/issue-triage"));
    dirs
}

#[test]
fn dry_run_accepts_the_example_and_every_valid_fixture_without_creating_state() {
    let kiln = Kiln::new();
    let apps = valid_apps();
    assert!(apps.len() >= 11, "need the example and at least ten fixtures");
    for dir in &apps {
        let out = kiln.run(&["deploy", "--dry-run", dir.to_str().unwrap()]);
        assert_eq!(code(&out), 0, "{}:\n{}", dir.display(), text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("Dry run: would deploy version 1.0.0 of ari:cloud:ecosystem::app/"),
            "{stdout}"
        );
        assert!(stdout.ends_with("Nothing was stored.\n"), "{stdout}");
    }
    assert!(!kiln.data_dir().exists(), "a dry run must not create the data directory");
}

/// Every broken manifest is refused by `kiln deploy --dry-run` with exit 2 and
/// the message pinned in its golden file (location, key and hint).
#[test]
fn dry_run_rejects_every_invalid_manifest_with_its_location_and_hint() {
    let kiln = Kiln::new();
    let fixtures = repo().join("tests/fixtures/manifests/invalid");
    let mut seen = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yml") {
            continue;
        }
        seen += 1;
        let app = tempfile::tempdir().unwrap();
        std::fs::copy(&path, app.path().join("manifest.yml")).unwrap();
        std::fs::create_dir_all(app.path().join("src")).unwrap();
        std::fs::write(app.path().join("src/index.js"), "exports.run = () => 1;\n").unwrap();
        let out = kiln.run(&["deploy", "--dry-run", app.path().to_str().unwrap()]);
        assert_eq!(code(&out), 2, "{}:\n{}", path.display(), text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr).replace(&app.path().display().to_string(), "APP");
        let golden = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        // The first error line and its hint, exactly as pinned.
        let pinned: Vec<&str> = golden.lines().skip(1).take(2).collect();
        let first = pinned[0].replacen("manifest.yml:", "APP/manifest.yml:", 1);
        assert!(stderr.contains(&first), "{}: expected {first:?} in\n{stderr}", path.display());
        assert!(stderr.contains(pinned[1]), "{}: expected {:?} in\n{stderr}", path.display(), pinned[1]);
    }
    assert!(seen >= 15);
    assert!(!kiln.data_dir().exists());
}

/// Replace what changes from run to run (times, digests, ids, temp paths).
fn normalize(s: &str, tmp: &Path) -> String {
    let s = s.replace(&tmp.display().to_string(), "TMP");
    let mut out = String::new();
    for line in s.lines() {
        let words: Vec<String> = line
            .split(' ')
            .map(|w| {
                if let Some(rest) = w.strip_prefix("sha256:")
                    && rest.len() >= 64
                {
                    return format!("sha256:<digest>{}", &rest[64..]);
                }
                let hex = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit());
                if w.len() == 12 && hex(w) {
                    return "<digest12>".into();
                }
                let parts: Vec<&str> = w.split('-').collect();
                if parts.len() == 5
                    && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
                    && parts.iter().all(|p| hex(p))
                {
                    return "<uuid>".into();
                }
                let date = w.len() == 10 && w.as_bytes()[4] == b'-' && w.as_bytes()[7] == b'-';
                let time = w.len() == 8 && w.as_bytes()[2] == b':' && w.as_bytes()[5] == b':';
                if date {
                    return "<date>".into();
                }
                if time {
                    return "<time>".into();
                }
                w.to_owned()
            })
            .collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with KILN_BLESS=1\n{actual}", path.display()));
    assert_eq!(expected, actual, "golden file {} differs (KILN_BLESS=1 to update)", path.display());
}

/// The whole life of the example app through the command line: the output
/// of each step is pinned in `tests/golden/lifecycle.txt`.
#[test]
fn the_example_app_lifecycle_through_the_cli() {
    let kiln = Kiln::new();
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("issue-triage");
    copy_dir(&repo().join("examples/issue-triage"), &app);
    let mut transcript = String::new();
    let mut step = |label: &str, args: &[&str], want: i32| {
        let out = kiln.run_in(&app, args);
        transcript.push_str(&format!("$ kiln {}   # {label}\n", args.join(" ")));
        transcript.push_str(&text(&out));
        transcript.push_str(&format!("[exit {}]\n\n", code(&out)));
        assert_eq!(code(&out), want, "{label}:\n{}", text(&out));
    };
    step("first deploy", &["deploy"], 0);
    step("install on a Jira site", &["install", "--site", "https://acme.atlassian.net"], 0);
    step("a second site", &["install", "--site", "globex.atlassian.net"], 0);
    step("installing twice is refused", &["install", "--site", "acme.atlassian.net"], 1);
    step("a plain http site is bad input", &["install", "--site", "http://insecure.example"], 2);

    // Code-only change: minor, rolled out to both sites.
    let index = app.join("src/index.ts");
    let code_text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, format!("{code_text}\nexport const codeOnlyChange = true;\n")).unwrap();
    step("code-only change", &["deploy"], 0);

    // New scope and new egress: major, pending everywhere.
    let manifest = app.join("manifest.yml");
    let m = std::fs::read_to_string(&manifest).unwrap();
    let m = m.replace("    - storage:app\n", "    - storage:app\n    - read:jira-user\n").replace(
        "        - api.example.com\n",
        "        - api.example.com\n        - '*.hooks.example.org'\n",
    );
    std::fs::write(&manifest, m).unwrap();
    step("what a major deploy would do", &["deploy", "--dry-run"], 0);
    step("scope and egress added", &["deploy"], 0);
    step("versions with pending upgrades", &["versions"], 0);
    step("upgrade without consent is refused", &["upgrade", "--site", "acme.atlassian.net"], 1);
    step("upgrade with consent", &["upgrade", "--site", "acme.atlassian.net", "--yes"], 0);
    step("already current", &["upgrade", "--site", "acme.atlassian.net"], 0);
    step("rollback within consent", &["rollback", "--site", "acme.atlassian.net"], 0);
    step(
        "rollback to an older version within consent",
        &["rollback", "--site", "globex.atlassian.net", "--to", "1.0.0"],
        0,
    );
    step(
        "a version that does not exist",
        &["rollback", "--site", "globex.atlassian.net", "--to", "7.0.0"],
        2,
    );
    step("final state", &["versions"], 0);
    step("the audit trail verifies", &["audit", "verify"], 0);
    step("the latest records", &["audit", "tail", "-n", "4"], 0);
    let transcript = transcript.replace(&kiln.data.path().display().to_string(), "KILN");
    check_golden("lifecycle.txt", &normalize(&transcript, work.path()));
}

#[test]
fn rollback_to_a_version_with_more_permissions_is_refused_and_changes_nothing() {
    let kiln = Kiln::new();
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    copy_dir(&repo().join("examples/issue-triage"), &app);
    assert_eq!(code(&kiln.run_in(&app, &["deploy"])), 0);
    // 2.0.0 drops write access; a site installed on 2.0.0 never consented to it.
    let manifest = app.join("manifest.yml");
    let m = std::fs::read_to_string(&manifest).unwrap().replace("    - write:jira-work\n", "");
    std::fs::write(&manifest, m).unwrap();
    let out = kiln.run_in(&app, &["deploy"]);
    assert!(text(&out).contains("removes scope write:jira-work"), "{}", text(&out));
    assert_eq!(code(&kiln.run_in(&app, &["install", "--site", "initech.atlassian.net"])), 0);
    let before = text(&kiln.run_in(&app, &["versions", "--format", "json"]));

    let out = kiln.run_in(&app, &["rollback", "--site", "initech.atlassian.net", "--to", "1.0.0"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("would grant permissions its admin has not consented to"), "{}", text(&out));
    assert!(text(&out).contains("permissions.scopes: adds scope write:jira-work"), "{}", text(&out));
    assert_eq!(text(&kiln.run_in(&app, &["versions", "--format", "json"])), before);
}

#[test]
fn a_hostile_manifest_over_existing_state_fails_cleanly_and_stores_nothing() {
    let kiln = Kiln::new();
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    copy_dir(&repo().join("examples/issue-triage"), &app);
    assert_eq!(code(&kiln.run_in(&app, &["deploy"])), 0);
    let before = text(&kiln.run_in(
        &app,
        &[
            "versions",
            "--app",
            "ari:cloud:ecosystem::app/a857934e-1c9d-4c69-8965-bb82b29f6304",
            "--format",
            "json",
        ],
    ));
    let hostile: [(&str, String); 5] = [
        (
            "yaml bomb",
            std::fs::read_to_string(repo().join("tests/fixtures/manifests/invalid/yaml-bomb.yml")).unwrap(),
        ),
        ("deep nesting", format!("app: {}{}\n", "[".repeat(5000), "]".repeat(5000))),
        ("huge string", format!("app:\n  description: \"{}\"\n", "A".repeat(300 * 1024))),
        ("wrong types", "app: 12\nmodules: [1, 2]\npermissions: yes\n".to_owned()),
        ("binary junk", "\u{0}\u{1}\u{2}\u{3}: \u{7f}\n".to_owned()),
    ];
    for (label, body) in hostile {
        std::fs::write(app.join("manifest.yml"), body).unwrap();
        let out = kiln.run_in(&app, &["deploy"]);
        assert_eq!(code(&out), 2, "{label}: {}", text(&out));
        assert!(text(&out).starts_with("error: "), "{label}: {}", text(&out));
    }
    std::fs::write(app.join("manifest.yml"), [0xff, 0xfe, 0x00, 0x61]).unwrap();
    let out = kiln.run_in(&app, &["deploy"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("not UTF-8"), "{}", text(&out));
    let after = text(&kiln.run_in(
        &app,
        &[
            "versions",
            "--app",
            "ari:cloud:ecosystem::app/a857934e-1c9d-4c69-8965-bb82b29f6304",
            "--format",
            "json",
        ],
    ));
    assert_eq!(before, after);
}

#[test]
fn a_missing_module_fails_the_deploy_with_its_name() {
    let kiln = Kiln::new();
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    copy_dir(&repo().join("examples/issue-triage"), &app);
    std::fs::remove_file(app.join("src/lib/triage.ts")).unwrap();
    let out = kiln.run_in(&app, &["deploy"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("cannot resolve './lib/triage': no such file"), "{}", text(&out));
    assert!(
        !kiln.data_dir().join("kiln.db").exists()
            || text(&kiln.run_in(&app, &["versions"])).contains("no version")
    );
}

#[test]
fn the_data_directory_comes_from_the_flag_then_the_environment() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(repo())
        .args(["deploy", "examples/issue-triage"])
        .env("KILN_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(data.path().join("kiln.db").exists());
}

/// A small app for `kiln invoke`: TypeScript importing CommonJS, logging.
fn invoke_app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("manifest.yml"),
        "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-000000000001\n  runtime:\n    name: nodejs22.x\n    memoryMB: 128\nmodules:\n  webtrigger:\n    - key: hook\n      function: greet\n    - key: boom-hook\n      function: boom\n    - key: slow-hook\n      function: slow\n  function:\n    - key: greet\n      handler: index.greet\n    - key: boom\n      handler: index.boom\n    - key: slow\n      handler: index.slow\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(
        p.join("src/index.ts"),
        "import { shout } from './shout';\ninterface Req { name: string }\nexport async function greet(req: Req, ctx: { installContext: string }) {\n  console.log('greeting', req.name);\n  return { message: shout(`hello ${req.name}`), site: ctx.installContext };\n}\nexport function boom(): never { throw new RangeError('nope'); }\nexport async function slow() { await new Promise((r) => setTimeout(r, 60_000)); }\n",
    )
    .unwrap();
    std::fs::write(p.join("src/shout.js"), "exports.shout = (s) => s.toUpperCase() + '!';\n").unwrap();
    dir
}

#[test]
fn process_env_holds_the_apps_variables_for_the_environment_and_nothing_of_the_host() {
    let kiln = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("manifest.yml"),
        "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000e1\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: hook\n      function: env\n  function:\n    - key: env\n      handler: index.env\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("src")).unwrap();
    // Read once at the top level, as libraries do, and again in the handler.
    std::fs::write(
        p.join("src/index.js"),
        "const atLoad = process.env.GREETING;\nexport function env() { return { atLoad: atLoad ?? null, now: { ...process.env } }; }\n",
    )
    .unwrap();
    let app = p.to_str().unwrap();
    let env_of = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["invoke", "env", app];
        args.extend_from_slice(extra);
        let out = kiln.run(&args);
        assert_eq!(code(&out), 0, "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(
        env_of(&[]),
        serde_json::json!({ "atLoad": null, "now": {} }),
        "nothing of the host's environment"
    );

    kiln.ok(&["variables", "set", "GREETING", "hello", "--app", app]);
    kiln.ok(&["variables", "set", "API_TOKEN", "s3cret-value", "--encrypt", "--app", app]);
    kiln.ok(&["variables", "set", "GREETING", "hi from staging", "--app", app, "-e", "staging"]);
    assert_eq!(
        env_of(&[]),
        serde_json::json!({ "atLoad": "hello", "now": { "API_TOKEN": "s3cret-value", "GREETING": "hello" } }),
        "encrypted variables reach the app's own code, and top-level reads see them"
    );
    assert_eq!(
        env_of(&["-e", "staging"]),
        serde_json::json!({ "atLoad": "hi from staging", "now": { "GREETING": "hi from staging" } })
    );
}

#[test]
fn get_app_context_and_permissions_describe_the_invocation_from_the_server() {
    let kiln = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("manifest.yml"),
        "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000e2\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: hook\n      function: ctx\n  function:\n    - key: ctx\n      handler: index.ctx\npermissions:\n  scopes:\n    - read:jira-work\n  external:\n    fetch:\n      backend:\n        - '*.example.com'\n        - https://api.other.org\n    images:\n      - images.example.net\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(
        p.join("src/index.js"),
        r#"import { getAppContext, permissions } from '@forge/api';
export function ctx() {
  const c = getAppContext();
  const left = c.invocationRemainingTimeInMillis();
  return {
    appAri: c.appAri, environmentAri: c.environmentAri, environmentType: c.environmentType,
    installationAri: c.installationAri, moduleKey: c.moduleKey, appVersion: c.appVersion,
    scopes: c.permissions.scopes, leftInRange: left > 0 && left <= 55000,
    hasScope: [permissions.hasScope('read:jira-work'), permissions.hasScope('write:jira-work')],
    fetch: ['https://a.example.com/x', 'https://example.com/', 'https://api.other.org/y', 'https://evil.org/']
      .map((u) => permissions.canFetchFrom('backend', u)),
    images: [permissions.canLoadResource('images', 'https://images.example.net/a.png'), permissions.canLoadResource('images', 'https://x.org/')],
    missing: permissions.hasPermission({ scopes: ['read:jira-work', 'manage:jira-configuration'], external: { fetch: { backend: ['https://b.example.com', 'https://nope.io'] } } }),
    granted: permissions.hasPermission({ scopes: ['read:jira-work'] }),
  };
}
"#,
    )
    .unwrap();
    let out = kiln.run(&["invoke", "ctx", p.to_str().unwrap(), "-e", "staging"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "appAri": "ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000e2",
            "environmentAri": "ari:cloud:ecosystem::environment/7d1c2b3a-0000-4000-8000-0000000000e2/staging",
            "environmentType": "STAGING",
            "installationAri": "ari:cloud:ecosystem::installation/local",
            "moduleKey": "ctx",
            "appVersion": null,
            "scopes": ["read:jira-work"],
            "leftInRange": true,
            "hasScope": [true, false],
            "fetch": [true, false, true, false],
            "images": [true, false],
            "missing": { "granted": false, "missing": {
                "scopes": ["manage:jira-configuration"],
                "external": { "fetch": { "backend": ["https://nope.io"] } },
            } },
            "granted": { "granted": true },
        })
    );
}

#[test]
fn authorize_checks_the_session_users_permissions_through_the_product() {
    let kiln = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("manifest.yml"),
        "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000e3\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: hook\n      function: auth\n  function:\n    - key: auth\n      handler: index.auth\npermissions:\n  scopes:\n    - read:jira-work\n    - read:confluence-content.permission\n    - read:permission:jira\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(
        p.join("src/index.js"),
        r#"import api, { authorize, route, bindInvocationContext } from '@forge/api';
export async function auth() {
  const issue = await (await api.asUser().requestJira(route`/rest/api/3/issue/KILN-1`)).json();
  const a = authorize();
  const later = bindInvocationContext(() => 'bound');
  return {
    issue: [await a.onJiraIssue(issue.id).canEdit(), await a.onJiraIssue([issue.id]).canDelete()],
    projects: [await a.onJiraProject('10000').canCreateIssues(), await a.onJiraProject(['10001']).canCreateIssues()],
    page: [await a.onConfluenceContent('1001').canRead(), await a.onConfluenceContent('1001').canUpdate()],
    bound: later(),
  };
}
"#,
    )
    .unwrap();
    let app = p.to_str().unwrap();
    let (base, _, _site) = kiln.devsite(5);
    // Without a user in session there is nobody to check.
    let out = kiln.run(&["invoke", "auth", app, "--devsite", &base]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("needs a user in session"), "{}", text(&out));
    // Bob may edit KILN issues but not delete them, and cannot create in SEC.
    kiln.ok(&["consent", "--devsite", &base, "--account-id", "557058:bob", app]);
    let out = kiln.run(&["invoke", "auth", app, "--devsite", &base, "--account-id", "557058:bob"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "issue": [true, false], "projects": [true, false], "page": [true, true], "bound": "bound",
        })
    );
}

#[test]
fn web_triggers_run_the_installations_function_with_forges_request_and_response() {
    let kiln = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("manifest.yml"),
        "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000e4\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: hook\n      function: hook-fn\n    - key: ping\n      function: ping-fn\n      response:\n        type: static\n        outputs:\n          - key: ok\n            statusCode: 202\n            contentType: text/plain\n            body: pong\n    - key: bomb\n      function: bomb-fn\n    - key: throws\n      function: throws-fn\n  function:\n    - key: hook-fn\n      handler: index.hook\n    - key: ping-fn\n      handler: index.ping\n    - key: bomb-fn\n      handler: index.bomb\n    - key: throws-fn\n      handler: index.throws\npermissions:\n  scopes:\n    - storage:app\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(
        p.join("src/index.js"),
        r#"import { kvs } from '@forge/kvs';
import { webTrigger } from '@forge/api';
export async function hook(req, ctx) {
  if (req.path === '/url') return { statusCode: 200, body: await webTrigger.getUrl('ping') };
  const n = ((await kvs.get('count')) ?? 0) + 1;
  await kvs.set('count', n);
  return {
    statusCode: 201,
    headers: { 'X-Kiln': ['one', 'two'], 'Content-Type': ['application/json'] },
    body: JSON.stringify({ n, method: req.method, path: req.path, q: req.queryParameters,
      probe: req.headers['x-probe'], body: req.body, env: ctx.environmentType }),
  };
}
export function ping() { return { outputKey: 'ok' }; }
export function bomb() { const a = []; for (;;) a.push(new Array(1e6).fill(1)); }
export function throws() { throw new Error('secret detail'); }
"#,
    )
    .unwrap();
    let app = p.to_str().unwrap();
    kiln.ok(&["deploy", app]);
    kiln.ok(&["install", "--site", "https://a.atlassian.net", "--product", "jira", "--app", app]);
    kiln.ok(&["install", "--site", "https://b.atlassian.net", "--product", "jira", "--app", app]);
    let (base, _server) = serve_with(&kiln, &["--webtrigger-rate", "9"]);
    let addr = base.strip_prefix("https://").unwrap().to_owned();
    let url = |site: &str, module: &str| {
        kiln.ok(&["webtrigger", module, "--site", site, "--app", app, "--base-url", &base]).trim().to_owned()
    };
    let a = url("https://a.atlassian.net", "hook");
    assert_eq!(url("https://a.atlassian.net", "hook"), a, "a URL is made once and shown again");
    let b = url("https://b.atlassian.net", "hook");
    assert_ne!(a, b);
    let missing = kiln.run(&["webtrigger", "nope", "--site", "https://a.atlassian.net", "--app", app]);
    assert_eq!(code(&missing), 1);
    assert!(text(&missing).contains("its web triggers are: hook, ping, bomb, throws"), "{}", text(&missing));

    let ca = std::fs::read_to_string(kiln.data_dir().join("tls/cert.pem")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client =
        kiln_http::HttpsClient::new(&addr, "127.0.0.1", kiln_crypto::tls::client_config(&ca).unwrap());
    let call = |method: kiln_http::Method, url: &str, body: Option<&[u8]>| {
        let path = url.strip_prefix(&base).unwrap().to_owned();
        rt.block_on(client.send(method, &path, &[("x-probe", "p1")], body)).unwrap()
    };
    let first = call(kiln_http::Method::POST, &format!("{a}/sub/path?x=1&x=2&y="), Some(b"hello"));
    assert_eq!(first.status.as_u16(), 201, "{}", first.text());
    assert_eq!(first.headers["x-ratelimit-limit"], "9");
    assert_eq!(first.headers["x-ratelimit-remaining"], "8");
    let kiln_headers: Vec<&str> =
        first.headers.get_all("x-kiln").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(kiln_headers, ["one", "two"]);
    assert_eq!(
        first.json(),
        serde_json::json!({
            "n": 1, "method": "POST", "path": "/sub/path", "q": { "x": ["1", "2"], "y": [""] },
            "probe": ["p1"], "body": "hello", "env": "DEVELOPMENT",
        })
    );
    assert_eq!(call(kiln_http::Method::POST, &a, None).json()["n"], 2, "the installation's storage persists");
    assert_eq!(
        call(kiln_http::Method::GET, &b, None).json()["n"],
        1,
        "each installation has its own storage"
    );
    // App code asks for its own URLs: the same as `kiln webtrigger` prints.
    let asked = call(kiln_http::Method::GET, &format!("{a}/url"), None);
    assert_eq!(asked.text(), url("https://a.atlassian.net", "ping"));
    let out = kiln.run(&["invoke", "hook-fn", app, "--payload", r#"{"path":"/url"}"#]);
    assert!(text(&out).contains("installations served by kiln serve"), "{}", text(&out));
    assert!(asked.headers["strict-transport-security"].to_str().unwrap().contains("max-age=31536000"));
    // Liveness and readiness, public and saying nothing else.
    let health = call(kiln_http::Method::GET, &format!("{base}/healthz"), None);
    assert_eq!((health.status.as_u16(), health.text().as_str()), (200, "ok"));
    let ready = call(kiln_http::Method::GET, &format!("{base}/readyz"), None);
    assert_eq!((ready.status.as_u16(), ready.text().as_str()), (200, "ready"));
    let ping = call(kiln_http::Method::GET, &url("https://a.atlassian.net", "ping"), None);
    assert_eq!((ping.status.as_u16(), ping.text().as_str()), (202, "pong"));
    assert_eq!(ping.headers["content-type"], "text/plain");
    // A failing function is a 500 that shows nothing of the app's error; a
    // sandbox fault (here the memory limit) is recorded, an app exception is not.
    let thrown = call(kiln_http::Method::GET, &url("https://a.atlassian.net", "throws"), None);
    assert_eq!(thrown.status.as_u16(), 500);
    assert!(!thrown.text().contains("secret detail"), "{}", thrown.text());
    let bombed = call(kiln_http::Method::GET, &url("https://a.atlassian.net", "bomb"), None);
    assert_eq!(bombed.status.as_u16(), 500, "{}", bombed.text());
    let tail = kiln.ok(&["audit", "tail", "-n", "5"]);
    assert!(tail.contains("sandbox.fault") && tail.contains("FUNCTION_OUT_OF_MEMORY"), "{tail}");
    assert!(!tail.contains("secret detail"), "{tail}");
    // Site b's installation has its own allowance (one request used above):
    // use up the rest, then 429 with Retry-After.
    let mut last = None;
    for _ in 0..8 {
        last = Some(call(kiln_http::Method::GET, &format!("{b}/again"), None));
    }
    let last = last.unwrap();
    assert!(last.status.as_u16() < 429 && last.headers["x-ratelimit-remaining"] == "0", "{:?}", last.headers);
    let over = call(kiln_http::Method::GET, &b, None);
    assert_eq!(over.status.as_u16(), 429, "{}", over.text());
    assert!(over.headers.contains_key("retry-after"));
    // Unknown and malformed secrets answer 404 alike.
    let forged = format!("{}/x1/{}", base, "A".repeat(43));
    assert_eq!(call(kiln_http::Method::GET, &forged, None).status.as_u16(), 404);
    assert_eq!(call(kiln_http::Method::GET, &format!("{base}/x1/short"), None).status.as_u16(), 404);
    // The URL's secret is nowhere in the data directory in clear (only its hash, and a sealed copy).
    let secret = a.rsplit('/').next().unwrap();
    for entry in std::fs::read_dir(kiln.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret",
                path.display()
            );
        }
    }
}

#[test]
fn web_triggers_reach_the_product_site_the_settings_name() {
    let kiln = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("manifest.yml"),
        "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000e5\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: jira\n      function: jira-fn\n  function:\n    - key: jira-fn\n      handler: index.jira\npermissions:\n  scopes:\n    - read:jira-work\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(
        p.join("src/index.js"),
        r#"import api, { route } from '@forge/api';
export async function jira() {
  const res = await api.asApp().requestJira(route`/rest/api/3/issue/KILN-1`);
  return { statusCode: 200, body: JSON.stringify({ status: res.status, key: (await res.json()).key }) };
}
"#,
    )
    .unwrap();
    let app = p.to_str().unwrap();
    kiln.ok(&["deploy", app]);
    kiln.ok(&["install", "--site", "https://a.atlassian.net", "--product", "jira", "--app", app]);
    let (site, printed, _devsite) = kiln.devsite(5);
    let cloud_id = printed.iter().find_map(|l| l.trim().strip_prefix("cloud id:")).unwrap().trim().to_owned();
    let ca = kiln.data_dir().join("tls/cert.pem");
    let settings = kiln.data_dir().with_file_name("kiln.toml");
    std::fs::write(
        &settings,
        format!(
            "[product]\nkind = \"cloud\"\nauth_url = \"{site}\"\napi_url = \"{site}\"\ncloud_id = \"{cloud_id}\"\n\
             client_id = \"kiln-dev-client\"\nclient_secret_env = \"KILN_TEST_OAUTH_SECRET\"\n\
             redirect_uri = \"https://localhost/oauth/callback\"\nca_file = \"{}\"\n",
            ca.display()
        ),
    )
    .unwrap();
    let (base, _server) = serve_with(&kiln, &["--config", settings.to_str().unwrap()]);
    let url = kiln.ok(&[
        "webtrigger",
        "jira",
        "--site",
        "https://a.atlassian.net",
        "--app",
        app,
        "--base-url",
        &base,
    ]);
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr = base.strip_prefix("https://").unwrap();
    let client =
        kiln_http::HttpsClient::new(addr, "127.0.0.1", kiln_crypto::tls::client_config(&ca_pem).unwrap());
    let path = url.trim().strip_prefix(&base).unwrap().to_owned();
    let reply = rt.block_on(client.send(kiln_http::Method::GET, &path, &[], None)).unwrap();
    assert_eq!(reply.json(), serde_json::json!({ "status": 200, "key": "KILN-1" }), "{}", reply.text());
    let tail = kiln.ok(&["audit", "tail", "-n", "5"]);
    assert!(tail.contains("product.request") && tail.contains("/rest/api/3/issue/{issueIdOrKey}"), "{tail}");

    // A settings file with a key Kiln does not know, or a secret that is not set, stops the server.
    std::fs::write(&settings, "[product]\nkind = \"cloud\"\ncolour = \"red\"\n").unwrap();
    let bad = kiln.run(&["serve", "--listen", "127.0.0.1:0", "--config", settings.to_str().unwrap()]);
    assert_eq!(code(&bad), 2, "{}", text(&bad));
    assert!(text(&bad).contains("colour"), "{}", text(&bad));
    std::fs::write(
        &settings,
        "[product]\nkind = \"cloud\"\nauth_url = \"https://x\"\napi_url = \"https://x\"\ncloud_id = \"c\"\n\
         client_id = \"i\"\nclient_secret_env = \"KILN_NOT_SET_ANYWHERE\"\nredirect_uri = \"https://x/cb\"\n",
    )
    .unwrap();
    let unset = kiln.run(&["serve", "--listen", "127.0.0.1:0", "--config", settings.to_str().unwrap()]);
    assert_eq!(code(&unset), 2, "{}", text(&unset));
    assert!(text(&unset).contains("KILN_NOT_SET_ANYWHERE"), "{}", text(&unset));
}

#[test]
fn invoke_runs_a_function_in_the_sandbox_and_prints_json() {
    let kiln = Kiln::new();
    let app = invoke_app();
    let dir = app.path().to_str().unwrap();
    let out = kiln.run(&["invoke", "greet", dir, "--payload", r#"{"name":"kiln"}"#]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"message": "HELLO KILN!", "site": "ari:cloud:jira::site/kiln-local"})
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("[INFO] greeting kiln"), "{}", text(&out));

    let out = kiln.run(&["invoke", "boom", dir]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["error"]["code"], "FUNCTION_ERROR");
    assert_eq!(value["error"]["message"], "RangeError: nope");

    let out = kiln.run(&["invoke", "slow", dir, "--timeout-ms", "300"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["error"]["code"], "TIME_OUT");

    let out = kiln.run(&["invoke", "greet", dir, "--payload", "{not json"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let out = kiln.run(&["invoke", "missing", dir]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("its functions are: greet, boom, slow"), "{}", text(&out));
}

/// Payloads up to 5 MB do not fit on a command line: `--payload @FILE` and
/// `--payload -` read them; past 5 MB, or not JSON, the command says so
/// before anything runs.
#[test]
fn invoke_reads_large_payloads_from_a_file_or_standard_input() {
    let kiln = Kiln::new();
    let app = invoke_app();
    let dir = app.path().to_str().unwrap();
    let name = "k".repeat(4 * 1024 * 1024);
    let file = app.path().join("payload.json");
    std::fs::write(&file, serde_json::json!({ "name": name }).to_string()).unwrap();
    let at_file = format!("@{}", file.display());
    let out = kiln.run(&["invoke", "greet", dir, "--payload", &at_file]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["message"].as_str().map(str::len), Some(name.len() + "HELLO !".len()));

    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["--data-dir", kiln.data_dir().to_str().unwrap(), "invoke", "greet", dir, "--payload", "-"])
        .args(["--context", r#"{"installContext":"ari:cloud:jira::site/from-stdin"}"#])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(br#"{"name":"stdin"}"#).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"message": "HELLO STDIN!", "site": "ari:cloud:jira::site/from-stdin"})
    );

    std::fs::write(&file, serde_json::json!({ "name": "k".repeat(5 * 1024 * 1024) }).to_string()).unwrap();
    let out = kiln.run(&["invoke", "greet", dir, "--payload", &at_file]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("holds more than 5242880 bytes (5 MB)"), "{}", text(&out));
    std::fs::write(&file, "{\"name\":").unwrap();
    let out = kiln.run(&["invoke", "greet", dir, "--payload", &at_file]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("payload.json is not JSON: EOF while parsing"), "{}", text(&out));
    let out = kiln.run(&["invoke", "greet", dir, "--payload", "@/nonexistent/payload.json"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("cannot open /nonexistent/payload.json"), "{}", text(&out));
}

/// `kiln ... | head` closes standard output early: the command ends quietly
/// instead of panicking with "failed printing to stdout: Broken pipe".
#[test]
fn a_closed_standard_output_ends_a_command_quietly() {
    let kiln = Kiln::new();
    let app = invoke_app();
    let dir = app.path().to_str().unwrap();
    let payload = serde_json::json!({ "name": "x".repeat(1024 * 1024) }).to_string();
    let file = app.path().join("payload.json");
    std::fs::write(&file, payload).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // closed before the command writes a byte
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["--data-dir", kiln.data_dir().to_str().unwrap(), "invoke", "greet", dir])
        .args(["--payload", &format!("@{}", file.display())])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn invoke_runs_the_example_apps_functions() {
    let kiln = Kiln::new();
    let example = repo().join("examples/issue-triage");
    let example = example.to_str().unwrap();
    // Without a product site, the resolver's Jira call says there is none.
    let payload = r#"{"call":{"functionKey":"getTriage","payload":{}},"context":{"extension":{"issue":{"id":"10001","key":"KT-1"}}}}"#;
    let out = kiln.run(&["invoke", "resolver", example, "--payload", payload]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        value["error"]["message"].as_str().unwrap().contains("no Jira or Confluence site configured"),
        "{value}"
    );

    // Against a dev site: the queue consumer reads SEC-1 as the app, labels it
    // through Jira's `update` verbs, and counts the labels in its own storage.
    let (base, _, _site) = kiln.devsite(5);
    let job = r#"{"body":{"issueId":"SEC-1","reason":"test"}}"#;
    let puts = |kiln: &Kiln| kiln.ok(&["audit", "tail", "-n", "50"]).matches(r#""method":"PUT""#).count();
    let out = kiln.run(&["invoke", "process-job", example, "--payload", job, "--devsite", &base]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(puts(&kiln), 1, "the consumer labelled the issue once");
    // The same again: the labels are there now, so nothing is added or counted twice.
    let out = kiln.run(&["invoke", "process-job", example, "--payload", job, "--devsite", &base]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(puts(&kiln), 1, "nothing to add the second time");
    // asUser() from a resolver: with no user in session, and with a user who never consented.
    let out = kiln.run(&["invoke", "resolver", example, "--payload", payload, "--devsite", &base]);
    assert!(text(&out).contains("needs a user in session"), "{}", text(&out));
    let out = kiln.run(&[
        "invoke",
        "resolver",
        example,
        "--payload",
        payload,
        "--devsite",
        &base,
        "--account-id",
        "557058:bob",
    ]);
    assert!(text(&out).contains("has not authorised this app"), "{}", text(&out));
    // Bob consents through the dev site's OAuth flow; then asUser() acts as Bob.
    let consented = kiln.ok(&["consent", "--devsite", &base, "--account-id", "557058:bob", example]);
    assert!(consented.starts_with("557058:bob consented for ari:cloud:ecosystem::app/"), "{consented}");
    assert!(consented.contains("read:jira-work") && consented.contains("offline_access"), "{consented}");
    let panel = r#"{"call":{"functionKey":"getTriage","payload":{}},"context":{"extension":{"issue":{"id":"KILN-2","key":"KILN-2"}}}}"#;
    let out = kiln.run(&[
        "invoke",
        "resolver",
        example,
        "--payload",
        panel,
        "--devsite",
        &base,
        "--account-id",
        "557058:bob",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["issueKey"], "KILN-2", "{value}");
    // A user who cannot consent (unknown to the site) is refused, and says why.
    let refused = kiln.run(&["consent", "--devsite", &base, "--account-id", "557058:nobody", example]);
    assert_eq!(code(&refused), 1, "{}", text(&refused));
    // Every product decision is in the trail, by the app, and the trail verifies.
    let tail = kiln.ok(&["audit", "tail", "-n", "20"]);
    assert!(tail.contains("product.request") && tail.contains("app:ari:cloud:ecosystem::app/"), "{tail}");
    kiln.ok(&["audit", "verify"]);
}

fn example_app_id() -> String {
    let manifest = std::fs::read_to_string(repo().join("examples/issue-triage/manifest.yml")).unwrap();
    let line = manifest.lines().find(|l| l.trim_start().starts_with("id:")).unwrap();
    line.split_once("id:").unwrap().1.trim().trim_matches(|c| c == '\'' || c == '"').to_owned()
}

/// Every file under the data directory, concatenated: what a copy of the disk reveals.
fn disk_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(disk_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn variables_are_sealed_at_rest_and_their_values_are_never_shown() {
    let kiln = Kiln::new();
    let app = example_app_id();
    kiln.ok(&["variables", "set", "REGION", "canary-region-7f3a", "--app", &app]);
    let said = kiln.ok(&["variables", "set", "API_TOKEN", "canary-secret-91c2", "--encrypt", "--app", &app]);
    assert!(!said.contains("canary-secret-91c2"), "{said}");
    let list = ["variables", "list", "--app", &app];
    assert_eq!(kiln.ok(&list), "API_TOKEN (encrypted)\nREGION (sealed at rest)\n");
    // Other environments are separate.
    assert_eq!(kiln.ok(&["variables", "list", "--app", &app, "-e", "production"]), "");

    let disk = disk_bytes(&kiln.data_dir());
    assert!(!contains(&disk, "canary-region-7f3a"), "plain variable found on disk");
    assert!(!contains(&disk, "canary-secret-91c2"), "encrypted variable found on disk");

    kiln.ok(&["variables", "unset", "REGION", "--app", &app]);
    assert_eq!(kiln.ok(&list), "API_TOKEN (encrypted)\n");
}

#[test]
fn a_bad_variable_name_is_refused_and_stores_nothing() {
    let kiln = Kiln::new();
    let app = example_app_id();
    for name in ["1ABC", "has space", "", "a=b"] {
        let out = kiln.run(&["variables", "set", name, "v", "--app", &app]);
        assert_eq!(code(&out), 2, "{name:?}: {}", text(&out));
        assert!(text(&out).contains("variable"), "{name:?}: {}", text(&out));
    }
    assert_eq!(kiln.ok(&["variables", "list", "--app", &app]), "");
}

#[test]
fn rotating_keys_keeps_every_value_readable() {
    let kiln = Kiln::new();
    let app = example_app_id();
    kiln.ok(&["variables", "set", "REGION", "eu-1", "--app", &app]);
    let key_file = kiln.data_dir().join("kiln.keys");
    let keys_before = std::fs::read(&key_file).unwrap();

    assert!(kiln.ok(&["keys", "rotate"]).contains("1 data keys rewrapped"));
    assert_ne!(std::fs::read(&key_file).unwrap(), keys_before);
    assert!(kiln.ok(&["keys", "rotate", "--data-keys"]).contains("1 values re-encrypted"));

    assert_eq!(stored_variable(&kiln, &app, "REGION"), "eu-1");
}

/// A variable's value as the function runtime will see it, read through the
/// storage layer with the data directory's key file (no command prints it).
fn stored_variable(kiln: &Kiln, app: &str, name: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = kiln_store::Store::open_data_dir(&kiln.data_dir()).await.unwrap();
        let keys = kiln_crypto::keys::FileKeyProvider::open(&kiln.data_dir().join("kiln.keys")).unwrap();
        let kvs = kiln_kvs::Kvs::new(store, std::sync::Arc::new(keys));
        let vars = kvs.variables(&format!("variables:{app}:development"), true).await.unwrap();
        vars.into_iter().find(|v| v.name == name).and_then(|v| v.value).unwrap()
    })
}

#[test]
fn without_the_key_file_nothing_opens_and_nothing_is_lost() {
    let kiln = Kiln::new();
    let app = example_app_id();
    kiln.ok(&["variables", "set", "REGION", "eu-1", "--app", &app]);
    let keys = kiln.data_dir().join("kiln.keys");
    let saved = kiln.data.path().join("kiln.keys.saved");
    std::fs::rename(&keys, &saved).unwrap();

    // No new key file is made over existing data keys: it would open nothing.
    for args in [&["variables", "list", "--app", &app][..], &["keys", "rotate"][..]] {
        let out = kiln.run(args);
        assert_eq!(code(&out), 1, "{}", text(&out));
        assert!(text(&out).contains("does not exist, but 1 data keys"), "{}", text(&out));
        assert!(!keys.exists(), "a key file was created over existing data keys");
    }

    std::fs::rename(&saved, &keys).unwrap();
    assert_eq!(kiln.ok(&["variables", "list", "--app", &app]), "REGION (sealed at rest)\n");
    assert_eq!(stored_variable(&kiln, &app, "REGION"), "eu-1");
}

#[test]
fn the_kvs_benchmark_runs_both_paths_and_reports_every_operation() {
    let kiln = Kiln::new();
    let out = kiln.run(&["bench", "kvs", "--ops", "100"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for op in ["set", "get", "query (page of 10)"] {
        for size in ["128 B", "4096 B"] {
            assert!(stdout.contains(&format!("| SQLite | {op} | {size} |")), "{op} {size}:\n{stdout}");
        }
    }
    assert!(text(&out).contains("PostgreSQL skipped"), "{}", text(&out));
}

/// SQL run straight at a data directory's database, as an attacker with
/// the file would.
fn tamper(kiln: &Kiln, sql: &str) {
    let locator = format!("sqlite:{}", kiln.data_dir().display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(kiln_store::testing::exec_raw(&locator, sql)).unwrap();
}

/// A data directory whose trail holds five records, each command followed
/// by a checkpoint: deploy, install, consent, two variables.
fn audited_kiln() -> Kiln {
    let kiln = Kiln::new();
    let app = repo().join("examples/issue-triage");
    let app = app.to_str().unwrap();
    kiln.ok(&["deploy", app]);
    kiln.ok(&["install", "--site", "acme.atlassian.net", "--app", app]);
    kiln.ok(&["variables", "set", "A", "first", "--app", app]);
    kiln.ok(&["variables", "set", "B", "second", "--encrypt", "--app", app]);
    let verified = kiln.ok(&["audit", "verify"]);
    assert!(verified.contains("5 records (head 5), 4 checkpoints in the database, 4 in"), "{verified}");
    kiln
}

fn checkpoints(k: &Kiln) -> PathBuf {
    k.data_dir().join("audit-checkpoints.jsonl")
}

/// Rewrite the checkpoint file's lines with `f`.
fn edit_file(k: &Kiln, f: &dyn Fn(Vec<String>) -> Vec<String>) {
    let text = std::fs::read_to_string(checkpoints(k)).unwrap();
    let lines = f(text.lines().map(str::to_owned).collect());
    std::fs::write(checkpoints(k), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

#[test]
fn audit_verify_finds_every_kind_of_tampering_and_says_where() {
    type Tamper<'a> = (&'a str, Box<dyn Fn(&Kiln)>, &'a str);
    let cases: Vec<Tamper> = vec![
        (
            "a record edited",
            Box::new(|k| {
                tamper(
                    k,
                    "UPDATE audit_log SET details = '{\"name\":\"C\",\"encrypted\":false}' WHERE seq = 4",
                )
            }),
            "PROBLEM record 4",
        ),
        (
            "a record deleted",
            Box::new(|k| tamper(k, "DELETE FROM audit_log WHERE seq = 3")),
            "PROBLEM record 3",
        ),
        (
            "two records swapped",
            Box::new(|k| {
                tamper(k, "UPDATE audit_log SET seq = 100 WHERE seq = 2");
                tamper(k, "UPDATE audit_log SET seq = 2 WHERE seq = 3");
                tamper(k, "UPDATE audit_log SET seq = 3 WHERE seq = 100");
            }),
            "PROBLEM record 2",
        ),
        (
            "a record inserted",
            Box::new(|k| {
                tamper(k, "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 3");
                tamper(k, "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000");
                tamper(
                    k,
                    "INSERT INTO audit_log (seq, at, actor, action, target, outcome, source, details, key_id, mac) \
                     SELECT 3, at, actor, action, target, outcome, source, details, key_id, mac FROM audit_log WHERE seq = 2",
                );
            }),
            "PROBLEM record 3",
        ),
        (
            "the newest records and their checkpoints cut off",
            Box::new(|k| {
                tamper(k, "DELETE FROM audit_log WHERE seq >= 4");
                tamper(k, "DELETE FROM audit_checkpoints WHERE seq >= 4");
            }),
            "PROBLEM record 5 (checkpoint file line 4)",
        ),
        (
            "a checkpoint signature edited in the database",
            Box::new(|k| tamper(k, "UPDATE audit_checkpoints SET signature = mac WHERE seq = 3")),
            "PROBLEM record 3: its checkpoint in the database has an invalid signature",
        ),
        (
            "a checkpoint line edited in the file",
            Box::new(|k| {
                edit_file(k, &|mut l| {
                    l[1] = l[1].replacen("\"seq\":3", "\"seq\":2", 1);
                    l
                })
            }),
            "PROBLEM record 2 (checkpoint file line 2)",
        ),
        (
            "a checkpoint line removed from the file",
            Box::new(|k| {
                edit_file(k, &|mut l| {
                    l.remove(1);
                    l
                })
            }),
            "PROBLEM record 3",
        ),
        (
            "the checkpoint file deleted",
            Box::new(|k| std::fs::remove_file(checkpoints(k)).unwrap()),
            "the checkpoint file",
        ),
    ];
    for (what, damage, expected) in cases {
        let kiln = audited_kiln();
        damage(&kiln);
        let out = kiln.run(&["audit", "verify"]);
        assert_eq!(code(&out), 1, "{what}: verify passed:\n{}", text(&out));
        assert!(text(&out).contains(expected), "{what}: expected {expected:?} in:\n{}", text(&out));
    }
}

#[test]
fn the_trail_holds_no_values_and_exports_for_a_siem() {
    let kiln = audited_kiln();
    let app = repo().join("examples/issue-triage");
    kiln.ok(&["variables", "unset", "A", "--app", app.to_str().unwrap()]);
    kiln.ok(&["keys", "rotate", "--data-keys"]);
    let jsonl = kiln.ok(&["audit", "export", "--format", "jsonl"]);
    let records: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "app.deploy",
            "app.install",
            "app.consent",
            "variable.set",
            "variable.set",
            "audit.verify",
            "variable.unset",
            "keys.rotate",
            "keys.rotate"
        ]
    );
    for value in ["first", "second"] {
        assert!(!jsonl.contains(value), "a variable's value is in the trail:\n{jsonl}");
    }
    let ocsf = kiln.ok(&["audit", "export", "--format", "ocsf", "--after", "6"]);
    let events: Vec<serde_json::Value> = ocsf.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 4, "records 7..=9 and the first export's own record:\n{ocsf}");
    assert_eq!(events[0]["class_uid"], 6003);
    assert_eq!(events[0]["api"]["operation"], "variable.unset");
    // Exports are themselves recorded, and the trail still verifies.
    let tail = kiln.ok(&["audit", "tail", "-n", "2", "--format", "jsonl"]);
    assert!(tail.lines().all(|l| l.contains("\"audit.export\"")), "{tail}");
    kiln.ok(&["audit", "verify"]);
}

#[test]
fn a_sandbox_fault_is_recorded_and_an_app_exception_is_not() {
    let kiln = Kiln::new();
    let app = invoke_app();
    let dir = app.path().to_str().unwrap();
    let thrown = kiln.run(&["invoke", "boom", dir]);
    assert_eq!(code(&thrown), 1, "{}", text(&thrown));
    let out = kiln.run(&["invoke", "slow", dir, "--timeout-ms", "200"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let tail = kiln.ok(&["audit", "tail", "--format", "jsonl"]);
    let records: Vec<serde_json::Value> = tail.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 1, "{tail}");
    assert_eq!(records[0]["action"], "sandbox.fault");
    assert_eq!(records[0]["details"]["code"], "TIME_OUT");
    assert!(records[0]["target"].as_str().unwrap().ends_with("#slow"), "{tail}");
}

#[test]
fn the_audit_benchmark_reports_every_measurement_beside_its_baseline() {
    let kiln = Kiln::new();
    let out = kiln.run(&["bench", "audit", "--records", "100"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (measurement, baseline) in [
        ("standalone append", "unchained insert, own transaction"),
        ("append in an action's transaction", "kv_put alone"),
        ("4 concurrent standalone appends", "4 concurrent unchained inserts"),
        ("verify (per record)", "read pages, unchecked"),
        ("verify + checkpoint file (per record)", "read pages, unchecked"),
    ] {
        let prefix = format!("| SQLite | {measurement} | {baseline} |");
        let line = stdout.lines().find(|l| l.starts_with(&prefix));
        let line = line.unwrap_or_else(|| panic!("no line {prefix}:\n{stdout}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | backend | measurement | baseline | ops/s | ops/s | ratio | µs | µs | added µs |
        assert_eq!(cells.len(), 11, "{line}");
        let ratio: f64 = cells[6].parse().unwrap_or_else(|_| panic!("no ratio in {line}"));
        assert!(ratio.is_finite() && ratio > 0.0, "{line}");
        for cell in &cells[4..10] {
            assert!(cell.parse::<f64>().is_ok(), "{cell:?} in {line}");
        }
    }
    assert!(stdout.contains("SQLite: records of "), "{stdout}");
    assert!(stdout.contains("the trail verified intact at "), "{stdout}");
    assert!(stdout.contains("| record MAC alone (µs) | checkpoint signature alone (µs) |"), "{stdout}");
    assert!(text(&out).contains("PostgreSQL skipped"), "{}", text(&out));
}

#[test]
fn admin_commands_manage_accounts_and_tokens_and_show_secrets_once() {
    let kiln = Kiln::new();
    let added = kiln.ok(&["admin", "user", "add", "olive", "--role", "owner"]);
    assert!(added.contains("Created olive (owner)."), "{added}");
    assert!(added.contains("Password (shown once): "), "{added}");
    assert!(added.contains("otpauth://totp/Kiln:olive?secret="), "owners get a second factor: {added}");
    let support = kiln.ok(&["admin", "user", "add", "sam", "--role", "support"]);
    assert!(support.contains("No second factor"), "{support}");

    let dup = kiln.run(&["admin", "user", "add", "olive", "--role", "auditor"]);
    assert_eq!(code(&dup), 1, "{}", text(&dup));
    let bad = kiln.run(&["admin", "user", "add", "eve", "--role", "root"]);
    assert_eq!(code(&bad), 2);
    assert!(text(&bad).contains("roles are owner, security, developer, auditor, support"), "{}", text(&bad));

    let token = kiln.ok(&[
        "admin",
        "token",
        "create",
        "ci",
        "--operator",
        "sam",
        "--scope",
        "apps:read",
        "--days",
        "7",
    ]);
    let secret = token
        .lines()
        .find_map(|l| l.strip_prefix("Secret (shown once; Kiln keeps only its hash): "))
        .unwrap();
    assert!(secret.starts_with("kiln_pat_"), "{token}");
    let too_much = kiln.run(&["admin", "token", "create", "x", "--operator", "sam", "--scope", "audit:read"]);
    assert_eq!(code(&too_much), 2, "support cannot grant audit:read: {}", text(&too_much));
    let listed = kiln.ok(&["admin", "token", "list", "--operator", "sam"]);
    assert!(
        listed.contains("apps:read") && listed.contains("active") && !listed.contains(secret),
        "{listed}"
    );
    kiln.ok(&["admin", "token", "revoke", "1"]);
    assert!(kiln.ok(&["admin", "token", "list", "--operator", "sam"]).contains("revoked"));

    kiln.ok(&["admin", "user", "set-role", "sam", "auditor"]);
    kiln.ok(&["admin", "user", "disable", "sam"]);
    let users = kiln.ok(&["admin", "user", "list"]);
    assert!(
        users.lines().any(|l| l.starts_with("sam ") && l.contains("auditor") && l.contains("disabled")),
        "{users}"
    );
    assert!(users.lines().any(|l| l.starts_with("olive ") && l.contains(" yes ")), "{users}");
    let reset = kiln.ok(&["admin", "user", "reset-mfa", "olive"]);
    assert!(reset.contains("otpauth://"), "{reset}");
    let pw = kiln.ok(&["admin", "user", "reset-password", "olive"]);
    assert!(pw.contains("New password for olive (shown once): "), "{pw}");

    // Every change is in the trail; no password, secret or TOTP seed is.
    let trail = kiln.ok(&["audit", "export", "--format", "jsonl"]);
    for action in [
        "operator.created",
        "operator.mfa_changed",
        "token.created",
        "token.revoked",
        "operator.role_changed",
        "operator.disabled",
        "operator.password_changed",
    ] {
        assert!(trail.contains(&format!("\"{action}\"")), "{action} missing");
    }
    assert!(!trail.contains(secret));
    let password = added.lines().find_map(|l| l.strip_prefix("Password (shown once): ")).unwrap();
    assert!(!trail.contains(password));
    let seed = added.split("secret=").nth(1).unwrap().split('&').next().unwrap();
    assert!(!trail.contains(seed));
    kiln.ok(&["audit", "verify"]);
}

#[test]
fn no_command_prints_customer_data() {
    let kiln = Kiln::new();
    let app = example_app_id();
    let app_dir = repo().join("examples/issue-triage");
    let app_dir = app_dir.to_str().unwrap();
    kiln.ok(&["deploy", app_dir]);
    kiln.ok(&["install", "--site", "acme.atlassian.net", "--app", app_dir]);
    let canaries = ["CANARY-CLI-PLAIN-77ab", "CANARY-CLI-SECRET-31fe"];
    kiln.ok(&["variables", "set", "PLAIN", canaries[0], "--app", &app]);
    kiln.ok(&["variables", "set", "SECRET", canaries[1], "--encrypt", "--app", &app]);
    kiln.ok(&["admin", "user", "add", "aud", "--role", "auditor"]);
    kiln.ok(&["admin", "token", "create", "t", "--operator", "aud", "--scope", "audit:read"]);
    kiln.ok(&["keys", "rotate", "--data-keys"]);
    let mut seen = String::new();
    for args in [
        &["versions", "--app", app_dir][..],
        &["versions", "--app", app_dir, "--format", "json"],
        &["variables", "list", "--app", &app],
        &["audit", "tail", "-n", "100"],
        &["audit", "tail", "--format", "ocsf"],
        &["audit", "export", "--format", "jsonl"],
        &["audit", "export", "--format", "ocsf"],
        &["audit", "verify"],
        &["audit", "alerts"],
        &["admin", "user", "list"],
        &["admin", "token", "list", "--operator", "aud"],
    ] {
        let out = kiln.run(args);
        assert_eq!(code(&out), 0, "{args:?}: {}", text(&out));
        seen.push_str(&text(&out));
    }
    for canary in canaries {
        assert!(!seen.contains(canary), "{canary} printed");
    }
    assert!(seen.contains("PLAIN (sealed at rest)"), "the control: names are listed");
}

#[test]
fn alerts_follow_the_settings_file_and_bad_settings_are_refused() {
    let kiln = Kiln::new();
    let app = repo().join("examples/issue-triage");
    kiln.ok(&["deploy", app.to_str().unwrap()]);
    // Working hours that exclude the current hour (UTC).
    let hour =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 3600 % 24;
    let (start, end) = if hour == 23 { (0, 1) } else { (hour + 1, hour + 2) };
    let config = kiln.data.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!("[alerts]\nworking_hours = {{ start = {start}, end = {end}, weekends = true }}\nfailed_logins = false\n"),
    )
    .unwrap();
    let listed = kiln.ok(&["audit", "alerts", "--config", config.to_str().unwrap()]);
    assert!(listed.contains("outside-hours") && listed.contains("app.deploy by cli:tester"), "{listed}");
    // Without the file the defaults apply, and the alert raised stays listed.
    assert!(kiln.ok(&["audit", "alerts"]).contains("outside-hours"));

    std::fs::write(&config, "[alerts]\nfailed_login = false\n").unwrap();
    let out = kiln.run(&["audit", "alerts", "--config", config.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("failed_login"), "{}", text(&out));
}

/// `kiln serve` on a free loopback port; its address and the process.
fn serve(kiln: &Kiln) -> (String, KillOnDrop) {
    serve_with(kiln, &[])
}

/// `kiln serve` with extra arguments.
fn serve_with(kiln: &Kiln, extra: &[&str]) -> (String, KillOnDrop) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .arg("--data-dir")
        .arg(kiln.data_dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("KILN_TEST_OAUTH_SECRET", "kiln-dev-client-secret")
        .env_remove("KILN_KEK")
        .env_remove("KILN_AUDIT_KEY")
        .env("USER", "tester");
    let (addr, _, child) = listening(command, "kiln serve", "Kiln admin API on ", 0);
    (addr, child)
}

#[test]
fn the_command_line_works_through_the_admin_api_with_a_token() {
    let kiln = Kiln::new();
    let app = repo().join("examples/issue-triage");
    let app = app.to_str().unwrap();
    kiln.ok(&["deploy", app]);
    kiln.ok(&["admin", "user", "add", "dana", "--role", "developer"]);
    let made = kiln.ok(&[
        "admin",
        "token",
        "create",
        "laptop",
        "--operator",
        "dana",
        "--scope",
        "apps:read",
        "--scope",
        "apps:write",
        "--scope",
        "self",
    ]);
    let token = made
        .lines()
        .find_map(|l| l.strip_prefix("Secret (shown once; Kiln keeps only its hash): "))
        .unwrap()
        .to_owned();
    let (addr, server) = serve(&kiln);
    let ca = kiln.data_dir().join("tls/cert.pem");
    let remote = |args: &[&str], token: Option<&str>| -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.current_dir(repo()).args(["--server", &addr, "--server-ca", ca.to_str().unwrap()]).args(args);
        cmd.env_remove("KILN_TOKEN").env_remove("KILN_SERVER").env_remove("KILN_SERVER_CA");
        if let Some(t) = token {
            cmd.env("KILN_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let addr_url = addr.clone();

    let set = remote(&["variables", "set", "REGION", "CANARY-REMOTE-5e2", "--app", app], Some(&token));
    assert_eq!(code(&set), 0, "{}", text(&set));
    let list = remote(&["variables", "list", "--app", app], Some(&token));
    assert_eq!(String::from_utf8_lossy(&list.stdout), "REGION (sealed at rest)\n", "{}", text(&list));
    let versions = remote(&["versions", "--app", app], Some(&token));
    let listing: serde_json::Value = serde_json::from_slice(&versions.stdout).unwrap();
    assert_eq!(
        listing["versions"][0]["version"],
        serde_json::json!({ "major": 1, "minor": 0 }),
        "{}",
        text(&versions)
    );

    // Beyond the token's scopes, without a token, or host-only: refused, and said why.
    let audit = remote(&["audit", "verify"], Some(&token));
    assert_eq!(code(&audit), 1, "{}", text(&audit));
    assert!(text(&audit).contains("403"), "{}", text(&audit));
    let none = remote(&["versions", "--app", app], None);
    assert_eq!(code(&none), 2);
    assert!(text(&none).contains("KILN_TOKEN"), "{}", text(&none));
    let forged = remote(&["versions", "--app", app], Some("kiln_pat_forged"));
    assert_eq!(code(&forged), 1);
    assert!(text(&forged).contains("401"), "{}", text(&forged));
    let host_only = remote(&["keys", "rotate"], Some(&token));
    assert_eq!(code(&host_only), 2);
    assert!(text(&host_only).contains("runs on the Kiln host"), "{}", text(&host_only));
    // A server whose certificate is not the one trusted is not talked to.
    let other_ca = kiln.data.path().join("other.pem");
    std::fs::write(&other_ca, kiln_crypto::tls::self_signed(&["localhost"]).unwrap().cert_pem).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    let untrusted = cmd
        .args(["--server", &addr_url, "--server-ca", other_ca.to_str().unwrap(), "versions", "--app", app])
        .env("KILN_TOKEN", &token)
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(code(&untrusted), 1, "{}", text(&untrusted));
    drop(server);

    // Everything the server did is in the trail, attributed to dana.
    let trail = kiln.ok(&["audit", "export"]);
    assert!(trail.contains("\"operator:dana\""), "{trail}");
    assert!(trail.contains("\"variable.set\""));
    assert!(!trail.contains("CANARY-REMOTE-5e2"));
    kiln.ok(&["audit", "verify"]);
}

#[test]
fn the_dev_site_runs_on_loopback_only_and_hands_out_tokens_there() {
    let kiln = Kiln::new();
    // Never on a reachable address; a bad seed is refused before anything listens.
    let wide = kiln.run(&["devsite", "--listen", "0.0.0.0:0"]);
    assert_eq!(code(&wide), 2, "{}", text(&wide));
    assert!(text(&wide).contains("loopback only"), "{}", text(&wide));
    let seed = kiln.data_dir().with_file_name("seed.json");
    std::fs::write(&seed, r#"{"site":"x.atlassian.net","cloud_id":"c","users":[],"colour":"red"}"#).unwrap();
    let bad = kiln.run(&["devsite", "--listen", "127.0.0.1:0", "--seed", seed.to_str().unwrap()]);
    assert_eq!(code(&bad), 2, "{}", text(&bad));
    assert!(text(&bad).contains("colour"), "{}", text(&bad));

    let (base, printed, _child) = kiln.devsite(5);
    assert!(printed.iter().any(|l| l.contains("cloud id:")), "{printed:?}");
    assert!(printed.iter().any(|l| l.contains("kiln-dev-client")), "{printed:?}");

    // The example client gets an app token, with the data directory's certificate.
    let addr = base.strip_prefix("https://").unwrap().to_owned();
    let ca = std::fs::read_to_string(kiln.data_dir().join("tls/cert.pem")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reply = rt.block_on(async {
        let roots = kiln_crypto::tls::client_config(&ca).unwrap();
        let client = kiln_http::HttpsClient::new(&addr, "127.0.0.1", roots);
        let body = serde_json::json!({
            "grant_type": "client_credentials", "client_id": "kiln-dev-client",
            "client_secret": "kiln-dev-client-secret",
        });
        client
            .send(kiln_http::Method::POST, "/oauth/token", &[], Some(body.to_string().as_bytes()))
            .await
            .unwrap()
    });
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
    assert!(reply.json()["access_token"].is_string());
}

#[test]
fn a_web_trigger_asking_for_signed_requests_runs_only_for_requests_signed_with_its_key() {
    let kiln = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("manifest.yml"),
        "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000e7\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: signed\n      function: hook-fn\n      request:\n        authentication: hmacSharedSecret\n  function:\n    - key: hook-fn\n      handler: index.hook\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(
        p.join("src/index.js"),
        "export function hook(req) { return { statusCode: 200, body: `ran for ${req.method} ${req.body}` }; }\n",
    )
    .unwrap();
    let app = p.to_str().unwrap();
    kiln.ok(&["deploy", app]);
    kiln.ok(&["install", "--site", "https://a.atlassian.net", "--product", "jira", "--app", app]);
    let (base, _server) = serve(&kiln);
    let url = |extra: &[&str]| {
        let mut args = vec!["webtrigger", "signed", "--site", "https://a.atlassian.net", "--app", app];
        args.extend_from_slice(&["--base-url", &base]);
        args.extend_from_slice(extra);
        kiln.ok(&args)
    };
    let path = url(&[]).trim().strip_prefix(&base).unwrap().to_owned();
    let ca = std::fs::read_to_string(kiln.data_dir().join("tls/cert.pem")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = kiln_http::HttpsClient::new(
        base.strip_prefix("https://").unwrap(),
        "127.0.0.1",
        kiln_crypto::tls::client_config(&ca).unwrap(),
    );
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        rt.block_on(client.send(kiln_http::Method::POST, &path, headers, Some(body))).unwrap()
    };
    // No key made yet: refused, and told how to make one.
    let before = post(&[], b"hi");
    assert_eq!(before.status.as_u16(), 401, "{}", before.text());
    assert!(before.text().contains("--signing-secret"), "{}", before.text());

    let shown = url(&["--signing-secret"]);
    let key = shown.lines().find_map(|l| l.strip_prefix("signing key: ")).unwrap().to_owned();
    assert_eq!(key.len(), 64);
    assert!(url(&["--signing-secret"]).contains(&key), "the key is made once and shown again");
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let signature = |ts: &str, key: &str, body: &[u8]| {
        let mut m = format!("{ts}.POST.{path}.").into_bytes();
        m.extend_from_slice(body);
        let tag: String =
            kiln_crypto::hmac_sha256(key.as_bytes(), &m).iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={tag}")
    };
    let sig = signature(&now, &key, b"hi");
    let headers =
        [("x-kiln-webtrigger-timestamp", now.as_str()), ("x-kiln-webtrigger-signature", sig.as_str())];
    let ok = post(&headers, b"hi");
    assert_eq!(ok.status.as_u16(), 200, "{}", ok.text());
    assert_eq!(ok.text(), "ran for POST hi");
    let replayed = post(&headers, b"hi");
    assert_eq!(replayed.status.as_u16(), 401, "a replay is refused: {}", replayed.text());
    let swapped = post(&headers, b"bye");
    assert_eq!(swapped.status.as_u16(), 401, "another body under the signature: {}", swapped.text());
    let wrong_key = signature(&now, "not-the-key", b"x");
    let forged =
        post(&[("x-kiln-webtrigger-timestamp", &now), ("x-kiln-webtrigger-signature", &wrong_key)], b"x");
    assert_eq!(forged.status.as_u16(), 401, "{}", forged.text());
    assert_eq!(post(&[], b"hi").status.as_u16(), 401, "unsigned");
}
