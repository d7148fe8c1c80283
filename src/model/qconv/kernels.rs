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

    /// One tile of the plane kernel (stride 1): `MV` output channels × `P` registers of 16
    /// consecutive output pixels of one row, the pixels in the lanes. `quads` holds `planes`
    /// planes of words `plane` words apart, each of padded rows of `row` words (the layout of
    /// `QConv::plane_layout`): 4-byte windows of one input channel, `quads[r·row + x]` = the
    /// bytes at `x..x + 4` of padded row `r`, read `tstep` = 4 pixels apart, or 4 channels at
    /// each pixel, read 1 pixel apart; so a register of 16 pixels' next 4 products is one load.
    /// `w` holds, per plane, kernel row and word of it (`kq` a row), `MV` i32 words of the
    /// weights that meet that word's 4 bytes.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VNNI; `quads` holds, in each of the planes, rows `r0..r0 + kh`
    /// of `row` words and every load of 16 words from `x0 + 16·p + tstep·q` (`q < kq`) stays
    /// inside them; `w` holds `planes · kh · kq · MV` words.
    #[inline(always)]
    #[allow(clippy::needless_range_loop, clippy::too_many_arguments)] // registers indexed by constants
    pub unsafe fn plane_tile<const MV: usize, const P: usize>(
        quads: *const u32,
        row: usize,
        (planes, plane, tstep): (usize, usize, usize),
        x0: usize,
        kh: usize,
        kq: usize,
        w: *const i32,
        acc: &mut [[[i32; ZMM_CH]; P]; MV],
    ) {
        unsafe {
            let mut s = [[_mm512_setzero_si512(); P]; MV];
            let mut wk = w;
            for row_k in 0..planes * kh {
                let (c, ky) = (row_k / kh, row_k % kh);
                let r = quads.add(c * plane + ky * row + x0);
                for q in 0..kq {
                    let mut v = [_mm512_setzero_si512(); P];
                    for (p, vp) in v.iter_mut().enumerate() {
                        *vp = _mm512_loadu_si512(r.add(16 * p + tstep * q) as *const _);
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

    /// Eight sums requantised at once on AVX2, as [`super::super::requantise`] does them:
    /// `(acc + bias) · mult` in f32, clamped to ±10⁶, rounded half to even (`vcvtps2dq` under
    /// the default rounding mode), `+ zy`, saturated to 0..=255 (through 16 bits).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn requantise8_avx2(acc: &[i32; 8], bias: &[i32; 8], mult: &[f32; 8], zy: u8) -> [u8; 8] {
        unsafe {
            let a = _mm256_add_epi32(
                _mm256_loadu_si256(acc.as_ptr() as *const __m256i),
                _mm256_loadu_si256(bias.as_ptr() as *const __m256i),
            );
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_loadu_ps(mult.as_ptr()));
            let v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-1.0e6)), _mm256_set1_ps(1.0e6));
            let r = _mm256_add_epi32(_mm256_cvtps_epi32(v), _mm256_set1_epi32(zy as i32));
            let w = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
            let q = _mm_packus_epi16(w, w);
            let mut out = [0u8; 8];
            _mm_storel_epi64(out.as_mut_ptr() as *mut __m128i, q);
            out
        }
    }

    /// Output pixels per 256-bit register of the plane kernel on AVX2 and AVX-VNNI
    /// ([`plane_tile_ymm`]): eight lanes of i32.
    pub const YMM_PX: usize = 8;

    /// [`plane_tile`] on 256-bit registers, for x86-64 cores without AVX-512 VNNI: `MV` output
    /// channels × `P` registers of [`YMM_PX`] consecutive output pixels of one row, over the
    /// same planes of words.
    /// - With AVX-VNNI (`VEX`), `quads` holds 4-byte words: each 4 taps (or channels) of 8
    ///   pixels are one load and, per channel, one `vpdpbusd` against the channel's 4 weights
    ///   broadcast.
    /// - With AVX2 alone, `quads` holds words of 2 bytes as 16-bit lanes (2 taps or 2
    ///   channels): each 2 of 8 pixels are one load and, per channel, one `vpmaddwd` against the
    ///   channel's 2 weights as 16 bits, added in 32 (exact for every i8 weight: 255·128·2
    ///   fits; the byte form, `vpmaddubsw`, saturates past ±64 and filter banks use the whole
    ///   range).
    ///
    /// A tile is `MV · P` = 8 sums, kept in registers beside the `P` windows and the `MV`
    /// broadcast weights.
    ///
    /// # Safety
    /// The CPU has AVX2 (and AVX-VNNI when `VEX`); `quads` holds, in each of the planes, rows
    /// `r0..r0 + kh` of `row` words and every load of 8 words from `x0 + 8·p + tstep·q`
    /// (`q < kq`) stays inside them; `w` holds `planes · kh · kq · MV` words, `kq` the words
    /// of a kernel row.
    #[inline]
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments, clippy::erasing_op, clippy::identity_op)] // k / P, k % P spelt out
    pub unsafe fn plane_tile_ymm<const MV: usize, const P: usize, const VEX: bool>(
        quads: *const u32,
        row: usize,
        (planes, plane, tstep): (usize, usize, usize),
        x0: usize,
        kh: usize,
        kq: usize,
        w: *const i32,
        acc: &mut [[[i32; YMM_PX]; P]; MV],
    ) {
        const { assert!(MV * P == 8, "eight sums a tile") };
        let dp = |acc: __m256i, v: __m256i, w: __m256i| {
            if VEX {
                dpbusd_vex(acc, v, w)
            } else {
                _mm256_add_epi32(acc, _mm256_madd_epi16(v, w))
            }
        };
        unsafe {
            // Eight sums as eight variables, not an array: an array carried across the loop
            // was kept in memory, one store per multiply-add.
            let z = _mm256_setzero_si256();
            let (mut s0, mut s1, mut s2, mut s3, mut s4, mut s5, mut s6, mut s7) = (z, z, z, z, z, z, z, z);
            let mut wk = w;
            for row_k in 0..planes * kh {
                let (c, ky) = (row_k / kh, row_k % kh);
                let r = quads.add(c * plane + ky * row + x0);
                for q in 0..kq {
                    let mut v = [z; P];
                    for (p, vp) in v.iter_mut().enumerate() {
                        *vp = _mm256_loadu_si256(r.add(YMM_PX * p + tstep * q) as *const __m256i);
                    }
                    let mut wb = [z; MV];
                    for (j, b) in wb.iter_mut().enumerate() {
                        *b = _mm256_set1_epi32(*wk.add(j));
                    }
                    // sum k is channel k / P, register of pixels k % P
                    s0 = dp(s0, v[0 % P], wb[0 / P]);
                    s1 = dp(s1, v[1 % P], wb[1 / P]);
                    s2 = dp(s2, v[2 % P], wb[2 / P]);
                    s3 = dp(s3, v[3 % P], wb[3 / P]);
                    s4 = dp(s4, v[4 % P], wb[4 / P]);
                    s5 = dp(s5, v[5 % P], wb[5 / P]);
                    s6 = dp(s6, v[6 % P], wb[6 / P]);
                    s7 = dp(s7, v[7 % P], wb[7 / P]);
                    wk = wk.add(MV);
                }
            }
            for (k, sk) in [s0, s1, s2, s3, s4, s5, s6, s7].into_iter().enumerate() {
                _mm256_storeu_si256(acc[k / P][k % P].as_mut_ptr() as *mut __m256i, sk);
            }
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

    /// `vpdpbusd` from AVX2 alone: `vpmaddubsw` multiplies the u8 pixels by the i8 weights and
    /// adds neighbouring products into 16 bits (saturating), `vpmaddwd` by ones adds
    /// neighbouring pairs of those into 32 bits. Exact when no pair saturates: with every weight
    /// in ±[`AVX2_MAX_WEIGHT`], a pair is at most 2·255·64 = 32 640 in magnitude.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dpbusd_avx2(acc: __m256i, b: __m256i, w: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w), _mm256_set1_epi16(1)))
    }

    /// The largest weight magnitude [`tile_avx2`] sums exactly (ONNX Runtime's 7-bit weight
    /// range, [−64, 63], fits).
    pub const AVX2_MAX_WEIGHT: i8 = 64;

    /// The VNNI tile on AVX2 ([`dpbusd_avx2`]): x86-64 cores without VNNI (Haswell to Ice Lake
    /// clients, Zen 1–3).
    ///
    /// # Safety
    /// The CPU has AVX2; every weight in `w` is within ±[`AVX2_MAX_WEIGHT`]; the buffers as for
    /// [`tile_vnni`].
    ///
    /// Two weight rows × the 4 pixels at a time, not the VNNI tiles' four: AVX2 has 16
    /// registers, and 8 sums, 4 pixel loads, a weight load, the constant of ones and a product
    /// fit them (16 sums spilled to memory on every multiply-add). The sums are eight
    /// variables, not an array, so none is kept in memory across the loop.
    #[target_feature(enable = "avx2")]
    pub unsafe fn tile_avx2(w: &[i8], b: Rows<'_>, kp: usize, rows: usize, acc: &mut [[i32; M_TILE]; P_TILE]) {
        debug_assert!(rows.is_multiple_of(2) && w.len() >= rows * kp && b.seg_len.is_multiple_of(16));
        let z = _mm256_setzero_si256();
        for pair in 0..rows / 2 {
            let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
            let (mut b0, mut b1, mut b2, mut b3) = (z, z, z, z);
            // SAFETY (the loads): the caller's contract; each row of `w` is `kp` bytes, the
            // segments of every pixel `seg_len` bytes, read 32 (then 16) at a time.
            let wr0 = unsafe { w.as_ptr().add(2 * pair * kp) };
            let wr1 = unsafe { wr0.add(kp) };
            let mut k = 0;
            if b.seg_len == 16 {
                // Segments of 16 bytes (16 channels a tap) two at a time, one in each half of
                // the registers: the weights of neighbouring segments are contiguous.
                for pair in b.segs.chunks(2) {
                    let ld = |p: *const u8| unsafe {
                        let lo = _mm_loadu_si128(p.add(pair[0]) as *const __m128i);
                        match pair.get(1) {
                            Some(&hi) => _mm256_inserti128_si256::<1>(
                                _mm256_castsi128_si256(lo),
                                _mm_loadu_si128(p.add(hi) as *const __m128i),
                            ),
                            None => _mm256_zextsi128_si256(lo),
                        }
                    };
                    let (x0, x1, x2, x3) = (ld(b.ptr[0]), ld(b.ptr[1]), ld(b.ptr[2]), ld(b.ptr[3]));
                    let lw = |p: *const i8| unsafe {
                        if pair.len() == 2 {
                            _mm256_loadu_si256(p.add(k) as *const __m256i)
                        } else {
                            _mm256_zextsi128_si256(_mm_loadu_si128(p.add(k) as *const __m128i))
                        }
                    };
                    let w0 = lw(wr0);
                    a0 = dpbusd_avx2(a0, x0, w0);
                    a1 = dpbusd_avx2(a1, x1, w0);
                    a2 = dpbusd_avx2(a2, x2, w0);
                    a3 = dpbusd_avx2(a3, x3, w0);
                    let w1 = lw(wr1);
                    b0 = dpbusd_avx2(b0, x0, w1);
                    b1 = dpbusd_avx2(b1, x1, w1);
                    b2 = dpbusd_avx2(b2, x2, w1);
                    b3 = dpbusd_avx2(b3, x3, w1);
                    k += 16 * pair.len();
                }
            }
            for &off in b.segs.iter().filter(|_| b.seg_len != 16) {
                let mut kk = 0;
                while kk + 32 <= b.seg_len {
                    let ld = |p: *const u8| unsafe { _mm256_loadu_si256(p.add(off + kk) as *const __m256i) };
                    let (x0, x1, x2, x3) = (ld(b.ptr[0]), ld(b.ptr[1]), ld(b.ptr[2]), ld(b.ptr[3]));
                    let w0 = unsafe { _mm256_loadu_si256(wr0.add(k + kk) as *const __m256i) };
                    a0 = dpbusd_avx2(a0, x0, w0);
                    a1 = dpbusd_avx2(a1, x1, w0);
                    a2 = dpbusd_avx2(a2, x2, w0);
                    a3 = dpbusd_avx2(a3, x3, w0);
                    let w1 = unsafe { _mm256_loadu_si256(wr1.add(k + kk) as *const __m256i) };
                    b0 = dpbusd_avx2(b0, x0, w1);
                    b1 = dpbusd_avx2(b1, x1, w1);
                    b2 = dpbusd_avx2(b2, x2, w1);
                    b3 = dpbusd_avx2(b3, x3, w1);
                    kk += 32;
                }
                if kk < b.seg_len {
                    // The last 16 bytes, in the low half of the registers.
                    let ld = |p: *const u8| unsafe {
                        _mm256_zextsi128_si256(_mm_loadu_si128(p.add(off + kk) as *const __m128i))
                    };
                    let (x0, x1, x2, x3) = (ld(b.ptr[0]), ld(b.ptr[1]), ld(b.ptr[2]), ld(b.ptr[3]));
                    let w0 = unsafe { _mm256_zextsi128_si256(_mm_loadu_si128(wr0.add(k + kk) as *const __m128i)) };
                    a0 = dpbusd_avx2(a0, x0, w0);
                    a1 = dpbusd_avx2(a1, x1, w0);
                    a2 = dpbusd_avx2(a2, x2, w0);
                    a3 = dpbusd_avx2(a3, x3, w0);
                    let w1 = unsafe { _mm256_zextsi128_si256(_mm_loadu_si128(wr1.add(k + kk) as *const __m128i)) };
                    b0 = dpbusd_avx2(b0, x0, w1);
                    b1 = dpbusd_avx2(b1, x1, w1);
                    b2 = dpbusd_avx2(b2, x2, w1);
                    b3 = dpbusd_avx2(b3, x3, w1);
                }
                k += b.seg_len;
            }
            for (r, [s0, s1, s2, s3]) in [[a0, a1, a2, a3], [b0, b1, b2, b3]].into_iter().enumerate() {
                // Horizontal sums of the four pixels' accumulators.
                let h = _mm256_hadd_epi32(_mm256_hadd_epi32(s0, s1), _mm256_hadd_epi32(s2, s3));
                let v = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
                let mut out = [0i32; 4];
                // SAFETY: four i32 into an array of four.
                unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, v) };
                for (p, x) in out.into_iter().enumerate() {
                    acc[p][2 * pair + r] = x;
                }
            }
        }
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
        debug_assert!(w.len() >= H * 4 * kp && b.seg_len.is_multiple_of(16));
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

    /// Output pixels per step of the plane kernel ([`plane_tile`]): one register of bytes.
    pub const PLANE_PIXELS: usize = 16;

    /// The plane kernel on NEON: `MV` (1, 2 or 4) output channels × [`PLANE_PIXELS`] pixels of
    /// one output row, the pixels in the lanes. Each tap loads the 16 input bytes under the 16
    /// pixels (`base + taps[t]`) and, per channel, its weight broadcast (`LD1R`); `SMULL` and
    /// `SMULL2` multiply into 16-bit lanes and `SADDW`/`SADDW2` widen them into the 32-bit sums.
    /// With `PAIRS` the taps go two at a time (`SMLAL`/`SMLAL2` adds the second product in 16
    /// bits: 12 instructions per 32 multiply-adds of one channel), which needs no channel to
    /// weigh both taps of a pair −128 (the one sum that leaves 16 bits); without it one tap at a
    /// time. The sums are named variables, so none is kept in memory between taps. Writes
    /// `out[j]` for the `MV` channels.
    ///
    /// # Safety
    /// `taps.len()` is even when `PAIRS`; every `base + taps[t]` reads 16 bytes; `w` holds
    /// `taps.len()`·`MV` weights, tap-major; with `PAIRS`, no channel has −128 at both taps of a
    /// pair (`2i`, `2i + 1`).
    #[target_feature(enable = "neon")]
    pub unsafe fn plane_tile<const MV: usize, const PAIRS: bool>(
        base: *const i8,
        taps: &[usize],
        w: *const i8,
        out: &mut [[i32; PLANE_PIXELS]; 4],
    ) {
        debug_assert!(matches!(MV, 1 | 2 | 4) && (!PAIRS || taps.len().is_multiple_of(2)));
        unsafe {
            let z = vdupq_n_s32(0);
            let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
            let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
            let (mut a20, mut a21, mut a22, mut a23) = (z, z, z, z);
            let (mut a30, mut a31, mut a32, mut a33) = (z, z, z, z);
            // 16 products in two registers of 16-bit lanes into the channel's four sums
            macro_rules! widen {
                ($lo:expr, $hi:expr, $s0:ident, $s1:ident, $s2:ident, $s3:ident) => {{
                    let (lo, hi) = ($lo, $hi);
                    $s0 = vaddw_s16($s0, vget_low_s16(lo));
                    $s1 = vaddw_high_s16($s1, lo);
                    $s2 = vaddw_s16($s2, vget_low_s16(hi));
                    $s3 = vaddw_high_s16($s3, hi);
                }};
            }
            // the `MV` channels of one step, by the step's own `channel!`
            macro_rules! each_channel {
                () => {{
                    channel!(0, a00, a01, a02, a03);
                    if MV > 1 {
                        channel!(1, a10, a11, a12, a13);
                    }
                    if MV > 2 {
                        channel!(2, a20, a21, a22, a23);
                        channel!(3, a30, a31, a32, a33);
                    }
                }};
            }
            if PAIRS {
                let mut t = 0;
                while t < taps.len() {
                    let xa = vld1q_s8(base.add(*taps.get_unchecked(t)));
                    let xb = vld1q_s8(base.add(*taps.get_unchecked(t + 1)));
                    let (wa, wb) = (w.add(t * MV), w.add((t + 1) * MV));
                    macro_rules! channel {
                        ($j:expr, $s0:ident, $s1:ident, $s2:ident, $s3:ident) => {{
                            let va = vld1q_dup_s8(wa.add($j));
                            let vb = vld1q_dup_s8(wb.add($j));
                            let lo = vmlal_s8(
                                vmull_s8(vget_low_s8(xa), vget_low_s8(va)),
                                vget_low_s8(xb),
                                vget_low_s8(vb),
                            );
                            let hi = vmlal_high_s8(vmull_high_s8(xa, va), xb, vb);
                            widen!(lo, hi, $s0, $s1, $s2, $s3);
                        }};
                    }
                    each_channel!();
                    t += 2;
                }
            } else {
                for (t, &off) in taps.iter().enumerate() {
                    let xa = vld1q_s8(base.add(off));
                    let wa = w.add(t * MV);
                    macro_rules! channel {
                        ($j:expr, $s0:ident, $s1:ident, $s2:ident, $s3:ident) => {{
                            let va = vld1q_dup_s8(wa.add($j));
                            widen!(
                                vmull_s8(vget_low_s8(xa), vget_low_s8(va)),
                                vmull_high_s8(xa, va),
                                $s0,
                                $s1,
                                $s2,
                                $s3
                            );
                        }};
                    }
                    each_channel!();
                }
            }
            for (o, s) in out
                .iter_mut()
                .zip([
                    [a00, a01, a02, a03],
                    [a10, a11, a12, a13],
                    [a20, a21, a22, a23],
                    [a30, a31, a32, a33],
                ])
                .take(MV)
            {
                for (k, v) in s.into_iter().enumerate() {
                    vst1q_s32(o.as_mut_ptr().add(4 * k), v);
                }
            }
        }
    }

    /// One channel's [`PLANE_PIXELS`] sums requantised as `super::super::requantise` does (the
    /// same NEON steps, with one bias and one multiplier for every lane), no sign flip.
    #[inline]
    #[target_feature(enable = "neon")]
    pub unsafe fn requantise16(acc: &[i32; PLANE_PIXELS], bias: i32, mult: f32, zy: u8) -> [u8; PLANE_PIXELS] {
        let mut q = [0u8; PLANE_PIXELS];
        // SAFETY: four loads of 4 from an array of 16, one store of 16 into one.
        unsafe {
            let (b, m, z) = (vdupq_n_s32(bias), vdupq_n_f32(mult), vdupq_n_s32(zy as i32));
            let r = |k: usize| {
                let a = vaddq_s32(vld1q_s32(acc.as_ptr().add(4 * k)), b);
                vqmovn_s32(vqaddq_s32(vcvtnq_s32_f32(vmulq_f32(vcvtq_f32_s32(a), m)), z))
            };
            let lo = vqmovun_s16(vcombine_s16(r(0), r(1)));
            let hi = vqmovun_s16(vcombine_s16(r(2), r(3)));
            vst1q_u8(q.as_mut_ptr(), vcombine_u8(lo, hi));
        }
        q
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
        debug_assert!(w.len() >= rows * kp && b.seg_len.is_multiple_of(16) && rows.is_multiple_of(4));
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

/// armv7 with NEON (Cortex-A8/A9/A7: BeagleBone Black). The armv7 targets are built without
/// NEON (`-neon`, d0–d15 only) and Rust's NEON intrinsics and `target_feature(enable =
/// "neon")` are not stable there, so the kernels are inline assembly under `.fpu neon`, run
/// only where the kernel reports NEON at run time (`AT_HWCAP`, [`has_neon`]).
///
/// Registers: q0–q7 (d0–d15) are declared clobbered; q8–q15 (d16–d31) exist only with NEON's
/// 32 double registers, which the compiler of a `-d32` target never allocates and the
/// procedure-call standard leaves to the callee (not preserved across calls), so the assembly
/// uses them freely for accumulators.
#[cfg(target_arch = "arm")]
pub(super) mod armv7 {
    use super::{Rows, M_TILE, P_TILE};
    use std::arch::asm;

    /// Whether this core has NEON: `HWCAP_NEON` in the auxiliary vector, unless the board
    /// profile's hint (`TRACT_CPU_ARM32_NEON`, which tract's kernels also follow) says it has
    /// none.
    pub fn has_neon() -> bool {
        const HWCAP_NEON: libc::c_ulong = 1 << 12;
        if let Some(v) = std::env::var_os("TRACT_CPU_ARM32_NEON") {
            if matches!(v.to_str(), Some("false" | "0" | "no")) {
                return false;
            }
        }
        // SAFETY: getauxval has no preconditions.
        unsafe { libc::getauxval(libc::AT_HWCAP) & HWCAP_NEON != 0 }
    }

    /// 4 output channels × 2 pixels over every segment: per 16 bytes of k, two pixel loads,
    /// two loads of the 4 channels' 64 weight bytes and, per channel and pixel, `VMULL.S8`,
    /// `VMLAL.S8` (two products in each 16-bit lane) and `VPADAL.S16` into 32 bits: 30
    /// instructions per 128 multiply-adds. Writes the pixels' 4 sums to `out[0..4]` and
    /// `out[8..12]` (two rows of a `[[i32; M_TILE]; P_TILE]` tile).
    ///
    /// # Safety
    /// The CPU has NEON; `w` holds the 4 channels' weights in `[k/16][4][16]` order for the
    /// whole reduction (`nseg`·`seg_len` bytes per channel); `segs` holds `nseg` ≥ 1 offsets,
    /// each giving `seg_len` (a positive multiple of 16) readable bytes from `p0` and `p1`; `out`
    /// writes 12 i32. No weight is −128.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile_4x2(
        w: *const i8,
        segs: *const usize,
        nseg: usize,
        seg_len: usize,
        p0: *const u8,
        p1: *const u8,
        out: *mut i32,
    ) {
        unsafe {
            asm!(
                ".fpu neon",
                "vmov.i32 q8, #0",
                "vmov.i32 q9, #0",
                "vmov.i32 q10, #0",
                "vmov.i32 q11, #0",
                "vmov.i32 q12, #0",
                "vmov.i32 q13, #0",
                "vmov.i32 q14, #0",
                "vmov.i32 q15, #0",
                "2:",
                "ldr {a1}, [{segs}], #4",
                "add {a0}, {p0}, {a1}",
                "add {a1}, {p1}, {a1}",
                "mov {cnt}, {seg_len}",
                "3:",
                "vld1.8 {{d0, d1}}, [{a0}]!",
                "vld1.8 {{d2, d3}}, [{a1}]!",
                "vld1.8 {{d4, d5, d6, d7}}, [{w}]!",
                "vld1.8 {{d8, d9, d10, d11}}, [{w}]!",
                "vmull.s8 q6, d4, d0",
                "vmull.s8 q7, d4, d2",
                "vmlal.s8 q6, d5, d1",
                "vmlal.s8 q7, d5, d3",
                "vpadal.s16 q8, q6",
                "vpadal.s16 q9, q7",
                "vmull.s8 q6, d6, d0",
                "vmull.s8 q7, d6, d2",
                "vmlal.s8 q6, d7, d1",
                "vmlal.s8 q7, d7, d3",
                "vpadal.s16 q10, q6",
                "vpadal.s16 q11, q7",
                "vmull.s8 q6, d8, d0",
                "vmull.s8 q7, d8, d2",
                "vmlal.s8 q6, d9, d1",
                "vmlal.s8 q7, d9, d3",
                "vpadal.s16 q12, q6",
                "vpadal.s16 q13, q7",
                "vmull.s8 q6, d10, d0",
                "vmull.s8 q7, d10, d2",
                "vmlal.s8 q6, d11, d1",
                "vmlal.s8 q7, d11, d3",
                "vpadal.s16 q14, q6",
                "vpadal.s16 q15, q7",
                "subs {cnt}, {cnt}, #16",
                "bne 3b",
                "subs {nseg}, {nseg}, #1",
                "bne 2b",
                // horizontal sums: pixel 0's channels are q8, q10, q12, q14; pixel 1's q9..q15
                "vpadd.i32 d16, d16, d17",
                "vpadd.i32 d20, d20, d21",
                "vpadd.i32 d24, d24, d25",
                "vpadd.i32 d28, d28, d29",
                "vpadd.i32 d0, d16, d20",
                "vpadd.i32 d1, d24, d28",
                "vst1.32 {{d0, d1}}, [{out}]",
                "vpadd.i32 d18, d18, d19",
                "vpadd.i32 d22, d22, d23",
                "vpadd.i32 d26, d26, d27",
                "vpadd.i32 d30, d30, d31",
                "vpadd.i32 d2, d18, d22",
                "vpadd.i32 d3, d26, d30",
                "add {out}, {out}, #{row}",
                "vst1.32 {{d2, d3}}, [{out}]",
                w = inout(reg) w => _,
                segs = inout(reg) segs => _,
                nseg = inout(reg) nseg => _,
                seg_len = in(reg) seg_len,
                p0 = in(reg) p0,
                p1 = in(reg) p1,
                out = inout(reg) out => _,
                a0 = out(reg) _,
                a1 = out(reg) _,
                cnt = out(reg) _,
                row = const M_TILE * 4,
                out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                out("d4") _, out("d5") _, out("d6") _, out("d7") _,
                out("d8") _, out("d9") _, out("d10") _, out("d11") _,
                out("d12") _, out("d13") _, out("d14") _, out("d15") _,
                options(nostack)
            );
        }
    }

    /// NEON tile: `rows` (a multiple of 4) output channels × [`P_TILE`] pixels, 4 channels × 2
    /// pixels at a time ([`tile_4x2`]).
    ///
    /// # Safety
    /// The CPU has NEON ([`has_neon`]); `w` holds `rows`/4 blocks of 4 channels in `[k/16][4][16]`
    /// order, `kp` bytes of k each; `b` as for [`super::tile_portable`]; no weight is −128.
    pub unsafe fn tile_vmlal(w: &[i8], b: Rows<'_>, kp: usize, rows: usize, acc: &mut [[i32; M_TILE]; P_TILE]) {
        debug_assert!(w.len() >= rows * kp && b.seg_len.is_multiple_of(16) && b.seg_len > 0 && rows.is_multiple_of(4));
        debug_assert_eq!(b.segs.len() * b.seg_len, kp);
        for m4 in 0..rows / 4 {
            for pp in 0..P_TILE / 2 {
                // SAFETY: the caller's contract; `acc[2·pp]` and the row after it are the
                // 4 + 8 i32 written, from channel 4·m4 (< M_TILE − 3).
                unsafe {
                    tile_4x2(
                        w.as_ptr().add(m4 * 4 * kp),
                        b.segs.as_ptr(),
                        b.segs.len(),
                        b.seg_len,
                        b.ptr[2 * pp],
                        b.ptr[2 * pp + 1],
                        acc[2 * pp].as_mut_ptr().add(m4 * 4),
                    )
                }
            }
        }
    }

    /// [`super::super::requantise`]'s 8 channels in NEON: `(acc + bias)` converted to f32 (to
    /// nearest), `· mult`, clamped to ±10⁶, rounded half to even by the magic number
    /// 1.5·2²³ (its bits subtracted, so the sum's low bits are the integer), `+ zy`, narrowed
    /// with saturation to i16 and then u8 (the clamp to 0..255), sign bit flipped by `flip`.
    /// The same arithmetic as the portable version, so the same bytes.
    ///
    /// # Safety
    /// The CPU has NEON.
    #[inline(always)]
    pub unsafe fn requantise8(
        acc: &[i32; M_TILE],
        bias: &[i32; M_TILE],
        mult: &[f32; M_TILE],
        zy: u8,
        flip: u8,
    ) -> [u8; M_TILE] {
        const MAGIC: f32 = 12_582_912.0;
        let consts: [f32; 4] = [1.0e6, -1.0e6, MAGIC, 0.0];
        let mut q = [0u8; M_TILE];
        unsafe {
            asm!(
                ".fpu neon",
                "vld1.32 {{d0, d1, d2, d3}}, [{acc}]",
                "vld1.32 {{d4, d5, d6, d7}}, [{bias}]",
                "vadd.i32 q0, q0, q2",
                "vadd.i32 q1, q1, q3",
                "vld1.32 {{d4, d5, d6, d7}}, [{mult}]",
                "vcvt.f32.s32 q0, q0",
                "vcvt.f32.s32 q1, q1",
                "vmul.f32 q0, q0, q2",
                "vmul.f32 q1, q1, q3",
                "vld1.32 {{d8, d9}}, [{consts}]",
                "vdup.32 q5, d8[0]",
                "vdup.32 q6, d8[1]",
                "vdup.32 q7, d9[0]",
                "vmin.f32 q0, q0, q5",
                "vmin.f32 q1, q1, q5",
                "vmax.f32 q0, q0, q6",
                "vmax.f32 q1, q1, q6",
                "vadd.f32 q0, q0, q7",
                "vadd.f32 q1, q1, q7",
                "vsub.i32 q0, q0, q7",
                "vsub.i32 q1, q1, q7",
                "vdup.32 q2, {zy}",
                "vadd.i32 q0, q0, q2",
                "vadd.i32 q1, q1, q2",
                "vqmovn.s32 d0, q0",
                "vqmovn.s32 d1, q1",
                "vqmovun.s16 d0, q0",
                "vdup.8 d1, {flip}",
                "veor d0, d0, d1",
                "vst1.8 {{d0}}, [{q}]",
                acc = in(reg) acc.as_ptr(),
                bias = in(reg) bias.as_ptr(),
                mult = in(reg) mult.as_ptr(),
                consts = in(reg) consts.as_ptr(),
                zy = in(reg) zy as u32,
                flip = in(reg) flip as u32,
                q = in(reg) q.as_mut_ptr(),
                out("d0") _, out("d1") _, out("d2") _, out("d3") _,
                out("d4") _, out("d5") _, out("d6") _, out("d7") _,
                out("d8") _, out("d9") _, out("d10") _, out("d11") _,
                out("d12") _, out("d13") _, out("d14") _, out("d15") _,
                options(nostack, preserves_flags)
            );
        }
        q
    }
}
