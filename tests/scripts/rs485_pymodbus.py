#!/usr/bin/env python3
"""A third-party Modbus RTU client (pymodbus in serial mode) reading the Locker Hub simulators.

Usage: rs485_pymodbus.py PORT BAUD BOARD_UNIT CHARGER_UNIT
Prints one JSON object: the board's 16 door sensors (FC02 at 0), its lock count (FC04 at 1)
and the charger's state of charge (FC04 at 0x311A). Exits 1 on any Modbus error.
Run by tests/tests/rs485.rs; scripts/install-test-deps.sh installs pymodbus.
"""
import json
import sys

from pymodbus.client import ModbusSerialClient


def main():
    port, baud, board, charger = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    client = ModbusSerialClient(port=port, baudrate=baud, bytesize=8, parity="N", stopbits=1, timeout=2)
    if not client.connect():
        print(f"cannot open {port}", file=sys.stderr)
        return 1
    try:
        doors = client.read_discrete_inputs(0, 16, slave=board)
        locks = client.read_input_registers(1, 1, slave=board)
        soc = client.read_input_registers(0x311A, 1, slave=charger)
        for r in (doors, locks, soc):
            if r.isError():
                print(f"modbus error: {r}", file=sys.stderr)
                return 1
        print(json.dumps({
            "doors": [bool(b) for b in doors.bits[:16]],
            "locks": locks.registers[0],
            "soc": soc.registers[0],
        }))
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
