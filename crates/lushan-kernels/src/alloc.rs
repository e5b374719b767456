//! A global allocator that starts every large allocation on a cache line.
//!
//! Why: the kernels load 64-byte vectors from weight and activation rows. glibc places a large allocation
//! (one it maps with `mmap`) 16 bytes past a page boundary, so every such load of a model's weights straddles
//! two cache lines, and the load ports do twice the work. `cargo bench -p lushan-kernels --bench kernels --
//! alignment` measures it: a 64-row prompt product runs 1.3–1.6× faster with its operands on 64-byte
//! boundaries (docs/quantization.md, "Operands on cache lines").
//!
//! Binaries opt in with `#[global_allocator] static ALLOC: lushan_kernels::alloc::CacheLineAligned =
//! lushan_kernels::alloc::CacheLineAligned;`. An allocation of [`LARGE`] bytes or more asks the system
//! allocator for [`LINE`] bytes more than it needs, starts on the first line boundary at least a word into
//! that block, and keeps the block's address in the word before it. Asking the system allocator for an
//! over-aligned layout instead would lose two things: zeroed memory would be written with zeros (the system's
//! `calloc` leaves fresh pages untouched, so a 75 MB KV cache costs only what a sequence fills), and growing
//! would copy (glibc's `realloc` remaps large blocks). Smaller allocations go to the system as asked.

use std::alloc::{GlobalAlloc, Layout, System};

/// Bytes of a cache line, and the alignment large allocations get.
pub const LINE: usize = 64;
/// Allocations of at least this many bytes start on a cache line (below it, the padding would cost more
/// than the split loads it saves).
pub const LARGE: usize = 1024;
/// What the system allocator is asked for its blocks: a word-aligned layout, so it takes `malloc`,
/// `calloc` and `realloc`.
const BLOCK_ALIGN: usize = std::mem::size_of::<usize>();

/// The system allocator, with large allocations aligned to [`LINE`] bytes.
pub struct CacheLineAligned;

/// Whether `layout` is served from a padded block (the rule depends on the layout alone, so `dealloc` and
/// `realloc` see what `alloc` did).
pub fn padded(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= LINE
}

/// The system block holding `size` bytes from a line boundary, or `None` past `isize::MAX`.
fn block(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(LINE)?, BLOCK_ALIGN).ok()
}

/// The first line boundary past `raw`: 8 to 64 bytes in, as `raw` is word-aligned, so the word before it
/// (where the block's address is kept) lies inside the block.
fn line_start(raw: *mut u8) -> *mut u8 {
    raw.wrapping_add(LINE - raw as usize % LINE)
}

impl CacheLineAligned {
    /// Places a line-aligned region in the system block `raw` (null passes through) and records `raw`.
    ///
    /// # Safety
    /// `raw` is null or a block of at least `size + LINE` bytes, word-aligned.
    #[allow(unsafe_code)]
    unsafe fn start_in(raw: *mut u8) -> *mut u8 {
        if raw.is_null() {
            return raw;
        }
        let start = line_start(raw);
        // SAFETY: start − raw ∈ [8, 64], so the word before `start` lies inside the block and is aligned.
        unsafe { start.cast::<*mut u8>().sub(1).write(raw) };
        start
    }

    /// `layout` from `system` (the system's `alloc` or `alloc_zeroed`): a padded layout as a line-aligned region
    /// of a block `LINE` bytes larger, any other as asked.
    ///
    /// # Safety
    /// `layout` has a non-zero size (GlobalAlloc's precondition).
    #[allow(unsafe_code)]
    unsafe fn allocate(layout: Layout, system: unsafe fn(&System, Layout) -> *mut u8) -> *mut u8 {
        if !padded(layout) {
            // SAFETY: the caller's non-zero layout, passed on.
            return unsafe { system(&System, layout) };
        }
        match block(layout.size()) {
            // SAFETY: `block` is non-zero-sized; `start_in` gets that block or null.
            Some(block) => unsafe { Self::start_in(system(&System, block)) },
            None => std::ptr::null_mut(),
        }
    }

    /// The system block behind a region `start_in` returned.
    ///
    /// # Safety
    /// `start` came from `start_in`.
    #[allow(unsafe_code)]
    unsafe fn block_of(start: *mut u8) -> *mut u8 {
        // SAFETY: `start_in` wrote the block's address in the word before `start`.
        unsafe { start.cast::<*mut u8>().sub(1).read() }
    }
}

// SAFETY: a padded region lies inside its system block (`size + LINE` bytes, the region starting at most
// LINE bytes in), starts on a LINE boundary (which satisfies every alignment ≤ LINE that `padded` admits),
// and is freed or resized through the block address recorded before it, with the layout it was made with;
// everything else is the system allocator's, unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CacheLineAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's non-zero layout (GlobalAlloc's precondition).
        unsafe { Self::allocate(layout, <System as GlobalAlloc>::alloc) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`; the system zeroes the whole block, the region included.
        unsafe { Self::allocate(layout, <System as GlobalAlloc>::alloc_zeroed) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match padded(layout).then(|| block(layout.size())).flatten() {
            // SAFETY: `ptr` came from `alloc`/`alloc_zeroed`/`realloc` with this layout, hence from `start_in`
            // on a system block of layout `block`.
            Some(block) => unsafe { System.dealloc(Self::block_of(ptr), block) },
            // SAFETY: a padded layout always has a block (alloc failed otherwise); else the system's own.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        match (padded(layout), padded(new_layout)) {
            // SAFETY: the system's block and layout, unchanged by this allocator.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) => {
                let (Some(old_block), Some(new_block)) = (block(layout.size()), block(new_size)) else {
                    return std::ptr::null_mut();
                };
                // SAFETY: `ptr` is a region in the system block `raw` of layout `old_block` (see `dealloc`);
                // the new block holds new_size + LINE bytes. The kept bytes sat `offset` bytes into the old
                // block and are now as far into the new one; `offset + kept ≤ LINE + new_size` stays inside
                // it, and `copy` handles the overlap when the region moves to the block's new line boundary.
                unsafe {
                    let raw = Self::block_of(ptr);
                    let offset = ptr as usize - raw as usize;
                    let grown = System.realloc(raw, old_block, new_block.size());
                    if grown.is_null() {
                        return grown;
                    }
                    let start = line_start(grown);
                    if start != grown.add(offset) {
                        std::ptr::copy(grown.add(offset), start, layout.size().min(new_size));
                    }
                    Self::start_in(grown)
                }
            }
            // Crossing `LARGE`: a fresh allocation of the other kind, the kept bytes copied, the old freed.
            _ => {
                // SAFETY: `new_layout` is non-zero-sized; `ptr` is a live allocation of `layout` holding at
                // least min(old, new) bytes, distinct from the fresh one, freed once with its layout.
                unsafe {
                    let fresh = self.alloc(new_layout);
                    if !fresh.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    fresh
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
