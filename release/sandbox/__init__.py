"""The sandbox: a small local AWS that Kiln starts itself.

Control plane: moto plus what moto lacks (instance refresh, LT inheritance, real target health…).
Data plane: instances are real processes in copy-on-write root filesystems on loopback addresses.
Never imported by the pure core (config, plan, gate, machine).
"""
