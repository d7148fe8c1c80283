//! The start-up check (`ferroscope check --config boards/<board>.toml`).
//!
//! [`check`] opens every device a profile names (camera, GPIO chip and lines, display,
//! records folders) and the model, without starting the station, so a missing or busy device
//! is a clear error before the belt runs.
//!
//! Guarantees:
//! - every device is tried, not only up to the first that fails: one finding per device, each
//!   naming the device and, when it is not usable, why;
//! - nothing is changed: GPIO lines are only inspected (the line exists and nobody holds
//!   it), folders are checked for write access and not created;
//! - the `[board]` section is checked against the machine it runs on (architecture, glibc).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::board::{parse_glibc, running_glibc, target_arch};
use super::config::StationConfig;
use crate::hal::OutputLine;
use crate::model::manifest::Manifest;
use crate::tools::Tool;

/// One line of `ferroscope check`.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What was checked, e.g. `camera /dev/video0`.
    pub what: String,
    /// Whether it is usable.
    pub ok: bool,
    /// What was found, or why it is not usable.
    pub detail: String,
}

fn finding(what: impl Into<String>, r: Result<String>) -> Finding {
    match r {
        Ok(detail) => Finding {
            what: what.into(),
            ok: true,
            detail,
        },
        Err(e) => Finding {
            what: what.into(),
            ok: false,
            detail: format!("{e:#}"),
        },
    }
}

/// A GPIO line the profile names: the chip exists, has the line, and nobody else holds it.
fn gpio_line(chip: &Path, line: u32) -> Result<String> {
    let what = chip.display();
    let c = gpiocdev::chip::Chip::from_path(chip).with_context(|| format!("{what}: no such GPIO chip"))?;
    let info = c.info().with_context(|| format!("{what}: GPIO_GET_CHIPINFO failed"))?;
    if line >= info.num_lines {
        bail!(
            "{what} ({}) has {} lines (0..={}); line {line} does not exist",
            info.label,
            info.num_lines,
            info.num_lines.saturating_sub(1)
        );
    }
    let li = c
        .line_info(line)
        .with_context(|| format!("{what}: line {line}: GPIO_V2_GET_LINEINFO failed"))?;
    let name = if li.name.is_empty() {
        String::new()
    } else {
        format!(" \"{}\"", li.name)
    };
    if li.used {
        bail!(
            "{what} ({}) line {line}{name} is held by \"{}\"",
            info.label,
            if li.consumer.is_empty() {
                "the kernel"
            } else {
                &li.consumer
            }
        );
    }
    Ok(format!("{} line {line}{name}, free", info.label))
}

/// The folder is writable, or the station can create it (its nearest existing parent is
/// writable). Nothing is created.
fn writable_dir(dir: &Path) -> Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let mut at = dir;
    while !at.exists() {
        at = at
            .parent()
            .ok_or_else(|| anyhow!("{}: no existing parent folder", dir.display()))?;
    }
    if !at.is_dir() {
        bail!("{}: {} is not a folder", dir.display(), at.display());
    }
    let c = std::ffi::CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path; access only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        bail!(
            "{}: {} is not writable by this user: {}",
            dir.display(),
            at.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(if at == dir {
        "writable".into()
    } else {
        format!("will be created in {}", at.display())
    })
}

/// Open every device and file the profile names, without starting the station. Every finding
/// is returned; the profile is usable when all are `ok`.
pub fn check(cfg: &StationConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let p = cfg.path.display().to_string();
    if let Some(b) = &cfg.board {
        let arch = target_arch(&b.target);
        let here = std::env::consts::ARCH;
        out.push(finding(
            format!("board {}", b.name),
            if arch == here {
                Ok(format!("{} on {}, {}", b.target, b.cpu, b.os))
            } else {
                Err(anyhow!(
                    "{p}: field `board.target` is {} but this binary is built for {here}",
                    b.target
                ))
            },
        ));
        if let Some(min) = b.glibc_min.as_deref() {
            let r = match running_glibc() {
                Some(v) if parse_glibc(&v) < parse_glibc(min) => Err(anyhow!(
                    "glibc {v} is older than the profile's floor {min} (field `board.glibc_min`)"
                )),
                Some(v) => Ok(format!("{v} (floor {min})")),
                None => Ok(format!("static build; the profile's floor is {min}")),
            };
            out.push(finding("glibc", r));
        }
        out.push(finding(
            "tract CPU hints",
            b.apply_cpu_hints().map(|s| {
                if s.is_empty() {
                    "from /proc/cpuinfo".into()
                } else {
                    s.join(", ")
                }
            }),
        ));
    }
    let manifest = cfg.resolve(&cfg.tool.manifest);
    out.push(finding(
        format!("model {}", manifest.display()),
        cfg.precision().and_then(|precision| {
            let m = Manifest::load(&manifest)?;
            let name = m.model.name.clone();
            Tool::load(&cfg.tool.kind, m, precision, cfg.segment_rules()?)?;
            Ok(format!("{name}, {} {}, loaded", cfg.tool.kind, precision.name()))
        }),
    ));
    if !cfg.recipes.is_empty() {
        // Every recipe: its classes, rules and routing, then its model loaded.
        let book = super::recipes::RecipeBook::open(cfg);
        out.push(finding(
            "recipes",
            book.as_ref()
                .map(|b| format!("{} ({} classes together)", b.names().join(", "), b.classes.len()))
                .map_err(|e| anyhow!("{e:#}")),
        ));
        for e in book.iter().flat_map(|b| b.entries.iter().skip(1)) {
            let rc = &e.cfg;
            out.push(finding(
                format!("recipe {} model", e.name),
                rc.precision().and_then(|precision| {
                    let m = Manifest::load(&rc.resolve(&rc.tool.manifest))?;
                    Tool::load(&rc.tool.kind, m, precision, rc.segment_rules()?)?;
                    Ok(format!("{}, loaded", e.model_line))
                }),
            ));
        }
        out.push(finding(
            "control socket",
            Ok(super::control_socket::socket_path(cfg).display().to_string()),
        ));
    }
    match cfg.camera.source.as_str() {
        "v4l2" => {
            let dev = cfg.camera.device.clone().unwrap_or_default();
            out.push(finding(
                format!("camera {}", dev.display()),
                cfg.v4l2().and_then(|v| {
                    let cam = crate::drivers::v4l2::V4l2Camera::open(v, crate::sim::clock::MonotonicClock::default())?;
                    let (w, h) = cam.size();
                    Ok(format!(
                        "{} {w}x{h}, streaming",
                        cfg.camera.format.as_deref().unwrap_or("?")
                    ))
                }),
            ));
        }
        _ => {
            let dir = cfg.resolve(&cfg.camera.path);
            out.push(finding(
                format!("replay {}", dir.display()),
                std::fs::read_dir(&dir)
                    .with_context(|| format!("{}: cannot read the replay folder", dir.display()))
                    .map(|rd| format!("{} entries", rd.count())),
            ));
        }
    }
    if cfg.outputs.backend == "gpio" {
        match super::actuate::output_lines(cfg) {
            Ok(lines) => {
                for (role, spec) in lines {
                    let what = match role {
                        OutputLine::Reject(i) => format!("reject \"{}\"", cfg.ejectors[i as usize].name),
                        OutputLine::Heartbeat => "heartbeat".into(),
                        OutputLine::LineStop => "line stop".into(),
                    };
                    out.push(finding(
                        format!("{what} {} line {}", spec.chip.display(), spec.line),
                        gpio_line(&spec.chip, spec.line),
                    ));
                }
            }
            Err(e) => out.push(finding("outputs", Err(e))),
        }
    }
    if cfg.inputs.backend.as_deref() != Some("sim") {
        let chip = cfg.inputs.gpio_chip.clone().unwrap_or_default();
        for (what, l) in [("encoder", &cfg.inputs.encoder), ("trigger", &cfg.inputs.trigger)] {
            if let Some(l) = l {
                out.push(finding(
                    format!("{what} {} line {}", chip.display(), l.line),
                    gpio_line(&chip, l.line),
                ));
            }
        }
    }
    if let Some(d) = &cfg.display {
        match d.backend.as_str() {
            "fb" => {
                let path = d.path.clone().unwrap_or_else(|| PathBuf::from("/dev/fb0"));
                out.push(finding(
                    format!("display {}", path.display()),
                    crate::display::fb::Framebuffer::open(&path).map(|f| {
                        use crate::display::Panel;
                        let (w, h) = f.size();
                        format!("{w}x{h}, {} bits per pixel", f.layout().bits_per_pixel)
                    }),
                ));
            }
            "st7789" | "ili9341" => {
                let spi = d.spi_device.clone().unwrap_or_default();
                out.push(finding(
                    format!("display {} {}", d.backend, spi.display()),
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&spi)
                        .with_context(|| format!("{}: cannot open the SPI device", spi.display()))
                        .map(|_| format!("{}x{}", d.width, d.height)),
                ));
                let chip = d.gpio_chip.clone().unwrap_or_default();
                for (what, l) in [("dc", d.dc_line), ("reset", d.reset_line)] {
                    if let Some(l) = l {
                        out.push(finding(
                            format!("display {what} {} line {l}", chip.display()),
                            gpio_line(&chip, l),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    let (records, archive, _) = cfg.record_sections();
    if let Some(r) = records {
        out.push(finding(format!("records {}", r.dir.display()), writable_dir(&r.dir)));
    }
    if let Some(a) = archive {
        out.push(finding(format!("archive {}", a.dir.display()), writable_dir(&a.dir)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn check_passes_on_the_host_simulation_and_names_what_is_missing() {
        let cfg = StationConfig::load(&root().join("boards/host-sim.toml")).unwrap();
        let f = check(&cfg);
        assert!(f.iter().all(|f| f.ok), "{f:#?}");
        assert!(f.iter().any(|f| f.what.starts_with("model ")));

        // A board whose devices are not on this machine: each one is a finding with its name.
        let cfg = StationConfig::load(&root().join("boards/beaglebone-black.toml")).unwrap();
        let f = check(&cfg);
        let bad = |what: &str| {
            f.iter()
                .find(|f| f.what.starts_with(what))
                .unwrap_or_else(|| panic!("{what}: {f:#?}"))
        };
        if std::env::consts::ARCH != "arm" {
            assert!(!bad("board").ok && bad("board").detail.contains("board.target"));
        }
        let cam = bad("camera /dev/video0");
        let gpio = bad("reject \"surface\" /dev/gpiochip1 line 12");
        if !Path::new("/dev/gpiochip1").exists() {
            assert!(!gpio.ok && gpio.detail.contains("/dev/gpiochip1"), "{gpio:?}");
        }
        if !Path::new("/dev/video0").exists() {
            assert!(!cam.ok && cam.detail.contains("/dev/video0"), "{cam:?}");
        }
        assert!(bad("model ").ok, "{f:#?}");
    }

    fn profiles() -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("boards"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_profile_parses_and_the_boards_are_all_there() {
        let mut targets = Vec::new();
        for p in profiles() {
            let cfg = StationConfig::load(&p).unwrap_or_else(|e| panic!("{e:#}"));
            if let Some(b) = &cfg.board {
                targets.push((b.target.clone(), cfg.station.name.clone()));
            }
        }
        for (target, board) in [
            ("aarch64-unknown-linux-gnu", "rpi4"),
            ("aarch64-unknown-linux-gnu", "rpi5"),
            ("aarch64-unknown-linux-gnu", "rpi-zero2w"),
            ("aarch64-unknown-linux-gnu", "jetson-orin-nano"),
            ("aarch64-unknown-linux-gnu", "rk3588"),
            ("armv7-unknown-linux-gnueabihf", "beaglebone-black"),
            ("x86_64-unknown-linux-gnu", "host-sim"),
            ("aarch64-unknown-linux-gnu", "qemu-virt"),
        ] {
            assert!(
                targets.contains(&(target.to_string(), board.to_string())),
                "{board} ({target}) missing from boards/: {targets:?}"
            );
        }
    }

    fn with_board(board: &str) -> Result<StationConfig> {
        let path = root().join("boards/host-sim.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("[board]").unwrap();
        let end = text.find("[station]").unwrap();
        let text = format!("{}[board]\n{board}\n{}", &text[..start], &text[end..]);
        StationConfig::parse(&text, &path)
    }

    #[test]
    fn a_wrong_board_section_is_named() {
        let base = "name = \"b\"\ncpu = \"c\"\nos = \"o\"\n";
        let err = |extra: &str| format!("{:#}", with_board(&format!("{base}{extra}")).unwrap_err());
        assert!(err("target = \"riscv64\"\nglibc_min = \"2.31\"").contains("`board.target` is \"riscv64\""));
        assert!(err("target = \"aarch64-unknown-linux-gnu\"").contains("`board.glibc_min` is missing"));
        assert!(err("target = \"aarch64-unknown-linux-musl\"\nglibc_min = \"2.31\"").contains("static"));
        assert!(err("target = \"aarch64-unknown-linux-gnu\"\nglibc_min = \"two\"").contains("\"two\""));
        assert!(
            err("target = \"aarch64-unknown-linux-gnu\"\nglibc_min = \"2.31\"\ntract_cpu = \"a99\"")
                .contains("`board.tract_cpu` is \"a99\"")
        );
        assert!(
            err("target = \"armv7-unknown-linux-gnueabihf\"\nglibc_min = \"2.31\"\ntract_cpu = \"a53\"")
                .contains("for aarch64 targets")
        );
        assert!(err("target = \"aarch64-unknown-linux-gnu\"\nglibc_min = \"2.31\"\nneon = true").contains("armv7"));
        assert!(err("target = \"x86_64-unknown-linux-gnu\"\nglibc_min = \"2.31\"\nsoc = \"x\"").contains("soc"));
        with_board(&format!(
            "{base}target = \"armv7-unknown-linux-gnueabihf\"\nglibc_min = \"2.31\"\nneon = true"
        ))
        .unwrap();
    }
}
