//! The STM32F405's peripherals, by register: clock, USART1 (the link), GPIO B (the outputs),
//! TIM3 (the encoder, in the timer's quadrature mode), TIM2 (the clock, 1 MHz) and SysTick
//! (the compare that drives the pulses).
//!
//! Pins: USART1 TX PA9 / RX PA10; encoder A PA6 / B PA7 (TIM3 channels 1 and 2); ejectors
//! 0–3 on PB0–PB3, the line stop on PB4, the heartbeat on PB5 (all push-pull, active high).
//!
//! Under qemu-system-arm's `netduinoplus2` the clock tree (RCC) is not modelled and reads as
//! zero: the core then runs at the model's fixed 168 MHz and no PLL is waited for.

use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;

const RCC: usize = 0x4002_3800;
const FLASH_ACR: usize = 0x4002_3C00;
const GPIOA: usize = 0x4002_0000;
const GPIOB: usize = 0x4002_0400;
const USART1: usize = 0x4001_1000;
const TIM2: usize = 0x4000_0000;
const TIM3: usize = 0x4000_0400;
const NVIC_ISER: usize = 0xE000_E100;
/// USART1's interrupt number.
const USART1_IRQ: usize = 37;

/// Core clock after [`init_clock`], Hz.
pub const CORE_HZ: u32 = 168_000_000;
/// USART1's clock (APB2 = core / 2), Hz.
const PCLK2_HZ: u32 = CORE_HZ / 2;

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
    // USART1: 8N1, transmitter and receiver on, an interrupt for every byte received.
    write(USART1 + 0x08, (PCLK2_HZ + baud / 2) / baud);
    write(USART1 + 0x0C, (1 << 13) | (1 << 5) | (1 << 3) | (1 << 2));
    write(NVIC_ISER + 4 * (USART1_IRQ / 32), 1 << (USART1_IRQ % 32));
    // TIM3: encoder mode 3 (both edges of both channels), inputs on TI1/TI2, free-running.
    write(TIM3 + 0x2C, 0xFFFF);
    write(TIM3 + 0x18, 0b01 | (0b01 << 8));
    write(TIM3 + 0x08, 0b011);
    write(TIM3, 1);
}

/// Bytes received and not yet read by the main loop. Why 1024: at 921 600 Bd a byte arrives
/// every 10.9 µs, so this holds 11 ms of link while the main loop writes a frame of its own
/// (a frame of at most 164 bytes takes 1.8 ms) or logs.
const RX_RING: usize = 1024;

struct RxRing(UnsafeCell<[u8; RX_RING]>);
// SAFETY: one writer (the USART1 interrupt, at `RX_HEAD`) and one reader (the main loop, at
// `RX_TAIL`); a slot is read only after the head has moved past it, written only after the
// tail has.
unsafe impl Sync for RxRing {}
static RX: RxRing = RxRing(UnsafeCell::new([0; RX_RING]));
static RX_HEAD: AtomicUsize = AtomicUsize::new(0);
static RX_TAIL: AtomicUsize = AtomicUsize::new(0);
/// Bytes lost because the ring was full.
static RX_LOST: AtomicU32 = AtomicU32::new(0);

/// USART1's interrupt: every byte received goes to the ring.
fn usart1_rx() {
    // SR bit 5: RXNE. Overrun (bit 3) is cleared by the same SR-then-DR read.
    while read(USART1) & ((1 << 5) | (1 << 3)) != 0 {
        let b = read(USART1 + 0x04) as u8;
        let head = RX_HEAD.load(Ordering::Relaxed);
        if head.wrapping_sub(RX_TAIL.load(Ordering::Acquire)) < RX_RING {
            // SAFETY: the slot at `head` is not readable until the head moves past it below.
            unsafe { (*RX.0.get())[head % RX_RING] = b };
            RX_HEAD.store(head.wrapping_add(1), Ordering::Release);
        } else {
            RX_LOST.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One byte from the link, if one has arrived.
pub fn try_read() -> Option<u8> {
    let tail = RX_TAIL.load(Ordering::Relaxed);
    if tail == RX_HEAD.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: the interrupt wrote this slot before moving the head past it.
    let b = unsafe { (*RX.0.get())[tail % RX_RING] };
    RX_TAIL.store(tail.wrapping_add(1), Ordering::Release);
    Some(b)
}

/// Bytes the link lost to a full receive ring since power-on.
pub fn rx_lost() -> u32 {
    RX_LOST.load(Ordering::Relaxed)
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if irqn == USART1_IRQ as i16 {
        usart1_rx();
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
    write(GPIOB + 0x18, bsrr_bit(pin, on));
}

/// The encoder's 16-bit hardware count.
pub fn encoder_count() -> u16 {
    read(TIM3 + 0x24) as u16
}

/// TIM2's input clock, Hz: APB1's timer clock (2 × 42 MHz) on the part; the emulator's timer
/// model counts nanoseconds of its virtual clock instead.
fn tim2_input_hz(real_part: bool) -> u32 {
    if real_part {
        84_000_000
    } else {
        1_000_000_000
    }
}

/// The clock: TIM2, 32 bits, free-running at 1 MHz from the same crystal as the core. Its low
/// word wraps every 71.6 minutes; [`now_us`] extends it (the main loop reads it every few µs).
pub fn start_clock(real_part: bool) {
    modify(RCC + 0x40, |v| v | 1);
    write(TIM2, 0);
    write(TIM2 + 0x28, tim2_input_hz(real_part) / 1_000_000 - 1);
    write(TIM2 + 0x2C, 0xFFFF_FFFF);
    // The prescaler is loaded at an update event: make one now, then count.
    write(TIM2 + 0x14, 1);
    write(TIM2 + 0x10, 0);
    write(TIM2, 1);
}

/// TIM2's count: the low 32 bits of the clock's microseconds.
fn clock_low() -> u32 {
    read(TIM2 + 0x24)
}

/// The clock's last low word read by [`now_us`], and its wraps so far (main loop only).
static CLOCK_LAST: AtomicU32 = AtomicU32::new(0);
static CLOCK_WRAPS: AtomicU32 = AtomicU32::new(0);

/// Microseconds since [`start_clock`]. Called from the main loop only (the compare's
/// interrupt reads the low word and [`compare_take`] extends it).
pub fn now_us() -> u64 {
    let low = clock_low();
    if low < CLOCK_LAST.load(Ordering::Relaxed) {
        CLOCK_WRAPS.fetch_add(1, Ordering::Relaxed);
    }
    CLOCK_LAST.store(low, Ordering::Relaxed);
    ((CLOCK_WRAPS.load(Ordering::Relaxed) as u64) << 32) | low as u64
}

/// The compare: SysTick, counting core cycles down to zero, interrupts at the planned time
/// and its handler drives every line of the planned edge with one write to GPIO B's set/reset
/// register. It holds one edge time at a time ([`compare_arm`]); between edges it wakes the
/// main loop from its sleep ([`sleep_until`]).
const CYCLES_PER_US: u32 = CORE_HZ / 1_000_000;
/// SysTick's 24-bit reload: at most 99.8 ms at 168 MHz; a later time is reached in steps.
const SYSTICK_MAX: u32 = 0x00FF_FFFF;

/// Armed: the planned time's low word, the set/reset word to write, and whether it is armed.
static COMPARE_AT: AtomicU32 = AtomicU32::new(0);
static COMPARE_WORD: AtomicU32 = AtomicU32::new(0);
static COMPARE_ARMED: AtomicBool = AtomicBool::new(false);
/// Fired: the clock's low word when the handler wrote the word, and whether that is new.
static COMPARE_DRIVEN: AtomicU32 = AtomicU32::new(0);
static COMPARE_FIRED: AtomicBool = AtomicBool::new(false);
/// The latest the handler ever wrote a word after its planned time, µs.
static COMPARE_LATE_MAX: AtomicU32 = AtomicU32::new(0);

/// The set/reset word that drives output `pin` (0–5 of GPIO B) to `on`.
pub fn bsrr_bit(pin: u8, on: bool) -> u32 {
    let bit = 1u32 << (pin & 0x0F);
    if on {
        bit
    } else {
        bit << 16
    }
}

fn systick_run(cycles: u32) {
    // SAFETY: SysTick belongs to this module (the compare); these are its reload, current
    // value and control registers.
    unsafe {
        let syst = &*SYST::PTR;
        syst.csr.write(0);
        syst.rvr.write(cycles.clamp(1, SYSTICK_MAX));
        syst.cvr.write(0);
        // Enable, interrupt, core clock.
        syst.csr.write(0b111);
    }
}

fn systick_stop() {
    // SAFETY: as in `systick_run`.
    unsafe { (*SYST::PTR).csr.write(0) }
}

/// Arm the compare: at clock time `at_us`, write `word` to GPIO B's set/reset register. A time
/// already reached is not armed (false): the caller drives it. [`sleep_until`] starts the
/// countdown.
pub fn compare_arm(at_us: u64, word: u32, now: u64) -> bool {
    compare_disarm();
    if at_us <= now {
        return false;
    }
    COMPARE_AT.store(at_us as u32, Ordering::Relaxed);
    COMPARE_WORD.store(word, Ordering::Relaxed);
    COMPARE_ARMED.store(true, Ordering::Release);
    true
}

/// Disarm the compare (a word not yet written is not written).
pub fn compare_disarm() {
    COMPARE_ARMED.store(false, Ordering::Release);
}

/// Count down to the earlier of `wake_us` and the armed edge `edge_us`, then sleep until an
/// interrupt: that countdown's end, a byte on the link, or the compare. Returns at once when
/// a byte or a fired compare is waiting, or the time has come.
pub fn sleep_until(wake_us: u64, edge_us: Option<u64>) {
    cortex_m::interrupt::disable();
    let now = now_us();
    let target = edge_us.map_or(wake_us, |e| e.min(wake_us));
    let us = target
        .saturating_sub(now)
        .clamp(1, (SYSTICK_MAX / CYCLES_PER_US) as u64) as u32;
    systick_run(us * CYCLES_PER_US);
    let waiting =
        RX_TAIL.load(Ordering::Relaxed) != RX_HEAD.load(Ordering::Acquire) || COMPARE_FIRED.load(Ordering::Acquire);
    if !waiting && target > now {
        cortex_m::asm::wfi();
    }
    // SAFETY: interrupts were enabled on entry (the main loop never runs with them off).
    unsafe { cortex_m::interrupt::enable() };
}

/// The clock's low word when the compare last wrote its word, if it did since the last call.
pub fn compare_take() -> Option<u32> {
    if COMPARE_FIRED.swap(false, Ordering::Acquire) {
        Some(COMPARE_DRIVEN.load(Ordering::Relaxed))
    } else {
        None
    }
}

/// The clock time of low word `low`, read at or before clock time `now` (within 71 minutes).
pub fn extend(low: u32, now: u64) -> u64 {
    now.saturating_sub((now as u32).wrapping_sub(low) as u64)
}

/// The latest the compare has written a word after its planned time, µs.
pub fn compare_late_max_us() -> u32 {
    COMPARE_LATE_MAX.load(Ordering::Relaxed)
}

#[exception]
fn SysTick() {
    systick_stop();
    if !COMPARE_ARMED.load(Ordering::Acquire) {
        return; // a wake-up only
    }
    let now = clock_low();
    let early = COMPARE_AT.load(Ordering::Relaxed).wrapping_sub(now) as i32;
    if early > 0 {
        return; // a wake-up before the edge: the main loop counts down again
    }
    write(GPIOB + 0x18, COMPARE_WORD.load(Ordering::Relaxed));
    COMPARE_ARMED.store(false, Ordering::Relaxed);
    COMPARE_DRIVEN.store(now, Ordering::Relaxed);
    COMPARE_FIRED.store(true, Ordering::Release);
    COMPARE_LATE_MAX.fetch_max(early.unsigned_abs(), Ordering::Relaxed);
}
