//! The kernels: one tile of [`M_TILE`] output channels × [`P_TILE`] pixels, each summing the
//! products of a weight row and an im2col row of `kp` bytes into 32 bits, written pixel by pixel
//! (`acc[pixel][channel]`, the order the requantisation stores channels-last). Guarantee: every
//! kernel computes the same exact integer sums; they differ only in the instructions they use.
//! No kernel builds closures or indexes its registers at run time: what the compiler cannot
//! keep in registers costs a load and a store per multiply-add instruction.

use super::{M_TILE, P_TILE};
/// A byte of the kernel's input domain.
pub(super) trait InputByte: Copy {
    fn widen(self) -> i32;
}
impl InputByte for u8 {
    #[inline(always)]
    fn widen(self) -> i32 {
        self as i32
    }
}
impl InputByte for i8 {
    #[inline(always)]
    fn widen(self) -> i32 {
        self as i32
    }
}

/// Where a tile reads its [`P_TILE`] input rows: the reduction is `segs.len()` segments of
/// `seg_len` bytes, segment `s` of pixel `p` at `ptr[p] + segs[s]`. An im2col block is one
/// segment of K bytes per pixel; a channels-last input read in place is one segment per kernel
/// tap, `seg_len` its channels.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a, const P: usize = P_TILE> {
    pub ptr: [*const u8; P],
    pub segs: &'a [usize],
    pub seg_len: usize,
}

/// Portable tile: `rows` weight rows of `kp` bytes × the [`P_TILE`] input rows.
///
/// # Safety
/// Every segment of every pixel is `seg_len` readable bytes; `seg_len` is a multiple of 16 and
/// `kp` = segments × `seg_len`.
#[inline(never)]
pub(super) unsafe fn tile_portable<T: InputByte>(
    w: &[i8],
    b: Rows<'_>,
    kp: usize,
    rows: usize,
    acc: &mut [[i32; M_TILE]; P_TILE],
) {
    for mi in 0..rows {
        let wr = &w[mi * kp..][..kp];
        for (pi, a) in acc.iter_mut().enumerate() {
            let mut lanes = [0i32; 16];
            for (si, &off) in b.segs.iter().enumerate() {
                // SAFETY: the caller's contract; u8 and i8 have the same size and alignment, the
                // domain only changes how a byte widens.
                let br: &[T] = unsafe { std::slice::from_raw_parts(b.ptr[pi].add(off) as *const T, b.seg_len) };
                let ws = &wr[si * b.seg_len..][..b.seg_len];
                for (wc, bc) in ws.chunks_exact(16).zip(br.chunks_exact(16)) {
                    for l in 0..16 {
                        lanes[l] += wc[l] as i32 * bc[l].widen();
                    }
                }
            }
            a[mi] = lanes.iter().sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::ZMM_CH;
    use super::{Rows, M_TILE, P_TILE};
    use std::arch::x86_64::*;

    use std::arch::asm;

    /// `vpdpbusd` in its AVX-VNNI (VEX) encoding: the same operation as AVX-512 VNNI's on 256
    /// bits, for the cores that have AVX-VNNI without AVX-512 VNNI (Alder Lake and later).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dpbusd_vex(acc: __m256i, b: __m256i, w: __m256i) -> __m256i {
        let mut acc = acc;
        // SAFETY: register-only; the caller runs only where the CPU has AVX-VNNI.
        unsafe {
            asm!(
                "{{vex}} vpdpbusd {acc}, {b}, {w}",
                acc = inout(ymm_reg) acc,
                b = in(ymm_reg) b,
                w = in(ymm_reg) w,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    /// One VNNI tile: for each 32 bytes of k, 4 pixel rows × 8 weight rows of `vpdpbusd`
    /// (`$dp`, u8 pixels × i8 weights), inside a function with the features the encoding needs.
    macro_rules! vnni_tile {
        ($w:ident, $b:ident, $kp:ident, $rows:ident, $acc:ident, $dp:path) => {
            for half in 0..$rows / 4 {
                let mut s = [[_mm256_setzero_si256(); P_TILE]; 4];
                let mut k = 0;
                for &off in $b.segs {
                    let mut kk = 0;
                    while kk + 32 <= $b.seg_len {
                        let mut bv = [_mm256_setzero_si256(); P_TILE];
                        for (p, v) in bv.iter_mut().enumerate() {
                            *v = unsafe { _mm256_loadu_si256($b.ptr[p].add(off + kk) as *const __m256i) };
                        }
                        for (mi, sm) in s.iter_mut().enumerate() {
                            let wv = unsafe {
                                _mm256_loadu_si256($w.as_ptr().add((half * 4 + mi) * $kp + k + kk) as *const __m256i)
                            };
                            for p in 0..P_TILE {
                                sm[p] = $dp(sm[p], bv[p], wv);
                            }
                        }
                        kk += 32;
                    }
                    if kk < $b.seg_len {
                        // The last 16 bytes, in the low half of the registers.
                        let mut bv = [_mm256_setzero_si256(); P_TILE];
                        for (p, v) in bv.iter_mut().enumerate() {
                            *v = unsafe {
                                _mm256_zextsi128_si256(_mm_loadu_si128($b.ptr[p].add(off + kk) as *const __m128i))
                            };
                        }
                        for (mi, sm) in s.iter_mut().enumerate() {
                            let wv = unsafe {
                                _mm256_zextsi128_si256(_mm_loadu_si128(
                                    $w.as_ptr().add((half * 4 + mi) * $kp + k + kk) as *const __m128i
                                ))
                            };
                            for p in 0..P_TILE {
                                sm[p] = $dp(sm[p], bv[p], wv);
                            }
                        }
                    }
                    k += $b.seg_len;
                }
                for (mi, sm) in s.iter().enumerate() {
                    // Horizontal sums of the four pixels' accumulators.
                    let h01 = _mm256_hadd_epi32(sm[0], sm[1]);
                    let h23 = _mm256_hadd_epi32(sm[2], sm[3]);
                    let h = _mm256_hadd_epi32(h01, h23);
                    let r = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
                    let mut out = [0i32; 4];
                    unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, r) };
                    for (p, v) in out.into_iter().enumerate() {
                        $acc[p][half * 4 + mi] = v;
                    }
                }
            }
        };
    }

    /// Broadcast VNNI tile, AVX-512 VNNI on 512-bit registers: `MV` registers of [`ZMM_CH`]
    /// output channels (one channel per 32-bit lane, so no horizontal sums) × `P` pixels. For
    /// each 4 bytes of k, each pixel's 4 input bytes are broadcast to every lane and multiplied
    /// by the 4 weights of each lane's channel (`vpdpbusd`, 64 multiply-adds). `MV · P`
    /// accumulators, `MV` weight registers and one broadcast stay in the 32 registers.
    ///
    /// `w` points at the first register's weights, packed per 4 k as 64 bytes (channel-major);
    /// register `j`'s are `j · wstride` bytes further. `acc[p][j]` receives register `j`'s
    /// channels of pixel `p`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VNNI; each weight stream holds `kp` × [`ZMM_CH`] bytes, `kp` =
    /// segments × `seg_len`; every segment of every pixel is `seg_len` readable bytes, `seg_len`
    /// a multiple of 4.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // registers indexed by constants the compiler unrolls
    pub unsafe fn tile_bcast<const MV: usize, const P: usize>(
        w: *const i8,
        wstride: usize,
        b: &Rows<'_, P>,
        acc: &mut [[[i32; ZMM_CH]; MV]; P],
    ) {
        unsafe {
            let mut s = [[_mm512_setzero_si512(); P]; MV];
            let mut wk = w;
            for &off in b.segs {
                let mut kk = 0;
                while kk < b.seg_len {
                    let mut wv = [_mm512_setzero_si512(); MV];
                    for (j, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_loadu_si512(wk.add(j * wstride) as *const _);
                    }
                    for p in 0..P {
                        let x = _mm512_set1_epi32((b.ptr[p].add(off + kk) as *const i32).read_unaligned());
                        for j in 0..MV {
                            s[j][p] = _mm512_dpbusd_epi32(s[j][p], x, wv[j]);
                        }
                    }
                    wk = wk.add(4 * ZMM_CH);
                    kk += 4;
                }
            }
            for (p, a) in acc.iter_mut().enumerate() {
                for (j, aj) in a.iter_mut().enumerate() {
                    _mm512_storeu_si512(aj.as_mut_ptr() as *mut _, s[j][p]);
                }
            }
        }
    }

    /// One tile of the plane kernel (one input channel per group, stride 1): `MV` output
    /// channels × `P` registers of 16 consecutive output pixels of one row, the pixels in the
    /// lanes. `quads` is the padded input plane as 4-byte windows (`quads[r·row + x]` = the
    /// bytes at `x..x + 4` of padded row `r`), so a register of 16 pixels' next 4 taps is one
    /// load; `w` holds, per kernel row and per 4 taps of it, `MV` i32 words of 4 weights.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VNNI; `quads` holds rows `r0..r0 + kh` of `row` words and every
    /// load of 16 words from `x0 + 16·p + 4·kq` stays inside them; `w` holds `kh · kq4 · MV`
    /// words.
    #[inline(always)]
    #[allow(clippy::needless_range_loop, clippy::too_many_arguments)] // registers indexed by constants
    pub unsafe fn plane_tile<const MV: usize, const P: usize>(
        quads: *const u32,
        row: usize,
        x0: usize,
        kh: usize,
        kq4: usize,
        w: *const i32,
        acc: &mut [[[i32; ZMM_CH]; P]; MV],
    ) {
        unsafe {
            let mut s = [[_mm512_setzero_si512(); P]; MV];
            let mut wk = w;
            for ky in 0..kh {
                let r = quads.add(ky * row + x0);
                for kq in 0..kq4 {
                    let mut v = [_mm512_setzero_si512(); P];
                    for (p, vp) in v.iter_mut().enumerate() {
                        *vp = _mm512_loadu_si512(r.add(16 * p + 4 * kq) as *const _);
                    }
                    for j in 0..MV {
                        let wb = _mm512_set1_epi32(*wk.add(j));
                        for p in 0..P {
                            s[j][p] = _mm512_dpbusd_epi32(s[j][p], v[p], wb);
                        }
                    }
                    wk = wk.add(MV);
                }
            }
            for (a, sj) in acc.iter_mut().zip(&s) {
                for (ap, &sp) in a.iter_mut().zip(sj) {
                    _mm512_storeu_si512(ap.as_mut_ptr() as *mut _, sp);
                }
            }
        }
    }

    /// [`ZMM_CH`] channels of one pixel requantised at once, as [`super::super::requantise`]
    /// does eight: `(acc + bias) · mult` in f32, clamped to ±10⁶, rounded half to even
    /// (`vcvtps2dq` under the default rounding mode), `+ zy`, saturated to 0..=255, sign bit
    /// flipped by `flip`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[inline(always)]
    pub unsafe fn requantise16(
        acc: &[i32; ZMM_CH],
        bias: &[i32; ZMM_CH],
        mult: &[f32; ZMM_CH],
        zy: u8,
        flip: u8,
    ) -> [u8; ZMM_CH] {
        unsafe {
            let a = _mm512_add_epi32(
                _mm512_loadu_si512(acc.as_ptr() as *const _),
                _mm512_loadu_si512(bias.as_ptr() as *const _),
            );
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_loadu_ps(mult.as_ptr()));
            let v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-1.0e6)), _mm512_set1_ps(1.0e6));
            let r = _mm512_add_epi32(_mm512_cvtps_epi32(v), _mm512_set1_epi32(zy as i32));
            let q = _mm512_cvtusepi32_epi8(_mm512_max_epi32(r, _mm512_setzero_si512()));
            let q = _mm_xor_si128(q, _mm_set1_epi8(flip as i8));
            let mut out = [0u8; ZMM_CH];
            _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, q);
            out
        }
    }

    /// VNNI tile, AVX-512 VNNI encoding (EVEX, 256-bit registers).
    ///
    /// # Safety
    /// The CPU has AVX-512 VNNI and VL; `w` holds `rows` rows of `kp` bytes; `b` as for
    /// [`super::tile_portable`].
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    pub unsafe fn tile_vnni(w: &[i8], b: Rows<'_>, kp: usize, rows: usize, acc: &mut [[i32; M_TILE]; P_TILE]) {
        vnni_tile!(w, b, kp, rows, acc, _mm256_dpbusd_epi32);
    }

    /// VNNI tile, AVX-VNNI encoding (VEX).
    ///
    /// # Safety
    /// The CPU has AVX-VNNI; the buffers as for [`tile_vnni`].
    #[target_feature(enable = "avx2")]
    pub unsafe fn tile_avx_vnni(w: &[i8], b: Rows<'_>, kp: usize, rows: usize, acc: &mut [[i32; M_TILE]; P_TILE]) {
        vnni_tile!(w, b, kp, rows, acc, dpbusd_vex);
    }
}

#[cfg(target_arch = "aarch64")]
pub(super) mod arm {
    use super::{Rows, M_TILE, P_TILE};
    use std::arch::aarch64::*;
    use std::arch::asm;

    #[inline(always)]
    unsafe fn sdot<const L: i32>(acc: int32x4_t, w: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        unsafe {
            asm!(
                "sdot {acc:v}.4s, {w:v}.16b, {b:v}.4b[{l}]",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                b = in(vreg) b,
                l = const L,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    /// SDOT tile over `H` groups of 4 output channels × 4 pixels; per 16 bytes of k, four
    /// pixel loads, 4·`H` weight loads and 16·`H` `SDOT`s (256·`H` multiply-adds).
    ///
    /// # Safety
    /// The CPU has the dot-product extension; `w` is in the `[m/4][k/4][4][4]` order for `H`·4
    /// rows of `kp`; `b` as for [`super::tile_portable`].
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    unsafe fn tile_sdot_h<const H: usize>(w: &[i8], b: Rows<'_>, kp: usize, acc: &mut [[i32; M_TILE]; P_TILE]) {
        debug_assert!(w.len() >= H * 4 * kp && b.seg_len % 16 == 0);
        unsafe {
            let zero = vdupq_n_s32(0);
            let mut s = [[zero; P_TILE]; H];
            let wq = kp / 4 * 16; // bytes per 4 output channels
            let mut k = 0;
            for &off in b.segs {
                let bp = [
                    b.ptr[0].add(off) as *const i8,
                    b.ptr[1].add(off) as *const i8,
                    b.ptr[2].add(off) as *const i8,
                    b.ptr[3].add(off) as *const i8,
                ];
                let mut kk = 0;
                while kk < b.seg_len {
                    let b0 = vld1q_s8(bp[0].add(kk));
                    let b1 = vld1q_s8(bp[1].add(kk));
                    let b2 = vld1q_s8(bp[2].add(kk));
                    let b3 = vld1q_s8(bp[3].add(kk));
                    for (h, sh) in s.iter_mut().enumerate() {
                        let base = w.as_ptr().add(h * wq + (k + kk) / 4 * 16);
                        let w0 = vld1q_s8(base);
                        let w1 = vld1q_s8(base.add(16));
                        let w2 = vld1q_s8(base.add(32));
                        let w3 = vld1q_s8(base.add(48));
                        for (a, bv) in sh.iter_mut().zip([b0, b1, b2, b3]) {
                            *a = sdot::<0>(*a, w0, bv);
                            *a = sdot::<1>(*a, w1, bv);
                            *a = sdot::<2>(*a, w2, bv);
                            *a = sdot::<3>(*a, w3, bv);
                        }
                    }
                    kk += 16;
                }
                k += b.seg_len;
            }
            for (h, sh) in s.iter().enumerate() {
                for (p, a) in sh.iter().enumerate() {
                    vst1q_s32(acc[p].as_mut_ptr().add(h * 4), *a);
                }
            }
        }
    }

    /// SDOT tile: 8 output channels (two registers of 4, `halves` = 2) or 4 (`halves` = 1) ×
    /// 4 pixels; per 16 bytes of k, four pixel loads, eight weight loads and 32 `SDOT`s
    /// (512 multiply-adds).
    ///
    /// # Safety
    /// As [`tile_sdot_h`], for `halves`·4 rows.
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn tile_sdot(w: &[i8], b: Rows<'_>, kp: usize, halves: usize, acc: &mut [[i32; M_TILE]; P_TILE]) {
        unsafe {
            if halves == 2 {
                tile_sdot_h::<2>(w, b, kp, acc)
            } else {
                tile_sdot_h::<1>(w, b, kp, acc)
            }
        }
    }

    /// SMLAL tile for the aarch64 cores without the dot product (Cortex-A53/A72): for each 16
    /// bytes of k and each of 4 output channels × 4 pixels, `SMULL` and `SMLAL2` multiply the
    /// 8-bit pairs into 16-bit lanes (two products per lane) and `SADALP` adds the lanes pairwise
    /// into 32-bit accumulators: 3 instructions per 16 multiply-adds. Two products of a lane fit
    /// 16 bits unless both are −128 × −128, so the weights must not hold −128 (checked at load).
    ///
    /// # Safety
    /// `w` holds `rows` rows (a multiple of 4) of `kp` bytes, `b` as for
    /// [`super::tile_portable`]; no weight is −128.
    #[target_feature(enable = "neon")]
    pub unsafe fn tile_smlal(w: &[i8], b: Rows<'_>, kp: usize, rows: usize, acc: &mut [[i32; M_TILE]; P_TILE]) {
        debug_assert!(w.len() >= rows * kp && b.seg_len % 16 == 0 && rows % 4 == 0);
        unsafe {
            let mut m0 = 0;
            while m0 < rows {
                let zero = vdupq_n_s32(0);
                let mut s = [[zero; P_TILE]; 4];
                let mut k = 0;
                for &off in b.segs {
                    let mut kk = 0;
                    while kk < b.seg_len {
                        let bv = [
                            vld1q_s8(b.ptr[0].add(off + kk) as *const i8),
                            vld1q_s8(b.ptr[1].add(off + kk) as *const i8),
                            vld1q_s8(b.ptr[2].add(off + kk) as *const i8),
                            vld1q_s8(b.ptr[3].add(off + kk) as *const i8),
                        ];
                        for (mi, sm) in s.iter_mut().enumerate() {
                            let wv = vld1q_s8(w.as_ptr().add((m0 + mi) * kp + k + kk));
                            let wl = vget_low_s8(wv);
                            for (a, bq) in sm.iter_mut().zip(bv) {
                                let prod = vmlal_high_s8(vmull_s8(wl, vget_low_s8(bq)), wv, bq);
                                *a = vpadalq_s16(*a, prod);
                            }
                        }
                        kk += 16;
                    }
                    k += b.seg_len;
                }
                for (mi, sm) in s.iter().enumerate() {
                    for (p, a) in sm.iter().enumerate() {
                        acc[p][m0 + mi] = vaddvq_s32(*a);
                    }
                }
                m0 += 4;
            }
        }
    }
}
