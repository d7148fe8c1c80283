//! The STM32F405's peripherals, by register: clock, USART1 (the link), GPIO B (the outputs),
//! TIM3 (the encoder, in the timer's quadrature mode) and SysTick (the clock).
//!
//! Pins: USART1 TX PA9 / RX PA10; encoder A PA6 / B PA7 (TIM3 channels 1 and 2); ejectors
//! 0–3 on PB0–PB3, the line stop on PB4, the heartbeat on PB5 (all push-pull, active high).
//!
//! Under qemu-system-arm's `netduinoplus2` the clock tree (RCC) is not modelled and reads as
//! zero: the core then runs at the model's fixed 168 MHz and no PLL is waited for.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;

const RCC: usize = 0x4002_3800;
const FLASH_ACR: usize = 0x4002_3C00;
const GPIOA: usize = 0x4002_0000;
const GPIOB: usize = 0x4002_0400;
const USART1: usize = 0x4001_1000;
const TIM3: usize = 0x4000_0400;

/// Core clock after [`init_clock`], Hz.
pub const CORE_HZ: u32 = 168_000_000;
/// USART1's clock (APB2 = core / 2), Hz.
const PCLK2_HZ: u32 = CORE_HZ / 2;
/// SysTick reload for one interrupt per millisecond.
const TICK_RELOAD: u32 = CORE_HZ / 1000 - 1;

fn reg(addr: usize) -> *mut u32 {
    addr as *mut u32
}

fn read(addr: usize) -> u32 {
    // SAFETY: `addr` is one of the peripheral registers named above, always mapped.
    unsafe { read_volatile(reg(addr)) }
}

fn write(addr: usize, v: u32) {
    // SAFETY: as in `read`; the registers written here are owned by this module alone.
    unsafe { write_volatile(reg(addr), v) }
}

fn modify(addr: usize, f: impl FnOnce(u32) -> u32) {
    write(addr, f(read(addr)));
}

/// True when the part's clock tree answers (a real STM32F4: RCC_CR reads HSION | HSIRDY at
/// least); false under the emulator, which does not model it.
pub fn clock_tree_present() -> bool {
    read(RCC) & 0b11 == 0b11
}

/// 168 MHz from the 16 MHz internal oscillator through the PLL (M 16, N 336, P 2, Q 7), flash
/// at 5 wait states, APB1 = 42 MHz, APB2 = 84 MHz. Each wait is bounded: a part whose PLL
/// does not lock keeps running on the internal oscillator (and its timing is then wrong by
/// the ratio, which the station sees in the clock exchange).
pub fn init_clock() {
    if !clock_tree_present() {
        return;
    }
    write(FLASH_ACR, 5 | (1 << 8) | (1 << 9) | (1 << 10));
    write(RCC + 0x04, 16 | (336 << 6) | (7 << 24));
    modify(RCC, |v| v | (1 << 24));
    let mut spins = 0u32;
    while read(RCC) & (1 << 25) == 0 && spins < 1_000_000 {
        spins += 1;
    }
    modify(RCC + 0x08, |v| (v & !0xFCF3) | (0b101 << 10) | (0b100 << 13) | 0b10);
    let mut spins = 0u32;
    while (read(RCC + 0x08) >> 2) & 0b11 != 0b10 && spins < 1_000_000 {
        spins += 1;
    }
}

/// GPIO A (USART1 and encoder pins), GPIO B (outputs), USART1 at `baud`, TIM3 as a
/// quadrature counter.
pub fn init_peripherals(baud: u32) {
    // Clocks: GPIOA, GPIOB (AHB1); USART1 (APB2); TIM3 (APB1).
    modify(RCC + 0x30, |v| v | 0b11);
    modify(RCC + 0x44, |v| v | (1 << 4));
    modify(RCC + 0x40, |v| v | (1 << 1));
    // PA6, PA7 alternate function 2 (TIM3); PA9, PA10 alternate function 7 (USART1).
    modify(GPIOA, |v| {
        (v & !(0b1111 << 12) & !(0b1111 << 18)) | (0b1010 << 12) | (0b1010 << 18)
    });
    modify(GPIOA + 0x20, |v| (v & !(0xFF << 24)) | (0x22 << 24));
    modify(GPIOA + 0x24, |v| (v & !(0xFF << 4)) | (0x77 << 4));
    // PB0–PB5 outputs, all low.
    write(GPIOB + 0x18, 0x3F << 16);
    modify(GPIOB, |v| (v & !0xFFF) | 0x555);
    // USART1: 8N1, transmitter and receiver on.
    write(USART1 + 0x08, (PCLK2_HZ + baud / 2) / baud);
    write(USART1 + 0x0C, (1 << 13) | (1 << 3) | (1 << 2));
    // TIM3: encoder mode 3 (both edges of both channels), inputs on TI1/TI2, free-running.
    write(TIM3 + 0x2C, 0xFFFF);
    write(TIM3 + 0x18, 0b01 | (0b01 << 8));
    write(TIM3 + 0x08, 0b011);
    write(TIM3, 1);
}

/// One byte from the link, if one has arrived.
pub fn try_read() -> Option<u8> {
    // SR bit 5: RXNE. Overrun (bit 3) is cleared by the same SR-then-DR read.
    if read(USART1) & ((1 << 5) | (1 << 3)) != 0 {
        Some(read(USART1 + 0x04) as u8)
    } else {
        None
    }
}

/// Send `bytes` on the link (blocking on the transmit register, ~11 µs a byte at 921 600 Bd).
pub fn write_all(bytes: &[u8]) {
    for &b in bytes {
        while read(USART1) & (1 << 7) == 0 {}
        write(USART1 + 0x04, b as u32);
    }
}

/// Drive output line `pin` (0–5 of GPIO B) to `on`.
pub fn set_output(pin: u8, on: bool) {
    let bit = 1u32 << (pin & 0x0F);
    write(GPIOB + 0x18, if on { bit } else { bit << 16 });
}

/// The encoder's 16-bit hardware count.
pub fn encoder_count() -> u16 {
    read(TIM3 + 0x24) as u16
}

static MILLIS: AtomicU32 = AtomicU32::new(0);
static MILLIS_HIGH: AtomicU32 = AtomicU32::new(0);

/// Start the clock: SysTick on the core clock, one interrupt per millisecond.
pub fn start_clock(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(TICK_RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

#[exception]
fn SysTick() {
    let m = MILLIS.load(Ordering::Relaxed).wrapping_add(1);
    if m == 0 {
        MILLIS_HIGH.fetch_add(1, Ordering::Relaxed);
    }
    MILLIS.store(m, Ordering::Relaxed);
}

/// Microseconds since [`start_clock`], from the millisecond count and SysTick's down-counter
/// (read again if a tick came in between).
pub fn now_us() -> u64 {
    loop {
        let (hi, ms) = (MILLIS_HIGH.load(Ordering::Acquire), MILLIS.load(Ordering::Acquire));
        // SAFETY: a read of SysTick's current-value register, which has no side effect.
        let cvr = unsafe { (*SYST::PTR).cvr.read() } & 0x00FF_FFFF;
        if MILLIS.load(Ordering::Acquire) == ms && MILLIS_HIGH.load(Ordering::Acquire) == hi {
            let ms = ((hi as u64) << 32) | ms as u64;
            let sub = (TICK_RELOAD - cvr.min(TICK_RELOAD)) as u64 * 1000 / (TICK_RELOAD as u64 + 1);
            return ms * 1000 + sub;
        }
    }
}
