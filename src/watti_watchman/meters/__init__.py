"""Adapters that own a device connection and publish typed snapshots into `Latest` holders."""
