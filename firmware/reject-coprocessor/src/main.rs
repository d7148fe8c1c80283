//! ferroscope's reject co-processor: an STM32F405 (Cortex-M4F, 168 MHz) beside the Linux
//! board, holding the ejector lines and the belt encoder. The station sends captures and
//! decisions over a serial link ([`ferroscope::core::link`]); the co-processor runs the core's
//! reject tracker and drives the pulses on its own clock, so Linux's scheduling no longer
//! decides when an air jet fires.
//!
//! Time and pulses: TIM2 is the clock (1 MHz, 32 bits). The next edge the tracker plans is
//! armed on the compare (SysTick), whose interrupt writes the planned levels to the output
//! lines at the planned microsecond; the main loop reports the edge afterwards, and drives it
//! itself only when the compare has not within [`service::COMPARE_GRACE_US`].
//!
//! The loop: read the link (bytes arrive by USART1's interrupt into a ring), keep time
//! ([`service::Service::tick`]), arm the compare, and sleep (WFI) until the next thing to do,
//! a byte or the compare. Interrupts: USART1 receive and SysTick; no heap, no allocation. Logs
//! are defmt: over RTT on the part (a debug probe reads them), over semihosting under
//! qemu-system-arm (`--features emulator`).

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

/// Read the encoder's count at least this often, µs. Its 16 bits hold 32 767 counts: 400 ms
/// at 4 counts/mm and 20 m/s, so 1 ms also keeps the belt model's speed fresh.
const ENCODER_POLL_US: u64 = 1_000;

/// Log the link's counters every this many own-clock microseconds.
const REPORT_EVERY_US: u64 = 10_000_000;

struct Stm32;

impl service::Board for Stm32 {
    fn send(&mut self, bytes: &[u8]) {
        hw::write_all(bytes);
    }
    fn output(&mut self, output: Output, on: bool) {
        if let Some(p) = pin(output) {
            hw::set_output(p, on);
        }
    }
    fn heartbeat(&mut self, on: bool) {
        hw::set_output(5, on);
    }
    fn arm(&mut self, at_us: u64, edges: &[(Output, bool)], now_us: u64) -> bool {
        let word = edges.iter().fold(0u32, |w, &(output, on)| match pin(output) {
            Some(p) => w | hw::bsrr_bit(p, on),
            None => w,
        });
        hw::compare_arm(at_us, word, now_us)
    }
    fn disarm(&mut self) {
        hw::compare_disarm();
    }
}

/// GPIO B's pin for an output line: ejectors 0–3 on PB0–PB3, the line stop on PB4.
fn pin(output: Output) -> Option<u8> {
    match output {
        Output::Ejector(n) if n < 4 => Some(n),
        Output::Ejector(_) => None,
        Output::LineStop => Some(4),
    }
}

#[entry]
fn main() -> ! {
    let real_part = hw::clock_tree_present();
    hw::init_clock();
    hw::init_peripherals(BAUD);
    hw::start_clock(real_part);
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
        // The timer counts both edges of both channels; 16 bits (see ENCODER_POLL_US).
        let count = hw::encoder_count();
        if count != last_encoder {
            encoder += count.wrapping_sub(last_encoder) as i16 as i64;
            last_encoder = count;
            svc.on_encoder(encoder, now);
        }
        // The compare's time first, then the clock: the clock is read after it.
        let fired = hw::compare_take();
        let now = hw::now_us();
        svc.tick(now, fired.map(|low| hw::extend(low, now)), &mut board);
        if now >= report_at {
            let s = svc.link_stats();
            defmt::info!(
                "link: {=u64} frames, {=u64} dropped, {=u32} bytes lost; {=u64} edges; {=u32} losses; on the own clock {=u64} edges by the compare (at most {=u32} us late), {=u64} by the loop",
                s.frames,
                s.dropped(),
                hw::rx_lost(),
                svc.edges,
                svc.losses,
                svc.compare_edges,
                hw::compare_late_max_us(),
                svc.loop_edges
            );
            report_at = now + REPORT_EVERY_US;
        }
        let wake = svc
            .next_wake(now)
            .unwrap_or(u64::MAX)
            .min(report_at)
            .min(now + ENCODER_POLL_US);
        hw::sleep_until(wake, svc.armed_at());
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
