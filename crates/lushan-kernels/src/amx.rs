//! Intel AMX (Advanced Matrix Extensions) bf16 tiles: `tdpbf16ps` multiplies a 16 × 32 bf16 tile by a
//! 32 × 16 one (held as 16 rows of 16 column pairs, "VNNI" order) into a 16 × 16 f32 tile — 8 192
//! multiply-adds per instruction, sixteen times what one AVX-512 BF16 instruction does.
//!
//! One microkernel serves every caller: a 32 × 32 f32 block of C held in four accumulator tiles (tmm0–3),
//! fed per step of 32 k by two A tiles (rows 0–15 and 16–31, tmm4–5) and two B tiles (columns 0–15 and
//! 16–31, tmm6–7). Where the tiles come from is given by [`Tiles`]: packed panels (the training GEMM) or a
//! weight matrix read in place (inference). The instructions are written with `asm!`, since Rust's AMX
//! intrinsics are not stable.
//!
//! Arithmetic: each product of two bf16 is exact in f32; the tile adds pairs of products to the f32
//! accumulator, with subnormal inputs and outputs flushed to zero, in an order the hardware does not
//! document — so results match an f64 reference to f32 summation accuracy, not a scalar twin bit for bit.

use std::sync::OnceLock;

pub mod prompts;

/// Rows and columns of the block of C one call computes.
pub const BLOCK: usize = 32;
/// k-values (bf16) per tile step; a step of packed words (bf16 pairs) is half that.
pub const K_STEP: usize = 32;
/// Packed words (pairs of k) per tile step.
pub const WORD_STEP: usize = K_STEP / 2;

/// Whether this process may use AMX BF16: the CPU has it, the OS saves its state, Linux granted the
/// permission each process must ask for, and `LUSHAN_AMX` is not `0`. Checked once per process.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| std::env::var("LUSHAN_AMX").map_or(true, |v| v != "0") && detect())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE. Leaf 1: ECX bit 27 OSXSAVE (XGETBV usable).
    // SAFETY: CPUID exists on every x86-64 CPU.
    #[allow(unused_unsafe)]
    let (leaf1, leaf7) = unsafe { (__cpuid_count(1, 0), __cpuid_count(7, 0)) };
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 || leaf1.ecx & (1 << 27) == 0 {
        return false;
    }
    // XCR0 bits 17 and 18: the OS saves the tile configuration and tile data.
    // SAFETY: OSXSAVE is set (checked above), so XGETBV is enabled.
    let xcr0 = unsafe { xcr0() };
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    // Linux hands out the 8 KiB tile state only to processes that ask (arch_prctl ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA); the grant covers every thread of the process.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it only changes this process's permissions.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// # Safety
/// XGETBV must be enabled (CPUID.1:ECX.OSXSAVE).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    // SAFETY: the caller checked OSXSAVE.
    unsafe { std::arch::x86_64::_xgetbv(0) }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Where one operand's tiles lie, in bytes from the start of its slice: the first tile (rows or columns
/// 0–15) at 0, the second (16–31) at `half`; each tile is 16 rows of 64 bytes, `row` bytes apart; the next
/// step of k is `step` bytes further on.
#[derive(Clone, Copy, Debug)]
pub struct Tiles {
    pub half: usize,
    pub row: usize,
    pub step: usize,
}

impl Tiles {
    /// One past the last byte `steps` steps read, or `None` on overflow.
    fn extent(self, steps: usize) -> Option<usize> {
        let last_step = (steps - 1).checked_mul(self.step)?;
        last_step.checked_add(self.half)?.checked_add(15usize.checked_mul(self.row)?)?.checked_add(64)
    }
}

/// The tile configuration (palette 1): all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Memory the caller will read next, to be brought towards the core while the tiles work: `lines` cache
/// lines from `start`. A prefetch never faults, so the range only has to be the caller's best guess.
#[derive(Clone, Copy, Debug)]
pub struct Prefetch {
    pub start: *const u8,
    pub lines: usize,
}

impl Prefetch {
    pub const NONE: Self = Self { start: std::ptr::null(), lines: 0 };

    /// The bytes of `data`.
    pub fn of<T>(data: &[T]) -> Self {
        Self { start: data.as_ptr().cast(), lines: std::mem::size_of_val(data).div_ceil(64) }
    }
}

/// `out[i][j] = Σ_k a[i][k]·b[k][j]` over `steps` steps of 32 k, `out` 32 × 32 row-major.
///
/// `a`'s tile rows are rows of A (32 bf16 of consecutive k each); `b`'s tile rows are pairs of k, each
/// holding 16 columns × (k, k+1) — the layout `tdpbf16ps` takes. Bytes are bf16 bit patterns.
///
/// `prefetch`'s lines are requested into L2, spread over the steps: on this kernel's critical path are
/// the tile loads, not the load ports, so a caller streaming weights from memory hides that stream here.
///
/// Panics (before any AMX instruction) when either operand is shorter than its tiles reach, or
/// `steps == 0`. Must only be called when [`available`] is true.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub fn block(
    out: &mut [f32; BLOCK * BLOCK],
    a: &[u8],
    a_tiles: Tiles,
    b: &[u8],
    b_tiles: Tiles,
    steps: usize,
    prefetch: Prefetch,
) {
    assert!(steps > 0, "amx: no steps");
    // Each step's advance of A and B, and its number of prefetches, as the loop reads them.
    let params: [usize; 3] = [a_tiles.step, b_tiles.step, prefetch.lines.div_ceil(steps)];
    const { assert!(BLOCK * 4 == 128, "amx: the output's row stride below") };
    assert!(available(), "amx: not available on this CPU");
    assert!(a_tiles.extent(steps).is_some_and(|e| e <= a.len()), "amx: A shorter than its tiles");
    assert!(b_tiles.extent(steps).is_some_and(|e| e <= b.len()), "amx: B shorter than its tiles");
    // SAFETY: AMX is available and this process may use it (`available`); every tile load stays inside `a`
    // and `b` (their extents over `steps` steps are asserted above); `params` is read, three words; prefetches
    // never fault or write; the four stores write the 32 rows of 128 bytes of `out` exactly. The tiles are
    // configured, used and released within this one block, so no tile state outlives it.
    unsafe {
        std::arch::asm!(
            "ldtilecfg [{cfg}]",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            // {cfg} is free after the configuration loads: it counts this step's prefetches.
            "mov {cfg}, qword ptr [{params} + 16]",
            "test {cfg}, {cfg}",
            "jz 4f",
            "3:",
            "prefetcht1 [{pf}]",
            "add {pf}, 64",
            "dec {cfg}",
            "jnz 3b",
            "4:",
            "tileloadd tmm4, [{a0} + {a_row}*1]",
            "tileloadd tmm5, [{a1} + {a_row}*1]",
            "tileloadd tmm6, [{b0} + {b_row}*1]",
            "tileloadd tmm7, [{b1} + {b_row}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, qword ptr [{params}]",
            "add {a1}, qword ptr [{params}]",
            "add {b0}, qword ptr [{params} + 8]",
            "add {b1}, qword ptr [{params} + 8]",
            "dec {n}",
            "jnz 2b",
            // {a_row} is free after the loop: the output's row stride.
            "mov {a_row}, 128",
            "tilestored [{out} + {a_row}*1], tmm0",
            "add {out}, 64",
            "tilestored [{out} + {a_row}*1], tmm1",
            "add {out}, 1984",
            "tilestored [{out} + {a_row}*1], tmm2",
            "add {out}, 64",
            "tilestored [{out} + {a_row}*1], tmm3",
            "tilerelease",
            // Few registers: builds with sanitizers and coverage keep some for themselves, so the steps and the
            // prefetch count are read from memory and two registers are reused.
            cfg = inout(reg) &CONFIG as *const TileConfig => _,
            a0 = inout(reg) a.as_ptr() => _,
            a1 = inout(reg) a.as_ptr().add(a_tiles.half) => _,
            b0 = inout(reg) b.as_ptr() => _,
            b1 = inout(reg) b.as_ptr().add(b_tiles.half) => _,
            a_row = inout(reg) a_tiles.row => _,
            b_row = in(reg) b_tiles.row,
            params = in(reg) params.as_ptr(),
            n = inout(reg) steps => _,
            pf = inout(reg) prefetch.start => _,
            out = inout(reg) out.as_mut_ptr() => _,
            options(nostack),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn block(_: &mut [f32; BLOCK * BLOCK], _: &[u8], _: Tiles, _: &[u8], _: Tiles, _: usize, _: Prefetch) {
    unreachable!("amx: only x86-64 has AMX, and `available` is false elsewhere")
}
