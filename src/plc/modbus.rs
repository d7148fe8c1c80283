//! Modbus TCP server: the station's side of the PLC handshake ([`super::PlcState`]), on a
//! thread of its own, listening only where the profile says (`[modbus] listen`).
//!
//! The map (addresses from 0; 32-bit values high word first):
//!
//! | table | address | value |
//! |---|---|---|
//! | input registers | 0–1 | inspection ID of the last decided item (the item line's `item`) |
//! | | 2 | result code: 0 accept, 1 reject, 2 uncertain-reject, 3 fail-safe, 4 fault |
//! | | 3 | class index (0xFFFF: none) |
//! | | 4–5 | items inspected |
//! | | 6–7 | items rejected |
//! | | 8 | station state: 0 starting, 1 running, 2 faulted, 3 stopped |
//! | discrete inputs | 0–4 | ready, busy, result valid, pass, fault |
//! | coils | 0 | trigger enable (1 at start): 0 ignores trigger edges and free-run frames |
//! | | 1 | software trigger: writing 1 is a trigger edge (`modbus.software_trigger`) |
//! | | 2 | result acknowledge: writing 1 clears "result valid" until the next item |
//! | | 3 | reset faults: writing 1 clears the held faults (the screen's strip) |
//! | holding registers | 0 | active recipe index (0: the profile's own, `station.recipe`; 1…: `[[recipes]]` in order); write it to switch |
//!
//! Guarantees:
//! - an address or quantity outside the map, a write to a read-only place, or a function the
//!   map has no table for is answered with a Modbus exception (illegal function 1, illegal
//!   data address 2, illegal data value 3), never a guess; a frame that cannot be decoded
//!   closes that client's connection;
//! - up to [`MAX_CLIENTS`] clients at once, each on its own task; one more is refused (its
//!   connection closed) and counted; a client that vanishes mid-request ends its own task
//!   and nothing else;
//! - the server only reads and sets atomics ([`super::PlcState`]): nothing it does waits for
//!   the frame loop or can hold up a pulse;
//! - the port is bound before the station starts: a port in use or an address that is not
//!   this machine's stops the start with an error naming the profile's field.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio_modbus::{ExceptionCode, Request, Response};

use super::{PlcState, NO_CLASS};

/// Clients served at once: a PLC, a SCADA poller, an engineering laptop and spares. Each
/// costs a task and a socket.
pub const MAX_CLIENTS: usize = 8;

/// Input registers in the map.
pub const INPUT_REGISTERS: u16 = 9;
/// Discrete inputs in the map.
pub const DISCRETE_INPUTS: u16 = 5;
/// Coils in the map.
pub const COILS: u16 = 4;
/// Holding registers in the map.
pub const HOLDING_REGISTERS: u16 = 1;

/// The coil that switches triggers on and off.
pub const COIL_TRIGGER_ENABLE: u16 = 0;
/// The coil whose write of 1 is a trigger edge (`modbus.software_trigger`).
pub const COIL_SOFTWARE_TRIGGER: u16 = 1;
/// The coil that acknowledges a result.
pub const COIL_RESULT_ACK: u16 = 2;
/// The coil that resets the held faults.
pub const COIL_RESET_FAULTS: u16 = 3;

/// Counters of the server, for the run's summary.
#[derive(Debug, Default)]
pub struct ModbusStats {
    /// Requests answered with data or a write's echo.
    pub answered: AtomicU64,
    /// Requests answered with a Modbus exception.
    pub exceptions: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections refused: [`MAX_CLIENTS`] were connected.
    pub refused: AtomicU64,
    /// Connections closed on a frame that could not be decoded or a client that vanished.
    pub closed_on_error: AtomicU64,
}

/// The input registers as they read now.
fn input_registers(s: &PlcState) -> [u16; INPUT_REGISTERS as usize] {
    let (id, code, class) = s.last().map_or((0, 0, NO_CLASS), |l| (l.id, l.code, l.class));
    let (inspected, rejected) = s.counts();
    [
        (id >> 16) as u16,
        id as u16,
        code,
        class,
        (inspected >> 16) as u16,
        inspected as u16,
        (rejected >> 16) as u16,
        rejected as u16,
        s.state() as u16,
    ]
}

/// The coils as they read now: trigger enable; the others are commands and read 0.
fn coils(s: &PlcState) -> [bool; COILS as usize] {
    [s.trigger_enabled(), false, false, false]
}

/// `[addr, addr + count)` within a table of `len`, with `count` within `max` (the protocol's
/// limit per request).
fn range(addr: u16, count: u16, len: u16, max: u16) -> Result<std::ops::Range<usize>, ExceptionCode> {
    if count == 0 || count > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let end = addr as u32 + count as u32;
    if end > len as u32 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(addr as usize..end as usize)
}

/// Writing `on` to coil `addr`.
fn write_coil(s: &PlcState, addr: u16, on: bool) -> Result<(), ExceptionCode> {
    match addr {
        COIL_TRIGGER_ENABLE => {
            s.set_trigger_enable(on);
            Ok(())
        }
        // Only where the profile makes it the part-present signal, whatever the value.
        COIL_SOFTWARE_TRIGGER if !s.soft_trigger_on() => Err(ExceptionCode::IllegalDataAddress),
        COIL_SOFTWARE_TRIGGER => {
            if on {
                s.software_trigger();
            }
            Ok(())
        }
        COIL_RESULT_ACK => {
            if on {
                s.acknowledge();
            }
            Ok(())
        }
        COIL_RESET_FAULTS => {
            if on {
                s.request_fault_reset();
            }
            Ok(())
        }
        _ => Err(ExceptionCode::IllegalDataAddress),
    }
}

/// The answer to one request, from the state as it is now.
pub fn answer(s: &PlcState, req: &Request<'_>) -> Result<Response, ExceptionCode> {
    match req {
        Request::ReadInputRegisters(a, n) => {
            let r = range(*a, *n, INPUT_REGISTERS, 125)?;
            Ok(Response::ReadInputRegisters(input_registers(s)[r].to_vec()))
        }
        Request::ReadHoldingRegisters(a, n) => {
            let r = range(*a, *n, HOLDING_REGISTERS, 125)?;
            Ok(Response::ReadHoldingRegisters([s.recipe_active()][r].to_vec()))
        }
        Request::ReadDiscreteInputs(a, n) => {
            let r = range(*a, *n, DISCRETE_INPUTS, 2000)?;
            Ok(Response::ReadDiscreteInputs(s.flags()[r].to_vec()))
        }
        Request::ReadCoils(a, n) => {
            let r = range(*a, *n, COILS, 2000)?;
            Ok(Response::ReadCoils(coils(s)[r].to_vec()))
        }
        Request::WriteSingleCoil(a, on) => {
            write_coil(s, *a, *on)?;
            Ok(Response::WriteSingleCoil(*a, *on))
        }
        Request::WriteMultipleCoils(a, values) => {
            let n = u16::try_from(values.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
            let r = range(*a, n, COILS, 1968)?;
            // All or nothing: the software trigger only where the profile makes it the
            // part-present signal.
            if r.contains(&(COIL_SOFTWARE_TRIGGER as usize)) && !s.soft_trigger_on() {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            for (c, on) in r.zip(values.iter()) {
                write_coil(s, c as u16, *on)?;
            }
            Ok(Response::WriteMultipleCoils(*a, n))
        }
        Request::WriteSingleRegister(a, v) => {
            range(*a, 1, HOLDING_REGISTERS, 1)?;
            // A recipe the profile does not have is refused; a known one is loaded off the
            // frame path and read back from register 0 once it decides.
            if !s.request_recipe(*v) {
                return Err(ExceptionCode::IllegalDataValue);
            }
            Ok(Response::WriteSingleRegister(*a, *v))
        }
        Request::WriteMultipleRegisters(a, values) => {
            let n = u16::try_from(values.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
            range(*a, n, HOLDING_REGISTERS, 123)?;
            match values.first() {
                Some(v) if s.request_recipe(*v) => Ok(Response::WriteMultipleRegisters(*a, n)),
                _ => Err(ExceptionCode::IllegalDataValue),
            }
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

/// One client's service: answers from the shared state and counts.
struct Client {
    state: Arc<PlcState>,
    stats: Arc<ModbusStats>,
    clients: Arc<AtomicUsize>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

impl tokio_modbus::server::Service for Client {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let a = answer(&self.state, &req);
        let counter = if a.is_ok() {
            &self.stats.answered
        } else {
            &self.stats.exceptions
        };
        counter.fetch_add(1, Ordering::Relaxed);
        std::future::ready(a)
    }
}

/// A running server; stopped when dropped.
#[derive(Debug)]
pub struct ModbusServer {
    /// Where it listens (the port the kernel gave, when the profile asked for 0).
    pub local_addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<ModbusStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ModbusServer {
    /// Bind `listen` (`field` names it in errors) and serve `state` on a thread of its own.
    pub fn start(listen: SocketAddr, state: Arc<PlcState>, field: &str) -> Result<ModbusServer> {
        let std_listener =
            std::net::TcpListener::bind(listen).with_context(|| format!("{field}: cannot listen on {listen}"))?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let stats = Arc::new(ModbusStats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("Modbus server: cannot start its runtime")?;
        let st = stats.clone();
        let thread = std::thread::Builder::new().name("modbus".into()).spawn(move || {
            runtime.block_on(serve(std_listener, state, st, stopped));
        })?;
        Ok(ModbusServer {
            local_addr,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The counters as JSON, for the run's summary, with `state`'s trigger counts.
    pub fn stats_json(&self, state: &PlcState) -> serde_json::Value {
        let s = &self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (ignored, refused) = state.trigger_counts();
        serde_json::json!({
            "triggers_ignored": ignored,
            "soft_triggers_refused": refused,
            "results_acknowledged": state.acknowledged(),
            "listen": self.local_addr.to_string(),
            "answered": g(&s.answered),
            "exceptions": g(&s.exceptions),
            "connections": g(&s.connections),
            "refused": g(&s.refused),
            "closed_on_error": g(&s.closed_on_error),
        })
    }
}

impl Drop for ModbusServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<PlcState>,
    stats: Arc<ModbusStats>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let clients = Arc::new(AtomicUsize::new(0));
    let on_connected = |stream: tokio::net::TcpStream, _addr: SocketAddr| {
        let (state, stats, clients) = (state.clone(), stats.clone(), clients.clone());
        async move {
            if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                clients.fetch_sub(1, Ordering::AcqRel);
                stats.refused.fetch_add(1, Ordering::Relaxed);
                return io::Result::Ok(None);
            }
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let client = Client { state, stats, clients };
            Ok(Some((client, stream)))
        }
    };
    let closed = stats.clone();
    let on_error = move |_e: io::Error| {
        closed.closed_on_error.fetch_add(1, Ordering::Relaxed);
    };
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let stop = Box::pin(async move {
        let _ = stopped.await;
    });
    let _ = server.serve_until(&on_connected, on_error, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decision::{Action, Decision, Outcome};
    use std::borrow::Cow;

    #[test]
    fn the_map_reads_the_state_and_refuses_what_is_outside_it() {
        let s = PlcState::default();
        let d = Decision {
            outcome: Outcome::Reject,
            action: Action::Reject,
            class: Some(3),
            score: 0.9,
        };
        s.set_state(super::super::StationState::Running, false);
        s.publish(0x0001_0002, &d, None, 0x0003_0004, 5);
        let regs = answer(&s, &Request::ReadInputRegisters(0, 9)).unwrap();
        assert_eq!(regs, Response::ReadInputRegisters(vec![1, 2, 1, 3, 3, 4, 0, 5, 1]));
        assert_eq!(
            answer(&s, &Request::ReadInputRegisters(8, 1)).unwrap(),
            Response::ReadInputRegisters(vec![1])
        );
        assert_eq!(
            answer(&s, &Request::ReadDiscreteInputs(0, 5)).unwrap(),
            Response::ReadDiscreteInputs(vec![true, false, true, false, false])
        );
        use ExceptionCode::*;
        for (req, e) in [
            (Request::ReadInputRegisters(8, 2), IllegalDataAddress),
            (Request::ReadInputRegisters(9, 1), IllegalDataAddress),
            (Request::ReadInputRegisters(0, 0), IllegalDataValue),
            (Request::ReadInputRegisters(u16::MAX, 125), IllegalDataAddress),
            (Request::ReadDiscreteInputs(0, 6), IllegalDataAddress),
            (Request::ReadCoils(4, 1), IllegalDataAddress),
            (Request::ReadHoldingRegisters(1, 1), IllegalDataAddress),
            (Request::WriteSingleCoil(1, true), IllegalDataAddress),
            (Request::WriteSingleCoil(4, true), IllegalDataAddress),
            (
                Request::WriteMultipleCoils(1, Cow::Owned(vec![true, true])),
                IllegalDataAddress,
            ),
            (Request::WriteSingleRegister(0, 1), IllegalDataValue),
            (Request::WriteSingleRegister(1, 0), IllegalDataAddress),
            (Request::MaskWriteRegister(0, 1, 1), IllegalFunction),
            (Request::Custom(0x41, Cow::Owned(vec![1, 2])), IllegalFunction),
        ] {
            assert_eq!(answer(&s, &req), Err(e), "{req:?}");
        }
        // The handshake: acknowledge clears "result valid"; reset is taken once.
        assert!(answer(&s, &Request::WriteSingleCoil(COIL_RESULT_ACK, true)).is_ok());
        assert!(!s.flags()[2]);
        assert!(answer(&s, &Request::WriteMultipleCoils(2, Cow::Owned(vec![false, true]))).is_ok());
        assert!(s.take_reset_faults());
        assert_eq!(
            answer(&s, &Request::WriteSingleRegister(0, 0)),
            Ok(Response::WriteSingleRegister(0, 0))
        );
    }
}
