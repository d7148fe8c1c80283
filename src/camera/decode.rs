//! One decoder for every source: a camera buffer (or a replayed file's bytes) in any
//! supported [`PixelFormat`] becomes a tightly packed gray or RGB frame in the caller's buffer.
//!
//! MJPEG frames are checked before decoding: a frame must start with SOI (`FF D8`) and end with
//! EOI (`FF D9`, after any zero padding the driver adds). USB cameras deliver truncated frames
//! when the bus drops packets; most JPEG decoders fill the missing part with gray and report
//! success, which would hand the model a half-invented picture. Here a truncated frame is
//! [`DecodeError::Truncated`] and the station gives its item the fail-safe outcome.
//!
//! The JPEG decoder is zune-jpeg (pure Rust; the `image` crate's own JPEG backend), decoding
//! straight into the caller's buffer. Its internal scratch allocations are counted under
//! [`Scope::Decode`], apart from ours.

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::alloc_count::{scoped, Scope};
use crate::core::pixel::{convert_raw, ConvertError, OutputFormat, PixelFormat, RawGeometry};

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the format and size need, or an MJPEG frame without its end marker.
    Truncated {
        /// Bytes needed (0 where unknown, for MJPEG).
        needed: usize,
        /// Bytes delivered.
        got: usize,
    },
    /// The bytes are not a valid frame (bad JPEG markers or data).
    Corrupt(&'static str),
    /// A valid frame of another size than configured.
    WrongSize {
        /// Its width.
        width: usize,
        /// Its height.
        height: usize,
    },
    /// The caller's buffer is too small for the frame.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Truncated { needed: 0, got } => write!(f, "truncated frame ({got} bytes, no end marker)"),
            DecodeError::Truncated { needed, got } => write!(f, "truncated frame ({got} of {needed} bytes)"),
            DecodeError::Corrupt(why) => write!(f, "corrupt frame: {why}"),
            DecodeError::WrongSize { width, height } => write!(f, "frame is {width}x{height}, not the configured size"),
            DecodeError::BufferTooSmall { needed } => write!(f, "frame needs a {needed}-byte buffer"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The size of a decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

/// Where an MJPEG frame's data really ends: drivers pad buffers with zeros after EOI.
fn jpeg_payload(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Check SOI/EOI of an MJPEG frame; returns the payload without trailing padding.
pub fn check_jpeg(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return Err(DecodeError::Corrupt("no JPEG start marker"));
    }
    let p = jpeg_payload(bytes);
    if p.len() < 4 || p[p.len() - 2] != 0xFF || p[p.len() - 1] != 0xD9 {
        return Err(DecodeError::Truncated {
            needed: 0,
            got: p.len(),
        });
    }
    Ok(p)
}

/// The width and height an MJPEG frame declares (reads its headers only).
pub fn jpeg_size(bytes: &[u8]) -> Result<(usize, usize), DecodeError> {
    scoped(Scope::Decode, || {
        let mut d = JpegDecoder::new(ZCursor::new(bytes));
        d.decode_headers()
            .map_err(|_| DecodeError::Corrupt("bad JPEG headers"))?;
        d.dimensions().ok_or(DecodeError::Corrupt("bad JPEG headers"))
    })
}

/// Decode one frame of `format` into `dst` as `out`.
///
/// `expect` is the configured size: raw formats are read with it (and `stride`, the driver's
/// bytes per line; `None` means tightly packed); an MJPEG frame of another size is
/// [`DecodeError::WrongSize`]. With `expect = None` an MJPEG frame of any size that fits `dst`
/// is accepted (file replay).
pub fn decode_frame(
    format: PixelFormat,
    bytes: &[u8],
    expect: Option<(usize, usize)>,
    stride: Option<usize>,
    out: OutputFormat,
    dst: &mut [u8],
) -> Result<Decoded, DecodeError> {
    match format {
        PixelFormat::Mjpeg => decode_jpeg(bytes, expect, out, dst),
        _ => {
            let (width, height) = expect.ok_or(DecodeError::Corrupt("raw frame without a size"))?;
            let mut g = RawGeometry::packed(format, width, height);
            if let Some(s) = stride {
                g.stride = s;
            }
            match convert_raw(format, bytes, g, out, dst) {
                Ok(()) => Ok(Decoded { width, height }),
                Err(ConvertError::ShortInput { needed, got }) => Err(DecodeError::Truncated { needed, got }),
                Err(ConvertError::ShortOutput { needed, .. }) => Err(DecodeError::BufferTooSmall { needed }),
                Err(ConvertError::Geometry) => Err(DecodeError::WrongSize { width, height }),
            }
        }
    }
}

fn decode_jpeg(
    bytes: &[u8],
    expect: Option<(usize, usize)>,
    out: OutputFormat,
    dst: &mut [u8],
) -> Result<Decoded, DecodeError> {
    let payload = check_jpeg(bytes)?;
    let colorspace = match out {
        OutputFormat::Gray => ColorSpace::Luma,
        OutputFormat::Rgb => ColorSpace::RGB,
    };
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(colorspace)
        .set_strict_mode(true);
    // Everything zune-jpeg does, its allocations included, is counted as decoding.
    scoped(Scope::Decode, || {
        let mut d = JpegDecoder::new_with_options(ZCursor::new(payload), options);
        d.decode_headers()
            .map_err(|_| DecodeError::Corrupt("bad JPEG headers"))?;
        let (width, height) = d.dimensions().ok_or(DecodeError::Corrupt("bad JPEG headers"))?;
        if let Some((w, h)) = expect {
            if (w, h) != (width, height) {
                return Err(DecodeError::WrongSize { width, height });
            }
        }
        let needed = out.frame_bytes(width, height);
        if dst.len() < needed {
            return Err(DecodeError::BufferTooSmall { needed });
        }
        d.decode_into(&mut dst[..needed])
            .map_err(|_| DecodeError::Corrupt("bad JPEG data"))?;
        Ok(Decoded { width, height })
    })
}
