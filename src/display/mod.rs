//! The local screen on Linux: an RGB565 canvas the layout ([`crate::core::screen`]) draws
//! on, and the panels it is shown on — a Linux framebuffer (`/dev/fbN`, packed to whatever
//! pixel layout the driver reports), an SPI panel (ST7789, ILI9341 through mipidsi), or a PNG
//! file for headless boards and tests — plus the display thread that keeps drawing off the
//! frame path.

pub mod fb;
pub mod spi;
pub mod thread;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use embedded_graphics::pixelcolor::raw::RawU16;
use embedded_graphics::pixelcolor::Rgb565;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;

use crate::core::screen::ScreenState;

/// An RGB565 image in memory, allocated once at its size.
pub struct Canvas {
    width: u32,
    height: u32,
    px: Vec<u16>,
}

impl Canvas {
    /// A black canvas.
    pub fn new(width: u32, height: u32) -> Canvas {
        Canvas {
            width,
            height,
            px: vec![0; (width * height) as usize],
        }
    }

    /// Width.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Row `y` as raw RGB565 values.
    pub fn row(&self, y: u32) -> &[u16] {
        let w = self.width as usize;
        &self.px[y as usize * w..(y as usize + 1) * w]
    }

    /// The pixel at (x, y) as 8-bit RGB.
    pub fn rgb888(&self, x: u32, y: u32) -> [u8; 3] {
        rgb565_to_888(self.px[(y * self.width + x) as usize])
    }

    /// Copy `src` onto this canvas with its top-left corner at (x, y) (clipped).
    pub fn blit(&mut self, src: &Canvas, x: u32, y: u32) {
        for sy in 0..src.height.min(self.height.saturating_sub(y)) {
            let n = src.width.min(self.width.saturating_sub(x)) as usize;
            let d = ((y + sy) * self.width + x) as usize;
            self.px[d..d + n].copy_from_slice(&src.row(sy)[..n]);
        }
    }

    /// The whole canvas as 8-bit RGB, row-major.
    pub fn to_rgb888(&self) -> Vec<u8> {
        self.px.iter().flat_map(|&p| rgb565_to_888(p)).collect()
    }
}

/// RGB565 to 8-bit RGB, replicating the high bits into the low ones (0x1F → 0xFF).
pub fn rgb565_to_888(p: u16) -> [u8; 3] {
    let r = ((p >> 11) & 0x1F) as u8;
    let g = ((p >> 5) & 0x3F) as u8;
    let b = (p & 0x1F) as u8;
    [(r << 3) | (r >> 2), (g << 2) | (g >> 4), (b << 3) | (b >> 2)]
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb565;
    type Error = core::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb565>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        let (w, h) = (self.width as i32, self.height as i32);
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && p.x < w && p.y < h {
                self.px[(p.y * w + p.x) as usize] = RawU16::from(c).into_inner();
            }
        }
        Ok(())
    }

    fn fill_solid(&mut self, area: &Rectangle, color: Rgb565) -> Result<(), Self::Error> {
        let a = area.intersection(&self.bounding_box());
        let Some(br) = a.bottom_right() else { return Ok(()) };
        let v = RawU16::from(color).into_inner();
        let w = self.width as usize;
        for y in a.top_left.y..=br.y {
            let row = &mut self.px[y as usize * w..(y as usize + 1) * w];
            row[a.top_left.x as usize..=br.x as usize].fill(v);
        }
        Ok(())
    }

    fn clear(&mut self, color: Rgb565) -> Result<(), Self::Error> {
        self.px.fill(RawU16::from(color).into_inner());
        Ok(())
    }
}

/// Where each colour sits in a framebuffer pixel, as the driver reports it
/// (`fb_var_screeninfo`: `bits_per_pixel`, and `offset`/`length` per colour).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelLayout {
    /// Bits per pixel: 16, 24 or 32.
    pub bits_per_pixel: u32,
    /// Red (bit offset, bit length).
    pub red: (u32, u32),
    /// Green.
    pub green: (u32, u32),
    /// Blue.
    pub blue: (u32, u32),
    /// Alpha / padding (set to all ones when its length is non-zero).
    pub transp: (u32, u32),
}

impl PixelLayout {
    /// RGB565 (most SPI-attached and small DSI framebuffers).
    pub const RGB565: PixelLayout = PixelLayout {
        bits_per_pixel: 16,
        red: (11, 5),
        green: (5, 6),
        blue: (0, 5),
        transp: (0, 0),
    };
    /// BGR565.
    pub const BGR565: PixelLayout = PixelLayout {
        bits_per_pixel: 16,
        red: (0, 5),
        green: (5, 6),
        blue: (11, 5),
        transp: (0, 0),
    };
    /// XRGB8888 (HDMI/DSI on the Pi, Jetson, RK3588, virtio-gpu).
    pub const XRGB8888: PixelLayout = PixelLayout {
        bits_per_pixel: 32,
        red: (16, 8),
        green: (8, 8),
        blue: (0, 8),
        transp: (0, 0),
    };
    /// ARGB8888 with an alpha channel the driver honours.
    pub const ARGB8888: PixelLayout = PixelLayout {
        bits_per_pixel: 32,
        red: (16, 8),
        green: (8, 8),
        blue: (0, 8),
        transp: (24, 8),
    };
    /// XBGR8888.
    pub const XBGR8888: PixelLayout = PixelLayout {
        bits_per_pixel: 32,
        red: (0, 8),
        green: (8, 8),
        blue: (16, 8),
        transp: (0, 0),
    };
    /// RGB888 packed in 3 bytes.
    pub const RGB888: PixelLayout = PixelLayout {
        bits_per_pixel: 24,
        red: (16, 8),
        green: (8, 8),
        blue: (0, 8),
        transp: (0, 0),
    };

    /// Bytes per pixel.
    pub fn bytes_per_pixel(&self) -> usize {
        self.bits_per_pixel as usize / 8
    }

    /// Check the layout is one this packer can write.
    pub fn check(&self) -> Result<()> {
        if !matches!(self.bits_per_pixel, 16 | 24 | 32) {
            bail!("{} bits per pixel: supported 16, 24, 32", self.bits_per_pixel);
        }
        for (name, (off, len)) in [("red", self.red), ("green", self.green), ("blue", self.blue)] {
            if len == 0 || len > 8 || off + len > self.bits_per_pixel {
                bail!(
                    "{name} at bit {off}, {len} bits: does not fit a {}-bit pixel",
                    self.bits_per_pixel
                );
            }
        }
        Ok(())
    }

    /// Pack one row of RGB565 pixels into `out` (little-endian, as framebuffers store them).
    pub fn pack_row(&self, row: &[u16], out: &mut [u8]) {
        match *self {
            PixelLayout::RGB565 => {
                for (o, p) in out.chunks_exact_mut(2).zip(row) {
                    o.copy_from_slice(&p.to_le_bytes());
                }
            }
            PixelLayout::XRGB8888 => {
                for (o, &p) in out.chunks_exact_mut(4).zip(row) {
                    let [r, g, b] = rgb565_to_888(p);
                    o.copy_from_slice(&[b, g, r, 0]);
                }
            }
            l => {
                let bpp = l.bytes_per_pixel();
                let put = |v: u8, (off, len): (u32, u32)| -> u32 { ((v as u32) >> (8 - len)) << off };
                for (o, &p) in out.chunks_exact_mut(bpp).zip(row) {
                    let [r, g, b] = rgb565_to_888(p);
                    let mut v = put(r, l.red) | put(g, l.green) | put(b, l.blue);
                    if l.transp.1 > 0 {
                        v |= ((1u32 << l.transp.1) - 1) << l.transp.0;
                    }
                    o.copy_from_slice(&v.to_le_bytes()[..bpp]);
                }
            }
        }
    }
}

/// Why a panel could not show a frame.
#[derive(Debug)]
pub struct DisplayError(pub String);

impl std::fmt::Display for DisplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DisplayError {}

/// A physical (or file) screen.
pub trait Panel: Send {
    /// Its size in pixels.
    fn size(&self) -> (u32, u32);
    /// Show `region` of `canvas` (all of it when `None`).
    fn flush(&mut self, canvas: &Canvas, region: Option<Rectangle>) -> Result<(), DisplayError>;
}

/// Writes the screen as a PNG file (replaced atomically, so a reader never sees half a file).
pub struct PngPanel {
    path: PathBuf,
    tmp: PathBuf,
    width: u32,
    height: u32,
}

impl PngPanel {
    /// A PNG "screen" of this size at `path`.
    pub fn new(path: &Path, width: u32, height: u32) -> PngPanel {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        PngPanel {
            path: path.to_path_buf(),
            tmp: PathBuf::from(tmp),
            width,
            height,
        }
    }
}

/// Write `canvas` as an RGB PNG.
pub fn write_png(canvas: &Canvas, path: &Path) -> Result<()> {
    image::save_buffer_with_format(
        path,
        &canvas.to_rgb888(),
        canvas.width(),
        canvas.height(),
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .with_context(|| format!("{}: cannot write PNG", path.display()))
}

impl Panel for PngPanel {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn flush(&mut self, canvas: &Canvas, _region: Option<Rectangle>) -> Result<(), DisplayError> {
        write_png(canvas, &self.tmp).map_err(|e| DisplayError(format!("{e:#}")))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| DisplayError(format!("{}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb565_expands_to_full_range() {
        assert_eq!(rgb565_to_888(0xFFFF), [255, 255, 255]);
        assert_eq!(rgb565_to_888(0x0000), [0, 0, 0]);
        assert_eq!(rgb565_to_888(0xF800), [255, 0, 0]);
        assert_eq!(rgb565_to_888(0x07E0), [0, 255, 0]);
        assert_eq!(rgb565_to_888(0x001F), [0, 0, 255]);
    }

    // One row of known colours, packed for each layout, checked byte by byte.
    #[test]
    fn pixel_packing_per_framebuffer_layout() {
        // red, green, blue, white, a mid colour (r=16/31, g=32/63, b=8/31)
        let row = [0xF800u16, 0x07E0, 0x001F, 0xFFFF, (16 << 11) | (32 << 5) | 8];
        let pack = |l: PixelLayout| {
            let mut out = vec![0u8; row.len() * l.bytes_per_pixel()];
            l.pack_row(&row, &mut out);
            out
        };
        assert_eq!(
            pack(PixelLayout::RGB565),
            [0x00, 0xF8, 0xE0, 0x07, 0x1F, 0x00, 0xFF, 0xFF, 0x08, 0x84]
        );
        // BGR565: red in the low bits.
        assert_eq!(&pack(PixelLayout::BGR565)[..6], &[0x1F, 0x00, 0xE0, 0x07, 0x00, 0xF8]);
        // XRGB8888 little-endian: B, G, R, X.
        let x = pack(PixelLayout::XRGB8888);
        assert_eq!(&x[..16], &[0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0]);
        assert_eq!(&x[16..], &[0x42, 0x82, 0x84, 0]);
        // ARGB8888: alpha all ones.
        assert_eq!(&pack(PixelLayout::ARGB8888)[..4], &[0, 0, 255, 255]);
        // XBGR8888: R, G, B, X.
        assert_eq!(&pack(PixelLayout::XBGR8888)[..8], &[255, 0, 0, 0, 0, 255, 0, 0]);
        // RGB888 in 3 bytes: B, G, R.
        assert_eq!(&pack(PixelLayout::RGB888)[..6], &[0, 0, 255, 0, 255, 0]);
        // The generic packer agrees with the fast paths.
        let generic = |l: PixelLayout| {
            let mut l2 = l;
            l2.transp = (l.transp.0, l.transp.1);
            let mut out = vec![0u8; row.len() * l.bytes_per_pixel()];
            // Force the generic path with an equivalent layout that is not a named constant.
            let mut alt = l2;
            alt.transp = (31, 0);
            alt.pack_row(&row, &mut out);
            out
        };
        assert_eq!(generic(PixelLayout::RGB565), pack(PixelLayout::RGB565));
        assert_eq!(generic(PixelLayout::XRGB8888), pack(PixelLayout::XRGB8888));
        assert!(PixelLayout::RGB565.check().is_ok());
        let bad = PixelLayout {
            bits_per_pixel: 8,
            ..PixelLayout::RGB565
        };
        assert!(bad.check().is_err());
    }
}

/// The states `ferroscope screen` renders and the golden screens are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoState {
    /// The last item passed.
    Ok,
    /// The last item was rejected for scratches.
    Reject,
    /// No head was sure.
    Uncertain,
    /// The camera is lost; items fail safe.
    Fault,
}

impl DemoState {
    /// From its name.
    pub fn from_name(s: &str) -> Option<DemoState> {
        match s {
            "ok" => Some(DemoState::Ok),
            "reject" => Some(DemoState::Reject),
            "uncertain" => Some(DemoState::Uncertain),
            "fault" => Some(DemoState::Fault),
            _ => None,
        }
    }

    /// Name.
    pub fn name(self) -> &'static str {
        match self {
            DemoState::Ok => "ok",
            DemoState::Reject => "reject",
            DemoState::Uncertain => "uncertain",
            DemoState::Fault => "fault",
        }
    }

    /// The committed sample shown as its thumbnail (none for the fault: no frame).
    pub fn sample(self) -> Option<&'static str> {
        match self {
            DemoState::Ok => Some("tests/data/neu_samples/rolled-in_scale/RS_100.png"),
            DemoState::Reject => Some("tests/data/neu_samples/scratches/Sc_104.png"),
            DemoState::Uncertain => Some("tests/data/neu_samples/patches/Pa_101.png"),
            DemoState::Fault => None,
        }
    }
}

/// A realistic, fixed screen state for `kind` (with `thumb`, a gray frame, as its thumbnail).
pub fn demo_state(kind: DemoState, station: &str, model: &str, thumb: Option<(usize, usize, &[u8])>) -> ScreenState {
    use crate::core::screen::{fault, set_text, OverlayBox, ScreenOutcome};
    let mut s = ScreenState::default();
    set_text(&mut s.station, station);
    set_text(&mut s.model, model);
    s.uptime_s = 3 * 3600 + 25 * 60 + 7;
    s.inspected = 12_480;
    s.rejected = 1_093;
    s.yield_percent = 100.0 * (s.inspected - s.rejected) as f32 / s.inspected as f32;
    s.items_per_min = 598.0;
    s.latency_ms_p50 = 2.3;
    s.latency_ms_p99 = 3.1;
    for (name, n) in [
        ("crazing", 211u64),
        ("inclusion", 187),
        ("patches", 240),
        ("pitted_surface", 132),
        ("scratches", 296),
        ("fail-safe", 27),
    ] {
        let mut t = heapless::String::new();
        set_text(&mut t, name);
        let _ = s.per_class.push((t, n));
    }
    if let Some((w, h, px)) = thumb {
        s.set_thumbnail(px, w, h, w);
    }
    match kind {
        DemoState::Ok => {
            s.outcome = ScreenOutcome::Ok;
            set_text(&mut s.class, "rolled-in_scale");
            s.score = 0.91;
        }
        DemoState::Reject => {
            s.outcome = ScreenOutcome::Reject;
            set_text(&mut s.class, "scratches");
            s.score = 0.97;
            let (w, h) = (s.thumb_w, s.thumb_h);
            let _ = s.boxes.push(OverlayBox {
                x: w / 3,
                y: h / 8,
                w: w / 5,
                h: h * 3 / 4,
            });
        }
        DemoState::Uncertain => {
            s.outcome = ScreenOutcome::Uncertain;
            set_text(&mut s.class, "patches");
            s.score = 0.41;
        }
        DemoState::Fault => {
            s.outcome = ScreenOutcome::Fault;
            set_text(&mut s.class, "camera lost");
            s.score = -1.0;
            s.faults = fault::CAMERA_LOST | fault::BAD_FRAMES;
            s.thumb_w = 0;
            s.thumb_h = 0;
        }
    }
    s
}

/// Render `state` on a `width` x `height` canvas.
pub fn render(state: &ScreenState, width: u32, height: u32) -> Canvas {
    let mut c = Canvas::new(width, height);
    let _ = crate::core::screen::draw(state, &mut c);
    c
}
