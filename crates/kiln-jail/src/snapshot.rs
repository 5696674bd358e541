//! Putting a worker's memory back: a process that serves one invocation
//! after another from the same prepared runtime, with every byte of its
//! writable memory put back as it was before each one.
//!
//! A forked child gets a copy of its template's memory and throws it away
//! at exit; on a 2 vCPU VM the fork, the exit and the faults on pages the
//! child inherited cost about 80% of a forked call's CPU
//! (docs/PERFORMANCE.md). A [`Snapshot`] gets the same effect inside one
//! process: [`Snapshot::take`] copies every private writable mapping (the
//! heap, the executable's and libraries' data, thread-local storage) into a
//! memory file the server made for the worker ([`SNAPSHOT_FD`]) and maps the
//! copy privately over the original, and [`Snapshot::run_then_restore`]
//! runs one invocation, then puts back every page the process has written
//! since the snapshot (found in its own page map: the pages that are its
//! own copies rather than the file's) by copying the snapshot's bytes over
//! it, shrinks the heap back to where it was, and zeroes the stack below
//! the caller. Whatever the invocation allocated, freed, wrote or left
//! lying around is gone, including the allocator's own bookkeeping.
//!
//! Copying back rather than dropping the pages (`MADV_DONTNEED`, the first
//! version) keeps them the process's own: the next invocation writes to
//! them without a copy-on-write fault each. A call to either handler of
//! `kiln bench invoke` leaves 190–250 KB to copy back of a 1.9–2.2 MB
//! snapshot, a fraction of what the faults cost (docs/PERFORMANCE.md). Past
//! [`COPY_BACK_LIMIT_BYTES`] the pages are dropped after all, so that one
//! invocation that wrote much does not make every later one pay for it.
//!
//! What it does not put back is the kernel's side: descriptors, mappings
//! made outside the heap, the filter. Under the invocation allow-list app
//! code makes none of those; code that escaped the engine could, and would
//! then live on into the next invocation, as in a worker that runs
//! invocations in place (docs/THREAT_MODEL.md). The heap stays in the
//! `brk` area ([`keep_heap_contiguous`]) so that growing and shrinking it is
//! all the allocator does to the address space.

use std::io;
use std::os::fd::RawFd;

use crate::JailError;

/// The memory file a worker's snapshots go to, made by [`crate::spawn`]
/// when [`crate::WorkerSpec::snapshots`] asks (a worker cannot size a file
/// itself: its file-size limit is 0).
pub const SNAPSHOT_FD: RawFd = 6;

/// The worker's own `/proc/self/maps`, opened before lockdown
/// ([`open_own_maps`]): after it, Landlock refuses every open.
pub const MAPS_FD: RawFd = 7;

/// The worker's own `/proc/self/pagemap`, opened with [`MAPS_FD`]: which
/// pages the process has written since the snapshot, so that only those
/// are copied back.
pub const PAGEMAP_FD: RawFd = 8;

/// The file holds two snapshots' worth, one half each: a new snapshot is
/// written to the half the current one does not use, so that writing it
/// never changes what the current mappings show. Sparse: only what is
/// written takes memory.
pub const SNAPSHOT_HALF_BYTES: u64 = 1 << 30;

/// How much of the stack below its caller [`Snapshot::run_then_restore`]
/// clears: more than an invocation uses (the engine's stack limit is
/// lower). The first [`STACK_WRITTEN_BYTES`] of it are zeroed in place
/// (they stay mapped: an invocation uses them every time; only the part
/// the invocation wrote is written), the rest dropped (the kernel hands
/// out zeroed pages at the next touch).
const STACK_CLEARED_BYTES: usize = 8 << 20;
const STACK_WRITTEN_BYTES: usize = 256 << 10;

/// `/proc/self/pagemap`: the page is present, and it is a file's (here:
/// still the snapshot's) rather than this process's own copy.
const PAGE_PRESENT: u64 = 1 << 63;
const PAGE_FILE: u64 = 1 << 61;
const PAGE_SWAPPED: u64 = 1 << 62;

/// Whether the server gave this worker a snapshot file.
pub fn snapshots_requested() -> bool {
    // SAFETY: fcntl(F_GETFD) only queries whether the descriptor is open.
    unsafe { libc::fcntl(SNAPSHOT_FD, libc::F_GETFD) >= 0 }
}

/// Open `/proc/self/maps` at [`MAPS_FD`] and `/proc/self/pagemap` at
/// [`PAGEMAP_FD`]. Call before lockdown.
pub fn open_own_maps() -> Result<(), JailError> {
    open_at(c"/proc/self/maps", MAPS_FD)?;
    open_at(c"/proc/self/pagemap", PAGEMAP_FD)
}

fn open_at(path: &std::ffi::CStr, at: RawFd) -> Result<(), JailError> {
    let err = |e: io::Error| JailError::Snapshot(format!("cannot open {}: {e}", path.to_string_lossy()));
    // SAFETY: fcntl(F_GETFD) only queries whether the descriptor is open.
    if unsafe { libc::fcntl(at, libc::F_GETFD) } >= 0 {
        return Err(err(io::Error::other(format!("descriptor {at} is already in use"))));
    }
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    if fd != at {
        // SAFETY: dup3 onto a descriptor checked free above, then close the
        // original, which this function alone holds.
        let placed = unsafe { libc::dup3(fd, at, libc::O_CLOEXEC) };
        // SAFETY: as above.
        unsafe { libc::close(fd) };
        if placed != at {
            return Err(err(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Keep glibc's heap in the `brk` area: no separate mappings for large
/// blocks, and no giving memory back by shrinking it. Then an invocation
/// changes the address space only by growing the heap, which
/// [`Snapshot::run_then_restore`] undoes. Call before the state that is
/// snapshot is built.
pub fn keep_heap_contiguous() -> Result<(), JailError> {
    // SAFETY: mallopt sets two of glibc's malloc parameters; no pointers.
    let set =
        unsafe { libc::mallopt(libc::M_MMAP_MAX, 0) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1 };
    if set { Ok(()) } else { Err(JailError::Snapshot("glibc refused the malloc settings".into())) }
}

/// The most a restore copies back: past it, the pages this process owns
/// are dropped instead (read as the snapshot again at the next touch). An
/// invocation that wrote much of the snapshot once would otherwise make
/// every later restore copy all of it.
pub const COPY_BACK_LIMIT_BYTES: usize = 4 << 20;

/// How a restore put the memory back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// The pages this process owned were copied back from the snapshot,
    /// this many bytes.
    Copied(usize),
    /// More than [`COPY_BACK_LIMIT_BYTES`] was owned: every page of the
    /// snapshot was dropped.
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    start: usize,
    len: usize,
}

/// This process's writable memory at one moment, kept in [`SNAPSHOT_FD`].
#[derive(Debug)]
pub struct Snapshot {
    regions: Vec<Region>,
    /// The program break when taken.
    brk: usize,
    /// Where in the file this snapshot lies (0 or [`SNAPSHOT_HALF_BYTES`]).
    offset: u64,
    bytes: usize,
    /// A read-only view of this snapshot's half of the file: what pages
    /// are copied back from.
    source: SharedFile,
}

impl Snapshot {
    /// Copy every private writable mapping but the stack into the snapshot
    /// file and map the copy over it. `previous`, the snapshot this
    /// replaces, is given up (its half of the file is freed).
    ///
    /// Nothing may write to the process's memory between this call and the
    /// next [`Snapshot::run_then_restore`] that the caller expects to keep.
    pub fn take(previous: Option<Snapshot>) -> Result<Snapshot, JailError> {
        let offset = match &previous {
            Some(p) if p.offset == 0 => SNAPSHOT_HALF_BYTES,
            _ => 0,
        };
        let old = previous.map(|p| (p.offset, p.bytes));
        let regions = writable_regions()?;
        let bytes: usize = regions.iter().map(|r| r.len).sum();
        if bytes as u64 > SNAPSHOT_HALF_BYTES {
            return Err(JailError::Snapshot(format!("{bytes} bytes of writable memory is too much to keep")));
        }
        let brk = program_break();
        // From here until the copy is mapped, nothing allocates: the
        // region list and everything else are already in place.
        let copy = SharedFile::map(offset, bytes)?;
        let mut at = 0usize;
        for r in &regions {
            // SAFETY: `r` is a mapped, readable region of this process (from
            // /proc/self/maps, nothing unmapped since), and `copy` is `bytes`
            // long, of which this region's slice starts at `at`; the two do
            // not overlap (the copy was mapped after the list was read).
            unsafe { std::ptr::copy_nonoverlapping(r.start as *const u8, copy.ptr.add(at), r.len) };
            at += r.len;
        }
        // SAFETY: makes the view just written read-only; it stays mapped as
        // the source `restore` copies pages back from.
        if unsafe { libc::mprotect(copy.ptr.cast(), copy.len, libc::PROT_READ) } != 0 {
            return Err(JailError::Snapshot(format!(
                "cannot protect the snapshot: {}",
                io::Error::last_os_error()
            )));
        }
        let mut at = 0u64;
        for r in &regions {
            // SAFETY: replaces the region with a private mapping of the same
            // length, protection and contents (just copied): nothing that
            // points into it notices.
            let mapped = unsafe {
                libc::mmap(
                    r.start as *mut libc::c_void,
                    r.len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    SNAPSHOT_FD,
                    (offset + at) as libc::off_t,
                )
            };
            if mapped as usize != r.start {
                // Half the process may now be mapped from the file and half
                // not: nothing sensible can go on.
                crate::exit_now(1);
            }
            at += r.len as u64;
        }
        // The old half's memory is freed if it can be; the new snapshot is
        // in place either way.
        if let Some(old) = old.and_then(|(offset, bytes)| SharedFile::map(offset, bytes).ok()) {
            old.remove();
        }
        Ok(Snapshot { regions, brk, offset, bytes, source: copy })
    }

    /// Run `f` on a bitwise copy of `value`, then put the process's
    /// writable memory back as it was when the snapshot was taken.
    ///
    /// `value` must be as it was at the snapshot, and `f` must leave the
    /// process's descriptors and mappings as it found them (dropping its
    /// copy is fine: the memory that frees comes back). What `f` returns
    /// must not point into memory it allocated (`R: Copy` keeps out owned
    /// buffers). If the memory cannot be put back, the process ends.
    pub fn run_then_restore<T, R: Copy + 'static>(&self, value: &T, f: impl FnOnce(T) -> R) -> (R, Restored) {
        // SAFETY: the copy is consumed by `f`; whatever `f` does to it or
        // to what it points to (it frees the runtime, say) is undone below
        // before `value` can be used again, since everything `value` points
        // to lies in the restored memory.
        let copy = unsafe { std::ptr::read(value) };
        let result = below_a_gap(copy, f);
        match self.restore() {
            Ok(restored) => (result, restored),
            Err(_) => crate::exit_now(1),
        }
    }

    /// How many pages of the kept memory differ from the snapshot now:
    /// none right after [`Snapshot::run_then_restore`] returns. A check,
    /// for tests and diagnostics: it reads all of the kept memory.
    pub fn pages_differing(&self) -> usize {
        let page = page_size();
        let mut at = 0usize;
        let mut differing = 0usize;
        for r in &self.regions {
            for offset in (0..r.len).step_by(page) {
                // SAFETY: both ranges are mapped and readable: a page of a
                // kept region, and its copy in the source view (`bytes`
                // long, the regions in order).
                let (now, kept) = unsafe {
                    (
                        std::slice::from_raw_parts((r.start + offset) as *const u8, page),
                        std::slice::from_raw_parts(self.source.ptr.add(at + offset), page),
                    )
                };
                differing += usize::from(now != kept);
            }
            at += r.len;
        }
        differing
    }

    /// Clear the dead stack, set the heap back, then copy the snapshot
    /// back over every page this process owns (has written since the
    /// snapshot, in this invocation or one before), or past
    /// [`COPY_BACK_LIMIT_BYTES`] drop them all. The memory comes last:
    /// nothing done after it writes to what was kept (a failed call would
    /// set `errno`, which lies in it).
    fn restore(&self) -> io::Result<Restored> {
        // The stack below this frame is dead: clear it, so nothing an
        // invocation left there is there for the next one. The invocation
        // ran below a gap (`below_a_gap`) at least this far down, so the
        // 64 KB left for the calls made here held none of its frames.
        let frame = 0u8;
        let here = &raw const frame as usize;
        let top = (here.saturating_sub(64 << 10)) & !(page_size() - 1);
        let written = top.saturating_sub(STACK_WRITTEN_BYTES);
        let bottom = top.saturating_sub(STACK_CLEARED_BYTES);
        // SAFETY: below the current frame and the 64 KB under it (more than
        // this function's callees need), the stack holds nothing live. The
        // part written is within the stack's reserve (its limit is 8 MB and
        // an invocation's own is lower); the part dropped may be partly
        // unmapped, which madvise skips (ENOMEM, ignored).
        unsafe {
            clear_dirty_tail(written, top);
            libc::madvise(bottom as *mut libc::c_void, written - bottom, libc::MADV_DONTNEED);
        }
        // SAFETY: sets the program break back to where it was; glibc's own
        // record of it is in the memory restored next.
        let brk = unsafe { libc::syscall(libc::SYS_brk, self.brk) } as usize;
        if brk != self.brk {
            return Err(io::Error::other("the heap could not shrink back"));
        }
        let mut at = 0usize;
        let mut copied = 0usize;
        for r in &self.regions {
            let source = self.source.ptr.wrapping_add(at);
            // SAFETY: the source view is `self.bytes` long and holds the
            // regions in order, this one's copy from `at` on.
            copied += unsafe { copy_back_own_pages(*r, source)? };
            at += r.len;
        }
        if copied <= COPY_BACK_LIMIT_BYTES {
            return Ok(Restored::Copied(copied));
        }
        for r in &self.regions {
            drop_range(r.start, r.len)?;
        }
        Ok(Restored::Dropped)
    }
}

/// Drop this process's own copies of the pages in a range of a region
/// mapped from the snapshot file (the file is unchanged): they read as the
/// snapshot again.
fn drop_range(start: usize, len: usize) -> io::Result<()> {
    // SAFETY: see above; no other memory is touched.
    if unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copy the snapshot's contents back over this process's own copies of
/// the pages of `r` (those written since the snapshot, now or before), so
/// that they read as the snapshot again and stay this process's: the next
/// invocation that writes them does not fault. Returns how many bytes
/// were copied.
///
/// # Safety
/// `source` must point to `r.len` readable bytes: the snapshot of `r`.
unsafe fn copy_back_own_pages(r: Region, source: *const u8) -> io::Result<usize> {
    let page = page_size();
    let mut copied = 0usize;
    let mut copy = |start: usize, end: usize| {
        // SAFETY: [start, end) lies in `r`, mapped and writable, and
        // `source` holds `r`'s snapshot at the same offsets; the two do not
        // overlap (the source is a mapping of its own).
        unsafe { std::ptr::copy_nonoverlapping(source.add(start - r.start), start as *mut u8, end - start) };
        copied += end - start;
    };
    let mut entries = [0u64; 512];
    let pages = r.len / page;
    let mut done = 0usize;
    let mut run: Option<usize> = None;
    while done < pages {
        let n = (pages - done).min(entries.len());
        let offset = ((r.start / page + done) * 8) as libc::off_t;
        // SAFETY: pread writes at most n * 8 bytes into the stack array of
        // 512 entries (n <= 512).
        let read = unsafe { libc::pread(PAGEMAP_FD, entries.as_mut_ptr().cast(), n * 8, offset) };
        if usize::try_from(read).ok() != Some(n * 8) {
            return Err(io::Error::other("cannot read the page map"));
        }
        for (i, entry) in entries.iter().take(n).enumerate() {
            let at = r.start + (done + i) * page;
            match (is_own(*entry), run) {
                (true, None) => run = Some(at),
                (false, Some(start)) => {
                    copy(start, at);
                    run = None;
                }
                _ => {}
            }
        }
        done += n;
    }
    if let Some(start) = run {
        copy(start, r.start + r.len);
    }
    Ok(copied)
}

/// Whether a page-map entry is a page this process may have written: one
/// of its own (present and not the file's) or swapped out. A page neither
/// present nor swapped reads as the file.
fn is_own(entry: u64) -> bool {
    let present = entry & PAGE_PRESENT != 0;
    (present && entry & PAGE_FILE == 0) || entry & PAGE_SWAPPED != 0
}

/// Zero `[from, to)`, a stretch of dead stack that was all zeroes before
/// the invocation: the invocation wrote only its upper part (the stack
/// grows down), so find the lowest byte it left that is not zero, reading,
/// and write zeroes from there up; reading the clean part costs less than
/// writing it.
///
/// # Safety
/// `[from, to)` must be mapped, 8-byte aligned, and hold nothing live.
unsafe fn clear_dirty_tail(from: usize, to: usize) {
    let words = (to - from) / 8;
    // SAFETY: the caller's contract: mapped, aligned, nothing live.
    let stretch = unsafe { std::slice::from_raw_parts_mut(from as *mut u64, words) };
    let clean = stretch.iter().position(|w| *w != 0).unwrap_or(words);
    if let Some(dirty) = stretch.get_mut(clean..) {
        dirty.fill(0);
    }
}

/// Room on the stack between the caller of [`Snapshot::run_then_restore`]
/// and the invocation's frames, where the restore's own calls run: all of
/// the invocation's stack then lies below what the restore clears.
const STACK_GAP_BYTES: usize = 96 << 10;

/// Call `f` with [`STACK_GAP_BYTES`] of untouched stack above its frames.
#[inline(never)]
fn below_a_gap<T, R>(value: T, f: impl FnOnce(T) -> R) -> R {
    let gap = std::mem::MaybeUninit::<[u8; STACK_GAP_BYTES]>::uninit();
    std::hint::black_box(&gap);
    f(value)
}

fn page_size() -> usize {
    // SAFETY: sysconf takes an integer.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

fn program_break() -> usize {
    // SAFETY: brk(0) fails by design and returns the current break.
    unsafe { libc::syscall(libc::SYS_brk, 0) as usize }
}

/// A shared view of part of the snapshot file: writable as mapped (to
/// write a snapshot, or free one), read-only once `take` has protected it
/// as a snapshot's source.
#[derive(Debug)]
struct SharedFile {
    ptr: *mut u8,
    len: usize,
}

impl SharedFile {
    fn map(offset: u64, len: usize) -> Result<SharedFile, JailError> {
        // SAFETY: a new shared mapping of the snapshot file, placed by the
        // kernel where nothing else is.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                SNAPSHOT_FD,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(JailError::Snapshot(format!(
                "cannot map the snapshot file: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(SharedFile { ptr: ptr.cast(), len: len.max(1) })
    }

    /// Free the file's memory under this view.
    fn remove(self) {
        // SAFETY: MADV_REMOVE frees the file's pages in this range; nothing
        // maps them privately any more (the new snapshot is in place).
        unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_REMOVE) };
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The private writable mappings of this process but the stack, read from
/// [`MAPS_FD`]. A shared writable or executable-and-writable mapping is an
/// error: the snapshot could not put it back.
fn writable_regions() -> Result<Vec<Region>, JailError> {
    let mut text = Vec::with_capacity(16 << 10);
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: pread writes at most buf.len() bytes into the stack buffer.
        let n =
            unsafe { libc::pread(MAPS_FD, buf.as_mut_ptr().cast(), buf.len(), text.len() as libc::off_t) };
        let Ok(n) = usize::try_from(n) else {
            return Err(JailError::Snapshot(format!(
                "cannot read /proc/self/maps: {}",
                io::Error::last_os_error()
            )));
        };
        if n == 0 {
            break;
        }
        text.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&text);
    parse_regions(&text)
}

fn parse_regions(maps: &str) -> Result<Vec<Region>, JailError> {
    let mut regions = Vec::with_capacity(64);
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let name = fields.nth(3).unwrap_or("");
        let bad = || JailError::Snapshot(format!("cannot read the mapping {line:?}"));
        let (start, end) = range.split_once('-').ok_or_else(bad)?;
        let start = usize::from_str_radix(start, 16).map_err(|_| bad())?;
        let end = usize::from_str_radix(end, 16).map_err(|_| bad())?;
        let perms = perms.as_bytes();
        let writable = perms.get(1) == Some(&b'w');
        if !writable || name == "[stack]" {
            continue;
        }
        if perms.get(3) != Some(&b'p') || perms.get(2) == Some(&b'x') {
            return Err(JailError::Snapshot(format!("cannot keep the mapping {line:?}")));
        }
        regions.push(Region { start, len: end - start });
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regions_kept_are_the_private_writable_ones_but_the_stack() {
        let maps = "\
55d000000000-55d000200000 r--p 00000000 00:00 0 
55d000200000-55d000206000 rw-p 01a00000 fe:00 10011544                   /usr/bin/kiln
55d001000000-55d001400000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000002000 ---p 00000000 00:00 0 
7ffc54b9f000-7ffc54bc0000 rw-p 00000000 00:00 0                          [stack]
7fcf0024b000-7fcf0024d000 r-xp 00000000 00:00 0                          [vdso]
";
        let regions = parse_regions(maps).unwrap_or_default();
        assert_eq!(
            regions,
            vec![
                Region { start: 0x55d0_0020_0000, len: 0x6000 },
                Region { start: 0x55d0_0100_0000, len: 0x40_0000 }
            ]
        );
    }

    #[test]
    fn shared_or_executable_writable_mappings_cannot_be_kept() {
        for line in [
            "7f0000000000-7f0000001000 rw-s 00000000 00:01 5   /memfd:x (deleted)",
            "7f0000000000-7f0000001000 rwxp 00000000 00:00 0 ",
        ] {
            assert!(parse_regions(line).is_err(), "{line}");
        }
    }
}
