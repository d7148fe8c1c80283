//! Camera pixel layouts and their conversion into the station's frame buffers: 8-bit gray or
//! packed RGB (3 bytes per pixel), written into the caller's buffer. No allocation, no OS.
//!
//! Uncompressed layouts are converted here; MJPEG needs a JPEG decoder and is decoded in the
//! `camera` module, into the same buffers.
//!
//! Colour maths is ITU-R BT.601 in 8-bit fixed point, as V4L2 cameras deliver it:
//! - RGB → gray: `Y = (77 R + 150 G + 29 B + 128) >> 8` (weights 0.299, 0.587, 0.114 × 256).
//! - YUYV → gray: the Y samples, unchanged (a YUYV camera already measured luma).
//! - YUYV → RGB: limited range (Y 16–235, Cb/Cr 16–240), the integer form of the standard's
//!   matrix: `R = (298 C + 409 E + 128) >> 8`, `G = (298 C − 100 D − 208 E + 128) >> 8`,
//!   `B = (298 C + 516 D + 128) >> 8` with `C = Y − 16`, `D = Cb − 128`, `E = Cr − 128`.

/// A camera's pixel layout (its V4L2 fourcc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PixelFormat {
    /// `GREY`: 8-bit luma.
    Grey,
    /// `YUYV`: 4:2:2, `Y0 Cb Y1 Cr` per pixel pair.
    Yuyv,
    /// `RGB3`: packed 24-bit R, G, B.
    Rgb24,
    /// `MJPG`: one JPEG per frame.
    Mjpeg,
}

impl PixelFormat {
    /// Every supported layout.
    pub const ALL: [PixelFormat; 4] = [
        PixelFormat::Grey,
        PixelFormat::Yuyv,
        PixelFormat::Rgb24,
        PixelFormat::Mjpeg,
    ];

    /// The V4L2 fourcc.
    pub const fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Rgb24 => *b"RGB3",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }

    /// The layout with this fourcc, if supported.
    pub fn from_fourcc(fourcc: &[u8; 4]) -> Option<PixelFormat> {
        PixelFormat::ALL.into_iter().find(|f| &f.fourcc() == fourcc)
    }

    /// The name used in board profiles: `grey`, `yuyv`, `rgb24`, `mjpeg`.
    pub const fn name(self) -> &'static str {
        match self {
            PixelFormat::Grey => "grey",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Mjpeg => "mjpeg",
        }
    }

    /// The layout named `name` in a board profile (case-insensitive; `gray` and `rgb` too).
    pub fn from_name(name: &str) -> Option<PixelFormat> {
        let n = name.as_bytes();
        let is = |s: &str| n.eq_ignore_ascii_case(s.as_bytes());
        if is("grey") || is("gray") {
            Some(PixelFormat::Grey)
        } else if is("yuyv") {
            Some(PixelFormat::Yuyv)
        } else if is("rgb24") || is("rgb3") || is("rgb") {
            Some(PixelFormat::Rgb24)
        } else if is("mjpeg") || is("mjpg") {
            Some(PixelFormat::Mjpeg)
        } else {
            None
        }
    }

    /// Bytes per pixel of an uncompressed layout (`None` for MJPEG).
    pub const fn bytes_per_pixel(self) -> Option<usize> {
        match self {
            PixelFormat::Grey => Some(1),
            PixelFormat::Yuyv => Some(2),
            PixelFormat::Rgb24 => Some(3),
            PixelFormat::Mjpeg => None,
        }
    }
}

/// What the station keeps of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OutputFormat {
    /// 8-bit gray, `width` bytes per row.
    Gray,
    /// Packed RGB, `3 * width` bytes per row.
    Rgb,
}

impl OutputFormat {
    /// Bytes per pixel.
    pub const fn bytes_per_pixel(self) -> usize {
        match self {
            OutputFormat::Gray => 1,
            OutputFormat::Rgb => 3,
        }
    }

    /// Bytes of a `width` x `height` frame.
    pub const fn frame_bytes(self, width: usize, height: usize) -> usize {
        width * height * self.bytes_per_pixel()
    }
}

/// Why a raw frame could not be converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConvertError {
    /// Zero width or height, an odd YUYV width, a row stride shorter than a row, or MJPEG
    /// handed to the raw converter.
    Geometry,
    /// The camera delivered fewer bytes than the geometry needs (a truncated frame).
    ShortInput {
        /// Bytes needed.
        needed: usize,
        /// Bytes delivered.
        got: usize,
    },
    /// The destination buffer is too small.
    ShortOutput {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
}

/// Geometry of an uncompressed camera frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RawGeometry {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes between rows in the source (the driver's `bytesperline`).
    pub stride: usize,
}

impl RawGeometry {
    /// A tightly packed frame of `format`.
    pub const fn packed(format: PixelFormat, width: usize, height: usize) -> RawGeometry {
        let bpp = match format.bytes_per_pixel() {
            Some(b) => b,
            None => 1,
        };
        RawGeometry {
            width,
            height,
            stride: width * bpp,
        }
    }
}

/// Convert one uncompressed frame (`GREY`, `YUYV` or `RGB3`) from `src` into `dst`, tightly
/// packed in `out`'s layout. Checks every length first; the loops then cannot go out of bounds.
pub fn convert_raw(
    format: PixelFormat,
    src: &[u8],
    geometry: RawGeometry,
    out: OutputFormat,
    dst: &mut [u8],
) -> Result<(), ConvertError> {
    let RawGeometry { width, height, stride } = geometry;
    let bpp = format.bytes_per_pixel().ok_or(ConvertError::Geometry)?;
    if width == 0 || height == 0 || stride < width * bpp || (format == PixelFormat::Yuyv && width % 2 != 0) {
        return Err(ConvertError::Geometry);
    }
    let needed = stride * (height - 1) + width * bpp;
    if src.len() < needed {
        return Err(ConvertError::ShortInput { needed, got: src.len() });
    }
    let out_row = width * out.bytes_per_pixel();
    if dst.len() < out_row * height {
        return Err(ConvertError::ShortOutput {
            needed: out_row * height,
            got: dst.len(),
        });
    }
    let rows = src.chunks(stride).take(height).zip(dst.chunks_exact_mut(out_row));
    match (format, out) {
        (PixelFormat::Grey, OutputFormat::Gray) | (PixelFormat::Rgb24, OutputFormat::Rgb) => {
            for (s, d) in rows {
                d.copy_from_slice(&s[..out_row]);
            }
        }
        (PixelFormat::Grey, OutputFormat::Rgb) => {
            for (s, d) in rows {
                for (&y, px) in s[..width].iter().zip(d.chunks_exact_mut(3)) {
                    px.copy_from_slice(&[y, y, y]);
                }
            }
        }
        (PixelFormat::Yuyv, OutputFormat::Gray) => {
            for (s, d) in rows {
                yuyv_row_to_gray(&s[..width * 2], d);
            }
        }
        (PixelFormat::Yuyv, OutputFormat::Rgb) => {
            for (s, d) in rows {
                yuyv_row_to_rgb(&s[..width * 2], d);
            }
        }
        (PixelFormat::Rgb24, OutputFormat::Gray) => {
            for (s, d) in rows {
                rgb_row_to_gray(&s[..width * 3], d);
            }
        }
        (PixelFormat::Mjpeg, _) => return Err(ConvertError::Geometry),
    }
    Ok(())
}

/// Luma of one BT.601 RGB pixel.
#[inline]
pub const fn rgb_to_gray(r: u8, g: u8, b: u8) -> u8 {
    ((77 * r as u32 + 150 * g as u32 + 29 * b as u32 + 128) >> 8) as u8
}

/// One limited-range BT.601 YCbCr sample as RGB.
#[inline]
pub const fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let c = 298 * (y as i32 - 16);
    let d = cb as i32 - 128;
    let e = cr as i32 - 128;
    [
        clamp_u8((c + 409 * e + 128) >> 8),
        clamp_u8((c - 100 * d - 208 * e + 128) >> 8),
        clamp_u8((c + 516 * d + 128) >> 8),
    ]
}

#[inline]
const fn clamp_u8(v: i32) -> u8 {
    if v < 0 {
        0
    } else if v > 255 {
        255
    } else {
        v as u8
    }
}

fn yuyv_row_to_gray(src: &[u8], dst: &mut [u8]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = s[0];
    }
}

fn yuyv_row_to_rgb(src: &[u8], dst: &mut [u8]) {
    for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
        let (y0, cb, y1, cr) = (s[0], s[1], s[2], s[3]);
        d[..3].copy_from_slice(&ycbcr_to_rgb(y0, cb, cr));
        d[3..].copy_from_slice(&ycbcr_to_rgb(y1, cb, cr));
    }
}

fn rgb_row_to_gray(src: &[u8], dst: &mut [u8]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(3)) {
        *d = rgb_to_gray(s[0], s[1], s[2]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fourccs_and_names_round_trip() {
        for f in PixelFormat::ALL {
            assert_eq!(PixelFormat::from_fourcc(&f.fourcc()), Some(f));
            assert_eq!(PixelFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(PixelFormat::from_fourcc(b"NV12"), None);
        assert_eq!(PixelFormat::from_name("GRAY"), Some(PixelFormat::Grey));
        assert_eq!(PixelFormat::from_name("h264"), None);
    }

    // Known vectors: BT.601 limited-range reference colours (75 % colour bars as a camera
    // sends them) and their RGB values from the standard's matrix.
    #[test]
    fn ycbcr_reference_colours() {
        // (Y, Cb, Cr) → (R, G, B)
        let bars: [([u8; 3], [u8; 3]); 6] = [
            ([16, 128, 128], [0, 0, 0]),        // black
            ([235, 128, 128], [255, 255, 255]), // white
            ([81, 90, 240], [255, 0, 0]),       // red
            ([145, 54, 34], [0, 255, 0]),       // green
            ([41, 240, 110], [0, 0, 255]),      // blue
            ([126, 128, 128], [128, 128, 128]), // mid gray
        ];
        for ([y, cb, cr], rgb) in bars {
            let got = ycbcr_to_rgb(y, cb, cr);
            for k in 0..3 {
                assert!(
                    (got[k] as i32 - rgb[k] as i32).abs() <= 2,
                    "Y{y} Cb{cb} Cr{cr}: got {got:?}, want {rgb:?}"
                );
            }
        }
        // Out-of-range inputs clamp instead of wrapping.
        assert_eq!(ycbcr_to_rgb(0, 128, 128), [0, 0, 0]);
        assert_eq!(ycbcr_to_rgb(255, 128, 128), [255, 255, 255]);
    }

    #[test]
    fn rgb_to_gray_weights() {
        assert_eq!(rgb_to_gray(0, 0, 0), 0);
        assert_eq!(rgb_to_gray(255, 255, 255), 255);
        assert_eq!(rgb_to_gray(255, 0, 0), 77);
        assert_eq!(rgb_to_gray(0, 255, 0), 149);
        assert_eq!(rgb_to_gray(0, 0, 255), 29);
        assert_eq!(rgb_to_gray(100, 100, 100), 100);
    }

    #[test]
    fn yuyv_with_padded_stride_to_gray_and_rgb() {
        // 4x2 frame, stride 10 (2 bytes of padding per row).
        #[rustfmt::skip]
        let src = [
            16, 128, 235, 128, 81, 90, 145, 54,  0xEE, 0xEE,
            41, 240, 126, 110, 126, 128, 126, 128, 0xEE, 0xEE,
        ];
        let g = RawGeometry {
            width: 4,
            height: 2,
            stride: 10,
        };
        let mut gray = [0u8; 8];
        convert_raw(PixelFormat::Yuyv, &src, g, OutputFormat::Gray, &mut gray).unwrap();
        assert_eq!(gray, [16, 235, 81, 145, 41, 126, 126, 126]);
        let mut rgb = [0u8; 24];
        convert_raw(PixelFormat::Yuyv, &src, g, OutputFormat::Rgb, &mut rgb).unwrap();
        // First pair shares Cb=128, Cr=128: black then white.
        assert_eq!(&rgb[..6], &[0, 0, 0, 255, 255, 255]);
        // Last pair of row 1: mid gray twice.
        assert_eq!(&rgb[18..], &[128, 128, 128, 128, 128, 128]);
    }

    #[test]
    fn rgb24_and_grey_copies() {
        let src = [255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9];
        let g = RawGeometry::packed(PixelFormat::Rgb24, 2, 2);
        let mut gray = [0u8; 4];
        convert_raw(PixelFormat::Rgb24, &src, g, OutputFormat::Gray, &mut gray).unwrap();
        assert_eq!(gray, [77, 149, 29, 9]);
        let mut rgb = [0u8; 12];
        convert_raw(PixelFormat::Rgb24, &src, g, OutputFormat::Rgb, &mut rgb).unwrap();
        assert_eq!(rgb, src);
        let grey = [1, 2, 0, 3, 4, 0];
        let gg = RawGeometry {
            width: 2,
            height: 2,
            stride: 3,
        };
        convert_raw(PixelFormat::Grey, &grey, gg, OutputFormat::Gray, &mut gray).unwrap();
        assert_eq!(gray, [1, 2, 3, 4]);
        convert_raw(PixelFormat::Grey, &grey, gg, OutputFormat::Rgb, &mut rgb).unwrap();
        assert_eq!(rgb, [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
    }

    #[test]
    fn truncated_and_misfit_frames_are_errors() {
        let g = RawGeometry::packed(PixelFormat::Yuyv, 4, 2);
        let mut dst = [0u8; 8];
        assert_eq!(
            convert_raw(PixelFormat::Yuyv, &[0u8; 15], g, OutputFormat::Gray, &mut dst),
            Err(ConvertError::ShortInput { needed: 16, got: 15 })
        );
        assert_eq!(
            convert_raw(PixelFormat::Yuyv, &[0u8; 16], g, OutputFormat::Gray, &mut dst[..7]),
            Err(ConvertError::ShortOutput { needed: 8, got: 7 })
        );
        let odd = RawGeometry::packed(PixelFormat::Yuyv, 3, 2);
        assert_eq!(
            convert_raw(PixelFormat::Yuyv, &[0u8; 12], odd, OutputFormat::Gray, &mut dst),
            Err(ConvertError::Geometry)
        );
        let short_stride = RawGeometry {
            width: 4,
            height: 2,
            stride: 7,
        };
        assert_eq!(
            convert_raw(
                PixelFormat::Yuyv,
                &[0u8; 16],
                short_stride,
                OutputFormat::Gray,
                &mut dst
            ),
            Err(ConvertError::Geometry)
        );
        assert_eq!(
            convert_raw(PixelFormat::Mjpeg, &[0u8; 16], g, OutputFormat::Gray, &mut dst),
            Err(ConvertError::Geometry)
        );
    }
}
