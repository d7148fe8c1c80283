//! Which station profile a command runs with, when `--config` is not given.
//!
//! Guarantees:
//! - one order, everywhere: `--config`, `$FERROSCOPE_CONFIG`, [`SYSTEM_PROFILE`], then
//!   [`LOCAL_PROFILE`] under the current directory; the first that applies wins;
//! - nothing depends on where the binary was built: a binary copied anywhere finds the same
//!   profile from the same directory;
//! - a variable that is set is used as given: a missing file is then an error naming it, not a
//!   reason to run with another profile;
//! - when none exists, the error names every place searched.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The environment variable that names the profile when `--config` is not given.
pub const PROFILE_ENV: &str = "FERROSCOPE_CONFIG";

/// The profile an installed station runs with (the package's conffile).
pub const SYSTEM_PROFILE: &str = "/etc/ferroscope/station.toml";

/// The last place searched, relative to the current directory: the host simulation in a
/// checkout of the repository.
pub const LOCAL_PROFILE: &str = "boards/host-sim.toml";

/// Where a profile was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileSource {
    /// `--config`.
    Flag,
    /// [`PROFILE_ENV`].
    Env,
    /// [`SYSTEM_PROFILE`].
    System,
    /// [`LOCAL_PROFILE`] under the current directory.
    CurrentDir,
}

impl ProfileSource {
    /// How the source reads in a log line, e.g. `from $FERROSCOPE_CONFIG`.
    pub fn describe(self) -> &'static str {
        match self {
            ProfileSource::Flag => "from --config",
            ProfileSource::Env => "from $FERROSCOPE_CONFIG",
            ProfileSource::System => "the system profile",
            ProfileSource::CurrentDir => "under the current directory",
        }
    }
}

/// The station profile to use: `explicit` (`--config`) when given; else the file
/// `$FERROSCOPE_CONFIG` names, when set and not empty (used as given: a missing file is then
/// an error when it is read, not a reason to look elsewhere); else [`SYSTEM_PROFILE`] when it
/// exists; else [`LOCAL_PROFILE`] under the current directory when it exists. None of them:
/// an error naming every place searched.
pub fn find_profile(explicit: Option<&Path>) -> Result<(PathBuf, ProfileSource)> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    search_profile(
        explicit,
        std::env::var_os(PROFILE_ENV).as_deref(),
        Path::new(SYSTEM_PROFILE),
        &cwd,
    )
}

/// [`find_profile`] with its inputs passed in: the environment variable's value, the system
/// profile's path and the current directory.
pub fn search_profile(
    explicit: Option<&Path>,
    env: Option<&std::ffi::OsStr>,
    system: &Path,
    cwd: &Path,
) -> Result<(PathBuf, ProfileSource)> {
    if let Some(p) = explicit {
        return Ok((p.to_path_buf(), ProfileSource::Flag));
    }
    if let Some(v) = env.filter(|v| !v.is_empty()) {
        return Ok((PathBuf::from(v), ProfileSource::Env));
    }
    if system.is_file() {
        return Ok((system.to_path_buf(), ProfileSource::System));
    }
    let local = cwd.join(LOCAL_PROFILE);
    if local.is_file() {
        return Ok((PathBuf::from(LOCAL_PROFILE), ProfileSource::CurrentDir));
    }
    bail!(
        "no station profile: --config not given, ${PROFILE_ENV} not set, {} does not exist, and there is no {} \
         ({}); give --config PATH or set ${PROFILE_ENV}",
        system.display(),
        LOCAL_PROFILE,
        local.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_is_found_in_the_documented_order() {
        let dir = std::env::temp_dir().join(format!("ferroscope-profile-order-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("boards")).unwrap();
        let system = dir.join("etc-station.toml");
        let none = dir.join("nowhere");
        let env = std::ffi::OsStr::new("/from/env.toml");
        let flag = Path::new("/from/flag.toml");
        // Nothing there: the error names every place searched.
        let e = format!("{:#}", search_profile(None, None, &system, &none).unwrap_err());
        for place in [
            "--config",
            "$FERROSCOPE_CONFIG",
            "etc-station.toml",
            LOCAL_PROFILE,
            "nowhere",
        ] {
            assert!(e.contains(place), "{place} missing from: {e}");
        }
        // The current directory's host simulation, then the system profile, then the
        // environment, then the flag: each one wins over the ones after it.
        std::fs::write(dir.join(LOCAL_PROFILE), "").unwrap();
        let found = |f, e| search_profile(f, e, &system, &dir).unwrap();
        assert_eq!(
            found(None, None),
            (PathBuf::from(LOCAL_PROFILE), ProfileSource::CurrentDir)
        );
        std::fs::write(&system, "").unwrap();
        assert_eq!(found(None, None), (system.clone(), ProfileSource::System));
        assert_eq!(
            found(None, Some(std::ffi::OsStr::new(""))),
            (system.clone(), ProfileSource::System)
        );
        assert_eq!(found(None, Some(env)), (PathBuf::from(env), ProfileSource::Env));
        assert_eq!(found(Some(flag), Some(env)), (flag.to_path_buf(), ProfileSource::Flag));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
