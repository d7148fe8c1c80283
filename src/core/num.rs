//! Rounding of `f64` to integers without `std` (the core also builds for bare metal, where
//! `f64::round` and friends do not exist). Inputs are finite and well inside `i64`'s range
//! in every use here; casts saturate otherwise.

/// Largest integer ≤ `x`.
pub fn floor_i64(x: f64) -> i64 {
    let t = x as i64;
    if (t as f64) > x {
        t - 1
    } else {
        t
    }
}

/// Smallest integer ≥ `x`.
pub fn ceil_i64(x: f64) -> i64 {
    let t = x as i64;
    if (t as f64) < x {
        t + 1
    } else {
        t
    }
}

/// Nearest integer, halves away from zero (as `f64::round`).
pub fn round_i64(x: f64) -> i64 {
    let t = x as i64; // toward zero
    let frac = x - t as f64;
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_std_rounding() {
        for &x in &[
            0.0,
            0.4,
            0.5,
            0.6,
            1.0,
            1.5,
            2.5,
            -0.4,
            -0.5,
            -0.6,
            -1.0,
            -1.5,
            -2.5,
            1e12 + 0.5,
            -1e12 - 0.5,
            123.999,
        ] {
            assert_eq!(floor_i64(x), x.floor() as i64, "floor {x}");
            assert_eq!(ceil_i64(x), x.ceil() as i64, "ceil {x}");
            assert_eq!(round_i64(x), x.round() as i64, "round {x}");
        }
    }
}
