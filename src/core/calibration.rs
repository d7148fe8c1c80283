//! Calibration maths: pixels to millimetres, belt distance to travel time.

/// Image scale of a calibrated camera.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Scale {
    /// Millimetres on the part per image pixel.
    pub mm_per_px: f32,
}

impl Scale {
    /// Length in millimetres of `px` pixels.
    pub fn px_to_mm(self, px: f32) -> f32 {
        px * self.mm_per_px
    }

    /// Area in square millimetres of `px` pixels.
    pub fn px_area_to_mm2(self, px: f32) -> f32 {
        px * self.mm_per_px * self.mm_per_px
    }
}

/// Microseconds a point on a belt moving at `belt_speed_mm_per_s` takes to travel
/// `distance_mm`; `None` for a stopped or reversed belt or a non-finite input.
pub fn travel_time_us(distance_mm: f32, belt_speed_mm_per_s: f32) -> Option<u64> {
    if belt_speed_mm_per_s.is_nan() || belt_speed_mm_per_s <= 0.0 || !distance_mm.is_finite() || distance_mm < 0.0 {
        return None;
    }
    let us = (distance_mm as f64) * 1_000_000.0 / (belt_speed_mm_per_s as f64);
    if us.is_finite() && us < u64::MAX as f64 {
        Some((us + 0.5) as u64)
    } else {
        None
    }
}

/// Distance in millimetres covered in `us` microseconds at `belt_speed_mm_per_s`.
pub fn travel_distance_mm(us: u64, belt_speed_mm_per_s: f32) -> f32 {
    (us as f64 * belt_speed_mm_per_s as f64 / 1_000_000.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn travel_time_is_distance_over_speed() {
        assert_eq!(travel_time_us(500.0, 1000.0), Some(500_000));
        assert_eq!(travel_time_us(1.0, 20_000.0), Some(50));
        assert_eq!(travel_time_us(1.0, 0.0), None);
        assert_eq!(travel_time_us(-1.0, 10.0), None);
        assert_eq!(travel_time_us(f32::NAN, 10.0), None);
    }

    #[test]
    fn distance_inverts_time() {
        let us = travel_time_us(350.0, 1200.0).unwrap();
        assert!((travel_distance_mm(us, 1200.0) - 350.0).abs() < 1e-3);
    }

    #[test]
    fn scale_converts_lengths_and_areas() {
        let s = Scale { mm_per_px: 0.1 };
        assert!((s.px_to_mm(25.0) - 2.5).abs() < 1e-6);
        assert!((s.px_area_to_mm2(100.0) - 1.0).abs() < 1e-6);
    }
}
