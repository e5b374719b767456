//! A global allocator that starts every large allocation on a cache line.
//!
//! Why: the kernels load 64-byte vectors from weight and activation rows. glibc places a large allocation
//! (one it maps with `mmap`) 16 bytes past a page boundary, so every such load of a model's weights straddles
//! two cache lines, and the load ports do twice the work. `cargo bench -p lushan-kernels --bench kernels --
//! alignment` measures it: a 64-row prompt product runs about a quarter faster with its operands on 64-byte
//! boundaries (docs/quantization.md, "Operands on cache lines").
//!
//! Binaries opt in with `#[global_allocator] static ALLOC: lushan_kernels::alloc::CacheLineAligned =
//! lushan_kernels::alloc::CacheLineAligned;`. Allocations of [`LARGE`] bytes or more get at least
//! [`LINE`]-byte alignment; smaller ones go to the system allocator as asked. The rule depends on the layout
//! alone, so `dealloc` and `realloc` see the same alignment `alloc` used.

use std::alloc::{GlobalAlloc, Layout, System};

/// Bytes of a cache line, and the alignment large allocations get.
pub const LINE: usize = 64;
/// Allocations of at least this many bytes start on a cache line (below it, the padding would cost more
/// than the split loads it saves).
pub const LARGE: usize = 1024;

/// The system allocator, with large allocations aligned to [`LINE`] bytes.
pub struct CacheLineAligned;

/// The layout the system allocator is given for `layout`: the same size, aligned to a line when large.
pub fn widened(layout: Layout) -> Layout {
    if layout.size() >= LARGE && layout.align() < LINE {
        // A power of two no smaller than the old alignment, and the size is unchanged and was valid for a
        // smaller alignment, so this cannot fail unless the size is within a line of `isize::MAX`.
        Layout::from_size_align(layout.size(), LINE).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every method forwards to `System` with `widened(layout)`, which depends only on the layout the
// caller passes, so memory is freed and resized with the layout it was allocated with; `widened` keeps the
// size and never lowers the alignment, so each block satisfies the caller's layout.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CacheLineAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `widened` keeps the caller's non-zero size (GlobalAlloc's precondition).
        unsafe { System.alloc(widened(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(widened(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this `layout`, hence from `System` with `widened(layout)`.
        unsafe { System.dealloc(ptr, widened(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (old, new) = (widened(layout), Layout::from_size_align(new_size, layout.align()).map(widened));
        match new {
            // Same alignment before and after: the system allocator resizes in place where it can.
            // SAFETY: `ptr` is `System`'s block of layout `old`; `new_size` is non-zero and valid for the
            // alignment (GlobalAlloc's precondition, checked by `from_size_align` above).
            Ok(new) if new.align() == old.align() => unsafe { System.realloc(ptr, old, new_size) },
            // Crossing `LARGE`: a fresh block of the new alignment, the kept bytes copied, the old freed.
            Ok(new) => {
                // SAFETY: `new` has a non-zero size (GlobalAlloc's precondition on `new_size`).
                let fresh = unsafe { System.alloc(new) };
                if !fresh.is_null() {
                    // SAFETY: both blocks hold at least `min(old, new)` bytes and are distinct allocations.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                        System.dealloc(ptr, old);
                    }
                }
                fresh
            }
            Err(_) => std::ptr::null_mut(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_layouts_are_widened_to_a_line_and_small_ones_kept() {
        let small = Layout::from_size_align(LARGE - 1, 4).unwrap();
        assert_eq!(widened(small), small);
        let large = Layout::from_size_align(LARGE, 4).unwrap();
        assert_eq!(widened(large), Layout::from_size_align(LARGE, LINE).unwrap());
        let page = Layout::from_size_align(1 << 20, 4096).unwrap();
        assert_eq!(widened(page), page, "a stricter alignment is kept");
    }

    #[test]
    fn blocks_start_on_lines_and_keep_their_bytes_across_reallocation() {
        let a = CacheLineAligned;
        let layout = Layout::from_size_align(100, 4).unwrap();
        // SAFETY: non-zero sizes; each block is used within its size and freed with its current layout.
        #[allow(unsafe_code)]
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            for i in 0..100 {
                *p.add(i) = i as u8;
            }
            // Small → large → larger → small: across the threshold both ways, and in place.
            let mut size = 100;
            let mut p = p;
            for new_size in [LARGE * 3, LARGE * 300, 50] {
                p = a.realloc(p, Layout::from_size_align(size, 4).unwrap(), new_size);
                assert!(!p.is_null());
                if new_size >= LARGE {
                    assert_eq!(p as usize % LINE, 0, "a {new_size}-byte block starts on a line");
                }
                for i in 0..size.min(new_size).min(100) {
                    assert_eq!(*p.add(i), i as u8, "byte {i} kept when resized to {new_size}");
                }
                size = new_size;
            }
            a.dealloc(p, Layout::from_size_align(size, 4).unwrap());
            let z = a.alloc_zeroed(Layout::from_size_align(LARGE * 2, 4).unwrap());
            assert_eq!(z as usize % LINE, 0);
            assert!((0..LARGE * 2).all(|i| *z.add(i) == 0));
            a.dealloc(z, Layout::from_size_align(LARGE * 2, 4).unwrap());
        }
    }
}
