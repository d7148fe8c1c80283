//! The V4L2 bindings (pre-generated per architecture in vendor/v4l2-sys) against the kernel's
//! ABI: the sizes and field offsets of the structs the camera driver passes to the kernel, and
//! the ioctl numbers it sends (`v4l` derives them from the struct sizes), written out as the
//! kernel's `<linux/videodev2.h>` gives them (a C program compiled with the target's headers
//! prints the same numbers). A binding generated with the wrong architecture's headers, or
//! from a header that changed a struct, fails here before it reaches a camera.
//!
//! 64-bit targets (x86_64, aarch64) share one layout; 32-bit ARM has 4-byte pointers and
//! `long`, and a 32-bit `time_t` in `struct timeval` (the kernel's time32 ioctls). This test
//! runs natively and, for the ARM targets, under qemu-user (`bash tests/cross.sh`).

use std::mem::{offset_of, size_of};

use v4l::v4l2::vidioc::*;
use v4l::v4l_sys::*;

/// What differs between the 64-bit and the 32-bit kernel ABI for these structs.
struct Abi {
    format: usize,
    format_fmt: usize,
    buffer: usize,
    buffer_timestamp: usize,
    buffer_sequence: usize,
    buffer_memory: usize,
    buffer_m: usize,
    buffer_length: usize,
    timeval: usize,
}

#[cfg(target_pointer_width = "64")]
const ABI: Abi = Abi {
    format: 208,
    format_fmt: 8,
    buffer: 88,
    buffer_timestamp: 24,
    buffer_sequence: 56,
    buffer_memory: 60,
    buffer_m: 64,
    buffer_length: 72,
    timeval: 16,
};

#[cfg(target_pointer_width = "32")]
const ABI: Abi = Abi {
    format: 204,
    format_fmt: 4,
    buffer: 68,
    buffer_timestamp: 20,
    buffer_sequence: 44,
    buffer_memory: 48,
    buffer_m: 52,
    buffer_length: 56,
    timeval: 8,
};

#[test]
fn the_structs_the_camera_driver_passes_have_the_kernel_layout() {
    assert_eq!(size_of::<v4l2_capability>(), 104);
    assert_eq!(offset_of!(v4l2_capability, card), 16);
    assert_eq!(offset_of!(v4l2_capability, bus_info), 48);
    assert_eq!(offset_of!(v4l2_capability, version), 80);
    assert_eq!(offset_of!(v4l2_capability, capabilities), 84);
    assert_eq!(offset_of!(v4l2_capability, device_caps), 88);

    assert_eq!(size_of::<v4l2_format>(), ABI.format);
    assert_eq!(offset_of!(v4l2_format, fmt), ABI.format_fmt);
    assert_eq!(size_of::<v4l2_pix_format>(), 48);
    assert_eq!(offset_of!(v4l2_pix_format, pixelformat), 8);
    assert_eq!(offset_of!(v4l2_pix_format, bytesperline), 16);
    assert_eq!(offset_of!(v4l2_pix_format, sizeimage), 20);

    assert_eq!(size_of::<timeval>(), ABI.timeval);
    assert_eq!(size_of::<v4l2_buffer>(), ABI.buffer);
    assert_eq!(offset_of!(v4l2_buffer, index), 0);
    assert_eq!(offset_of!(v4l2_buffer, bytesused), 8);
    assert_eq!(offset_of!(v4l2_buffer, flags), 12);
    assert_eq!(offset_of!(v4l2_buffer, timestamp), ABI.buffer_timestamp);
    assert_eq!(offset_of!(v4l2_buffer, sequence), ABI.buffer_sequence);
    assert_eq!(offset_of!(v4l2_buffer, memory), ABI.buffer_memory);
    assert_eq!(offset_of!(v4l2_buffer, m), ABI.buffer_m);
    assert_eq!(offset_of!(v4l2_buffer, length), ABI.buffer_length);

    assert_eq!(size_of::<v4l2_requestbuffers>(), 20);
    assert_eq!(size_of::<v4l2_streamparm>(), 204);
    assert_eq!(offset_of!(v4l2_streamparm, parm), 4);
    assert_eq!(offset_of!(v4l2_captureparm, timeperframe), 8);
    assert_eq!(size_of::<v4l2_control>(), 8);
    assert_eq!(size_of::<v4l2_queryctrl>(), 68);
    assert_eq!(size_of::<v4l2_fmtdesc>(), 64);
    assert_eq!(size_of::<v4l2_frmsizeenum>(), 44);
    assert_eq!(size_of::<v4l2_frmivalenum>(), 52);
}

#[test]
// `as u32`: the request type is `c_ulong` on glibc and `c_int` on musl; on 32-bit glibc
// (armv7) the cast changes nothing, which clippy flags there.
#[allow(clippy::unnecessary_cast)]
fn the_ioctl_numbers_the_camera_driver_sends_are_the_kernels() {
    let (format, buffer) = if cfg!(target_pointer_width = "64") {
        (
            (0xc0d05604u32, 0xc0d05605u32),
            (0xc0585609u32, 0xc058560fu32, 0xc0585611u32),
        )
    } else {
        ((0xc0cc5604, 0xc0cc5605), (0xc0445609, 0xc044560f, 0xc0445611))
    };
    let expected: [(&str, u32, u32); 17] = [
        ("VIDIOC_QUERYCAP", VIDIOC_QUERYCAP as u32, 0x80685600),
        ("VIDIOC_ENUM_FMT", VIDIOC_ENUM_FMT as u32, 0xc0405602),
        ("VIDIOC_G_FMT", VIDIOC_G_FMT as u32, format.0),
        ("VIDIOC_S_FMT", VIDIOC_S_FMT as u32, format.1),
        ("VIDIOC_REQBUFS", VIDIOC_REQBUFS as u32, 0xc0145608),
        ("VIDIOC_QUERYBUF", VIDIOC_QUERYBUF as u32, buffer.0),
        ("VIDIOC_QBUF", VIDIOC_QBUF as u32, buffer.1),
        ("VIDIOC_DQBUF", VIDIOC_DQBUF as u32, buffer.2),
        ("VIDIOC_STREAMON", VIDIOC_STREAMON as u32, 0x40045612),
        ("VIDIOC_STREAMOFF", VIDIOC_STREAMOFF as u32, 0x40045613),
        ("VIDIOC_G_PARM", VIDIOC_G_PARM as u32, 0xc0cc5615),
        ("VIDIOC_S_PARM", VIDIOC_S_PARM as u32, 0xc0cc5616),
        ("VIDIOC_G_CTRL", VIDIOC_G_CTRL as u32, 0xc008561b),
        ("VIDIOC_S_CTRL", VIDIOC_S_CTRL as u32, 0xc008561c),
        ("VIDIOC_QUERYCTRL", VIDIOC_QUERYCTRL as u32, 0xc0445624),
        ("VIDIOC_ENUM_FRAMESIZES", VIDIOC_ENUM_FRAMESIZES as u32, 0xc02c564a),
        (
            "VIDIOC_ENUM_FRAMEINTERVALS",
            VIDIOC_ENUM_FRAMEINTERVALS as u32,
            0xc034564b,
        ),
    ];
    for (name, got, want) in expected {
        assert_eq!(got, want, "{name}: {got:#010x}, the kernel's is {want:#010x}");
    }
}

#[test]
fn the_constants_the_camera_driver_names_have_the_kernels_values() {
    assert_eq!(v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE, 1);
    assert_eq!(v4l2_memory_V4L2_MEMORY_MMAP, 1);
    assert_eq!(size_of::<v4l2_buf_type>(), 4);
    assert_eq!(V4L2_CAP_VIDEO_CAPTURE, 0x0000_0001);
    assert_eq!(V4L2_CAP_STREAMING, 0x0400_0000);
    assert_eq!(V4L2_CTRL_FLAG_NEXT_CTRL, 0x8000_0000);
    assert_eq!(V4L2_CTRL_FLAG_DISABLED, 0x0001);
    assert_eq!(v4l2_ctrl_type_V4L2_CTRL_TYPE_CTRL_CLASS, 6);
    assert_eq!(V4L2_BUF_FLAG_TIMESTAMP_MASK, 0x0000_e000);
    assert_eq!(V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC, 0x0000_2000);
    assert_eq!(V4L2_BUF_FLAG_ERROR, 0x0000_0040);
}
