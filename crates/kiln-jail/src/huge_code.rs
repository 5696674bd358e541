//! The executable's code on 2 MB pages, for workers that fork a child per
//! invocation.
//!
//! Why: a forked child maps the executable's code again, page by page, as
//! it runs it (the kernel does not copy a file mapping's page-table entries
//! at fork), and unmaps all of it when it exits. For the 200 KB bundle
//! that was about a thousand 4 KB entries a call, a quarter of a forked
//! call's CPU with the copy-on-write faults that remain
//! (docs/PERFORMANCE.md). Moved into anonymous memory that asks for
//! transparent huge pages, the code is mapped 2 MB to an entry, which fork
//! copies and exit drops a dozen at a time.
//!
//! How: before anything else runs (one thread, no filter yet), each
//! read-only segment of the executable is copied into fresh anonymous
//! memory at the same offset within a 2 MB page, made read-only (and
//! executable where the segment is), and moved over the original with one
//! `mremap`, which replaces the mapping atomically: every byte at every
//! address is the same before and after, so the code that makes the call
//! returns into an identical copy of itself.
//!
//! It pays only if the segments start on 2 MB boundaries (the workspace's
//! `build/workers.rs` links the worker executables so); otherwise, or where
//! the kernel's THP mode is `never`, nothing is moved. The cost: each
//! worker that moves its code keeps a private copy, about 24 MB for the
//! `kiln` binary, and profilers no longer find the code's symbols.

use std::io;

use crate::JailError;

/// The size of a transparent huge page on the targets Kiln runs on.
const HUGE: usize = 2 << 20;
/// The base page size.
const PAGE: usize = 4 << 10;

/// What [`move_code_to_huge_pages`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugeCode {
    /// The read-only segments, this many bytes in all (rounded up to whole
    /// 2 MB pages), now sit in anonymous memory that asks for huge pages.
    Moved { bytes: usize },
    /// Nothing was moved, for this reason.
    Skipped(&'static str),
}

/// One `PT_LOAD` segment of the executable, as loaded.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: usize,
    len: usize,
    flags: u32,
}

/// Move the executable's read-only segments (code, read-only data) onto
/// anonymous memory backed by transparent huge pages; see the module's
/// notes. Call first thing in the worker, while it has a single thread and
/// before lockdown (which forbids the calls this makes). An error leaves
/// the segment it names, and every later one, where it was.
pub fn move_code_to_huge_pages() -> Result<HugeCode, JailError> {
    let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !(mode.contains("[always]") || mode.contains("[madvise]")) {
        return Ok(HugeCode::Skipped("the kernel's transparent huge pages are off"));
    }
    if threads() != Some(1) {
        return Ok(HugeCode::Skipped("the process is not single-threaded"));
    }
    let segments = executable_segments();
    let mut moves = Vec::new();
    for segment in segments.iter().filter(|s| s.flags & libc::PF_W == 0) {
        if segment.flags & libc::PF_R == 0 || segment.start % HUGE != 0 {
            return Ok(HugeCode::Skipped("the executable is not linked with 2 MB segment alignment"));
        }
        let end = round_up(segment.start + segment.len, PAGE);
        let rounded = round_up(end, HUGE);
        // The rounding must cover only the gap the linker left, which no
        // other segment uses.
        if segments.iter().any(|other| other.start < rounded && other.start + other.len > end) {
            return Ok(HugeCode::Skipped("the executable's segments share a 2 MB page"));
        }
        moves.push((*segment, end - segment.start, rounded - segment.start));
    }
    if moves.is_empty() {
        return Ok(HugeCode::Skipped("the executable has no read-only segments"));
    }
    let mut bytes = 0;
    for (segment, mapped, whole) in moves {
        if move_segment(segment, mapped, whole).map_err(JailError::HugeCode)? {
            bytes += whole;
        }
    }
    if bytes == 0 {
        return Ok(HugeCode::Skipped("the kernel had no huge pages to give"));
    }
    Ok(HugeCode::Moved { bytes })
}

/// Copy `mapped` bytes at `segment.start` into fresh memory of `whole`
/// bytes (the rest zero) that asks for huge pages, then, if the kernel
/// backed all of it with huge pages, move that memory over the segment.
/// `Ok(false)`: it did not, and the segment stays where it was.
fn move_segment(segment: Segment, mapped: usize, whole: usize) -> io::Result<bool> {
    let reserve = whole + HUGE;
    // SAFETY: a fresh private anonymous mapping at an address the kernel
    // chooses; it aliases nothing.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = raw as usize;
    let release = || {
        // SAFETY: unmaps what is left of the reservation made above, which
        // nothing else refers to (still there or already moved away).
        unsafe { libc::munmap(raw, reserve) };
    };
    // The gap between the segment's last page and the next 2 MB boundary
    // is replaced too: take it first, which fails if anything is there.
    let gap = segment.start + mapped;
    if whole > mapped {
        // SAFETY: MAP_FIXED_NOREPLACE maps nothing over an existing mapping.
        let taken = unsafe {
            libc::mmap(
                gap as *mut libc::c_void,
                whole - mapped,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if taken as usize != gap {
            let e = if taken == libc::MAP_FAILED {
                io::Error::last_os_error()
            } else {
                // An old kernel took the address as a hint only.
                // SAFETY: unmaps the mapping just made, at the address returned.
                unsafe { libc::munmap(taken, whole - mapped) };
                io::Error::other("the gap after the segment is in use")
            };
            release();
            return Err(e);
        }
    }
    let release = || {
        release();
        if whole > mapped {
            // SAFETY: the gap reservation made above, if the move did not
            // replace it; nothing else is mapped there.
            unsafe { libc::munmap(gap as *mut libc::c_void, whole - mapped) };
        }
    };
    // The first 2 MB boundary inside the reservation: the segment starts on
    // one too, so huge pages line up after the move.
    let copy = round_up(base, HUGE);
    let prot =
        if segment.flags & libc::PF_X != 0 { libc::PROT_READ | libc::PROT_EXEC } else { libc::PROT_READ };
    // SAFETY: [copy, copy + whole) lies inside the reservation (at most
    // HUGE - 1 bytes are skipped before it, and HUGE were added). The source
    // [segment.start, + mapped) is the loader's mapping of a readable
    // segment, page-rounded, which stays mapped; the two do not overlap.
    let protected = unsafe {
        if libc::madvise(copy as *mut libc::c_void, whole, libc::MADV_HUGEPAGE) != 0 {
            let e = io::Error::last_os_error();
            release();
            return Err(e);
        }
        std::ptr::copy_nonoverlapping(segment.start as *const u8, copy as *mut u8, mapped);
        libc::mprotect(copy as *mut libc::c_void, whole, prot)
    };
    if protected != 0 {
        let e = io::Error::last_os_error();
        release();
        return Err(e);
    }
    // Without huge pages the copy would be worse than the file mapping:
    // thousands of 4 KB entries for every fork to copy. The kernel may not
    // have any to give (memory too fragmented): then nothing moves.
    if huge_bytes_at(copy) != Some(whole) {
        release();
        return Ok(false);
    }
    // SAFETY: atomically replaces [segment.start, + whole): the segment
    // itself (identical bytes) and the unused gap up to the next 2 MB
    // boundary (reserved above). Only this thread runs, and its code reads
    // the same bytes at the same addresses before and after.
    let moved = unsafe {
        libc::mremap(
            copy as *mut libc::c_void,
            whole,
            whole,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            segment.start as *mut libc::c_void,
        )
    };
    if moved == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        release();
        return Err(e);
    }
    // SAFETY: what is left of the reservation around the moved pages.
    unsafe { libc::munmap(raw, reserve) };
    Ok(true)
}

/// The executable's `PT_LOAD` segments, at their loaded addresses.
fn executable_segments() -> Vec<Segment> {
    /// Called for each loaded object, the executable first; stops after it.
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> i32 {
        // SAFETY: `data` is the `Vec` passed below, borrowed for the call;
        // `info` and its program headers are valid for this callback, as
        // dl_iterate_phdr promises.
        let (segments, info) = unsafe { (&mut *data.cast::<Vec<Segment>>(), &*info) };
        for index in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: the object has `dlpi_phnum` headers at `dlpi_phdr`.
            let header = unsafe { &*info.dlpi_phdr.add(index) };
            if header.p_type == libc::PT_LOAD {
                segments.push(Segment {
                    start: (info.dlpi_addr as usize).wrapping_add(header.p_vaddr as usize),
                    len: header.p_memsz as usize,
                    flags: header.p_flags,
                });
            }
        }
        1
    }
    let mut segments: Vec<Segment> = Vec::new();
    // SAFETY: the callback only reads what dl_iterate_phdr hands it and
    // writes to `segments`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(first), (&raw mut segments).cast()) };
    segments
}

/// How many bytes of the mapping that starts at `start` are on huge pages
/// (`AnonHugePages` in `/proc/self/smaps`).
fn huge_bytes_at(start: usize) -> Option<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let header = format!("{start:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header)).skip(1);
    let field = lines.find_map(|l| l.strip_prefix("AnonHugePages:"))?;
    let kib: usize = field.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// How many threads this process has.
fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

fn round_up(value: usize, to: usize) -> usize {
    value.div_ceil(to) * to
}
