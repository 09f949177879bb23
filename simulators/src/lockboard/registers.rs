//! Modbus request handling of the lock board: maps function codes and addresses onto the
//! board model (the register map is documented in [`super`]).

use std::time::Duration;

use tokio::time::Instant;

use tokio_modbus::{ExceptionCode, Request, Response};

use super::{reg, LockBoardSim};
use crate::modbus::{
    check_quantity, offset_in, MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS,
    MAX_WRITE_REGISTERS,
};

/// Execute one request against `board`.
pub(super) fn handle(
    board: &LockBoardSim,
    request: &Request<'_>,
) -> Result<Response, ExceptionCode> {
    let n = usize::from(board.lock_count());
    match request {
        Request::ReadCoils(addr, qty) => {
            let qty = usize::from(*qty);
            check_quantity(qty, MAX_READ_BITS)?;
            let first = offset_in(*addr, qty, reg::COIL_BASE, n)
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            let model = board.settled(Instant::now());
            Ok(Response::ReadCoils(
                (first..first + qty).map(|i| model.coil_on(i)).collect(),
            ))
        }
        Request::ReadDiscreteInputs(addr, qty) => {
            let qty = usize::from(*qty);
            check_quantity(qty, MAX_READ_BITS)?;
            let model = board.settled(Instant::now());
            if let Some(first) = offset_in(*addr, qty, reg::DOOR_SENSOR_BASE, n) {
                Ok(Response::ReadDiscreteInputs(
                    (first..first + qty).map(|i| model.sensor_open(i)).collect(),
                ))
            } else if let Some(first) = offset_in(*addr, qty, reg::PARCEL_SENSOR_BASE, n) {
                Ok(Response::ReadDiscreteInputs(
                    (first..first + qty)
                        .map(|i| model.locks[i].parcel)
                        .collect(),
                ))
            } else {
                Err(ExceptionCode::IllegalDataAddress)
            }
        }
        Request::WriteSingleCoil(addr, on) => {
            let i =
                offset_in(*addr, 1, reg::COIL_BASE, n).ok_or(ExceptionCode::IllegalDataAddress)?;
            if *on {
                board.fire(&[i]);
            }
            Ok(Response::WriteSingleCoil(*addr, *on))
        }
        Request::WriteMultipleCoils(addr, coils) => {
            check_quantity(coils.len(), MAX_WRITE_BITS)?;
            let first = offset_in(*addr, coils.len(), reg::COIL_BASE, n)
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            let on: Vec<usize> = coils
                .iter()
                .enumerate()
                .filter(|(_, on)| **on)
                .map(|(k, _)| first + k)
                .collect();
            board.fire(&on);
            // check_quantity bounded the length to MAX_WRITE_BITS, so it fits in u16.
            let qty = u16::try_from(coils.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
            Ok(Response::WriteMultipleCoils(*addr, qty))
        }
        Request::ReadInputRegisters(addr, qty) => {
            let qty = usize::from(*qty);
            check_quantity(qty, MAX_READ_REGISTERS)?;
            if let Some(first) = offset_in(*addr, qty, reg::FIRMWARE_VERSION, 2) {
                let words = [reg::FIRMWARE, board.lock_count()];
                Ok(Response::ReadInputRegisters(
                    words[first..first + qty].to_vec(),
                ))
            } else if let Some(first) = offset_in(*addr, qty, reg::PULSE_COUNTER_BASE, n) {
                let model = board.settled(Instant::now());
                Ok(Response::ReadInputRegisters(
                    // The counter register wraps at 16 bits by design.
                    (first..first + qty)
                        .map(|i| (model.locks[i].pulses & 0xFFFF) as u16)
                        .collect(),
                ))
            } else {
                Err(ExceptionCode::IllegalDataAddress)
            }
        }
        Request::ReadHoldingRegisters(addr, qty) => {
            let qty = usize::from(*qty);
            check_quantity(qty, MAX_READ_REGISTERS)?;
            offset_in(*addr, qty, reg::PULSE_MS, 1).ok_or(ExceptionCode::IllegalDataAddress)?;
            let ms = board.settled(Instant::now()).pulse.as_millis();
            Ok(Response::ReadHoldingRegisters(vec![
                u16::try_from(ms).unwrap_or(u16::MAX)
            ]))
        }
        Request::WriteSingleRegister(addr, value) => {
            offset_in(*addr, 1, reg::PULSE_MS, 1).ok_or(ExceptionCode::IllegalDataAddress)?;
            set_pulse(board, *value)?;
            Ok(Response::WriteSingleRegister(*addr, *value))
        }
        Request::WriteMultipleRegisters(addr, words) => {
            check_quantity(words.len(), MAX_WRITE_REGISTERS)?;
            offset_in(*addr, words.len(), reg::PULSE_MS, 1)
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            set_pulse(board, words[0])?;
            Ok(Response::WriteMultipleRegisters(*addr, 1))
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

fn set_pulse(board: &LockBoardSim, ms: u16) -> Result<(), ExceptionCode> {
    if !reg::PULSE_MS_RANGE.contains(&ms) {
        return Err(ExceptionCode::IllegalDataValue);
    }
    board
        .set_pulse_duration(Duration::from_millis(u64::from(ms)))
        .map_err(|_| ExceptionCode::IllegalDataValue)
}
