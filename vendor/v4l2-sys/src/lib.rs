//! Raw V4L2 bindings: `<linux/videodev2.h>` as bindgen 0.65.1 renders it, generated ahead of
//! time for each supported architecture by `regenerate.sh` (the same call as v4l2-sys-mit
//! 0.3.0's build script), so that building needs neither libclang nor kernel headers.
//!
//! Guarantees:
//! - the items are exactly those of v4l2-sys-mit 0.3.0 built for the same target: the `v4l`
//!   crate compiles against this crate unchanged;
//! - one file per kernel ABI: `x86_64`, `aarch64` (glibc and musl alike: the script checks
//!   that bindgen renders them identically) and `arm` (32-bit ARM EABI, armv7 hard float);
//! - any other architecture fails to build with a message naming the script, rather than
//!   silently using another ABI's layouts;
//! - every generated struct carries bindgen's size, alignment and field-offset tests
//!   (`cargo test` here), and the project's `tests/v4l2_abi.rs` checks the structs and ioctl
//!   numbers the camera driver uses against the kernel's values.
//!
//! The generated files are derived from the kernel's UAPI headers (GPL-2.0 WITH
//! Linux-syscall-note; videodev2.h is dual GPL-2.0+ WITH Linux-syscall-note OR
//! BSD-3-Clause), which is what allows their use by programs of any licence.

#![allow(clippy::all)]
#![allow(deref_nullptr)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]
#![allow(rustdoc::all)]

#[cfg(target_arch = "x86_64")]
include!("bindings/x86_64.rs");

#[cfg(target_arch = "aarch64")]
include!("bindings/aarch64.rs");

#[cfg(target_arch = "arm")]
include!("bindings/arm.rs");

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
compile_error!(
    "no pre-generated V4L2 bindings for this architecture: add it to vendor/v4l2-sys/regenerate.sh \
     and src/lib.rs"
);
