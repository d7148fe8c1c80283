//! Station configuration (`boards/*.toml`): the camera, the tool, the decision rules, the
//! conveyor geometry and the outputs. Units are in the field names. Unknown fields are
//! errors, so a typo never silently falls back to a default. Paths are relative to the file.
//!
//! Guarantees:
//! - [`StationConfig::parse`] checks every field and every field against the others before
//!   the station opens anything; each error names the file and the field;
//! - relative paths in a profile resolve against the profile's folder, never the current
//!   directory ([`StationConfig::resolve`]);
//! - the profile a command runs with is found by one documented order ([`find_profile`]):
//!   `--config`, `$FERROSCOPE_CONFIG`, [`SYSTEM_PROFILE`], then [`LOCAL_PROFILE`] under the
//!   current directory; when none exists, the error names every place searched;
//! - the sections ([`sections`]) and the `[board]` section ([`super::board`]) know nothing of
//!   this file: the imports go one way.

pub mod profile;
pub mod sections;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;

use super::board::BoardSection;
use crate::core::decision::{Action, ClassRule, DecisionRules};
use crate::core::pixel::{OutputFormat, PixelFormat};
use crate::core::reject::{EjectorConfig, FailSafePolicy, MergePolicy, OutcomeSet, MAX_EJECTORS};
use crate::drivers::v4l2::{TriggerMode, V4l2Config, MAX_V4L2_BUFFERS};
use crate::model::manifest::{Manifest, Precision};
use crate::sim::replay::FaultPlan;
pub use profile::{find_profile, search_profile, ProfileSource, LOCAL_PROFILE, PROFILE_ENV, SYSTEM_PROFILE};
pub use sections::*;

/// The shipped host simulation in this source tree, by its absolute path at build time: for
/// tests and examples built from the tree. The binary does not use it; it finds its profile
/// with [`find_profile`].
pub const DEFAULT_CONFIG_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/boards/host-sim.toml");

/// Recipes in one profile at most, its own included: a holding register's worth of products
/// is far more than a line changes between, and the recipe index fits a record's byte.
pub const MAX_RECIPES: usize = 32;

/// Longest recipe name, bytes: it fits the screen's model line beside the model.
pub const MAX_RECIPE_NAME: usize = 24;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// `[board]`: the hardware and OS a profile is written for (optional).
    #[serde(default)]
    pub board: Option<BoardSection>,
    /// `[station]`.
    pub station: StationSection,
    /// `[camera]`.
    pub camera: CameraSection,
    /// `[tool]`.
    pub tool: ToolSection,
    /// `[decision]`.
    pub decision: DecisionSection,
    /// `[conveyor]`.
    pub conveyor: ConveyorSection,
    /// `[[ejectors]]`.
    pub ejectors: Vec<EjectorSection>,
    /// `[outputs]`.
    pub outputs: OutputsSection,
    /// `[inputs]`.
    #[serde(default)]
    pub inputs: InputsSection,
    /// `[display]`.
    #[serde(default)]
    pub display: Option<DisplaySection>,
    /// `[segment]`.
    #[serde(default)]
    pub segment: Option<SegmentSection>,
    /// `[anomaly]`: the same fields as `[segment]`, for the anomaly tool.
    #[serde(default)]
    pub anomaly: Option<SegmentSection>,
    /// `[records]`: counters and the decision log on disk.
    #[serde(default)]
    pub records: Option<crate::records::RecordsSection>,
    /// `[archive]`: images of rejected items.
    #[serde(default)]
    pub archive: Option<crate::records::ArchiveSection>,
    /// `[mqtt]`: events to a broker.
    #[serde(default)]
    pub mqtt: Option<crate::records::MqttSection>,
    /// `[realtime]`: scheduling of the actuator and input threads.
    #[serde(default)]
    pub realtime: RealtimeSection,
    /// `[modbus]`: the PLC's Modbus TCP server.
    #[serde(default)]
    pub modbus: Option<ModbusSection>,
    /// `[opcua]`: the OPC UA server.
    #[serde(default)]
    pub opcua: Option<OpcuaSection>,
    /// `[[recipes]]`: the other products the station can switch to while running (recipe 0
    /// is the profile's own `[tool]` and `[decision]`, named `station.recipe`).
    #[serde(default)]
    pub recipes: Vec<RecipeSection>,
    /// Where it was read from; relative paths resolve against its folder.
    #[serde(skip)]
    pub path: PathBuf,
}

fn action(v: &str, p: &Path, field: &str) -> Result<Action> {
    match v {
        "reject" => Ok(Action::Reject),
        "accept" => Ok(Action::Accept),
        other => bail!(
            "{}: field `{field}` is \"{other}\"; allowed: \"reject\", \"accept\"",
            p.display()
        ),
    }
}

impl StationConfig {
    /// The map tools' calibration and region rules (`[segment]`, or `[anomaly]` for the
    /// anomaly tool; defaults without it).
    pub fn segment_rules(&self) -> Result<crate::tools::segment::SegmentRules> {
        use crate::tools::segment::{DecideBy, SegmentRules};
        let (section, name) = if self.tool.kind == "anomaly" {
            (&self.anomaly, "anomaly")
        } else {
            (&self.segment, "segment")
        };
        let Some(s) = section else {
            return Ok(SegmentRules::default());
        };
        let p = self.path.display();
        let decide_by = match s.decide_by.as_deref().unwrap_or("either") {
            "head" => DecideBy::Head,
            "rules" => DecideBy::Rules,
            "either" => DecideBy::Either,
            other => bail!("{p}: field `{name}.decide_by` is \"{other}\"; allowed: \"head\", \"rules\", \"either\""),
        };
        let r = SegmentRules {
            mm_per_px: s.mm_per_px,
            reject_if_length_mm_over: s.reject_if_length_mm_over,
            reject_if_area_mm2_over: s.reject_if_area_mm2_over,
            decide_by,
        };
        r.check(&format!("{p}: `[{name}]`"))?;
        Ok(r)
    }

    fn check_camera(&self) -> Result<()> {
        let p = self.path.display();
        let c = &self.camera;
        match c.source.as_str() {
            "replay" => {
                if c.path.as_os_str().is_empty() {
                    bail!("{p}: `camera.source = \"replay\"` needs field `camera.path`");
                }
                if !(c.rate_fps > 0.0 && c.rate_fps <= 10_000.0) {
                    bail!("{p}: field `camera.rate_fps` must be in (0, 10000]");
                }
                if let Some(f) = &c.faults {
                    for (name, v) in [
                        ("drop_fraction", f.drop_fraction),
                        ("corrupt_fraction", f.corrupt_fraction),
                    ] {
                        if !(0.0..=1.0).contains(&v) {
                            bail!("{p}: field `camera.faults.{name}` must be in [0, 1]");
                        }
                    }
                    let ok = |s: f32| s.is_finite() && s >= 0.0;
                    if f.disconnect_after_s.is_some_and(|s| !ok(s)) || !ok(f.disconnect_for_s) {
                        bail!("{p}: fields `camera.faults.disconnect_after_s` and `disconnect_for_s` must be >= 0");
                    }
                    if let Some(every) = f.disconnect_every_s {
                        if !(every.is_finite() && every > f.disconnect_for_s) || f.disconnect_after_s.is_none() {
                            bail!(
                                "{p}: field `camera.faults.disconnect_every_s` is {every}; it needs `disconnect_after_s` and must be longer than `disconnect_for_s` ({})",
                                f.disconnect_for_s
                            );
                        }
                    }
                }
            }
            "v4l2" => {
                if c.device.is_none() {
                    bail!("{p}: `camera.source = \"v4l2\"` needs field `camera.device` (e.g. \"/dev/video0\")");
                }
                let fmt = c.format.as_deref().unwrap_or("");
                let Some(format) = PixelFormat::from_name(fmt) else {
                    bail!("{p}: field `camera.format` is \"{fmt}\"; allowed: \"grey\", \"yuyv\", \"rgb24\", \"mjpeg\"");
                };
                match (c.width, c.height) {
                    (Some(w), Some(h)) if w > 0 && h > 0 && w <= 16384 && h <= 16384 => {
                        if format == PixelFormat::Yuyv && w % 2 != 0 {
                            bail!("{p}: field `camera.width` must be even for yuyv");
                        }
                    }
                    _ => bail!(
                        "{p}: `camera.source = \"v4l2\"` needs fields `camera.width` and `camera.height` (1..=16384)"
                    ),
                }
                if c.fps.is_some_and(|f| !(f > 0.0 && f <= 1000.0)) {
                    bail!("{p}: field `camera.fps` must be in (0, 1000]");
                }
                if !(2..=MAX_V4L2_BUFFERS).contains(&c.buffers) {
                    bail!("{p}: field `camera.buffers` must be in 2..={MAX_V4L2_BUFFERS}");
                }
                if c.faults.is_some() {
                    bail!("{p}: `[camera.faults]` is for replays only");
                }
            }
            other => bail!("{p}: field `camera.source` is \"{other}\"; allowed: \"replay\", \"v4l2\""),
        }
        if !(10..=60_000).contains(&c.timeout_ms) {
            bail!("{p}: field `camera.timeout_ms` must be in 10..=60000");
        }
        let Some(mode) = TriggerMode::from_name(&c.trigger) else {
            bail!(
                "{p}: field `camera.trigger` is \"{}\"; allowed: \"free_run\", \"software\", \"external\"",
                c.trigger
            );
        };
        let plc_trigger = self.plc_trigger();
        if plc_trigger && (mode != TriggerMode::Software || self.inputs.trigger.is_some()) {
            bail!(
                "{p}: field `modbus.software_trigger` needs `camera.trigger = \"software\"` and no \
                 `[inputs.trigger]`: the PLC is then the part-present signal"
            );
        }
        match (mode, self.inputs.trigger.is_some() || plc_trigger) {
            (TriggerMode::FreeRun, true) => {
                bail!("{p}: `[inputs.trigger]` needs `camera.trigger = \"software\"` or \"external\"")
            }
            (TriggerMode::Software | TriggerMode::External, false) => {
                bail!(
                    "{p}: `camera.trigger = \"{}\"` needs an `[inputs.trigger]` line (or `modbus.software_trigger`)",
                    c.trigger
                )
            }
            _ => {}
        }
        if mode == TriggerMode::External && c.source == "v4l2" && c.external_trigger_control.is_none() {
            bail!("{p}: `camera.trigger = \"external\"` needs field `camera.external_trigger_control`");
        }
        Ok(())
    }

    fn check_display(&self) -> Result<()> {
        let p = self.path.display();
        let Some(d) = &self.display else { return Ok(()) };
        match d.backend.as_str() {
            "none" | "fb" => {}
            "png" => {
                if d.path.is_none() {
                    bail!("{p}: `display.backend = \"png\"` needs field `display.path` (the PNG written)");
                }
            }
            "st7789" | "ili9341" => {
                for (f, ok) in [
                    ("spi_device", d.spi_device.is_some()),
                    ("gpio_chip", d.gpio_chip.is_some()),
                    ("dc_line", d.dc_line.is_some()),
                ] {
                    if !ok {
                        bail!("{p}: SPI panel `display.backend = \"{}\"` needs field `display.{f}`", d.backend);
                    }
                }
                if !matches!(d.rotation_deg, 0 | 90 | 180 | 270) {
                    bail!("{p}: field `display.rotation_deg` is {}; allowed 0, 90, 180, 270", d.rotation_deg);
                }
            }
            other => bail!(
                "{p}: field `display.backend` is \"{other}\"; allowed: \"none\", \"png\", \"fb\", \"st7789\", \"ili9341\""
            ),
        }
        if !(64..=4096).contains(&d.width) || !(64..=4096).contains(&d.height) {
            bail!("{p}: fields `display.width` and `display.height` must be 64..=4096");
        }
        if !(d.refresh_hz > 0.0 && d.refresh_hz <= 60.0) {
            bail!("{p}: field `display.refresh_hz` must be in (0, 60]");
        }
        Ok(())
    }

    /// The camera's trigger mode (checked at parse time).
    pub fn trigger_mode(&self) -> TriggerMode {
        TriggerMode::from_name(&self.camera.trigger).unwrap_or(TriggerMode::FreeRun)
    }

    /// The replay's fault plan (none configured: no faults).
    pub fn fault_plan(&self) -> FaultPlan {
        self.camera
            .faults
            .as_ref()
            .map(|f| FaultPlan {
                seed: f.seed,
                drop_fraction: f.drop_fraction,
                corrupt_fraction: f.corrupt_fraction,
                disconnect_after_s: f.disconnect_after_s,
                disconnect_for_s: f.disconnect_for_s,
                disconnect_every_s: f.disconnect_every_s,
            })
            .unwrap_or_default()
    }

    /// The V4L2 camera settings (for `camera.source = "v4l2"`).
    pub fn v4l2(&self) -> Result<V4l2Config> {
        let c = &self.camera;
        let p = self.path.display();
        Ok(V4l2Config {
            device: c
                .device
                .clone()
                .ok_or_else(|| anyhow!("{p}: field `camera.device` is missing"))?,
            format: c
                .format
                .as_deref()
                .and_then(PixelFormat::from_name)
                .ok_or_else(|| anyhow!("{p}: field `camera.format` is missing or unknown"))?,
            width: c.width.unwrap_or(0),
            height: c.height.unwrap_or(0),
            fps: c.fps,
            buffers: c.buffers,
            timeout_ms: c.timeout_ms,
            controls: c.controls.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            trigger: self.trigger_mode(),
            external_trigger_control: c
                .external_trigger_control
                .clone()
                .map(|n| (n, c.external_trigger_value)),
            output: OutputFormat::Gray,
        })
    }
    /// Parse `text` as the file `path` (no files are touched).
    pub fn parse(text: &str, path: &Path) -> Result<StationConfig> {
        let mut c: StationConfig = toml::from_str(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        c.path = path.to_path_buf();
        let p = path.display();
        c.check_camera()?;
        c.check_display()?;
        c.check_realtime()?;
        c.modbus_listen()?;
        c.opcua_listen()?;
        c.check_product()?;
        if !matches!(c.outputs.backend.as_str(), "recording" | "gpio" | "coprocessor") {
            bail!(
                "{p}: field `outputs.backend` is \"{}\"; allowed: \"recording\", \"gpio\", \"coprocessor\"",
                c.outputs.backend
            );
        }
        let k = &c.conveyor;
        match (k.belt_speed_mm_per_s, k.encoder_counts_per_mm) {
            (Some(v), None) => {
                if !(v > 0.0 && v.is_finite()) {
                    bail!("{p}: field `conveyor.belt_speed_mm_per_s` must be > 0");
                }
            }
            (None, Some(cpm)) => {
                if !(cpm > 0.0 && cpm.is_finite()) {
                    bail!("{p}: field `conveyor.encoder_counts_per_mm` must be > 0");
                }
                if c.inputs.encoder.is_none() {
                    bail!("{p}: `conveyor.encoder_counts_per_mm` needs an `[inputs.encoder]` line");
                }
            }
            _ => bail!(
                "{p}: `[conveyor]` needs exactly one of `belt_speed_mm_per_s` (speed mode) and `encoder_counts_per_mm` (encoder mode)"
            ),
        }
        if c.ejectors.is_empty() || c.ejectors.len() > MAX_EJECTORS {
            bail!(
                "{p}: {} `[[ejectors]]` configured; allowed 1..={MAX_EJECTORS}",
                c.ejectors.len()
            );
        }
        for (i, e) in c.ejectors.iter().enumerate() {
            let f = |field: &str| format!("ejectors[{i}] (\"{}\").{field}", e.name);
            if !(e.ejector_distance_mm >= 0.0 && e.ejector_distance_mm.is_finite()) {
                bail!("{p}: field `{}` must be >= 0", f("ejector_distance_mm"));
            }
            if !(e.pulse_width_ms > 0.0 && e.pulse_width_ms <= 10_000.0) {
                bail!("{p}: field `{}` must be in (0, 10000]", f("pulse_width_ms"));
            }
            if !(e.min_gap_ms >= 0.0 && e.min_gap_ms <= 10_000.0) {
                bail!("{p}: field `{}` must be in [0, 10000]", f("min_gap_ms"));
            }
            if !matches!(e.merge.as_str(), "extend" | "clip") {
                bail!(
                    "{p}: field `{}` is \"{}\"; allowed: \"extend\", \"clip\"",
                    f("merge"),
                    e.merge
                );
            }
            if c.outputs.backend == "gpio" && e.gpio.is_none() {
                bail!("{p}: backend \"gpio\" needs field `{}`", f("gpio"));
            }
        }
        if c.outputs.backend == "gpio" && c.outputs.gpio_chip.is_none() {
            bail!("{p}: backend \"gpio\" needs field `outputs.gpio_chip`");
        }
        let sim_inputs = match c.inputs.backend.as_deref() {
            None | Some("gpio") => false,
            Some("sim") => true,
            Some(other) => bail!("{p}: field `inputs.backend` is \"{other}\"; allowed: \"gpio\", \"sim\""),
        };
        if let Some(t) = &c.inputs.trigger {
            for (field, set) in [
                ("line_b", t.line_b.is_some()),
                ("standstill_ms", t.standstill_ms.is_some()),
            ] {
                if set {
                    bail!("{p}: field `inputs.trigger.{field}` belongs to `[inputs.encoder]`");
                }
            }
        }
        if let Some(e) = &c.inputs.encoder {
            if e.line_b == Some(e.line) {
                bail!(
                    "{p}: field `inputs.encoder.line_b` is line {}, channel A's line; channel B needs a line of its own",
                    e.line
                );
            }
            if e.standstill_ms.is_some_and(|v| !(v > 0.0 && v.is_finite())) {
                bail!("{p}: field `inputs.encoder.standstill_ms` must be > 0 (or left out: not checked)");
            }
        }
        if sim_inputs {
            for (what, l) in [("encoder", &c.inputs.encoder), ("trigger", &c.inputs.trigger)] {
                if let Some(l) = l {
                    if !l.period_ms.is_some_and(|v| v > 0.0 && v.is_finite()) {
                        bail!("{p}: `inputs.backend = \"sim\"` needs field `inputs.{what}.period_ms` > 0");
                    }
                }
            }
        } else if (c.inputs.encoder.is_some() || c.inputs.trigger.is_some()) && c.inputs.gpio_chip.is_none() {
            bail!("{p}: `[inputs]` lines need field `inputs.gpio_chip`");
        }
        if c.inputs.encoder.is_some() && c.conveyor.encoder_counts_per_mm.is_none() {
            bail!("{p}: `[inputs.encoder]` needs field `conveyor.encoder_counts_per_mm`");
        }
        match c.decision.failsafe.as_str() {
            "reject" => {}
            "line_stop" => {
                if c.outputs.backend == "gpio" && c.outputs.line_stop.is_none() {
                    bail!("{p}: `decision.failsafe = \"line_stop\"` with backend \"gpio\" needs field `outputs.line_stop`");
                }
            }
            "accept" => {}
            other => {
                bail!("{p}: field `decision.failsafe` is \"{other}\"; allowed: \"reject\", \"accept\", \"line_stop\"")
            }
        }
        c.check_routing()?;
        if let Some(b) = &c.board {
            b.check(path)?;
        }
        c.check_recipes()?;
        c.check_coprocessor()?;
        Ok(c)
    }

    /// `outputs.backend = "coprocessor"`: its section, and what the link carries today.
    fn check_coprocessor(&self) -> Result<()> {
        let p = self.path.display();
        let Some(cp) = &self.outputs.coprocessor else {
            if self.outputs.backend == "coprocessor" {
                bail!("{p}: backend \"coprocessor\" needs section `[outputs.coprocessor]` (field `device`)");
            }
            return Ok(());
        };
        if self.outputs.backend != "coprocessor" {
            bail!(
                "{p}: section `[outputs.coprocessor]` is for `outputs.backend = \"coprocessor\"` (the backend is \"{}\")",
                self.outputs.backend
            );
        }
        if crate::sim::coprocessor::baud_constant(cp.baud).is_none() {
            bail!(
                "{p}: field `outputs.coprocessor.baud` is {}; allowed: 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1000000, 2000000",
                cp.baud
            );
        }
        if cp.link_timeout_ms < 5 {
            bail!("{p}: field `outputs.coprocessor.link_timeout_ms` must be >= 5 (the station keeps the link alive every quarter of it)");
        }
        if self.conveyor.encoder_counts_per_mm.is_some() {
            bail!(
                "{p}: backend \"coprocessor\" runs in speed mode (`conveyor.belt_speed_mm_per_s`): an encoder is wired to the co-processor, and the station does not follow its count yet"
            );
        }
        if !self.recipes.is_empty() {
            bail!(
                "{p}: `[[recipes]]` with backend \"coprocessor\": a recipe's ejector routing is not carried over the link yet"
            );
        }
        Ok(())
    }

    /// The product's sections: the tool's kind and its calibration section.
    fn check_product(&self) -> Result<()> {
        let p = self.path.display();
        if !matches!(self.tool.kind.as_str(), "classify" | "segment" | "anomaly") {
            bail!(
                "{p}: field `tool.kind` is \"{}\"; allowed: \"classify\", \"segment\", \"anomaly\"",
                self.tool.kind
            );
        }
        if self.segment.is_some() && self.tool.kind != "segment" {
            bail!("{p}: `[segment]` applies to `tool.kind = \"segment\"` only");
        }
        if self.anomaly.is_some() && self.tool.kind != "anomaly" {
            bail!("{p}: `[anomaly]` applies to `tool.kind = \"anomaly\"` only");
        }
        self.segment_rules()?;
        self.precision()?;
        Ok(())
    }

    /// The uncertain and fail-safe rejects each have an ejector that takes them.
    fn check_routing(&self) -> Result<()> {
        let p = self.path.display();
        if self.decision.failsafe == "reject" && !self.ejectors.iter().any(|e| e.failsafe) {
            bail!("{p}: `decision.failsafe = \"reject\"` needs an ejector with `failsafe = true`");
        }
        if self.decision.uncertain == "reject" && !self.ejectors.iter().any(|e| e.uncertain) {
            bail!("{p}: `decision.uncertain = \"reject\"` needs an ejector with `uncertain = true`");
        }
        action(&self.decision.uncertain, &self.path, "decision.uncertain")?;
        Ok(())
    }

    /// `[[recipes]]`: unique names, routes to ejectors that exist, and each recipe's own
    /// sections as the profile's are checked. The models are checked at start-up
    /// ([`StationConfig::recipe_config`] and the station's recipe book).
    fn check_recipes(&self) -> Result<()> {
        let p = self.path.display();
        if self.recipes.len() + 1 > MAX_RECIPES {
            bail!(
                "{p}: {} `[[recipes]]`; allowed at most {} besides the profile's own",
                self.recipes.len(),
                MAX_RECIPES - 1
            );
        }
        let names = self.recipe_names();
        for (i, n) in names.iter().enumerate() {
            if n.is_empty() || n.len() > MAX_RECIPE_NAME || !n.bytes().all(|b| b.is_ascii_graphic()) {
                bail!(
                    "{p}: recipe name \"{n}\" ({}): 1 to {MAX_RECIPE_NAME} printable ASCII characters, no spaces",
                    if i == 0 {
                        "field `station.recipe`".to_string()
                    } else {
                        format!("field `recipes[{}].name`", i - 1)
                    }
                );
            }
            if names[..i].contains(n) {
                bail!("{p}: recipe name \"{n}\" is used twice (`station.recipe` and `recipes[].name`)");
            }
        }
        for i in 1..names.len() {
            self.recipe_config(i)?;
        }
        Ok(())
    }

    /// The names of the recipes: `station.recipe` (index 0), then `[[recipes]]` in order.
    pub fn recipe_names(&self) -> Vec<String> {
        std::iter::once(self.station.recipe.clone())
            .chain(self.recipes.iter().map(|r| r.name.clone()))
            .collect()
    }

    /// Recipe `index` as a whole profile: the profile itself for 0; for the others, the
    /// profile with the recipe's tool, decision rules, calibration and routing in place.
    /// Errors name the recipe and its field.
    pub fn recipe_config(&self, index: usize) -> Result<StationConfig> {
        if index == 0 {
            return Ok(self.clone());
        }
        let p = self.path.display();
        let Some(r) = self.recipes.get(index - 1) else {
            bail!("{p}: no recipe {index} (there are {})", self.recipes.len() + 1);
        };
        let at = format!("{p}: `recipes[{}]` (\"{}\")", index - 1, r.name);
        if r.decision.failsafe != self.decision.failsafe {
            bail!(
                "{at}: field `decision.failsafe` is \"{}\"; the fail-safe is the line's: it must be the profile's (\"{}\")",
                r.decision.failsafe,
                self.decision.failsafe
            );
        }
        let mut c = self.clone();
        c.recipes = Vec::new();
        c.tool = r.tool.clone();
        c.decision = r.decision.clone();
        c.segment = r.segment.clone();
        c.anomaly = r.anomaly.clone();
        if !r.routes.is_empty() {
            for e in c.ejectors.iter_mut() {
                e.classes = Vec::new();
                e.uncertain = false;
                e.failsafe = false;
            }
            for (k, route) in r.routes.iter().enumerate() {
                if r.routes[..k].iter().any(|o| o.ejector == route.ejector) {
                    bail!(
                        "{at}: field `routes[{k}].ejector` names \"{}\" a second time",
                        route.ejector
                    );
                }
                let Some(e) = c.ejectors.iter_mut().find(|e| e.name == route.ejector) else {
                    let known: Vec<&str> = self.ejectors.iter().map(|e| e.name.as_str()).collect();
                    bail!(
                        "{at}: field `routes[{k}].ejector` names \"{}\", which is not an ejector (ejectors: {})",
                        route.ejector,
                        known.join(", ")
                    );
                };
                e.classes = route.classes.clone();
                e.uncertain = route.uncertain;
                e.failsafe = route.failsafe;
            }
        }
        c.check_product().and_then(|_| c.check_routing()).map_err(|e| {
            let msg = e.to_string();
            let rest = msg.strip_prefix(&format!("{p}: ")).unwrap_or(&msg).to_string();
            anyhow!("{at}: {rest}")
        })?;
        Ok(c)
    }

    /// Whether the PLC's software trigger is the part-present signal.
    pub fn plc_trigger(&self) -> bool {
        self.modbus.as_ref().is_some_and(|m| m.software_trigger)
    }

    /// `[modbus] listen` as a socket address (none: no `[modbus]`).
    pub fn modbus_listen(&self) -> Result<Option<std::net::SocketAddr>> {
        let Some(m) = &self.modbus else { return Ok(None) };
        m.listen.parse().map(Some).map_err(|_| {
            anyhow!(
                "{}: field `modbus.listen` is \"{}\"; expected an address and port such as \"127.0.0.1:1502\"",
                self.path.display(),
                m.listen
            )
        })
    }

    /// `[opcua] listen` as a socket address (none: no `[opcua]`), checked with the users: a
    /// server nobody could open a session on is an error.
    pub fn opcua_listen(&self) -> Result<Option<std::net::SocketAddr>> {
        let Some(o) = &self.opcua else { return Ok(None) };
        let p = self.path.display();
        let listen = o.listen.parse().map_err(|_| {
            anyhow!(
                "{p}: field `opcua.listen` is \"{}\"; expected an address and port such as \"127.0.0.1:4840\"",
                o.listen
            )
        })?;
        if o.users.is_empty() && !o.allow_anonymous {
            bail!("{p}: `[opcua]` has no `[[opcua.users]]` and `allow_anonymous` is off: nobody could connect");
        }
        Ok(Some(listen))
    }

    /// `[opcua]`: its address, users and PKI folder, checked and resolved (none: no section).
    pub fn opcua_setup(&self, classes: &[String]) -> Result<Option<crate::plc::opcua::OpcuaSetup>> {
        let (Some(o), Some(listen)) = (&self.opcua, self.opcua_listen()?) else {
            return Ok(None);
        };
        let p = self.path.display();
        let mut users = Vec::new();
        for (i, u) in o.users.iter().enumerate() {
            let pass = match (&u.password, &u.password_file) {
                (Some(pw), None) => pw.clone(),
                (None, Some(f)) => {
                    let f = self.resolve(f);
                    std::fs::read_to_string(&f)
                        .map_err(|e| anyhow!("{p}: field `opcua.users[{i}].password_file`: {}: {e}", f.display()))?
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string()
                }
                _ => bail!(
                    "{p}: `opcua.users[{i}]` (\"{}\") needs exactly one of `password` and `password_file`",
                    u.user
                ),
            };
            if u.user.is_empty() || pass.is_empty() {
                bail!("{p}: `opcua.users[{i}]`: an empty user name or password");
            }
            users.push((u.user.clone(), pass));
        }
        let pki_dir = match (&o.pki_dir, self.record_sections().0) {
            (Some(d), _) => self.resolve(d),
            (None, Some(r)) => r.dir.join("opcua-pki"),
            (None, None) => std::env::temp_dir().join(format!("ferroscope-{}-opcua-pki", self.station.name)),
        };
        Ok(Some(crate::plc::opcua::OpcuaSetup {
            listen,
            users,
            allow_anonymous: o.allow_anonymous,
            pki_dir,
            trust_client_certs: o.trust_client_certs,
            station: self.station.name.clone(),
            classes: classes.to_vec(),
            recipes: self.recipe_names(),
        }))
    }

    /// `[realtime]`: priorities, CPUs and the spin within their ranges.
    fn check_realtime(&self) -> Result<()> {
        let p = self.path.display();
        let r = &self.realtime;
        for (name, v) in [
            ("actuator_priority", r.actuator_priority),
            ("input_priority", r.input_priority),
        ] {
            if let Some(v) = v {
                if !(1..=99).contains(&v) {
                    bail!("{p}: field `realtime.{name}` is {v}; allowed: 1 to 99 (SCHED_FIFO)");
                }
            }
        }
        if let Some(v) = r.cpu_latency_us.filter(|v| *v > 1_000_000) {
            bail!("{p}: field `realtime.cpu_latency_us` is {v}; allowed: 0 to 1000000");
        }
        if r.spin_us > 1000 {
            bail!("{p}: field `realtime.spin_us` is {}; allowed: 0 to 1000", r.spin_us);
        }
        for (name, cpus) in [("cpus", &r.cpus), ("frame_cpus", &r.frame_cpus)] {
            if let Some(c) = cpus.iter().find(|c| **c >= super::realtime::MAX_CPUS) {
                bail!(
                    "{p}: field `realtime.{name}` names CPU {c}; allowed: 0 to {}",
                    super::realtime::MAX_CPUS - 1
                );
            }
        }
        if !r.frame_cpus.is_empty() {
            if r.cpus.is_empty() {
                bail!(
                    "{p}: field `realtime.frame_cpus` needs `realtime.cpus`: without it the actuator \
                     would run on the frame loop's CPUs"
                );
            }
            if let Some(c) = r.frame_cpus.iter().find(|c| r.cpus.contains(c)) {
                bail!(
                    "{p}: fields `realtime.frame_cpus` and `realtime.cpus` both name CPU {c}; \
                     the frame loop and the pulse threads are kept apart"
                );
            }
        }
        Ok(())
    }

    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<StationConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: cannot read config: {e}", path.display()))?;
        StationConfig::parse(&text, path)
    }

    /// Resolve a path from the file against its folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// `[records]`, `[archive]` and `[mqtt]` with their paths resolved against this file.
    pub fn record_sections(
        &self,
    ) -> (
        Option<crate::records::RecordsSection>,
        Option<crate::records::ArchiveSection>,
        Option<crate::records::MqttSection>,
    ) {
        let records = self.records.clone().map(|mut r| {
            r.dir = self.resolve(&r.dir);
            r
        });
        let archive = self.archive.clone().map(|mut a| {
            a.dir = self.resolve(&a.dir);
            a
        });
        let mqtt = self.mqtt.clone().map(|mut m| {
            for f in [
                &mut m.password_file,
                &mut m.ca_file,
                &mut m.client_cert_file,
                &mut m.client_key_file,
            ]
            .into_iter()
            .flatten()
            {
                *f = self.resolve(f);
            }
            m
        });
        (records, archive, mqtt)
    }

    /// The model precision to run.
    pub fn precision(&self) -> Result<Precision> {
        match self.tool.precision.as_deref().unwrap_or("int8") {
            "int8" => Ok(Precision::Int8),
            "f32" => Ok(Precision::F32),
            other => bail!(
                "{}: field `tool.precision` is \"{other}\"; allowed: \"int8\", \"f32\"",
                self.path.display()
            ),
        }
    }

    /// Decision rules for `manifest`'s classes: every class must be listed as reject or
    /// accept (exactly once), and every listed name must be a class of the model.
    pub fn rules(&self, manifest: &Manifest) -> Result<DecisionRules> {
        let p = self.path.display();
        let d = &self.decision;
        let names = manifest.class_names();
        for n in d
            .reject_classes
            .iter()
            .chain(&d.accept_classes)
            .chain(d.min_score.keys())
        {
            if !names.contains(&n.as_str()) {
                bail!(
                    "{p}: `decision` names class \"{n}\", which {} does not have (classes: {})",
                    manifest.path.display(),
                    names.join(", ")
                );
            }
        }
        let mut rules = Vec::new();
        for c in &manifest.classes {
            let rej = d.reject_classes.contains(&c.name);
            let acc = d.accept_classes.contains(&c.name);
            if rej == acc {
                bail!(
                    "{p}: class \"{}\" must be in exactly one of `decision.reject_classes` and `decision.accept_classes`",
                    c.name
                );
            }
            let min_score = d.min_score.get(&c.name).copied().unwrap_or(c.threshold);
            if !(0.0..=1.0).contains(&min_score) {
                bail!(
                    "{p}: field `decision.min_score.{}` is {min_score}; allowed 0..=1",
                    c.name
                );
            }
            rules.push(ClassRule { reject: rej, min_score });
        }
        DecisionRules::new(
            &rules,
            action(&d.uncertain, &self.path, "decision.uncertain")?,
            // A line stop takes the item off the belt by hand: it counts as rejected.
            if self.failsafe_policy() == FailSafePolicy::Accept {
                Action::Accept
            } else {
                Action::Reject
            },
        )
        .map(|mut r| {
            r.detector = manifest.tiled.is_some();
            r
        })
        .map_err(|e| anyhow!("{p}: decision rules: {e:?}"))
    }

    /// What the fail-safe does.
    pub fn failsafe_policy(&self) -> FailSafePolicy {
        match self.decision.failsafe.as_str() {
            "accept" => FailSafePolicy::Accept,
            "line_stop" => FailSafePolicy::LineStop,
            _ => FailSafePolicy::Reject,
        }
    }

    /// The ejectors, with class names resolved against `manifest`: every reject class must be
    /// taken by an ejector, and every named class must exist.
    pub fn ejectors(&self, manifest: &Manifest) -> Result<Vec<EjectorConfig>> {
        let p = self.path.display();
        let names = manifest.class_names();
        let mut taken: u16 = 0;
        let mut out = Vec::with_capacity(self.ejectors.len());
        for (i, e) in self.ejectors.iter().enumerate() {
            let mut classes: u16 = 0;
            for n in &e.classes {
                if n == "*" {
                    classes |= !taken & ((1u32 << names.len().min(16)) - 1) as u16;
                    continue;
                }
                let Some(k) = names.iter().position(|c| c == n) else {
                    bail!(
                        "{p}: field `ejectors[{i}].classes` names class \"{n}\", which {} does not have (classes: {})",
                        manifest.path.display(),
                        names.join(", ")
                    );
                };
                if !self.decision.reject_classes.contains(n) {
                    bail!(
                        "{p}: field `ejectors[{i}].classes` names \"{n}\", which is not in `decision.reject_classes`"
                    );
                }
                classes |= 1 << k;
            }
            taken |= classes;
            out.push(EjectorConfig {
                ejector_distance_mm: e.ejector_distance_mm,
                pulse_width_us: (e.pulse_width_ms * 1000.0).round() as u32,
                min_gap_us: (e.min_gap_ms * 1000.0).round() as u32,
                merge: if e.merge == "clip" {
                    MergePolicy::Clip
                } else {
                    MergePolicy::Extend
                },
                takes: OutcomeSet {
                    classes,
                    uncertain: e.uncertain,
                    failsafe: e.failsafe,
                },
            });
        }
        for n in &self.decision.reject_classes {
            if let Some(k) = names.iter().position(|c| c == n) {
                if taken & (1 << k) == 0 {
                    bail!("{p}: reject class \"{n}\" is taken by no ejector (`ejectors[].classes`)");
                }
            }
        }
        Ok(out)
    }
}
