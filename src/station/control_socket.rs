//! The local control socket: `ferroscope recipe …` talking to the running station.
//!
//! One request line, one answer line (JSON), then the connection closes:
//! - `recipe list` → `{"ok":true,"recipes":[…],"active":"…"}`;
//! - `recipe set NAME` → `{"ok":true,"recipe":"NAME","after_items":N}` once the recipe
//!   decides, or `{"ok":false,"error":"…"}` when it is refused (the running one stays).
//!
//! Guarantees:
//! - the socket is a Unix socket with mode 0600 in a folder only the station's user may
//!   write (`$RUNTIME_DIRECTORY`, `$XDG_RUNTIME_DIR`) or `/tmp`: only that user and root can
//!   connect; no network port is opened;
//! - the server is a thread of its own that serves one client at a time with [`IO_TIMEOUT`]
//!   on each read and write: a client that connects and says nothing, or sends more than
//!   [`MAX_REQUEST`] bytes, is answered with an error and dropped, and nothing of it reaches
//!   the frame path, which only ever sees a loaded recipe (see [`super::recipes`]);
//! - a socket file left by a station that died is replaced; one a running station answers on
//!   is not (the second station's start fails, naming the path).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::config::StationConfig;
use super::recipes::{SwitchOutcome, Switcher};

/// Longest request line, bytes: a command and a recipe name fit many times over.
pub const MAX_REQUEST: usize = 256;

/// Longest wait for a client's request or for it to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a `recipe set` waits for the recipe to load and decide an item.
pub const SWITCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The socket of the station `cfg` describes: `station.control_socket`, or
/// `ferroscope-<station>.sock` in `$RUNTIME_DIRECTORY`, `$XDG_RUNTIME_DIR` or `/tmp`.
pub fn socket_path(cfg: &StationConfig) -> PathBuf {
    if let Some(p) = &cfg.station.control_socket {
        return cfg.resolve(p);
    }
    let dir = ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let name: String = cfg
        .station
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("ferroscope-{name}.sock"))
}

/// The bound socket; the file is removed when it is dropped.
pub(super) struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// Bind `path` (0600). A stale file is replaced; a live station's socket is an error.
    pub(super) fn bind(path: &Path, field: &str) -> Result<ControlSocket> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "{field}: {} is the control socket of a station that is running; stop it, or give this one `station.control_socket`",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("{field}: cannot remove the stale {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("{field}: cannot listen on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("{field}: cannot restrict {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serve until `stop` is set (checked every 100 ms).
    pub(super) fn serve(self, switcher: &Switcher, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let _ = serve_one(stream, switcher);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

fn serve_one(stream: UnixStream, switcher: &Switcher) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    let read = BufReader::new((&stream).take(MAX_REQUEST as u64 + 1)).read_line(&mut line);
    let answer = match read {
        Err(e) => serde_json::json!({"ok": false, "error": format!("no request: {e}")}),
        Ok(_) if line.len() > MAX_REQUEST || !line.ends_with('\n') => {
            serde_json::json!({"ok": false, "error": format!("a request is one line of at most {MAX_REQUEST} bytes")})
        }
        Ok(_) => answer(line.trim(), switcher),
    };
    let mut w = &stream;
    writeln!(w, "{answer}")?;
    w.flush()
}

fn answer(req: &str, switcher: &Switcher) -> serde_json::Value {
    let words: Vec<&str> = req.split_whitespace().collect();
    let names = switcher.book().names();
    match words.as_slice() {
        ["recipe", "list"] | ["recipe", "get"] => serde_json::json!({
            "ok": true,
            "recipes": names,
            "active": names.get(switcher.active()),
        }),
        ["recipe", "set", name] => match switcher.select(name, SWITCH_TIMEOUT) {
            SwitchOutcome::Applied { recipe, after_items } => {
                serde_json::json!({"ok": true, "recipe": recipe, "after_items": after_items})
            }
            SwitchOutcome::Refused(why) => serde_json::json!({"ok": false, "error": why}),
        },
        _ => serde_json::json!({
            "ok": false,
            "error": format!("unknown request \"{req}\"; known: \"recipe list\", \"recipe set NAME\""),
        }),
    }
}

/// The client: send `request` to the station at `path` and return its answer.
pub fn ask(path: &Path, request: &str) -> Result<serde_json::Value> {
    let stream = UnixStream::connect(path).with_context(|| {
        format!(
            "{}: no station answers here (is it running, as this user, with this profile?)",
            path.display()
        )
    })?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_read_timeout(Some(SWITCH_TIMEOUT + IO_TIMEOUT))?;
    let mut w = &stream;
    writeln!(w, "{request}")?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .with_context(|| format!("{}: no answer", path.display()))?;
    serde_json::from_str(line.trim()).with_context(|| format!("{}: the answer is not JSON: {line:?}", path.display()))
}
