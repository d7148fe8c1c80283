//! A validated view of an 8-bit gray frame: the size is checked once, then nothing
//! downstream can index out of bounds.

/// Why a buffer is not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FrameError {
    /// Width or height is zero.
    Empty,
    /// Row stride shorter than the width.
    Stride {
        /// Row stride in bytes.
        stride: usize,
        /// Width in pixels.
        width: usize,
    },
    /// Buffer shorter than `stride * (height - 1) + width`.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
}

/// Borrowed gray frame, row-major, `stride` bytes between rows.
#[derive(Clone, Copy, Debug)]
pub struct GrayFrame<'a> {
    data: &'a [u8],
    width: usize,
    height: usize,
    stride: usize,
}

impl<'a> GrayFrame<'a> {
    /// Check the geometry once.
    pub fn new(data: &'a [u8], width: usize, height: usize, stride: usize) -> Result<Self, FrameError> {
        if width == 0 || height == 0 {
            return Err(FrameError::Empty);
        }
        if stride < width {
            return Err(FrameError::Stride { stride, width });
        }
        let needed = stride.saturating_mul(height - 1).saturating_add(width);
        if data.len() < needed {
            return Err(FrameError::Truncated {
                needed,
                got: data.len(),
            });
        }
        Ok(GrayFrame {
            data,
            width,
            height,
            stride,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Row `y`, clamped to the last row (never panics).
    pub fn row(&self, y: usize) -> &'a [u8] {
        let y = if y < self.height { y } else { self.height - 1 };
        let start = y * self.stride;
        &self.data[start..start + self.width]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_checked_once() {
        let buf = [0u8; 12];
        assert!(GrayFrame::new(&buf, 4, 3, 4).is_ok());
        assert_eq!(GrayFrame::new(&buf, 0, 3, 4).unwrap_err(), FrameError::Empty);
        assert_eq!(
            GrayFrame::new(&buf, 4, 3, 3).unwrap_err(),
            FrameError::Stride { stride: 3, width: 4 }
        );
        assert_eq!(
            GrayFrame::new(&buf, 4, 4, 4).unwrap_err(),
            FrameError::Truncated { needed: 16, got: 12 }
        );
        // The last row need not be padded to the stride.
        assert!(GrayFrame::new(&buf[..10], 2, 3, 4).is_ok());
    }

    #[test]
    fn rows_are_clamped() {
        let buf: [u8; 6] = [1, 2, 3, 4, 5, 6];
        let f = GrayFrame::new(&buf, 3, 2, 3).unwrap();
        assert_eq!(f.row(1), &[4, 5, 6]);
        assert_eq!(f.row(9), &[4, 5, 6]);
    }
}
