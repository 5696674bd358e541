//! Build script shared by the packages whose binaries run as jailed
//! workers (`kiln`, `kiln-sandbox`, `kiln-jail`): link them so that every
//! segment starts on a 2 MB boundary and no two share a 2 MB page, which
//! lets a worker that forks per invocation move its code onto transparent
//! huge pages (`kiln_jail::move_code_to_huge_pages`; docs/PERFORMANCE.md).
//! It costs each binary a few MB of padding in the file, none in memory.

#![allow(clippy::print_stdout, reason = "a build script speaks to cargo on stdout")]

fn main() {
    println!("cargo::rerun-if-changed=../../build/workers.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    // 2 MB is the huge page size there; elsewhere the binaries link as usual.
    if os == "linux" && arch == "x86_64" {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,max-page-size=0x200000");
        // lld's option (Rust's default linker here); GNU ld ignores it with
        // a warning, and then segments may share a page and nothing moves.
        println!("cargo::rustc-link-arg-bins=-Wl,-z,separate-loadable-segments");
    }
}
