//! The technician's screen: what it shows ([`ScreenState`], fixed-size, no heap) and where
//! ([`draw`]), onto any `embedded-graphics` draw target in RGB565. Two layouts: 320x240 (SPI
//! panels) and 800x480 (DSI/HDMI); other sizes use the nearer one, scaled by its text size.
//!
//! Legible from a metre away: the outcome is the biggest thing on the screen (letters 60 px
//! high on 320x240, 80 px on 800x480) in a colour that says it without reading — green OK,
//! red REJECT, amber UNCERTAIN, magenta FAULT — and faults are words on a red strip, not codes.
//!
//! Why one file of ~600 lines: the state, both layouts' geometry and the drawing share one set
//! of positions, so a change to what the screen shows stays in one place.

use core::fmt::Write;

use embedded_graphics::mono_font::ascii::{FONT_10X20, FONT_6X10};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::{Rgb565, RgbColor};
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Baseline, Text};
use heapless::{String, Vec};

/// Largest thumbnail of the latest frame, pixels (4:3, fits both layouts).
pub const THUMB_MAX_W: usize = 256;
/// Largest thumbnail height.
pub const THUMB_MAX_H: usize = 192;
/// Most per-class reject counters shown (more classes are summed into the total only).
pub const MAX_SCREEN_CLASSES: usize = 8;
/// Most overlay boxes drawn on the thumbnail (defect regions).
pub const MAX_OVERLAY_BOXES: usize = 16;

/// The big word on the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ScreenOutcome {
    /// Nothing inspected yet.
    Waiting,
    /// Accepted.
    Ok,
    /// Rejected for a defect.
    Reject,
    /// No head was sure.
    Uncertain,
    /// No valid decision (broken frame, camera lost, late model): the fail-safe applied.
    Fault,
}

impl ScreenOutcome {
    /// The word shown.
    pub const fn word(self) -> &'static str {
        match self {
            ScreenOutcome::Waiting => "WAITING",
            ScreenOutcome::Ok => "OK",
            ScreenOutcome::Reject => "REJECT",
            ScreenOutcome::Uncertain => "UNCERTAIN",
            ScreenOutcome::Fault => "FAULT",
        }
    }

    /// Its colour.
    pub const fn colour(self) -> Rgb565 {
        match self {
            ScreenOutcome::Waiting => Rgb565::new(8, 16, 10),
            ScreenOutcome::Ok => Rgb565::new(2, 44, 6),
            ScreenOutcome::Reject => Rgb565::new(26, 4, 3),
            ScreenOutcome::Uncertain => Rgb565::new(30, 42, 0),
            ScreenOutcome::Fault => Rgb565::new(22, 0, 22),
        }
    }

    /// Text colour on [`Self::colour`].
    pub const fn ink(self) -> Rgb565 {
        match self {
            ScreenOutcome::Uncertain => Rgb565::BLACK,
            _ => Rgb565::WHITE,
        }
    }
}

/// Faults a technician can act on, as bits of [`ScreenState::faults`].
pub mod fault {
    /// The camera is unplugged or not answering.
    pub const CAMERA_LOST: u16 = 1 << 0;
    /// Frames arrive broken, dropped or of the wrong size.
    pub const BAD_FRAMES: u16 = 1 << 1;
    /// Decisions came too late for the ejector.
    pub const DECISION_OVERRUN: u16 = 1 << 2;
    /// An output (GPIO) write or input read failed.
    pub const GPIO_ERROR: u16 = 1 << 3;
    /// The archive disk is full or read-only.
    pub const DISK_FULL: u16 = 1 << 4;
    /// The model failed to run.
    pub const MODEL_ERROR: u16 = 1 << 5;
    /// More items on the belt than the tracker holds.
    pub const TOO_MANY_ITEMS: u16 = 1 << 6;
    /// The fail-safe stopped the line.
    pub const LINE_STOPPED: u16 = 1 << 7;
    /// The display itself failed (shown on the next display that works, and in the log).
    pub const DISPLAY_ERROR: u16 = 1 << 8;
    /// The MQTT broker is not reachable (events wait in the on-board queue).
    pub const BROKER_OFFLINE: u16 = 1 << 9;
    /// The encoder lost events or stood still while items arrived: the items in flight got
    /// the fail-safe.
    pub const ENCODER_FAULT: u16 = 1 << 10;
    /// The process may not use its `[realtime]` settings (SCHED_FIFO, locked memory, CPU
    /// wake-up latency): pulses may be late on a busy board. Shown for the whole run.
    pub const REALTIME_OFF: u16 = 1 << 11;
    /// A recipe switch was refused (a model file missing or changed): the running recipe
    /// stayed.
    pub const RECIPE_REFUSED: u16 = 1 << 12;

    /// Each bit with its words, in the order shown.
    pub const WORDS: [(u16, &str); 13] = [
        (CAMERA_LOST, "CAMERA LOST"),
        (LINE_STOPPED, "LINE STOPPED"),
        (ENCODER_FAULT, "ENCODER FAULT"),
        (BAD_FRAMES, "BAD FRAMES"),
        (DECISION_OVERRUN, "DECISION OVERRUN"),
        (MODEL_ERROR, "MODEL ERROR"),
        (GPIO_ERROR, "GPIO ERROR"),
        (DISK_FULL, "DISK FULL"),
        (TOO_MANY_ITEMS, "TOO MANY ITEMS"),
        (DISPLAY_ERROR, "DISPLAY ERROR"),
        (BROKER_OFFLINE, "BROKER OFFLINE"),
        (REALTIME_OFF, "REALTIME OFF"),
        (RECIPE_REFUSED, "RECIPE REFUSED"),
    ];
}

/// A box on the thumbnail (a defect region), in thumbnail pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OverlayBox {
    /// Left.
    pub x: u16,
    /// Top.
    pub y: u16,
    /// Width.
    pub w: u16,
    /// Height.
    pub h: u16,
}

/// Everything the screen shows. Fixed size: the station copies its latest state into one of
/// these without allocating, and the display thread draws from its own copy.
#[derive(Clone)]
pub struct ScreenState {
    /// Station name.
    pub station: String<24>,
    /// Model name, version and precision.
    pub model: String<40>,
    /// Seconds since the station started.
    pub uptime_s: u64,
    /// The latest item's outcome.
    pub outcome: ScreenOutcome,
    /// Its class (or, for [`ScreenOutcome::Fault`], why).
    pub class: String<24>,
    /// Its score (0..1; negative: none).
    pub score: f32,
    /// Items inspected.
    pub inspected: u64,
    /// Items rejected (all reasons).
    pub rejected: u64,
    /// Accepted share, percent.
    pub yield_percent: f32,
    /// Rejects per class (name, count).
    pub per_class: Vec<(String<24>, u64), MAX_SCREEN_CLASSES>,
    /// Items per minute over the last stretch.
    pub items_per_min: f32,
    /// Capture → decision latency, median, ms.
    pub latency_ms_p50: f32,
    /// Same, 99th percentile.
    pub latency_ms_p99: f32,
    /// Active faults ([`fault`] bits).
    pub faults: u16,
    /// Thumbnail width (0: no frame yet).
    pub thumb_w: u16,
    /// Thumbnail height.
    pub thumb_h: u16,
    /// Gray thumbnail pixels, `thumb_w * thumb_h` used.
    pub thumb: [u8; THUMB_MAX_W * THUMB_MAX_H],
    /// Defect regions on the thumbnail.
    pub boxes: Vec<OverlayBox, MAX_OVERLAY_BOXES>,
}

impl Default for ScreenState {
    fn default() -> Self {
        ScreenState {
            station: String::new(),
            model: String::new(),
            uptime_s: 0,
            outcome: ScreenOutcome::Waiting,
            class: String::new(),
            score: -1.0,
            inspected: 0,
            rejected: 0,
            yield_percent: 0.0,
            per_class: Vec::new(),
            items_per_min: 0.0,
            latency_ms_p50: 0.0,
            latency_ms_p99: 0.0,
            faults: 0,
            thumb_w: 0,
            thumb_h: 0,
            thumb: [0; THUMB_MAX_W * THUMB_MAX_H],
            boxes: Vec::new(),
        }
    }
}

/// Copy `s` into a fixed string, cutting it at a character boundary if it is too long.
pub fn set_text<const N: usize>(dst: &mut String<N>, s: &str) {
    dst.clear();
    for c in s.chars() {
        if dst.push(c).is_err() {
            break;
        }
    }
}

impl ScreenState {
    /// Shrink a gray frame (`stride` bytes per row) into the thumbnail, keeping its aspect,
    /// by averaging each thumbnail pixel's source block (box filter; no allocation).
    pub fn set_thumbnail(&mut self, frame: &[u8], width: usize, height: usize, stride: usize) {
        if width == 0 || height == 0 || frame.len() < stride * (height - 1) + width {
            self.thumb_w = 0;
            self.thumb_h = 0;
            return;
        }
        let scale_num = (THUMB_MAX_W * height).min(THUMB_MAX_H * width);
        // Thumbnail size = source size * min(TW/w, TH/h), never upscaled.
        let (tw, th) = if width <= THUMB_MAX_W && height <= THUMB_MAX_H {
            (width, height)
        } else if THUMB_MAX_W * height <= THUMB_MAX_H * width {
            (THUMB_MAX_W, (height * THUMB_MAX_W / width).max(1))
        } else {
            ((width * THUMB_MAX_H / height).max(1), THUMB_MAX_H)
        };
        let _ = scale_num;
        for ty in 0..th {
            let y0 = ty * height / th;
            let y1 = ((ty + 1) * height / th).max(y0 + 1);
            for tx in 0..tw {
                let x0 = tx * width / tw;
                let x1 = ((tx + 1) * width / tw).max(x0 + 1);
                // Sample at most 4x4 points of the block: enough for a thumbnail, bounded work.
                let (sy, sx) = (((y1 - y0) / 4).max(1), ((x1 - x0) / 4).max(1));
                let (mut sum, mut n) = (0u32, 0u32);
                let mut y = y0;
                while y < y1 {
                    let row = &frame[y * stride..y * stride + width];
                    let mut x = x0;
                    while x < x1 {
                        sum += row[x] as u32;
                        n += 1;
                        x += sx;
                    }
                    y += sy;
                }
                self.thumb[ty * tw + tx] = (sum / n.max(1)) as u8;
            }
        }
        self.thumb_w = tw as u16;
        self.thumb_h = th as u16;
    }

    /// Add a defect box given in frame pixels (`x0, y0` inclusive, `x1, y1` exclusive) of a
    /// `width × height` frame, scaled to the current thumbnail. Ignored when full or no
    /// thumbnail is set.
    pub fn add_frame_box(&mut self, x0: u32, y0: u32, x1: u32, y1: u32, width: usize, height: usize) {
        if self.thumb_w == 0 || width == 0 || height == 0 {
            return;
        }
        let (tw, th) = (self.thumb_w as u64, self.thumb_h as u64);
        let sx = |x: u32| ((x as u64 * tw) / width as u64).min(tw) as u16;
        let sy = |y: u32| ((y as u64 * th) / height as u64).min(th) as u16;
        let (bx0, by0) = (sx(x0), sy(y0));
        let (bx1, by1) = (sx(x1).max(bx0 + 1), sy(y1).max(by0 + 1));
        let _ = self.boxes.push(OverlayBox {
            x: bx0,
            y: by0,
            w: bx1 - bx0,
            h: by1 - by0,
        });
    }
}

/// Draws into `target` with each pixel an `n` x `n` block: big legible text from the
/// built-in fonts.
struct Scaled<'a, D> {
    target: &'a mut D,
    n: i32,
    origin: Point,
}

impl<D: DrawTarget<Color = Rgb565>> OriginDimensions for Scaled<'_, D> {
    fn size(&self) -> Size {
        let s = self.target.bounding_box().size;
        Size::new(s.width / self.n as u32, s.height / self.n as u32)
    }
}

impl<D: DrawTarget<Color = Rgb565>> DrawTarget for Scaled<'_, D> {
    type Color = Rgb565;
    type Error = D::Error;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb565>>>(&mut self, pixels: I) -> Result<(), D::Error> {
        let n = self.n;
        for Pixel(p, c) in pixels {
            let r = Rectangle::new(
                self.origin + Point::new(p.x * n, p.y * n),
                Size::new(n as u32, n as u32),
            );
            self.target.fill_solid(&r, c)?;
        }
        Ok(())
    }
}

/// Which layout a size uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Layout {
    /// 320x240 and other small panels.
    Small,
    /// 800x480 and larger.
    Large,
}

impl Layout {
    /// The layout for a `width` x `height` screen.
    pub fn for_size(width: u32, height: u32) -> Layout {
        if width >= 640 && height >= 400 {
            Layout::Large
        } else {
            Layout::Small
        }
    }
}

struct Geometry {
    font: &'static MonoFont<'static>,
    small: &'static MonoFont<'static>,
    bar_h: i32,
    big: i32,
    banner: Rectangle,
    class_line: Point,
    thumb: Rectangle,
    counters: Rectangle,
    strip: Rectangle,
}

fn geometry(size: Size) -> Geometry {
    let (w, h) = (size.width as i32, size.height as i32);
    match Layout::for_size(size.width, size.height) {
        Layout::Large => {
            let bar_h = 40;
            let strip_h = 56;
            Geometry {
                font: &FONT_10X20,
                small: &FONT_10X20,
                bar_h,
                big: 4,
                banner: Rectangle::new(Point::new(0, bar_h), Size::new((w / 2) as u32, 190)),
                class_line: Point::new(16, bar_h + 140),
                thumb: Rectangle::new(Point::new(w / 2 + 8, bar_h + 8), Size::new((w / 2 - 16) as u32, 276)),
                counters: Rectangle::new(
                    Point::new(0, bar_h + 190),
                    Size::new((w / 2) as u32, (h - bar_h - 190 - strip_h) as u32),
                ),
                strip: Rectangle::new(Point::new(0, h - strip_h), Size::new(w as u32, strip_h as u32)),
            }
        }
        Layout::Small => {
            let bar_h = 14;
            let strip_h = 24;
            let banner_h = 92;
            Geometry {
                font: &FONT_10X20,
                small: &FONT_6X10,
                bar_h,
                big: 3,
                banner: Rectangle::new(Point::new(0, bar_h), Size::new(w as u32, banner_h as u32)),
                class_line: Point::new(6, bar_h + 68),
                thumb: Rectangle::new(
                    Point::new(w - 124, bar_h + banner_h + 4),
                    Size::new(120, (h - bar_h - banner_h - strip_h - 8) as u32),
                ),
                counters: Rectangle::new(
                    Point::new(0, bar_h + banner_h),
                    Size::new((w - 128) as u32, (h - bar_h - banner_h - strip_h) as u32),
                ),
                strip: Rectangle::new(Point::new(0, h - strip_h), Size::new(w as u32, strip_h as u32)),
            }
        }
    }
}

const BACKGROUND: Rgb565 = Rgb565::new(2, 4, 3);
const BAR: Rgb565 = Rgb565::new(5, 10, 7);
const TEXT: Rgb565 = Rgb565::WHITE;
const DIM: Rgb565 = Rgb565::new(22, 44, 22);
const FAULT_STRIP: Rgb565 = Rgb565::new(24, 0, 0);
const HEALTHY_STRIP: Rgb565 = Rgb565::new(1, 18, 3);

fn text<D: DrawTarget<Color = Rgb565>>(
    t: &mut D,
    s: &str,
    at: Point,
    font: &'static MonoFont<'static>,
    colour: Rgb565,
) -> Result<(), D::Error> {
    Text::with_baseline(s, at, MonoTextStyle::new(font, colour), Baseline::Top)
        .draw(t)
        .map(|_| ())
}

fn fmt_uptime(s: u64) -> String<16> {
    let mut o = String::new();
    let _ = write!(o, "{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    o
}

/// Draw the whole screen.
pub fn draw<D: DrawTarget<Color = Rgb565>>(s: &ScreenState, t: &mut D) -> Result<(), D::Error> {
    let size = t.bounding_box().size;
    let g = geometry(size);
    t.clear(BACKGROUND)?;
    // Top bar: station, model, time since start.
    let bar = Rectangle::new(Point::zero(), Size::new(size.width, g.bar_h as u32));
    t.fill_solid(&bar, BAR)?;
    let pad = (g.bar_h - g.small.character_size.height as i32) / 2;
    text(t, &s.station, Point::new(6, pad), g.small, TEXT)?;
    let up = fmt_uptime(s.uptime_s);
    let cw = g.small.character_size.width as i32;
    let mut line: String<64> = String::new();
    let _ = write!(line, "{}  up {}", s.model, up);
    let x = size.width as i32 - 6 - cw * line.chars().count() as i32;
    text(t, &line, Point::new(x.max(cw * 12), pad), g.small, DIM)?;
    draw_outcome(s, t, &g)?;
    draw_thumbnail(s, t, &g)?;
    draw_counters(s, t)?;
    Ok(())
}

fn draw_outcome<D: DrawTarget<Color = Rgb565>>(s: &ScreenState, t: &mut D, g: &Geometry) -> Result<(), D::Error> {
    t.fill_solid(&g.banner, s.outcome.colour())?;
    let word = s.outcome.word();
    let cw = g.font.character_size.width as i32 * g.big;
    let tw = cw * word.len() as i32;
    let x = g.banner.top_left.x + ((g.banner.size.width as i32 - tw) / 2).max(4);
    let mut big = Scaled {
        target: t,
        n: g.big,
        origin: Point::new(x, g.banner.top_left.y + 6),
    };
    text(&mut big, word, Point::zero(), g.font, s.outcome.ink())?;
    let mut line: String<48> = String::new();
    if !s.class.is_empty() {
        let _ = write!(line, "{}", s.class);
        if s.score >= 0.0 {
            let _ = write!(line, "  {:.2}", s.score);
        }
    }
    let scale = if g.big >= 4 { 2 } else { 1 };
    let mut mid = Scaled {
        target: t,
        n: scale,
        origin: g.class_line,
    };
    text(&mut mid, &line, Point::zero(), g.font, s.outcome.ink())
}

fn draw_thumbnail<D: DrawTarget<Color = Rgb565>>(s: &ScreenState, t: &mut D, g: &Geometry) -> Result<(), D::Error> {
    let area = g.thumb;
    t.fill_solid(&area, Rgb565::BLACK)?;
    let (tw, th) = (s.thumb_w as i32, s.thumb_h as i32);
    if tw == 0 || th == 0 {
        return text(t, "no frame", area.top_left + Point::new(6, 6), g.small, DIM);
    }
    // Fit the thumbnail into the area, nearest-neighbour, centred.
    let (aw, ah) = (area.size.width as i32, area.size.height as i32);
    let (dw, dh) = if aw * th <= ah * tw {
        (aw, (th * aw / tw).max(1))
    } else {
        ((tw * ah / th).max(1), ah)
    };
    let off = area.top_left + Point::new((aw - dw) / 2, (ah - dh) / 2);
    let pixels = (0..dh).flat_map(move |y| {
        let sy = (y * th / dh) as usize;
        (0..dw).map(move |x| {
            let sx = (x * tw / dw) as usize;
            let v = s.thumb[sy * tw as usize + sx];
            Pixel(off + Point::new(x, y), Rgb565::new(v >> 3, v >> 2, v >> 3))
        })
    });
    t.draw_iter(pixels)?;
    // Defect regions, and the outcome colour as the frame's border.
    let sx = |v: u16| v as i32 * dw / tw;
    let sy = |v: u16| v as i32 * dh / th;
    for b in &s.boxes {
        let r = Rectangle::new(
            off + Point::new(sx(b.x), sy(b.y)),
            Size::new(sx(b.w).max(2) as u32, sy(b.h).max(2) as u32),
        );
        r.into_styled(PrimitiveStyle::with_stroke(Rgb565::new(31, 16, 0), 2))
            .draw(t)?;
    }
    Rectangle::new(off - Point::new(2, 2), Size::new(dw as u32 + 4, dh as u32 + 4))
        .into_styled(PrimitiveStyle::with_stroke(s.outcome.colour(), 2))
        .draw(t)?;
    if !s.class.is_empty() && s.outcome != ScreenOutcome::Ok {
        let label = Rectangle::new(
            off,
            Size::new(
                (g.small.character_size.width * s.class.len() as u32 + 6).min(dw as u32),
                g.small.character_size.height + 4,
            ),
        );
        t.fill_solid(&label, s.outcome.colour())?;
        text(t, &s.class, off + Point::new(3, 2), g.small, s.outcome.ink())?;
    }
    Ok(())
}

/// Draw only the counters and the fault strip (the parts that change with every item even
/// when the outcome does not): a partial update. Returns nothing drawn elsewhere.
pub fn draw_counters<D: DrawTarget<Color = Rgb565>>(s: &ScreenState, t: &mut D) -> Result<(), D::Error> {
    let size = t.bounding_box().size;
    let g = geometry(size);
    let area = g.counters;
    t.fill_solid(&area, BACKGROUND)?;
    let font = g.font;
    let lh = font.character_size.height as i32 + if g.big >= 4 { 4 } else { 1 };
    let mut y = area.top_left.y + 4;
    let x = area.top_left.x + 8;
    let mut line: String<64> = String::new();
    let large = g.big >= 4;
    if large {
        let _ = write!(line, "inspected {}  rejected {}", s.inspected, s.rejected);
        text(t, &line, Point::new(x, y), font, TEXT)?;
        y += lh;
        line.clear();
        let _ = write!(line, "yield {:.1} %  {:.0}/min", s.yield_percent, s.items_per_min);
        text(t, &line, Point::new(x, y), font, TEXT)?;
        y += lh;
        line.clear();
        let _ = write!(line, "latency {:.1} / {:.1} ms", s.latency_ms_p50, s.latency_ms_p99);
        text(t, &line, Point::new(x, y), font, DIM)?;
        y += lh;
    } else {
        // Narrow: one number per line, in the big font.
        let _ = write!(line, "{} inspected", s.inspected);
        text(t, &line, Point::new(x, y), font, TEXT)?;
        y += lh;
        line.clear();
        let _ = write!(line, "{} rejected", s.rejected);
        text(t, &line, Point::new(x, y), font, TEXT)?;
        y += lh;
        line.clear();
        let _ = write!(
            line,
            "yield {:.1}%  {:.0}/min  {:.1}/{:.1}ms",
            s.yield_percent, s.items_per_min, s.latency_ms_p50, s.latency_ms_p99
        );
        text(t, &line, Point::new(x, y), g.small, DIM)?;
        y += g.small.character_size.height as i32 + 3;
    }
    // Rejects per class, two columns, as many as fit.
    let small = g.small;
    let sh = small.character_size.height as i32 + 2;
    let col_w = area.size.width as i32 / 2;
    let rows = ((area.top_left.y + area.size.height as i32 - y) / sh).max(0);
    let col_chars = (col_w as usize / small.character_size.width as usize).saturating_sub(1);
    for (i, (name, n)) in s.per_class.iter().enumerate() {
        let (col, row) = (i as i32 / rows.max(1), i as i32 % rows.max(1));
        if col > 1 {
            break;
        }
        let mut count: String<24> = String::new();
        let _ = write!(count, " {n}");
        // Cut long class names so the count always shows.
        let keep = col_chars.saturating_sub(count.len()).min(name.len());
        line.clear();
        let _ = line.push_str(name.get(..keep).unwrap_or(name));
        let _ = line.push_str(&count);
        text(t, &line, Point::new(x + col * col_w, y + row * sh), small, DIM)?;
    }
    // Fault strip.
    let strip = g.strip;
    if s.faults == 0 {
        t.fill_solid(&strip, HEALTHY_STRIP)?;
        let ty = strip.top_left.y + (strip.size.height as i32 - font.character_size.height as i32) / 2;
        text(t, "no faults", Point::new(8, ty), font, TEXT)?;
    } else {
        t.fill_solid(&strip, FAULT_STRIP)?;
        let mut words: String<128> = String::new();
        for (bit, w) in fault::WORDS {
            if s.faults & bit != 0 {
                if !words.is_empty() {
                    let _ = words.push_str(" | ");
                }
                let _ = words.push_str(w);
            }
        }
        // One line in the strip's font, or two in the small font if the words need them.
        let mut font = font;
        let mut per_line = (strip.size.width as usize - 16) / font.character_size.width as usize;
        if words.len() > per_line {
            font = small;
            per_line = (strip.size.width as usize - 16) / font.character_size.width as usize;
        }
        let fh = font.character_size.height as i32;
        let lines = if words.len() > per_line { 2 } else { 1 };
        let mut ty = strip.top_left.y + (strip.size.height as i32 - fh * lines) / 2;
        let (a, b) = words.split_at(words.len().min(per_line));
        text(t, a, Point::new(8, ty), font, TEXT)?;
        if !b.is_empty() {
            ty += fh;
            text(t, b, Point::new(8, ty), font, TEXT)?;
        }
    }
    Ok(())
}

/// The region [`draw_counters`] repaints (for a partial flush).
pub fn counters_region(size: Size) -> Rectangle {
    let g = geometry(size);
    let top = g.counters.top_left.y;
    Rectangle::new(Point::new(0, top), Size::new(size.width, size.height - top as u32))
}
