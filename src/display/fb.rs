//! Linux framebuffer (`/dev/fbN`): size, line length and pixel layout read from the driver
//! (`FBIOGET_VSCREENINFO`, `FBIOGET_FSCREENINFO`), rows packed into that layout and written
//! with `pwrite` — only the rows of the region that changed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;

use super::{Canvas, DisplayError, Panel, PixelLayout};

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct FbBitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

/// `struct fb_var_screeninfo` (linux/fb.h).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct FbVarScreeninfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: FbBitfield,
    green: FbBitfield,
    blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    pixclock: u32,
    left_margin: u32,
    right_margin: u32,
    upper_margin: u32,
    lower_margin: u32,
    hsync_len: u32,
    vsync_len: u32,
    sync: u32,
    vmode: u32,
    rotate: u32,
    colorspace: u32,
    reserved: [u32; 4],
}

/// `struct fb_fix_screeninfo` (linux/fb.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct FbFixScreeninfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    type_: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;

/// A framebuffer device (or any file with a framebuffer's geometry, for tests).
pub struct Framebuffer {
    file: File,
    width: u32,
    height: u32,
    line_length: usize,
    /// Byte offset of the visible area's first row.
    origin: u64,
    layout: PixelLayout,
    row: Vec<u8>,
}

impl Framebuffer {
    /// Open `/dev/fbN` and read its geometry and pixel layout from the driver.
    pub fn open(path: &Path) -> Result<Framebuffer> {
        let what = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("{what}: cannot open the framebuffer"))?;
        let mut var = FbVarScreeninfo::default();
        // SAFETY: FBIOGET_VSCREENINFO fills a struct fb_var_screeninfo, which `var` is.
        if unsafe { libc::ioctl(file.as_raw_fd(), FBIOGET_VSCREENINFO as _, &mut var) } != 0 {
            bail!(
                "{what}: FBIOGET_VSCREENINFO failed: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: all-zero is a valid fb_fix_screeninfo; the ioctl fills it.
        let mut fix: FbFixScreeninfo = unsafe { std::mem::zeroed() };
        // SAFETY: FBIOGET_FSCREENINFO fills a struct fb_fix_screeninfo, which `fix` is.
        if unsafe { libc::ioctl(file.as_raw_fd(), FBIOGET_FSCREENINFO as _, &mut fix) } != 0 {
            bail!(
                "{what}: FBIOGET_FSCREENINFO failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let layout = PixelLayout {
            bits_per_pixel: var.bits_per_pixel,
            red: (var.red.offset, var.red.length),
            green: (var.green.offset, var.green.length),
            blue: (var.blue.offset, var.blue.length),
            transp: (var.transp.offset, var.transp.length),
        };
        layout.check().with_context(|| format!("{what}: pixel layout"))?;
        let line_length = fix.line_length as usize;
        let origin = var.yoffset as u64 * line_length as u64 + var.xoffset as u64 * layout.bytes_per_pixel() as u64;
        Framebuffer::with_layout(file, var.xres, var.yres, line_length, origin, layout)
    }

    /// A framebuffer of known geometry in `file`.
    pub fn with_layout(
        file: File,
        width: u32,
        height: u32,
        line_length: usize,
        origin: u64,
        layout: PixelLayout,
    ) -> Result<Framebuffer> {
        layout.check()?;
        if line_length < width as usize * layout.bytes_per_pixel() {
            bail!("line length {line_length} is shorter than {width} pixels");
        }
        Ok(Framebuffer {
            file,
            width,
            height,
            line_length,
            origin,
            layout,
            row: vec![0; width as usize * layout.bytes_per_pixel()],
        })
    }

    /// The driver's pixel layout.
    pub fn layout(&self) -> PixelLayout {
        self.layout
    }
}

impl Panel for Framebuffer {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn flush(&mut self, canvas: &Canvas, region: Option<Rectangle>) -> Result<(), DisplayError> {
        let w = self.width.min(canvas.width());
        let h = self.height.min(canvas.height());
        let full = Rectangle::new(Point::zero(), Size::new(w, h));
        let r = region.map_or(full, |r| r.intersection(&full));
        let Some(br) = r.bottom_right() else { return Ok(()) };
        let bpp = self.layout.bytes_per_pixel();
        let (x0, x1) = (r.top_left.x as usize, br.x as usize + 1);
        for y in r.top_left.y as u32..=br.y as u32 {
            let out = &mut self.row[..(x1 - x0) * bpp];
            self.layout.pack_row(&canvas.row(y)[x0..x1], out);
            let at = self.origin + y as u64 * self.line_length as u64 + (x0 * bpp) as u64;
            self.file
                .write_all_at(out, at)
                .map_err(|e| DisplayError(format!("framebuffer write at row {y}: {e}")))?;
        }
        Ok(())
    }
}
