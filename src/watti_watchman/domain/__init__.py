"""Pure logic: readings, the control law, limits. No I/O, no asyncio, no clock reads."""
