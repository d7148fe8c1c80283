//! Grain-size numbers of GOST 5639-82 and ASTM E112, and histogram comparison.
//!
//! Pure arithmetic on `f64`, no heap and no operating system: it builds for bare-metal
//! targets, where `f64::log2` and friends do not exist, so the few transcendental functions
//! needed are written here ([`log2`], [`exp2`]) to well below the 0.01 of a grain number that
//! the standards print.
//!
//! The standards' definitions (areas in mm², lengths in mm, at the micrograph's true scale):
//! - GOST 5639-82: `m = 8·2^G` grains per mm², so `G = log2(m / 8)`; a single grain of area
//!   `a` has `m = 1 / a`.
//! - ASTM E112 planimetric (Jeffries): `N_A` grains per mm², `G = 3.321928·log10(N_A) − 2.954`
//!   (that is `N_A = 7.75·2^G`: one grain per square inch at 100x is `G = 1`).
//! - ASTM E112 intercept (Heyn): mean lineal intercept `ℓ` (mm),
//!   `G = −6.643856·log10(ℓ) − 3.288`.
//!
//! GOST and ASTM numbers of the same structure differ by `log2(8 / 7.75) ≈ 0.046`.

/// Smallest grain number in the histogram (GOST 5639-82 tables run from −3).
pub const G_MIN: i32 = -3;
/// Largest grain number in the histogram (GOST 5639-82 tables run to 14).
pub const G_MAX: i32 = 14;
/// Histogram bins: one per integer grain number `G_MIN..=G_MAX`.
pub const G_BINS: usize = (G_MAX - G_MIN + 1) as usize;

const LN2: f64 = core::f64::consts::LN_2;
const LOG2_10: f64 = core::f64::consts::LOG2_10;

/// Base-2 logarithm of a positive finite `x` (NaN otherwise). Exponent from the bits, the
/// mantissa's logarithm from the `atanh` series; error below 1e-15.
pub fn log2(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 || x.is_infinite() {
        return f64::NAN;
    }
    let mut bits = x.to_bits();
    let mut exp = ((bits >> 52) & 0x7ff) as i64;
    if exp == 0 {
        // subnormal: scale into the normal range first
        bits = (x * (1u64 << 54) as f64).to_bits();
        exp = ((bits >> 52) & 0x7ff) as i64 - 54;
    }
    let e = exp - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000); // [1, 2)
    let mut e = e as f64;
    if m > core::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1.0;
    }
    // ln(m) = 2·atanh(s), s = (m − 1)/(m + 1), |s| ≤ 0.172
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    while k < 40.0 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    e + 2.0 * sum / LN2
}

/// Base-10 logarithm of a positive finite `x`.
pub fn log10(x: f64) -> f64 {
    log2(x) / LOG2_10
}

/// `2^x` for finite `x` in about ±1000 (0 or infinity beyond).
pub fn exp2(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x > 1023.0 {
        return f64::INFINITY;
    }
    if x < -1022.0 {
        return 0.0;
    }
    let n = crate::core::num::floor_i64(x);
    let f = (x - n as f64) * LN2; // e^f, f in [0, ln 2)
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut k = 1.0;
    while k < 30.0 {
        term *= f / k;
        sum += term;
        k += 1.0;
    }
    sum * f64::from_bits(((n + 1023) as u64) << 52)
}

/// GOST 5639-82 grain number from grains per mm² (`m = 8·2^G`).
pub fn gost_g_from_grains_per_mm2(m: f64) -> f64 {
    log2(m / 8.0)
}

/// Grains per mm² of GOST 5639-82 grain number `g`.
pub fn gost_grains_per_mm2(g: f64) -> f64 {
    8.0 * exp2(g)
}

/// GOST 5639-82 number of one grain of area `area_mm2` (`m = 1 / a`).
pub fn gost_g_of_grain_area_mm2(area_mm2: f64) -> f64 {
    gost_g_from_grains_per_mm2(1.0 / area_mm2)
}

/// ASTM E112 grain size number from grains per mm² (planimetric): `G = 3.321928·log10(N_A) − 2.954`.
// The standard's printed constant, kept as printed (it is log2(10) rounded).
#[allow(clippy::approx_constant)]
pub fn astm_g_from_grains_per_mm2(n_a: f64) -> f64 {
    3.321928 * log10(n_a) - 2.954
}

/// Grains per mm² of ASTM E112 number `g` (the inverse of [`astm_g_from_grains_per_mm2`]).
#[allow(clippy::approx_constant)]
pub fn astm_grains_per_mm2(g: f64) -> f64 {
    exp2((g + 2.954) / (3.321928 / LOG2_10))
}

/// ASTM E112 grain size number from the mean lineal intercept in mm: `G = −6.643856·log10(ℓ) − 3.288`.
pub fn astm_g_from_mean_intercept_mm(l_mm: f64) -> f64 {
    -6.643856 * log10(l_mm) - 3.288
}

/// Mean lineal intercept (mm) of ASTM E112 number `g`.
pub fn astm_mean_intercept_mm(g: f64) -> f64 {
    exp2(-(g + 3.288) / (6.643856 / LOG2_10))
}

/// The histogram bin (`0..G_BINS`) of grain number `g`: the nearest integer number, numbers
/// outside `G_MIN..=G_MAX` in the end bins; `None` for NaN.
pub fn g_bin(g: f64) -> Option<usize> {
    if g.is_nan() {
        return None;
    }
    let k = crate::core::num::round_i64(g.clamp(G_MIN as f64 - 1.0, G_MAX as f64 + 1.0));
    Some((k.clamp(G_MIN as i64, G_MAX as i64) - G_MIN as i64) as usize)
}

/// The grain number of histogram bin `bin`.
pub const fn bin_g(bin: usize) -> i32 {
    G_MIN + bin as i32
}

/// Correlation of two histograms (OpenCV `compareHist` `HISTCMP_CORREL`):
/// `Σ(H1−H̄1)(H2−H̄2) / √(Σ(H1−H̄1)² · Σ(H2−H̄2)²)`, 1 for identical shapes. Two constant
/// histograms give 1 when equal and 0 otherwise (the formula's 0/0).
pub fn correlation(h1: &[f64], h2: &[f64]) -> f64 {
    let n = h1.len().min(h2.len());
    if n == 0 {
        return 0.0;
    }
    let m1 = h1[..n].iter().sum::<f64>() / n as f64;
    let m2 = h2[..n].iter().sum::<f64>() / n as f64;
    let (mut num, mut s1, mut s2) = (0.0, 0.0, 0.0);
    for (a, b) in h1[..n].iter().zip(&h2[..n]) {
        let (da, db) = (a - m1, b - m2);
        num += da * db;
        s1 += da * da;
        s2 += db * db;
    }
    if s1 == 0.0 || s2 == 0.0 {
        return if h1[..n] == h2[..n] { 1.0 } else { 0.0 };
    }
    num / sqrt(s1 * s2)
}

/// Chi-square distance (OpenCV `HISTCMP_CHISQR`): `Σ (H1−H2)² / H1` over bins where the
/// reference `H1` is non-zero; 0 for identical histograms.
pub fn chi_square(h1: &[f64], h2: &[f64]) -> f64 {
    h1.iter()
        .zip(h2)
        .filter(|(a, _)| **a != 0.0)
        .map(|(a, b)| (a - b) * (a - b) / a)
        .sum()
}

/// Intersection (OpenCV `HISTCMP_INTERSECT`): `Σ min(H1, H2)`; on histograms normalised to
/// sum 1 it runs from 0 (disjoint) to 1 (identical).
pub fn intersection(h1: &[f64], h2: &[f64]) -> f64 {
    h1.iter().zip(h2).map(|(a, b)| a.min(*b)).sum()
}

/// The seed study's reading of intersection: the mean over bins where either histogram is
/// non-zero of `min(H1, H2) / max(H1, H2)` (1 for identical histograms).
pub fn intersection_ratio(h1: &[f64], h2: &[f64]) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (a, b) in h1.iter().zip(h2) {
        let hi = a.max(*b);
        if hi > 0.0 {
            sum += a.min(*b) / hi;
            n += 1;
        }
    }
    if n == 0 {
        1.0
    } else {
        sum / n as f64
    }
}

/// Square root of a non-negative finite `x` (Newton from the bit-halved exponent).
pub fn sqrt(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 || x.is_infinite() {
        return x;
    }
    let mut y = exp2(log2(x) / 2.0);
    for _ in 0..3 {
        y = 0.5 * (y + x / y);
    }
    y
}

/// Normalise `counts` into `out` so it sums to 1 (all zero when the counts are).
pub fn normalise(counts: &[u32], out: &mut [f64]) {
    let total: u64 = counts.iter().map(|&c| c as u64).sum();
    for (o, &c) in out.iter_mut().zip(counts) {
        *o = if total == 0 { 0.0 } else { c as f64 / total as f64 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logarithms_match_std() {
        for &x in &[1e-9, 0.001, 0.3, 1.0, 1.5, 2.0, 7.75, 8.0, 1000.0, 123456.789, 1e300] {
            assert!((log2(x) - x.log2()).abs() < 1e-12, "log2({x})");
            assert!((log10(x) - x.log10()).abs() < 1e-12, "log10({x})");
        }
        for &x in &[-30.5, -1.0, 0.0, 0.25, 1.0, 3.7, 10.0, 52.3] {
            assert!((exp2(x) / x.exp2() - 1.0).abs() < 1e-13, "exp2({x})");
        }
        for &x in &[1e-8, 0.5, 2.0, 1e6] {
            assert!((sqrt(x) / x.sqrt() - 1.0).abs() < 1e-15, "sqrt({x})");
        }
        assert!(log2(0.0).is_nan() && log2(-1.0).is_nan());
    }

    #[test]
    fn bins_round_to_the_nearest_number_and_clamp() {
        assert_eq!(g_bin(5.49), Some((5 - G_MIN) as usize));
        assert_eq!(g_bin(5.5), Some((6 - G_MIN) as usize));
        assert_eq!(g_bin(-10.0), Some(0));
        assert_eq!(g_bin(40.0), Some(G_BINS - 1));
        assert_eq!(g_bin(f64::NAN), None);
        assert_eq!(bin_g(g_bin(7.2).unwrap()), 7);
    }
}
