//! Any bytes given to the manifest parser either parse or produce located
//! diagnostics; they never panic, hang or exhaust memory. Whatever parses
//! must survive the grant computations and a JSON round trip, as a stored
//! version does.
#![no_main]

use kiln_manifest::{Grants, NoVariables, Severity, VersionChange, parse_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_str("manifest.yml", text, &NoVariables) {
        Ok(parsed) => {
            let grants = Grants::of(&parsed.manifest);
            assert_eq!(grants.classify(&grants), VersionChange::Minor, "a manifest must not differ from itself");
            assert!(grants.missing_from(&grants).is_empty());
            let json = serde_json::to_string(&parsed.manifest).expect("manifest serialises");
            let back: kiln_manifest::Manifest = serde_json::from_str(&json).expect("manifest deserialises");
            assert_eq!(Grants::of(&back), grants, "stored grants must read back unchanged");
        }
        Err(e) => {
            assert!(e.diagnostics.iter().any(|d| d.severity == Severity::Error), "a refusal carries an error");
            let _ = e.to_string();
        }
    }
});
