//! What went wrong in a manifest, where, and how to fix it.

use std::fmt;

/// A place in the manifest source: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The manifest is refused.
    Error,
    /// The manifest is accepted, but something deserves attention.
    Warning,
}

/// A stable name for each kind of problem, shown in messages and usable by
/// tooling (`error[unknown-scope]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    YamlSyntax,
    TooLarge,
    TooDeep,
    DuplicateKey,
    Empty,
    UnknownKey,
    MissingKey,
    WrongType,
    InvalidValue,
    InvalidKey,
    DuplicateModuleKey,
    UnknownModuleType,
    DanglingReference,
    UnknownScope,
    InvalidEgress,
    InsecureEgress,
    TooMany,
    UnsupportedRuntime,
    UndefinedVariable,
    Advice,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::YamlSyntax => "yaml-syntax",
            Code::TooLarge => "too-large",
            Code::TooDeep => "too-deep",
            Code::DuplicateKey => "duplicate-key",
            Code::Empty => "empty",
            Code::UnknownKey => "unknown-key",
            Code::MissingKey => "missing-key",
            Code::WrongType => "wrong-type",
            Code::InvalidValue => "invalid-value",
            Code::InvalidKey => "invalid-key",
            Code::DuplicateModuleKey => "duplicate-module-key",
            Code::UnknownModuleType => "unknown-module-type",
            Code::DanglingReference => "dangling-reference",
            Code::UnknownScope => "unknown-scope",
            Code::InvalidEgress => "invalid-egress",
            Code::InsecureEgress => "insecure-egress",
            Code::TooMany => "too-many",
            Code::UnsupportedRuntime => "unsupported-runtime",
            Code::UndefinedVariable => "undefined-variable",
            Code::Advice => "advice",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub pos: Pos,
    /// Dotted path of the key at fault, e.g. `modules.function[1].handler`;
    /// empty when the problem is with the document as a whole.
    pub path: String,
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

impl Diagnostic {
    pub fn error(
        code: Code,
        pos: Pos,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Error,
            code,
            pos,
            path: path.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn warning(
        code: Code,
        pos: Pos,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self { severity: Severity::Warning, ..Self::error(code, pos, path, message, hint) }
    }

    /// Render as `file:line:col: error[code]: path: message` plus a hint line.
    pub fn render(&self, file: &str) -> String {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let path = if self.path.is_empty() { String::new() } else { format!("{}: ", self.path) };
        let mut out = format!("{file}:{}: {level}[{}]: {path}{}", self.pos, self.code, self.message);
        if !self.hint.is_empty() {
            out.push_str("\n  hint: ");
            out.push_str(&self.hint);
        }
        out
    }
}

/// The manifest was refused. Holds every error found (not only the first),
/// plus the warnings, so one round of fixes is usually enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub file: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl ManifestError {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self.errors().count();
        writeln!(
            f,
            "{} is not a valid manifest ({errors} error{}):",
            self.file,
            if errors == 1 { "" } else { "s" }
        )?;
        for d in &self.diagnostics {
            writeln!(f, "{}", d.render(&self.file))?;
        }
        Ok(())
    }
}
