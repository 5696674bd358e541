//! `kiln-ipc`: the messages the Kiln server and a jailed worker exchange.
//!
//! A frame is an 8-byte header — the magic `KL`, the protocol version, a
//! reserved zero byte, and the payload length as a little-endian `u32` —
//! followed by the payload: one message as JSON. The reader checks the
//! header and the length against a hard limit *before* allocating, and
//! decodes the payload straight into the typed messages below (unknown
//! fields refused), so code past [`read_frame`] never sees raw bytes.
//!
//! The server must treat every [`FromWorker`] message as hostile: the worker
//! runs app code and is assumed compromised. Nothing in a worker message is
//! trusted beyond its shape; the server decides every host call.
//!
//! This crate does no I/O of its own beyond `Read`/`Write` on what it is
//! given, and knows nothing about processes or engines.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version carried in every header. A peer speaking another
/// version is refused at the first frame.
pub const PROTOCOL_VERSION: u8 = 3;

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"KL";

/// Header length: magic (2), version (1), reserved (1), payload length (4).
pub const HEADER_LEN: usize = 8;

/// Largest invocation payload or result, as in Forge (5 MB).
pub const MAX_PAYLOAD_BYTES: usize = 5 * 1024 * 1024;

/// Largest frame payload accepted in either direction: a 5 MB invocation
/// payload plus its context and envelope, JSON-escaped. A peer announcing
/// more is refused before anything is allocated, so a compromised worker
/// cannot make the server allocate gigabytes with one header.
pub const MAX_FRAME_BYTES: usize = 2 * MAX_PAYLOAD_BYTES + 256 * 1024;

/// Largest frame carrying compiled modules (a whole app's bytecode, base64).
/// Only the compile step sends these; everything else stays under
/// [`MAX_FRAME_BYTES`].
pub const MAX_PROGRAM_FRAME_BYTES: usize = 160 * 1024 * 1024;

/// Messages from the server to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum ToWorker {
    /// Compile these sources to bytecode and answer with `Compiled`.
    Compile { modules: Vec<SourceModule>, imports: BTreeMap<String, BTreeMap<String, Import>> },
    /// The program this worker serves; sent once, before any `Invoke`.
    /// With `fork`, each invocation runs in a process forked from a
    /// prepared template; without, in a fresh runtime in the worker, which
    /// then gives up the right to fork.
    Load {
        program: Program,
        #[serde(default)]
        fork: bool,
        /// With `reset` (and not `fork`), each invocation runs in the
        /// worker itself from one prepared runtime, and the worker puts its
        /// memory back as it was before the next (`kiln_jail::Snapshot`).
        #[serde(default)]
        reset: bool,
        /// The app's variables: `process.env` for every invocation this
        /// worker serves, known before any module's top level runs.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Run one function in a fresh runtime.
    Invoke { invocation: Invocation },
    /// The answer to a `HostCall`.
    HostReply { call: u64, reply: HostReply },
    /// Finish and exit.
    Shutdown {},
    /// For a forked worker: fork the next child on the channel that rides
    /// with this frame (`SCM_RIGHTS`), the child's alone. The server keeps
    /// the other end and sends the children their invocations in the
    /// order it sent their channels. `module`: the entry module of the
    /// invocation just sent, which the worker may evaluate ahead for the
    /// calls after it (the server says, so that no child has a say).
    Standby {
        #[serde(default)]
        module: Option<String>,
    },
}

/// Messages from a worker to the server. Untrusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum FromWorker {
    /// The worker is jailed and waiting; says which protections are active.
    Ready {
        protocol: u8,
        jail: JailReport,
    },
    Compiled {
        modules: Vec<CompiledModule>,
    },
    CompileFailed {
        module: String,
        message: String,
    },
    Loaded {
        /// Whether the worker serves by putting its memory back after each
        /// invocation (asked with `ToWorker::Load::reset`, and possible).
        #[serde(default)]
        memory_reset: bool,
    },
    /// App code asked the host for something; the server decides.
    HostCall {
        call: u64,
        capability: String,
        args: serde_json::Value,
    },
    /// A `console` line from the running invocation.
    Log {
        level: LogLevel,
        text: String,
    },
    /// The invocation finished.
    Done {
        outcome: Outcome,
    },
    /// The process the worker forked for the invocation died without
    /// finishing it (crashed, killed by the jail). The worker exits next.
    InvocationDied {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

/// One module's source, as bundled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceModule {
    pub id: String,
    pub kind: ModuleKind,
    pub code: String,
    /// CommonJS: export names found statically, importable by name from ESM.
    #[serde(default)]
    pub exports: Vec<String>,
    /// ESM that calls `require()`.
    #[serde(default)]
    pub uses_require: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ModuleKind {
    Esm,
    CommonJs,
    Json,
}

/// One engine module compiled by a worker of the same app. A CommonJS
/// source becomes two: its wrapper and the facade ES modules import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompiledModule {
    /// The engine's name for the module.
    pub name: String,
    /// QuickJS bytecode, base64 on the wire.
    #[serde(with = "base64_bytes")]
    pub code: Vec<u8>,
}

/// Everything a worker needs to run an app's functions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Program {
    pub modules: Vec<CompiledModule>,
    /// Bundle module id → its kind.
    pub kinds: BTreeMap<String, ModuleKind>,
    /// Importer id → specifier → what it loads.
    pub imports: BTreeMap<String, BTreeMap<String, Import>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Import {
    Module(String),
    Builtin(String),
}

/// One function call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Invocation {
    pub id: String,
    pub module: String,
    pub export: String,
    /// The payload and context, as JSON text.
    pub payload: String,
    pub context: String,
    pub limits: Limits,
    /// What `getAppContext()` and `permissions` report, as JSON text (the
    /// app, environment and installation ARIs, the module, the consented
    /// scopes and egress); empty when the caller gives none.
    #[serde(default)]
    pub runtime: String,
}

/// What one invocation may use. The server chooses them; the worker only
/// applies them (the server also enforces the wall clock itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    pub memory_bytes: u64,
    pub stack_bytes: u64,
    /// Milliseconds from the invocation's start after which it is stopped.
    pub deadline_ms: u64,
    pub max_log_lines: u32,
    pub max_log_bytes: u32,
    pub max_result_bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status", deny_unknown_fields)]
pub enum HostReply {
    Ok { value: serde_json::Value },
    Err { code: String, message: String },
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status", deny_unknown_fields)]
pub enum Outcome {
    /// The handler's result, as JSON text.
    Ok {
        result: String,
    },
    Err(InvocationError),
}

/// A structured invocation failure, shaped like Forge's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvocationError {
    pub code: ErrorCode,
    pub message: String,
    pub stack: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The deadline passed.
    TimeOut,
    /// The memory limit was reached.
    FunctionOutOfMemory,
    /// The app's code threw or returned something that cannot be a result.
    FunctionError,
    /// Kiln failed (the worker crashed, the protocol broke, ...).
    PlatformError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TimeOut => "TIME_OUT",
            ErrorCode::FunctionOutOfMemory => "FUNCTION_OUT_OF_MEMORY",
            ErrorCode::FunctionError => "FUNCTION_ERROR",
            ErrorCode::PlatformError => "PLATFORM_ERROR",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl InvocationError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), stack: None }
    }
}

/// Which protections the worker reports as active. The server checks these
/// against what it requires; the report itself proves nothing (a compromised
/// worker could lie), which is why the jail is applied before app code runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JailReport {
    pub namespaces: bool,
    pub seccomp: bool,
    pub landlock: String,
    pub no_new_privs: bool,
    /// Whether the worker moved its code onto huge pages
    /// (`kiln_jail::move_code_to_huge_pages`): a performance setting, not a
    /// protection.
    #[serde(default)]
    pub code_on_huge_pages: bool,
    /// Whether the worker serves by putting its memory back after each
    /// invocation (`kiln_jail::Snapshot`; the server records what the
    /// worker said when it loaded its program).
    #[serde(default)]
    pub memory_reset: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("the peer closed the channel")]
    Closed,
    #[error("channel I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("frame does not start with the protocol magic")]
    BadMagic,
    #[error("peer speaks protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    BadVersion(u8),
    #[error("frame header has a non-zero reserved byte")]
    BadHeader,
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Write one message as a frame.
pub fn write_frame<W: Write, M: Serialize>(w: &mut W, message: &M) -> Result<(), IpcError> {
    let payload = serde_json::to_vec(message).map_err(|e| IpcError::Malformed(e.to_string()))?;
    let len = u32::try_from(payload.len())
        .map_err(|_| IpcError::TooLarge { len: payload.len(), limit: u32::MAX as usize })?;
    let mut header = [0u8; HEADER_LEN];
    header[..2].copy_from_slice(&MAGIC);
    header[2] = PROTOCOL_VERSION;
    header[4..].copy_from_slice(&len.to_le_bytes());
    // One write for small frames keeps the header and body in one packet.
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&payload);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Read one frame of at most `limit` payload bytes and decode it.
pub fn read_frame<R: Read, M: for<'de> Deserialize<'de>>(r: &mut R, limit: usize) -> Result<M, IpcError> {
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(IpcError::Closed),
        Err(e) => return Err(IpcError::Io(e)),
    }
    let [m0, m1, version, reserved, l0, l1, l2, l3] = header;
    if [m0, m1] != MAGIC {
        return Err(IpcError::BadMagic);
    }
    if version != PROTOCOL_VERSION {
        return Err(IpcError::BadVersion(version));
    }
    if reserved != 0 {
        return Err(IpcError::BadHeader);
    }
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    if len > limit {
        return Err(IpcError::TooLarge { len, limit });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => IpcError::Closed,
        _ => IpcError::Io(e),
    })?;
    serde_json::from_slice(&payload).map_err(|e| IpcError::Malformed(e.to_string()))
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            memory_bytes: 64 << 20,
            stack_bytes: 256 << 10,
            deadline_ms: 25_000,
            max_log_lines: 100,
            max_log_bytes: 200 << 10,
            max_result_bytes: 5 << 20,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let to: Vec<ToWorker> = vec![
            ToWorker::Compile {
                modules: vec![SourceModule {
                    id: "src/index.js".into(),
                    kind: ModuleKind::Esm,
                    code: "x".into(),
                    exports: Vec::new(),
                    uses_require: false,
                }],
                imports: BTreeMap::new(),
            },
            ToWorker::Invoke {
                invocation: Invocation {
                    id: "i1".into(),
                    module: "src/index.js".into(),
                    export: "run".into(),
                    payload: "{}".into(),
                    context: "{}".into(),
                    runtime: String::new(),
                    limits: limits(),
                },
            },
            ToWorker::HostReply { call: 7, reply: HostReply::Ok { value: serde_json::json!({"a": 1}) } },
            ToWorker::Shutdown {},
        ];
        for m in to {
            let mut buf = Vec::new();
            write_frame(&mut buf, &m).unwrap();
            let back: ToWorker = read_frame(&mut buf.as_slice(), MAX_FRAME_BYTES).unwrap();
            assert_eq!(back, m);
        }
        let from = FromWorker::Compiled {
            modules: vec![CompiledModule { name: "a".into(), code: vec![0, 1, 2, 255] }],
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &from).unwrap();
        let back: FromWorker = read_frame(&mut buf.as_slice(), MAX_FRAME_BYTES).unwrap();
        assert_eq!(back, from);
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let mut header = Vec::from(MAGIC);
        header.extend_from_slice(&[PROTOCOL_VERSION, 0]);
        header.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = read_frame::<_, FromWorker>(&mut header.as_slice(), MAX_FRAME_BYTES).unwrap_err();
        assert!(matches!(err, IpcError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn bad_headers_and_payloads_are_refused() {
        let frame = |magic: &[u8], version: u8, reserved: u8, body: &[u8]| {
            let mut f = Vec::from(magic);
            f.extend_from_slice(&[version, reserved]);
            f.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
            f.extend_from_slice(body);
            f
        };
        let read = |f: Vec<u8>| read_frame::<_, FromWorker>(&mut f.as_slice(), MAX_FRAME_BYTES).unwrap_err();
        assert!(matches!(read(frame(b"XX", PROTOCOL_VERSION, 0, b"{}")), IpcError::BadMagic));
        assert!(matches!(read(frame(b"KL", 9, 0, b"{}")), IpcError::BadVersion(9)));
        assert!(matches!(read(frame(b"KL", PROTOCOL_VERSION, 1, b"{}")), IpcError::BadHeader));
        assert!(matches!(read(frame(b"KL", PROTOCOL_VERSION, 0, b"not json")), IpcError::Malformed(_)));
        // Unknown message types and unknown fields are refused, not ignored.
        assert!(matches!(
            read(frame(b"KL", PROTOCOL_VERSION, 0, br#"{"type":"becomeRoot"}"#)),
            IpcError::Malformed(_)
        ));
        assert!(matches!(
            read(frame(b"KL", PROTOCOL_VERSION, 0, br#"{"type":"loaded","extra":1}"#)),
            IpcError::Malformed(_)
        ));
        // A frame cut short is a closed channel, not a partial message.
        let mut cut = frame(b"KL", PROTOCOL_VERSION, 0, br#"{"type":"loaded"}"#);
        cut.truncate(cut.len() - 3);
        assert!(matches!(read(cut), IpcError::Closed));
        assert!(matches!(read(Vec::new()), IpcError::Closed));
    }

    #[test]
    fn error_codes_use_forge_names() {
        let json = serde_json::to_string(&ErrorCode::FunctionOutOfMemory).unwrap();
        assert_eq!(json, "\"FUNCTION_OUT_OF_MEMORY\"");
        assert_eq!(ErrorCode::TimeOut.to_string(), "TIME_OUT");
    }
}
