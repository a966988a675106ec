"""Simulated peers and plant: Janitza Modbus servers, a Venus OS emulator, load scenarios."""
