//! Real-time setup of the threads that place the reject pulses (`[realtime]`): `SCHED_FIFO`
//! priorities, CPU affinity, locked memory, and a limit on the CPUs' wake-up latency.
//!
//! Guarantees:
//! - each setting applies to the thread that asks for it (the actuator, an input thread) and
//!   to no other: the frame loop and the model's threads keep normal scheduling, so a model
//!   can never starve the pulses;
//! - `frame_cpus` keeps the frame loop and every thread it starts off the pulse threads'
//!   `cpus` for the run, and gives the frame loop's thread its former CPUs back after;
//! - a setting the process is not allowed (no `CAP_SYS_NICE`, `RLIMIT_RTPRIO` too low,
//!   `RLIMIT_MEMLOCK` too small) is never fatal: the thread runs without it, and what was
//!   refused and why is written to stderr (the journal) once and reported in the run's
//!   summary (`realtime`);
//! - what did apply is read back from the kernel, not assumed;
//! - a refusal also stays on the technician's screen for the whole run (`REALTIME OFF` on
//!   the fault strip, [`RealtimeReport::refused`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::config::RealtimeSection;

/// The kernel's PM QoS device: while it is held open with a value written, no CPU enters an
/// idle state whose wake-up takes longer than that many µs.
pub const CPU_LATENCY_DEVICE: &str = "/dev/cpu_dma_latency";

/// Highest CPU number `realtime.cpus` may name: the size of the kernel's `cpu_set_t`.
pub const MAX_CPUS: usize = 1024;

/// What the real-time setup did, per thread, in words (`"actuator: SCHED_FIFO 80, CPUs [1]"`,
/// `"encoder: normal scheduling (SCHED_FIFO 70 refused: Operation not permitted)"`).
#[derive(Debug, Default)]
pub struct RealtimeReport {
    lines: Mutex<Vec<String>>,
    refused: AtomicBool,
}

impl RealtimeReport {
    fn push(&self, line: String) {
        if let Ok(mut l) = self.lines.lock() {
            l.push(line);
        }
    }

    fn push_refused(&self, line: String) {
        self.refused.store(true, Ordering::Relaxed);
        self.push(line);
    }

    /// Whether any setting was refused (read from the frame loop: an atomic, never waits).
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

/// The calling thread's scheduling policy and priority, as the kernel has them.
pub fn current_policy() -> (i32, i32) {
    let mut policy = 0;
    // SAFETY: sched_param is plain data; pthread_self is the calling thread.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals.
    let rc = unsafe { libc::pthread_getschedparam(libc::pthread_self(), &mut policy, &mut param) };
    if rc != 0 {
        return (libc::SCHED_OTHER, 0);
    }
    (policy, param.sched_priority)
}

/// Apply `priority` (SCHED_FIFO) and `rt.cpus` to the calling thread, named `role`; says
/// what applied in `report`, and on stderr what was refused.
pub fn setup_thread(role: &str, priority: Option<u8>, rt: &RealtimeSection, report: &RealtimeReport) {
    let mut parts = Vec::new();
    let mut refused = Vec::new();
    if let Some(p) = priority {
        // SAFETY: sched_param is plain data.
        let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
        param.sched_priority = p as i32;
        // SAFETY: the calling thread and a valid sched_param.
        let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
        if rc != 0 {
            refused.push(format!(
                "SCHED_FIFO {p} refused: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
    }
    if !rt.cpus.is_empty() {
        match set_affinity(&rt.cpus) {
            Err(e) => refused.push(format!("CPUs {:?} refused: {e}", rt.cpus)),
            Ok(()) => parts.push(format!("CPUs {:?}", rt.cpus)),
        }
    }
    let (policy, prio) = current_policy();
    let sched = if policy == libc::SCHED_FIFO {
        format!("SCHED_FIFO {prio}")
    } else {
        "normal scheduling".to_string()
    };
    parts.insert(0, sched);
    let mut line = format!("{role}: {}", parts.join(", "));
    if refused.is_empty() {
        report.push(line);
    } else {
        line.push_str(&format!(" ({})", refused.join("; ")));
        eprintln!("realtime: {line}: the station runs on without it");
        report.push_refused(line);
    }
}

/// Confine the calling thread to `cpus` (numbers at or above [`MAX_CPUS`] are left out).
fn set_affinity(cpus: &[usize]) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it (numbers < MAX_CPUS).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus.iter().filter(|c| **c < MAX_CPUS) {
            libc::CPU_SET(*c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno_text())
    }
}

/// The calling thread's CPUs, as the kernel has them (`None` when it cannot say).
fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data, written by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0).then_some(set)
    }
}

/// The frame loop's CPUs, in force on the thread that made it until it is dropped; then
/// that thread has its former CPUs back.
#[derive(Debug)]
pub struct FrameCpusHold {
    former: Option<libc::cpu_set_t>,
}

impl Drop for FrameCpusHold {
    fn drop(&mut self) {
        if let Some(set) = &self.former {
            // SAFETY: a cpu_set_t the kernel gave for this thread.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
        }
    }
}

/// Confine the calling thread, the frame loop, to `rt.frame_cpus` (when set) before it starts
/// the other threads, which inherit them; the actuator and input threads move to `rt.cpus`
/// themselves ([`setup_thread`]). Says what happened in `report`, and on stderr when refused.
pub fn pin_frame_loop(rt: &RealtimeSection, report: &RealtimeReport) -> FrameCpusHold {
    if rt.frame_cpus.is_empty() {
        return FrameCpusHold { former: None };
    }
    let former = affinity();
    match set_affinity(&rt.frame_cpus) {
        Ok(()) => {
            report.push(format!("frame loop: CPUs {:?}", rt.frame_cpus));
            FrameCpusHold { former }
        }
        Err(e) => {
            let line = format!("frame loop: any CPU (CPUs {:?} refused: {e})", rt.frame_cpus);
            eprintln!("realtime: {line}: the station runs on without it");
            report.push_refused(line);
            FrameCpusHold { former: None }
        }
    }
}

/// `mlockall(MCL_CURRENT | MCL_FUTURE)` when `rt.lock_memory`; says what happened in
/// `report`, and on stderr when refused.
pub fn lock_memory(rt: &RealtimeSection, report: &RealtimeReport) {
    if !rt.lock_memory {
        return;
    }
    // SAFETY: no pointers; locks this process's pages.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if rc == 0 {
        report.push("memory: locked".into());
    } else {
        let line = format!("memory: not locked (mlockall refused: {})", errno_text());
        eprintln!("realtime: {line}: the station runs on without it");
        report.push_refused(line);
    }
}

/// The kernel's count of CPU time stolen by a hypervisor, all CPUs, µs since boot
/// (`/proc/stat`; `None` where it cannot be read).
pub fn cpu_steal_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // "cpu  user nice system idle iowait irq softirq steal …", in clock ticks.
    let steal: u64 = stat.lines().next()?.split_whitespace().nth(8)?.parse().ok()?;
    // SAFETY: sysconf has no pointer arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| steal.saturating_mul(1_000_000) / hz as u64)
}

/// The CPU wake-up latency limit, in force while this is alive.
#[derive(Debug)]
pub struct CpuLatencyHold {
    _device: Option<std::fs::File>,
}

/// Hold the CPUs' wake-up latency at `rt.cpu_latency_us` (when set) until the hold is dropped;
/// says what happened in `report`, and on stderr when refused.
pub fn hold_cpu_latency(rt: &RealtimeSection, report: &RealtimeReport) -> CpuLatencyHold {
    use std::io::Write;
    let Some(us) = rt.cpu_latency_us else {
        return CpuLatencyHold { _device: None };
    };
    let held = std::fs::OpenOptions::new()
        .write(true)
        .open(CPU_LATENCY_DEVICE)
        .and_then(|mut f| f.write_all(&(us.min(i32::MAX as u32) as i32).to_ne_bytes()).map(|_| f));
    match held {
        Ok(f) => {
            report.push(format!("CPU wake-up latency: held at {us} µs"));
            CpuLatencyHold { _device: Some(f) }
        }
        Err(e) => {
            let line = format!("CPU wake-up latency: not held ({CPU_LATENCY_DEVICE}: {e})");
            eprintln!("realtime: {line}: the station runs on without it");
            report.push_refused(line);
            CpuLatencyHold { _device: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_loop_is_kept_to_its_cpus_and_given_its_former_ones_back() {
        std::thread::spawn(|| {
            let before = affinity().expect("sched_getaffinity");
            fn count(s: &libc::cpu_set_t) -> usize {
                // SAFETY: CPU_ISSET reads within the set (numbers < MAX_CPUS).
                (0..MAX_CPUS).filter(|c| unsafe { libc::CPU_ISSET(*c, s) }).count()
            }
            let rt = RealtimeSection {
                frame_cpus: vec![0],
                ..RealtimeSection::default()
            };
            let report = RealtimeReport::default();
            {
                let _hold = pin_frame_loop(&rt, &report);
                let now = affinity().unwrap();
                // CPU 0 exists on every machine; the kernel has the thread on it alone.
                assert_eq!(report.lines(), vec!["frame loop: CPUs [0]".to_string()]);
                // SAFETY: CPU 0 is within the set.
                assert!(unsafe { libc::CPU_ISSET(0, &now) } && count(&now) == 1);
                // A thread started now inherits the frame loop's CPUs.
                let child = std::thread::spawn(|| affinity().map(|s| count(&s))).join().unwrap();
                assert_eq!(child, Some(1));
            }
            assert_eq!(count(&affinity().unwrap()), count(&before), "former CPUs back");
            // A CPU the machine lacks is refused, said, and the thread keeps what it had.
            let report = RealtimeReport::default();
            let rt = RealtimeSection {
                frame_cpus: vec![MAX_CPUS - 1],
                ..RealtimeSection::default()
            };
            let _hold = pin_frame_loop(&rt, &report);
            assert!(
                report.refused() && report.lines()[0].contains("refused"),
                "{:?}",
                report.lines()
            );
            assert_eq!(count(&affinity().unwrap()), count(&before));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn stolen_time_is_read_and_never_goes_back() {
        let a = cpu_steal_us().expect("/proc/stat has a steal column");
        let b = cpu_steal_us().unwrap();
        assert!(b >= a, "{a} then {b}");
    }

    #[test]
    fn the_cpu_latency_is_held_or_the_refusal_is_said() {
        let rt = RealtimeSection {
            cpu_latency_us: Some(20),
            ..RealtimeSection::default()
        };
        let report = RealtimeReport::default();
        let hold = hold_cpu_latency(&rt, &report);
        let line = report.lines().pop().unwrap();
        match &hold._device {
            Some(_) => {
                assert_eq!(line, "CPU wake-up latency: held at 20 µs");
                assert!(!report.refused());
            }
            None => {
                assert!(line.contains("not held") && line.contains(CPU_LATENCY_DEVICE), "{line}");
                assert!(report.refused(), "a refusal is kept for the screen");
            }
        }
        let none = hold_cpu_latency(&RealtimeSection::default(), &report);
        assert!(none._device.is_none());
    }

    #[test]
    fn a_thread_gets_sched_fifo_or_says_why_not_and_runs_on() {
        let rt = RealtimeSection {
            actuator_priority: Some(10),
            cpus: vec![0],
            ..RealtimeSection::default()
        };
        let report = RealtimeReport::default();
        let (policy, line, refused) = std::thread::spawn(move || {
            setup_thread("actuator", rt.actuator_priority, &rt, &report);
            (current_policy(), report.lines().pop().unwrap(), report.refused())
        })
        .join()
        .unwrap();
        if policy.0 == libc::SCHED_FIFO {
            assert_eq!(policy.1, 10);
            assert!(line.starts_with("actuator: SCHED_FIFO 10"), "{line}");
            assert_eq!(refused, line.contains("refused"), "{line}");
        } else {
            assert!(refused, "a refusal is kept for the screen: {line}");
            assert!(
                line.contains("normal scheduling") && line.contains("SCHED_FIFO 10 refused"),
                "{line}"
            );
        }
        // The thread that asked, and no other.
        assert_ne!(current_policy().0, libc::SCHED_FIFO);
    }
}
