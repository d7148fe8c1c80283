//! Real-time setup of the threads that place the reject pulses (`[realtime]`): `SCHED_FIFO`
//! priorities, CPU affinity, locked memory, and a limit on the CPUs' wake-up latency.
//!
//! Guarantees:
//! - each setting applies to the thread that asks for it (the actuator, an input thread) and
//!   to no other: the frame loop and the model's threads keep normal scheduling, so a model
//!   can never starve the pulses;
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
        // SAFETY: cpu_set_t is plain data; CPU_SET writes within it (numbers < MAX_CPUS).
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for c in rt.cpus.iter().filter(|c| **c < MAX_CPUS) {
                libc::CPU_SET(*c, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            refused.push(format!("CPUs {:?} refused: {}", rt.cpus, errno_text()));
        } else {
            parts.push(format!("CPUs {:?}", rt.cpus));
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
