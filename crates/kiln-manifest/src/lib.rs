//! `kiln-manifest`: Forge's `manifest.yml` parsed into typed, validated grants.
//!
//! [`load`] reads an app directory's manifest and [`parse_str`] parses text;
//! both return a [`Manifest`] whose every field has been checked, or a
//! [`ManifestError`] listing every problem with its line, column, key and a
//! fix. [`Grants`] is the part a site admin consents to, and
//! [`Grants::classify`] decides whether a new version is major or minor.
//!
//! This crate does not read app source code (that is `kiln-bundle`), does not
//! enforce anything at run time (that is the server and the gateways), and
//! performs no I/O beyond reading the manifest file.

#![forbid(unsafe_code)]

mod diagnostic;
mod grants;
mod model;
mod parse;
pub mod scopes;
pub mod yaml;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use diagnostic::{Code, Diagnostic, ManifestError, Pos, Severity};
pub use grants::{GrantChange, Grants, RemoteGrant, VersionChange};
pub use model::*;
pub use parse::{MAX_EGRESS_LEN, MAX_HANDLER_LEN, MAX_MODULES};

/// The file name Forge apps use.
pub const MANIFEST_FILE: &str = "manifest.yml";

/// A manifest that passed validation, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub manifest: Manifest,
    pub warnings: Vec<Diagnostic>,
}

/// Where `${NAME}` values in the manifest come from: the deployer's
/// environment, looked up only for names declared in `environment.variables`.
pub trait VariableSource {
    fn get(&self, name: &str) -> Option<String>;
}

/// No variables set: every `${NAME}` takes its declared default.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVariables;

impl VariableSource for NoVariables {
    fn get(&self, _name: &str) -> Option<String> {
        None
    }
}

impl<F: Fn(&str) -> Option<String>> VariableSource for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Parse manifest text. `file` is only used in messages.
pub fn parse_str(file: &str, source: &str, vars: &dyn VariableSource) -> Result<Parsed, ManifestError> {
    let fail = |diagnostics| ManifestError { file: file.to_owned(), diagnostics };
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let mut root = yaml::parse_document(source).map_err(|d| fail(vec![d]))?;
    let mut diagnostics = Vec::new();
    interpolate(&mut root, vars, &mut diagnostics);
    let manifest = parse::manifest(&root, &mut diagnostics);
    diagnostics.sort_by_key(|d| (d.severity, d.pos));
    match manifest {
        Some(manifest) if !diagnostics.iter().any(|d| d.severity == Severity::Error) => {
            Ok(Parsed { manifest, warnings: diagnostics })
        }
        _ => {
            // Errors only: warnings are noise until the manifest parses, and
            // many are consequences of an error (a function unused because
            // the module using it was refused).
            diagnostics.retain(|d| d.severity == Severity::Error);
            Err(fail(diagnostics))
        }
    }
}

/// Why an app directory's manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is not UTF-8 text; save the manifest as UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error(transparent)]
    Invalid(#[from] ManifestError),
}

/// Read and parse `APP_DIR/manifest.yml`.
pub fn load(app_dir: &Path, vars: &dyn VariableSource) -> Result<Parsed, LoadError> {
    let path = app_dir.join(MANIFEST_FILE);
    let io = |source| LoadError::Io { path: path.clone(), source };
    let meta = std::fs::metadata(&path).map_err(io)?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile { path });
    }
    // Read one byte past the limit so an oversized file is reported as such
    // without reading all of it.
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .map_err(io)?
        .take(yaml::MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) if e.as_bytes().len() > yaml::MAX_MANIFEST_BYTES => {
            // Truncated in the middle of a character: the size error is the
            // one worth reporting.
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
        Err(_) => return Err(LoadError::NotUtf8 { path }),
    };
    Ok(parse_str(&path.display().to_string(), &text, vars)?)
}

/// Replace `${NAME}` in string values for every name declared under
/// `environment.variables`, as the Forge CLI does at deploy time. Names that
/// are not declared are left alone, so unrelated `${...}` text survives.
fn interpolate(root: &mut yaml::Node, vars: &dyn VariableSource, diags: &mut Vec<Diagnostic>) {
    let declared = declared_variables(root);
    if declared.is_empty() {
        return;
    }
    let mut todo = vec![root];
    while let Some(node) = todo.pop() {
        match &mut node.value {
            yaml::Value::Str(s) if s.contains("${") => {
                let mut out = String::with_capacity(s.len());
                let mut rest = s.as_str();
                while let Some(start) = rest.find("${") {
                    let (before, after) = rest.split_at(start);
                    out.push_str(before);
                    let name_and_tail = after.get(2..).unwrap_or_default();
                    match name_and_tail.find('}') {
                        Some(end) => {
                            let name = name_and_tail.get(..end).unwrap_or_default();
                            match declared.iter().find(|(n, _)| n == name) {
                                Some((_, default)) => match vars.get(name).or_else(|| default.clone()) {
                                    Some(value) => out.push_str(&value),
                                    None => {
                                        diags.push(Diagnostic::error(
                                            Code::UndefinedVariable,
                                            node.pos,
                                            "",
                                            format!("variable '{name}' is used but has no value and no default"),
                                            format!("export {name}=... before deploying, or give it a default under environment.variables"),
                                        ));
                                    }
                                },
                                None => {
                                    out.push_str("${");
                                    out.push_str(name);
                                    out.push('}');
                                }
                            }
                            rest = name_and_tail.get(end + 1..).unwrap_or_default();
                        }
                        None => {
                            out.push_str(after);
                            rest = "";
                        }
                    }
                }
                out.push_str(rest);
                *s = out;
            }
            yaml::Value::Seq(items) => todo.extend(items.iter_mut()),
            yaml::Value::Map(entries) => todo.extend(entries.iter_mut().map(|(_, v)| v)),
            _ => {}
        }
    }
}

fn declared_variables(root: &yaml::Node) -> Vec<(String, Option<String>)> {
    let get = |node: &yaml::Node, key: &str| -> Option<yaml::Node> {
        match &node.value {
            yaml::Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v.clone()),
            _ => None,
        }
    };
    let Some(list) = get(root, "environment").and_then(|e| get(&e, "variables")) else {
        return Vec::new();
    };
    let yaml::Value::Seq(items) = &list.value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match &item.value {
            yaml::Value::Str(name) => Some((name.clone(), None)),
            yaml::Value::Map(_) => {
                let name = match get(item, "key")?.value {
                    yaml::Value::Str(s) => s,
                    _ => return None,
                };
                let default = match get(item, "default").map(|d| d.value) {
                    Some(yaml::Value::Str(s)) => Some(s),
                    _ => None,
                };
                Some((name, default))
            }
            _ => None,
        })
        .collect()
}
