//! Real-time setup of the threads that place the reject pulses (`[realtime]`): `SCHED_FIFO`
//! priorities, CPU affinity, and locked memory.
//!
//! Guarantees:
//! - each setting applies to the thread that asks for it (the actuator, an input thread) and
//!   to no other: the frame loop and the model's threads keep normal scheduling, so a model
//!   can never starve the pulses;
//! - a setting the process is not allowed (no `CAP_SYS_NICE`, `RLIMIT_RTPRIO` too low,
//!   `RLIMIT_MEMLOCK` too small) is never fatal: the thread runs without it, and what was
//!   refused and why is written to stderr (the journal) once and reported in the run's
//!   summary (`realtime`);
//! - what did apply is read back from the kernel, not assumed.

use std::sync::Mutex;

use super::config::RealtimeSection;

/// Highest CPU number `realtime.cpus` may name: the size of the kernel's `cpu_set_t`.
pub const MAX_CPUS: usize = 1024;

/// What the real-time setup did, per thread, in words (`"actuator: SCHED_FIFO 80, CPUs [1]"`,
/// `"encoder: normal scheduling (SCHED_FIFO 70 refused: Operation not permitted)"`).
#[derive(Debug, Default)]
pub struct RealtimeReport {
    lines: Mutex<Vec<String>>,
}

impl RealtimeReport {
    fn push(&self, line: String) {
        if let Ok(mut l) = self.lines.lock() {
            l.push(line);
        }
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
    if !refused.is_empty() {
        line.push_str(&format!(" ({})", refused.join("; ")));
        eprintln!("realtime: {line}: the station runs on without it");
    }
    report.push(line);
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
        report.push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_sched_fifo_or_says_why_not_and_runs_on() {
        let rt = RealtimeSection {
            actuator_priority: Some(10),
            cpus: vec![0],
            ..RealtimeSection::default()
        };
        let report = RealtimeReport::default();
        let (policy, line) = std::thread::spawn(move || {
            setup_thread("actuator", rt.actuator_priority, &rt, &report);
            (current_policy(), report.lines().pop().unwrap())
        })
        .join()
        .unwrap();
        if policy.0 == libc::SCHED_FIFO {
            assert_eq!(policy.1, 10);
            assert!(line.starts_with("actuator: SCHED_FIFO 10"), "{line}");
        } else {
            assert!(
                line.contains("normal scheduling") && line.contains("SCHED_FIFO 10 refused"),
                "{line}"
            );
        }
        // The thread that asked, and no other.
        assert_ne!(current_policy().0, libc::SCHED_FIFO);
    }
}
