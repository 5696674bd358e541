//! `kiln-datagen`: regenerates the reference data Kiln embeds from
//! Atlassian's published OpenAPI documents.
//!
//! ```text
//! cargo run -p kiln-datagen -- scopes ../shared/data/atlassian-openapi > crates/kiln-manifest/data/scopes.txt
//! cargo run -p kiln-datagen -- routes ../shared/data/atlassian-openapi > crates/kiln-policy/data/routes.tsv
//! ```
//!
//! The output is committed, so builds and CI never need the documents; a test
//! in `kiln-manifest` re-runs the extraction when the documents are present
//! and fails if the committed copy is stale.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, dir] if cmd == "scopes" => {
            let text = kiln_datagen::scopes_file(Path::new(dir))?;
            std::io::stdout().lock().write_all(text.as_bytes())?;
            Ok(())
        }
        [cmd, dir] if cmd == "routes" => {
            let text = kiln_datagen::routes_file(Path::new(dir))?;
            std::io::stdout().lock().write_all(text.as_bytes())?;
            Ok(())
        }
        _ => bail!("usage: kiln-datagen scopes|routes OPENAPI_DIR"),
    }
}
