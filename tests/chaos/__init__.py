"""The fault-injection suite (`make chaos`): real roles and services, faults under load."""
