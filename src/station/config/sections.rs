//! The sections of a station configuration, as they are in the file: one struct per
//! `[section]`, field names and units as written.
//!
//! Guarantees:
//! - every struct refuses unknown fields, so a typo is an error naming it, never a silent
//!   default;
//! - defaults are written once, here, next to the field they belong to;
//! - nothing here checks values against each other: [`super::StationConfig::parse`] does.

use std::path::PathBuf;

use serde::Deserialize;

/// `[station]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationSection {
    /// Station name (shown on screen, used in event topics).
    pub name: String,
    /// The name of the product the profile's own `[tool]`, `[decision]` and ejector routing
    /// inspect: recipe 0. `[[recipes]]` add the others.
    #[serde(default = "default_recipe")]
    pub recipe: String,
    /// The local control socket `ferroscope recipe` talks to (default: `ferroscope-<station
    /// name>.sock` in `$RUNTIME_DIRECTORY`, `$XDG_RUNTIME_DIR` or `/tmp`). Only the station's
    /// user (and root) may connect.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
}

fn default_recipe() -> String {
    "default".into()
}

/// `[[recipes]]`: a product the station can switch to while running. Its `[recipes.tool]`
/// and `[recipes.decision]` replace the profile's `[tool]` and `[decision]` whole; its
/// `[recipes.segment]` (or `[recipes.anomaly]`) the calibration; its `[[recipes.routes]]`
/// which rejects each of the profile's ejectors takes. The ejectors themselves (where they
/// are, how long they pulse) and the fail-safe belong to the line, not to the product.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeSection {
    /// The product's name (unique in the profile; shown on screen, named by every record).
    pub name: String,
    /// The tool and model.
    pub tool: ToolSection,
    /// The decision rules (`failsafe`, when given, must be the profile's).
    pub decision: DecisionSection,
    /// Calibration and region rules of the segment tool.
    #[serde(default)]
    pub segment: Option<SegmentSection>,
    /// The same for the anomaly tool.
    #[serde(default)]
    pub anomaly: Option<SegmentSection>,
    /// Which rejects each ejector takes for this product; none: the profile's `[[ejectors]]`
    /// routing. Ejectors not named here take nothing.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
}

/// `[[recipes.routes]]`: the rejects one ejector takes for a recipe.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The ejector, by its `[[ejectors]]` name.
    pub ejector: String,
    /// Reject classes it takes (`["*"]`: every reject class not taken by an earlier one).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Takes items rejected as uncertain.
    #[serde(default)]
    pub uncertain: bool,
    /// Takes items rejected by the fail-safe.
    #[serde(default)]
    pub failsafe: bool,
}

/// `[camera]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSection {
    /// `replay` (a folder or list of images) or `v4l2` (a live camera).
    pub source: String,
    /// Replay: folder or list file.
    #[serde(default)]
    pub path: PathBuf,
    /// Replay: frames per second.
    #[serde(default)]
    pub rate_fps: f32,
    /// Replay: passes over the set; 0 = forever.
    #[serde(default = "one")]
    pub loops: u32,
    /// Replay: faults to inject (`[camera.faults]`).
    #[serde(default)]
    pub faults: Option<ReplayFaultsSection>,
    /// V4L2: device node, e.g. `/dev/video0`.
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// V4L2: pixel format, `grey`, `yuyv`, `rgb24` or `mjpeg`.
    #[serde(default)]
    pub format: Option<String>,
    /// V4L2: width in pixels.
    #[serde(default)]
    pub width: Option<u32>,
    /// V4L2: height in pixels.
    #[serde(default)]
    pub height: Option<u32>,
    /// V4L2: frames per second to ask the driver for (default: the driver's).
    #[serde(default)]
    pub fps: Option<f32>,
    /// V4L2: MMAP buffers (2..=8).
    #[serde(default = "four")]
    pub buffers: u32,
    /// A capture with no frame for this long is a camera timeout fault.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    /// `free_run`, `software` (each `[inputs.trigger]` edge takes the first frame after it)
    /// or `external` (the camera's own trigger input; one frame per `[inputs.trigger]` edge).
    #[serde(default = "free_run")]
    pub trigger: String,
    /// V4L2, `trigger = "external"`: the driver control that enables the camera's trigger.
    #[serde(default)]
    pub external_trigger_control: Option<String>,
    /// Value written to `external_trigger_control`.
    #[serde(default = "one_i64")]
    pub external_trigger_value: i64,
    /// V4L2: driver controls by name, e.g. `exposure_time_absolute = 100`, `gain = 8`
    /// (`ferroscope camera probe` lists them).
    #[serde(default)]
    pub controls: std::collections::BTreeMap<String, i64>,
}

/// `[camera.faults]`: faults a replay injects, to rehearse the station's fail-safe.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFaultsSection {
    /// Seed of the fault sequence.
    #[serde(default)]
    pub seed: u64,
    /// Fraction of frames dropped (a gap in the sequence numbers).
    #[serde(default)]
    pub drop_fraction: f32,
    /// Fraction of frames delivered corrupt (a JPEG cut short or without its start marker).
    #[serde(default)]
    pub corrupt_fraction: f32,
    /// Seconds after the first frame when the camera disconnects.
    #[serde(default)]
    pub disconnect_after_s: Option<f32>,
    /// Seconds it stays away.
    #[serde(default)]
    pub disconnect_for_s: f32,
    /// Seconds from one disconnect to the next (none: once).
    #[serde(default)]
    pub disconnect_every_s: Option<f32>,
}

fn four() -> u32 {
    4
}

fn default_timeout_ms() -> u32 {
    500
}

fn free_run() -> String {
    "free_run".into()
}

fn one_i64() -> i64 {
    1
}

fn one() -> u32 {
    1
}

/// `[tool]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSection {
    /// `classify`, `segment` or `anomaly`.
    pub kind: String,
    /// Model manifest.
    pub manifest: PathBuf,
    /// `int8` (default) or `f32`.
    #[serde(default)]
    pub precision: Option<String>,
}

/// `[segment]` (segment tool) or `[anomaly]` (anomaly tool): calibration and region rules.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSection {
    /// Millimetres on the part per frame pixel (the camera's calibration).
    #[serde(default)]
    pub mm_per_px: Option<f32>,
    /// A region longer than this along its major axis rejects, mm.
    #[serde(default)]
    pub reject_if_length_mm_over: Option<f32>,
    /// A region larger than this rejects, mm².
    #[serde(default)]
    pub reject_if_area_mm2_over: Option<f32>,
    /// `head` (the model's decision), `rules` (the region rules) or `either` (default).
    #[serde(default)]
    pub decide_by: Option<String>,
}

/// `[decision]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSection {
    /// Classes whose detection rejects the item.
    pub reject_classes: Vec<String>,
    /// Classes whose detection accepts it.
    #[serde(default)]
    pub accept_classes: Vec<String>,
    /// Per-class score thresholds overriding the manifest's.
    #[serde(default)]
    pub min_score: std::collections::BTreeMap<String, f32>,
    /// `reject` or `accept` when no head is confident.
    pub uncertain: String,
    /// When no valid decision exists in time: `reject` (the ejector with `failsafe = true`),
    /// `accept`, or `line_stop` (assert the line-stop output).
    #[serde(default = "reject")]
    pub failsafe: String,
    /// A decision later than this after capture is void; the fail-safe applies.
    pub decision_deadline_ms: u32,
}

fn reject() -> String {
    "reject".into()
}

/// `[conveyor]`: how the belt's position is known.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConveyorSection {
    /// Belt speed (speed mode). Leave out when an encoder reports the belt's travel.
    #[serde(default)]
    pub belt_speed_mm_per_s: Option<f32>,
    /// Encoder counts per millimetre of belt travel (encoder mode; needs `inputs.encoder`).
    #[serde(default)]
    pub encoder_counts_per_mm: Option<f32>,
}

/// One GPIO line: offset on the section's chip, and polarity.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GpioLineSection {
    /// Line offset on the chip.
    pub line: u32,
    /// Active when low (e.g. a sinking driver or a normally-closed sensor).
    #[serde(default)]
    pub active_low: bool,
}

/// `[[ejectors]]`: one per actuator.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EjectorSection {
    /// Name shown on screen and in logs.
    pub name: String,
    /// Camera optical axis (or trigger sensor) to this ejector, along the belt.
    pub ejector_distance_mm: f32,
    /// Actuator on-time per item, centred on the item's arrival.
    pub pulse_width_ms: f32,
    /// Shortest off-time between two pulses.
    pub min_gap_ms: f32,
    /// `extend` (closer rejects share one longer pulse) or `clip` (the later pulse starts
    /// after the gap).
    #[serde(default = "extend")]
    pub merge: String,
    /// Reject classes this ejector takes; `["*"]` (the default) takes every reject class not
    /// taken by an earlier ejector.
    #[serde(default = "star")]
    pub classes: Vec<String>,
    /// Takes items rejected as uncertain.
    #[serde(default)]
    pub uncertain: bool,
    /// Takes items rejected by the fail-safe.
    #[serde(default)]
    pub failsafe: bool,
    /// The actuator's GPIO line on `outputs.gpio_chip` (backend `gpio`).
    #[serde(default)]
    pub gpio: Option<GpioLineSection>,
}

fn extend() -> String {
    "extend".into()
}

fn star() -> Vec<String> {
    vec!["*".into()]
}

/// `[outputs]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSection {
    /// `recording` (timeline in memory, no hardware) or `gpio` (character-device GPIO lines,
    /// also recorded).
    pub backend: String,
    /// The GPIO chip of the output lines, e.g. `/dev/gpiochip0` (backend `gpio`).
    #[serde(default)]
    pub gpio_chip: Option<PathBuf>,
    /// Heartbeat half-period while healthy.
    pub heartbeat_period_ms: u32,
    /// After a fault the heartbeat holds inactive this long.
    #[serde(default = "fault_hold")]
    pub fault_hold_ms: u32,
    /// The heartbeat/ready line (backend `gpio`; optional).
    #[serde(default)]
    pub heartbeat: Option<GpioLineSection>,
    /// The line-stop line (backend `gpio`; needed when `decision.failsafe = "line_stop"`).
    #[serde(default)]
    pub line_stop: Option<GpioLineSection>,
    /// The reject co-processor's serial line (backend `coprocessor`).
    #[serde(default)]
    pub coprocessor: Option<CoprocessorSection>,
}

/// `[outputs.coprocessor]`: the reject co-processor that fires the pulses
/// (`docs/integrators/coprocessor.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoprocessorSection {
    /// Its serial line, e.g. `/dev/ttyAMA0`.
    pub device: PathBuf,
    /// Line speed, Bd (8N1).
    #[serde(default = "coprocessor_baud")]
    pub baud: u32,
    /// The co-processor counts the link lost (and fires undecided items by the fail-safe)
    /// after this long without a frame from the station.
    #[serde(default = "coprocessor_link_timeout")]
    pub link_timeout_ms: u16,
}

fn coprocessor_baud() -> u32 {
    921_600
}

fn coprocessor_link_timeout() -> u16 {
    50
}

fn fault_hold() -> u32 {
    2000
}

/// An input edge line.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputLineSection {
    /// Line offset on `inputs.gpio_chip`.
    pub line: u32,
    /// Active when low.
    #[serde(default)]
    pub active_low: bool,
    /// Count both edges (doubles the encoder resolution; `encoder_counts_per_mm` counts edges).
    #[serde(default)]
    pub both_edges: bool,
    /// Kernel debounce period (0 = none).
    #[serde(default)]
    pub debounce_ms: f32,
    /// `inputs.backend = "sim"` only: a simulated sensor (or encoder) with one edge every
    /// this many ms.
    #[serde(default)]
    pub period_ms: Option<f32>,
    /// `[inputs.encoder]` only: channel B's line. With it the encoder is quadrature: every
    /// edge of either channel is one count, forward or back by the direction (A leading B is
    /// forward). Without it (the default), single channel: each counted edge of A is one
    /// count forward.
    #[serde(default)]
    pub line_b: Option<u32>,
    /// `[inputs.encoder]` only: a part-present edge after this long without a count finds
    /// the encoder standing still: a fault, and the fail-safe for every item in flight.
    /// None (the default): not checked.
    #[serde(default)]
    pub standstill_ms: Option<f32>,
}

/// `[inputs]` (optional): encoder and part-present trigger.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InputsSection {
    /// `gpio` (default: character-device lines) or `sim` (a part-present sensor simulated
    /// on the station's clock, one edge every `period_ms`, for rehearsing trigger modes).
    #[serde(default)]
    pub backend: Option<String>,
    /// The GPIO chip of the input lines.
    #[serde(default)]
    pub gpio_chip: Option<PathBuf>,
    /// Encoder channel A: each counted edge is `1 / encoder_counts_per_mm` of belt travel.
    #[serde(default)]
    pub encoder: Option<InputLineSection>,
    /// Part-present sensor: each active edge starts an item (instead of each frame).
    #[serde(default)]
    pub trigger: Option<InputLineSection>,
}

/// `[display]` (optional; absent = headless): the technician's screen.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplaySection {
    /// `none`, `png` (snapshots to `path`), `fb` (Linux framebuffer), `st7789` or `ili9341`
    /// (SPI panels).
    pub backend: String,
    /// Width, pixels (png; fb and SPI panels report their own).
    #[serde(default = "w800")]
    pub width: u32,
    /// Height, pixels.
    #[serde(default = "h480")]
    pub height: u32,
    /// Redraws per second at most.
    #[serde(default = "five")]
    pub refresh_hz: f32,
    /// png: the file written; fb: the device (default `/dev/fb0`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// SPI: spidev node, e.g. `/dev/spidev0.0`.
    #[serde(default)]
    pub spi_device: Option<PathBuf>,
    /// SPI clock, Hz.
    #[serde(default = "spi_hz")]
    pub spi_hz: u32,
    /// SPI: GPIO chip of the D/C and reset lines.
    #[serde(default)]
    pub gpio_chip: Option<PathBuf>,
    /// SPI: D/C line offset.
    #[serde(default)]
    pub dc_line: Option<u32>,
    /// SPI: reset line offset (absent: tied high).
    #[serde(default)]
    pub reset_line: Option<u32>,
    /// SPI: rotation, degrees (90 or 270: landscape 320x240).
    #[serde(default = "r90")]
    pub rotation_deg: u32,
    /// SPI: invert colours (most ST7789 IPS modules).
    #[serde(default)]
    pub invert: bool,
}

fn w800() -> u32 {
    800
}

fn h480() -> u32 {
    480
}

fn five() -> f32 {
    5.0
}

fn spi_hz() -> u32 {
    40_000_000
}

fn r90() -> u32 {
    90
}

/// `[realtime]`: scheduling of the threads that place the reject pulses. Each setting the
/// process is not allowed (no `CAP_SYS_NICE`, `RLIMIT_RTPRIO` or `RLIMIT_MEMLOCK`) is a
/// warning, and the station runs without it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RealtimeSection {
    /// `SCHED_FIFO` priority of the actuator thread, 1–99 (none: normal scheduling).
    #[serde(default)]
    pub actuator_priority: Option<u8>,
    /// `SCHED_FIFO` priority of the input (encoder, trigger) threads, 1–99.
    #[serde(default)]
    pub input_priority: Option<u8>,
    /// CPUs the actuator and input threads run on (none: any).
    #[serde(default)]
    pub cpus: Vec<usize>,
    /// CPUs the frame loop runs on, with the model and every thread it starts (records,
    /// screen, MQTT, output lines); none: any. Kept apart from `cpus`, no kernel work of
    /// theirs (reads, page faults, frees) can hold up a pulse: the kernels the boards run do
    /// not preempt kernel code, so a wake-up waits for it on a shared CPU.
    #[serde(default)]
    pub frame_cpus: Vec<usize>,
    /// Lock the process's memory (`mlockall`) once the model is loaded: no page fault on the
    /// pulse path.
    #[serde(default)]
    pub lock_memory: bool,
    /// Hold the CPUs' wake-up latency at or under this while the station runs (PM QoS,
    /// `/dev/cpu_dma_latency`): no deep idle state whose wake-up would delay an edge. 0 keeps
    /// them awake, which costs power. None: the kernel's default.
    #[serde(default)]
    pub cpu_latency_us: Option<u32>,
    /// The actuator sleeps to this long before an edge, then spins to it, µs (0–1000).
    #[serde(default = "spin_us")]
    pub spin_us: u32,
}

/// The default spin: longer than a CPU's wake-up from idle, which a sleep cannot beat (up to
/// about 700 µs measured on a virtual machine, tens of µs on the boards); it costs that much
/// CPU per edge (0.7 % at 10 items/s).
fn spin_us() -> u32 {
    300
}

/// `[modbus]`: the PLC's Modbus TCP server ([`crate::plc::modbus`]). No section, no port.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModbusSection {
    /// Address and port to listen on, e.g. `"127.0.0.1:1502"` (this machine only) or
    /// `"0.0.0.0:502"` (every interface; port 502 needs `CAP_NET_BIND_SERVICE`).
    pub listen: String,
    /// The PLC's software trigger (coil 1) is the part-present signal: each write of 1 is a
    /// trigger edge at that moment. Needs `camera.trigger = "software"` and no
    /// `[inputs.trigger]`.
    #[serde(default)]
    pub software_trigger: bool,
}

/// `[opcua]`: the OPC UA server (a vision system after OPC 40100).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaSection {
    /// Address and port, e.g. `"127.0.0.1:4840"` (this machine only) or `"0.0.0.0:4840"`.
    pub listen: String,
    /// Sessions without a user name (default off).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Users who may open a session.
    #[serde(default)]
    pub users: Vec<OpcuaUserSection>,
    /// The server's certificate and key (made on first start) and the trusted client
    /// certificates (`trusted/`); default `opcua-pki` in the records folder, else a folder
    /// under `/tmp` named after the station.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// Trust every client certificate (default off: only those in the PKI's `trusted/`; a
    /// refused one is kept in its `rejected/`).
    #[serde(default)]
    pub trust_client_certs: bool,
}

/// `[[opcua.users]]`: one user name and its password.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaUserSection {
    /// User name.
    pub user: String,
    /// Password (or `password_file`).
    #[serde(default)]
    pub password: Option<String>,
    /// A file whose first line is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}
