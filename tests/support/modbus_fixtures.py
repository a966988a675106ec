"""Pytest fixtures for real pymodbus servers serving Janitza register images."""
