//! SPI panels (ST7789, ILI9341) through `mipidsi` on Linux spidev, with the data/command and
//! reset lines on GPIO character devices (gpiocdev).

use std::path::Path;

use anyhow::{bail, Context, Result};
use embedded_graphics::pixelcolor::raw::RawU16;
use embedded_graphics::pixelcolor::Rgb565;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::Rectangle;
use gpiocdev::line::Value;
use gpiocdev::Request;
use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
use linux_embedded_hal::{Delay, SpidevDevice};
use mipidsi::interface::SpiInterface;
use mipidsi::models::{ILI9341Rgb565, ST7789};
use mipidsi::options::{ColorInversion, Orientation, Rotation};
use mipidsi::Builder;

use super::{Canvas, DisplayError, Panel};

/// Bytes of the SPI transfer buffer (one allocation at start-up).
pub const SPI_BUFFER_BYTES: usize = 4096;

/// An output line for the panel's D/C or reset pin (absent: a no-op).
pub struct PanelPin {
    req: Option<Request>,
    offset: u32,
}

impl PanelPin {
    /// Request `line` on `chip` as an output (or none).
    pub fn open(chip: &Path, line: Option<u32>, what: &str) -> Result<PanelPin> {
        let Some(offset) = line else {
            return Ok(PanelPin { req: None, offset: 0 });
        };
        let req = Request::builder()
            .on_chip(chip)
            .with_consumer("ferroscope-display")
            .with_line(offset)
            .as_output(Value::Inactive)
            .request()
            .with_context(|| {
                format!(
                    "{}: cannot request line {offset} for the panel's {what}",
                    chip.display()
                )
            })?;
        Ok(PanelPin { req: Some(req), offset })
    }
}

/// A GPIO write failed.
#[derive(Debug)]
pub struct PinError;

impl embedded_hal::digital::Error for PinError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

impl embedded_hal::digital::ErrorType for PanelPin {
    type Error = PinError;
}

impl embedded_hal::digital::OutputPin for PanelPin {
    fn set_low(&mut self) -> Result<(), PinError> {
        match &self.req {
            Some(r) => r
                .set_value(self.offset, Value::Inactive)
                .map(|_| ())
                .map_err(|_| PinError),
            None => Ok(()),
        }
    }

    fn set_high(&mut self) -> Result<(), PinError> {
        match &self.req {
            Some(r) => r
                .set_value(self.offset, Value::Active)
                .map(|_| ())
                .map_err(|_| PinError),
            None => Ok(()),
        }
    }
}

/// The panel controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    /// Sitronix ST7789 (240x320 or 240x240 modules).
    St7789,
    /// Ilitek ILI9341 (240x320 modules).
    Ili9341,
}

/// How a panel is wired.
#[derive(Clone, Debug)]
pub struct SpiPanelConfig {
    /// Controller.
    pub controller: Controller,
    /// spidev node, e.g. `/dev/spidev0.0`.
    pub spi_device: std::path::PathBuf,
    /// SPI clock, Hz.
    pub spi_hz: u32,
    /// GPIO chip of the D/C and reset lines.
    pub gpio_chip: std::path::PathBuf,
    /// D/C line.
    pub dc_line: u32,
    /// Reset line (none: tied high).
    pub reset_line: Option<u32>,
    /// Rotation, degrees: 0, 90, 180, 270 (90 or 270 for landscape 320x240).
    pub rotation_deg: u32,
    /// Invert colours (most ST7789 IPS modules need it).
    pub invert: bool,
}

type Draw = dyn FnMut(&Canvas, Rectangle) -> Result<(), DisplayError> + Send;

/// An initialised SPI panel.
pub struct SpiPanel {
    size: (u32, u32),
    draw: Box<Draw>,
}

fn rotation(deg: u32) -> Result<Rotation> {
    Ok(match deg {
        0 => Rotation::Deg0,
        90 => Rotation::Deg90,
        180 => Rotation::Deg180,
        270 => Rotation::Deg270,
        d => bail!("rotation {d}: allowed 0, 90, 180, 270"),
    })
}

fn pixels(canvas: &Canvas, r: Rectangle) -> impl Iterator<Item = Rgb565> + '_ {
    let x0 = r.top_left.x as usize;
    let w = r.size.width as usize;
    (r.top_left.y as u32..r.top_left.y as u32 + r.size.height)
        .flat_map(move |y| canvas.row(y)[x0..x0 + w].iter().map(|&v| Rgb565::from(RawU16::new(v))))
}

impl SpiPanel {
    /// Open spidev and the lines, reset and initialise the controller.
    pub fn open(cfg: &SpiPanelConfig) -> Result<SpiPanel> {
        let what = cfg.spi_device.display().to_string();
        let mut spi = SpidevDevice::open(&cfg.spi_device).with_context(|| format!("{what}: cannot open"))?;
        spi.0
            .configure(
                &SpidevOptions::new()
                    .bits_per_word(8)
                    .max_speed_hz(cfg.spi_hz)
                    .mode(SpiModeFlags::SPI_MODE_0)
                    .build(),
            )
            .with_context(|| format!("{what}: cannot configure SPI mode 0 at {} Hz", cfg.spi_hz))?;
        let dc = PanelPin::open(&cfg.gpio_chip, Some(cfg.dc_line), "D/C")?;
        let rst = PanelPin::open(&cfg.gpio_chip, cfg.reset_line, "reset")?;
        // One buffer for the panel's lifetime.
        let buffer: &'static mut [u8] = Box::leak(vec![0u8; SPI_BUFFER_BYTES].into_boxed_slice());
        let di = SpiInterface::new(spi, dc, buffer);
        let orientation = Orientation::new().rotate(rotation(cfg.rotation_deg)?);
        let inversion = if cfg.invert {
            ColorInversion::Inverted
        } else {
            ColorInversion::Normal
        };
        let landscape = cfg.rotation_deg % 180 == 90;
        let size = if landscape { (320, 240) } else { (240, 320) };
        macro_rules! panel {
            ($model:expr) => {{
                let mut d = Builder::new($model, di)
                    .reset_pin(rst)
                    .display_size(240, 320)
                    .orientation(orientation)
                    .invert_colors(inversion)
                    .init(&mut Delay)
                    .map_err(|e| anyhow::anyhow!("{what}: panel initialisation failed: {e:?}"))?;
                Box::new(move |canvas: &Canvas, r: Rectangle| {
                    let Some(br) = r.bottom_right() else { return Ok(()) };
                    d.set_pixels(
                        r.top_left.x as u16,
                        r.top_left.y as u16,
                        br.x as u16,
                        br.y as u16,
                        pixels(canvas, r),
                    )
                    .map_err(|e| DisplayError(format!("SPI write failed: {e:?}")))
                }) as Box<Draw>
            }};
        }
        let draw = match cfg.controller {
            Controller::St7789 => panel!(ST7789),
            Controller::Ili9341 => panel!(ILI9341Rgb565),
        };
        Ok(SpiPanel { size, draw })
    }
}

impl Panel for SpiPanel {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn flush(&mut self, canvas: &Canvas, region: Option<Rectangle>) -> Result<(), DisplayError> {
        let full = Rectangle::new(Point::zero(), Size::new(self.size.0, self.size.1));
        let r = region.map_or(full, |r| r.intersection(&full));
        let c = Rectangle::new(Point::zero(), Size::new(canvas.width(), canvas.height()));
        (self.draw)(canvas, r.intersection(&c))
    }
}
