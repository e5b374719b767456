use super::*;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 4).unwrap()
}

#[test]
fn large_layouts_are_padded_and_small_or_over_aligned_ones_are_not() {
    assert!(!padded(layout(LARGE - 1)));
    assert!(padded(layout(LARGE)));
    assert!(padded(Layout::from_size_align(1 << 20, LINE).unwrap()));
    assert!(!padded(Layout::from_size_align(1 << 20, 4096).unwrap()), "a stricter alignment goes to the system");
}

#[test]
fn regions_start_on_lines_and_keep_their_bytes_through_every_resize() {
    let a = CacheLineAligned;
    // Small → large → larger → smaller but large → small → large: both ways across the threshold, and the
    // padded-to-padded path (whose block may move and shift the region to its new line boundary).
    let sizes = [100, LARGE * 3, LARGE * 300, LARGE * 5000, LARGE + 1, 50, LARGE * 2];
    #[allow(unsafe_code)]
    // SAFETY: non-zero sizes; each region is used within its current size and resized or freed with its layout.
    unsafe {
        let mut p = a.alloc(layout(sizes[0]));
        assert!(!p.is_null());
        let pattern = |i: usize| (i * 7 + 3) as u8;
        for i in 0..sizes[0] {
            *p.add(i) = pattern(i);
        }
        for pair in sizes.windows(2) {
            let (old, new) = (pair[0], pair[1]);
            p = a.realloc(p, layout(old), new);
            assert!(!p.is_null());
            if padded(layout(new)) {
                assert_eq!(p as usize % LINE, 0, "a {new}-byte region starts on a line");
            }
            for i in 0..old.min(new) {
                assert_eq!(*p.add(i), pattern(i), "byte {i} kept from {old} to {new} bytes");
            }
            for i in old.min(new)..new {
                *p.add(i) = pattern(i);
            }
        }
        a.dealloc(p, layout(*sizes.last().unwrap()));
        // Many live regions at once: each aligned, none overlapping another's bytes.
        let regions: Vec<*mut u8> = (0..64).map(|i| a.alloc(layout(LARGE + i * 40))).collect();
        for (i, &r) in regions.iter().enumerate() {
            assert_eq!(r as usize % LINE, 0);
            std::ptr::write_bytes(r, i as u8, LARGE + i * 40);
        }
        for (i, &r) in regions.iter().enumerate() {
            assert!((0..LARGE + i * 40).all(|k| *r.add(k) == i as u8), "region {i} intact");
            a.dealloc(r, layout(LARGE + i * 40));
        }
    }
}

/// Resident memory of this process, from /proc/self/statm (pages).
#[cfg(target_os = "linux")]
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
}

#[cfg(target_os = "linux")]
#[test]
fn zeroed_regions_are_zero_and_not_written_up_front() {
    let a = CacheLineAligned;
    let size = 1usize << 30;
    let before = resident_bytes();
    #[allow(unsafe_code)]
    // SAFETY: a non-zero size; the region is read within it and freed with its layout.
    unsafe {
        let z = a.alloc_zeroed(layout(size));
        assert!(!z.is_null());
        assert_eq!(z as usize % LINE, 0);
        let grew = resident_bytes().saturating_sub(before);
        assert!(grew < size / 4, "a zeroed GiB made {grew} bytes resident: it was written, not mapped");
        assert!((0..size).step_by(4093).all(|i| *z.add(i) == 0));
        a.dealloc(z, layout(size));
    }
}
