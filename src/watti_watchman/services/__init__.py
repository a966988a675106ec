"""Services built on meters: the control loop, the Venus OS grid feed, Home Assistant."""
