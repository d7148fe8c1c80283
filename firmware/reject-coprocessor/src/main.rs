//! ferroscope's reject co-processor: an STM32F405 (Cortex-M4F, 168 MHz) beside the Linux
//! board, holding the ejector lines and the belt encoder. The station sends captures and
//! decisions over a serial link ([`ferroscope::core::link`]); the co-processor runs the core's
//! reject tracker and drives the pulses on its own clock, so Linux's scheduling no longer
//! decides when an air jet fires.
//!
//! The loop: read the link, keep time ([`service::Service::tick`]): no interrupts but
//! SysTick's, no heap, no allocation. Logs are defmt: over RTT on the part (a debug probe
//! reads them), over semihosting under qemu-system-arm (`--features emulator`).

#![no_std]
#![no_main]

mod hw;
mod service;

use cortex_m_rt::entry;
#[cfg(feature = "rtt")]
use defmt_rtt as _;
#[cfg(feature = "emulator")]
use defmt_semihosting as _;
use ferroscope::core::link::PROTOCOL;
use ferroscope::core::reject::Output;

/// The link's speed: 921 600 Bd, 8N1 (about 11 µs a byte; a decision frame is under 20 bytes).
pub const BAUD: u32 = 921_600;

/// Log the link's counters every this many own-clock microseconds.
const REPORT_EVERY_US: u64 = 10_000_000;

struct Stm32;

impl service::Board for Stm32 {
    fn send(&mut self, bytes: &[u8]) {
        hw::write_all(bytes);
    }
    fn output(&mut self, output: Output, on: bool) {
        match output {
            Output::Ejector(n) if n < 4 => hw::set_output(n, on),
            Output::Ejector(_) => {}
            Output::LineStop => hw::set_output(4, on),
        }
    }
    fn heartbeat(&mut self, on: bool) {
        hw::set_output(5, on);
    }
}

#[entry]
fn main() -> ! {
    let cp = cortex_m::Peripherals::take().unwrap_or_else(|| defmt::panic!("peripherals taken twice"));
    let real_part = hw::clock_tree_present();
    hw::init_clock();
    hw::init_peripherals(BAUD);
    hw::start_clock(cp.SYST);
    defmt::info!(
        "ferroscope reject co-processor {=u8}.{=u8}.{=u8}, protocol {=u16}, {=u32} Hz core, {}",
        service::VERSION[0],
        service::VERSION[1],
        service::VERSION[2],
        PROTOCOL,
        hw::CORE_HZ,
        if real_part {
            "clock tree set up"
        } else {
            "emulated clock"
        }
    );
    let mut board = Stm32;
    let mut svc = service::Service::new();
    let mut report_at = REPORT_EVERY_US;
    let mut last_encoder = hw::encoder_count();
    let mut encoder: i64 = 0;
    loop {
        let now = hw::now_us();
        while let Some(b) = hw::try_read() {
            svc.on_byte(b, hw::now_us(), &mut board);
        }
        // The timer counts both edges of both channels; 16 bits, so read at least every
        // 32 767 counts (at 4 counts/mm and 20 m/s: every 400 ms; the loop runs in µs).
        let count = hw::encoder_count();
        if count != last_encoder {
            encoder += count.wrapping_sub(last_encoder) as i16 as i64;
            last_encoder = count;
            svc.on_encoder(encoder, now);
        }
        svc.tick(now, &mut board);
        if now >= report_at {
            let s = svc.link_stats();
            defmt::info!(
                "link: {=u64} frames, {=u64} dropped; {=u64} edges; {=u32} losses",
                s.frames,
                s.dropped(),
                svc.edges,
                svc.losses
            );
            report_at = now + REPORT_EVERY_US;
        }
    }
}

#[defmt::panic_handler]
fn defmt_panic() -> ! {
    stop()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if let Some(l) = info.location() {
        defmt::error!("panic at {=str}:{=u32}", l.file(), l.line());
    }
    stop()
}

/// Outputs to their safe (off) state and halt: under the emulator, exit with failure.
fn stop() -> ! {
    for pin in 0..6 {
        hw::set_output(pin, false);
    }
    #[cfg(feature = "emulator")]
    semihosting::process::exit(1);
    #[cfg(not(feature = "emulator"))]
    loop {
        cortex_m::asm::wfi();
    }
}

#[cortex_m_rt::exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    defmt::error!("hard fault at pc {=u32:#x}", frame.pc());
    stop()
}
