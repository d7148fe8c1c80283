//! Board profiles: the `[board]` section of a station configuration.
//!
//! A board profile is a station configuration (`boards/<board>.toml`) with a `[board]` section:
//! the target triple its binary is built for, the CPU and the hints tract's kernel selection
//! needs there, and the oldest OS and glibc it runs on. The start-up check that opens every
//! device a profile names is [`super::check`].
//!
//! Guarantees:
//! - a `[board]` section names one of the [`TARGETS`]; CPU hints only for the architecture
//!   they apply to; a glibc version exactly when the build links glibc — anything else is an
//!   error naming the field;
//! - the profile's CPU hints never override the environment (`TRACT_CPU_*` still wins);
//! - this module reads nothing of the rest of the configuration: [`super::config`] uses it,
//!   not the other way round.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde::Deserialize;

/// The targets ferroscope is built and tested for.
pub const TARGETS: [&str; 5] = [
    "aarch64-unknown-linux-gnu",
    "aarch64-unknown-linux-musl",
    "armv7-unknown-linux-gnueabihf",
    "x86_64-unknown-linux-gnu",
    "x86_64-unknown-linux-musl",
];

/// The CPU families tract's aarch64 kernels are tuned for (`TRACT_CPU_AARCH64_KIND`).
pub const TRACT_AARCH64_KINDS: [&str; 7] = ["a53", "a55", "a72", "a73", "a75", "neoverse", "generic"];

/// `[board]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardSection {
    /// The board, as sold.
    pub name: String,
    /// Rust target triple of its binary, one of [`TARGETS`].
    pub target: String,
    /// Its cores, e.g. `cortex-a72`, `cortex-a76 + cortex-a55`.
    pub cpu: String,
    /// aarch64: the core family tract selects its int8 and f32 kernels for, one of
    /// [`TRACT_AARCH64_KINDS`]; absent: tract reads `CPU part` from `/proc/cpuinfo`. The
    /// environment variable `TRACT_CPU_AARCH64_KIND` still overrides it.
    #[serde(default)]
    pub tract_cpu: Option<String>,
    /// armv7: the cores have NEON (tract's NEON kernels); absent: tract reads `/proc/cpuinfo`.
    /// The environment variable `TRACT_CPU_ARM32_NEON` still overrides it. `false` also keeps
    /// ferroscope's integer convolution off NEON (it otherwise follows `AT_HWCAP`).
    #[serde(default)]
    pub neon: Option<bool>,
    /// The oldest supported OS image.
    pub os: String,
    /// The oldest glibc the binary must run on (`"2.31"`); absent for static (musl) builds.
    #[serde(default)]
    pub glibc_min: Option<String>,
}

/// `"2.31"` → `(2, 31)`.
pub fn parse_glibc(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `std::env::consts::ARCH` of a target triple.
pub fn target_arch(target: &str) -> &str {
    match target.split('-').next().unwrap_or("") {
        a if a.starts_with("armv7") => "arm",
        a => a,
    }
}

impl BoardSection {
    /// Validate the section of the file `path`.
    pub fn check(&self, path: &Path) -> Result<()> {
        let p = path.display();
        if !TARGETS.contains(&self.target.as_str()) {
            bail!(
                "{p}: field `board.target` is \"{}\"; allowed: {}",
                self.target,
                TARGETS.map(|t| format!("\"{t}\"")).join(", ")
            );
        }
        let arch = target_arch(&self.target);
        if let Some(k) = &self.tract_cpu {
            if arch != "aarch64" {
                bail!(
                    "{p}: field `board.tract_cpu` is for aarch64 targets; this one is {}",
                    self.target
                );
            }
            if !TRACT_AARCH64_KINDS.contains(&k.as_str()) {
                bail!(
                    "{p}: field `board.tract_cpu` is \"{k}\"; allowed: {}",
                    TRACT_AARCH64_KINDS.map(|t| format!("\"{t}\"")).join(", ")
                );
            }
        }
        if self.neon.is_some() && arch != "arm" {
            bail!(
                "{p}: field `board.neon` is for armv7 targets; this one is {}",
                self.target
            );
        }
        let musl = self.target.ends_with("musl");
        match (&self.glibc_min, musl) {
            (Some(_), true) => bail!("{p}: field `board.glibc_min`: a musl build is static and needs no glibc"),
            (None, false) => bail!("{p}: field `board.glibc_min` is missing (the oldest glibc, e.g. \"2.31\")"),
            (Some(v), false) if parse_glibc(v).is_none() => {
                bail!("{p}: field `board.glibc_min` is \"{v}\"; expected a version such as \"2.31\"")
            }
            _ => {}
        }
        Ok(())
    }

    /// Install the profile's CPU hints as tract's process-wide knob values (below the
    /// environment, which still wins). Call before the first model is loaded. Returns what was
    /// set, for the log.
    pub fn apply_cpu_hints(&self) -> Result<Vec<String>> {
        use tract_onnx::tract_core::knobs::set_config_global;
        let mut set = Vec::new();
        if let Some(k) = &self.tract_cpu {
            set_config_global("TRACT_CPU_AARCH64_KIND", k).map_err(|e| anyhow!("tract CPU hint: {e}"))?;
            set.push(format!("TRACT_CPU_AARCH64_KIND={k}"));
        }
        if let Some(n) = self.neon {
            let v = if n { "true" } else { "false" };
            set_config_global("TRACT_CPU_ARM32_NEON", v).map_err(|e| anyhow!("tract CPU hint: {e}"))?;
            set.push(format!("TRACT_CPU_ARM32_NEON={v}"));
        }
        Ok(set)
    }
}

/// The glibc this process runs on, `None` for static or non-glibc builds.
pub fn running_glibc() -> Option<String> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: gnu_get_libc_version returns a pointer to a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        Some(v.to_string_lossy().into_owned())
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_compare_as_numbers() {
        assert_eq!(parse_glibc("2.31"), Some((2, 31)));
        assert!(parse_glibc("2.9") < parse_glibc("2.31"));
        assert_eq!(parse_glibc("2"), None);
        assert_eq!(target_arch("armv7-unknown-linux-gnueabihf"), "arm");
        assert_eq!(target_arch("aarch64-unknown-linux-musl"), "aarch64");
        #[cfg(target_env = "gnu")]
        assert!(parse_glibc(&running_glibc().unwrap()).is_some());
    }
}
