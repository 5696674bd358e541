//! What the `kiln` binary's end-to-end tests share: the binary run against a
//! fresh data directory with none of the caller's Kiln environment, and
//! `kiln devsite` / `kiln serve` started on a loopback port for one test.

#![allow(dead_code, reason = "each test file uses part of this")]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `kiln` binary with a data directory of its own, removed when dropped.
pub(crate) struct Kiln {
    pub(crate) data: tempfile::TempDir,
    /// Set for every command run ([`Kiln::with_env`]).
    pub(crate) env: Vec<(String, String)>,
}

impl Kiln {
    pub(crate) fn new() -> Self {
        Self { data: tempfile::tempdir().unwrap(), env: Vec::new() }
    }

    /// Every command also gets `name=value` in its environment (e.g.
    /// `KILN_DATABASE_URL`, so that it uses PostgreSQL).
    pub(crate) fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.data.path().join("data")
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.run_in(&repo(), args)
    }

    /// Run a command that must succeed; its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(code(&out), 0, "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn run_in(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(cwd)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env_remove("KILN_DATA_DIR")
            .env_remove("KILN_KEK")
            .env_remove("KILN_KEY_FILE")
            .env_remove("KILN_AUDIT_KEY")
            .env_remove("KILN_AUDIT_CHECKPOINT_FILE")
            .env("USER", "tester")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    /// `kiln devsite` on a free loopback port, with the data directory's
    /// certificate: its base URL, the `after` lines it printed next, the
    /// process.
    pub(crate) fn devsite(&self, after: usize) -> (String, Vec<String>, KillOnDrop) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command.arg("--data-dir").arg(self.data_dir()).args(["devsite", "--listen", "127.0.0.1:0"]);
        listening(command, "kiln devsite", "Dev site on ", after)
    }
}

pub(crate) fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

pub(crate) fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// A child process killed when the test ends, however it ends.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `command` (named `what` in failures) and wait for the stderr line
/// holding `ready` (at its start in a command's plain output, inside the
/// message of `kiln serve`'s log lines): the first word after it, the
/// `after` lines printed next, and the process. The rest of stderr is
/// drained so it never blocks.
pub(crate) fn listening(
    mut command: Command,
    what: &str,
    ready: &str,
    after: usize,
) -> (String, Vec<String>, KillOnDrop) {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = KillOnDrop(child);
    let mut lines = std::io::BufReader::new(stderr).lines();
    let address = loop {
        let line = lines.next().unwrap_or_else(|| panic!("{what} exited before listening")).unwrap();
        let message = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(record) => record["fields"]["message"].as_str().unwrap_or_default().to_owned(),
            Err(_) => line.clone(),
        };
        if let Some(at) = message.find(ready) {
            break message[at + ready.len()..].split_whitespace().next().unwrap().to_owned();
        }
    };
    let printed: Vec<String> = lines.by_ref().take(after).map(Result::unwrap).collect();
    std::thread::spawn(move || for _ in lines {});
    (address, printed, child)
}

/// Copy an app directory, leaving out its Kiln state and dependencies.
pub(crate) fn copy_app(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == ".kiln" || name == "node_modules" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_app(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// A loopback port free now (for a process the test starts next).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
