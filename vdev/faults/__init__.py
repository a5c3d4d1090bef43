"""Fault injection at the device's DOE transport (docs/faults.md).

`plan` is sans-IO (rules, parsing, selection); `injector` applies a plan to a TeeDevice
by wrapping its SPDM DOE handlers, outside the protocol engines."""

from vdev.faults.injector import FaultInjector, install
from vdev.faults.plan import KINDS, FaultPlan, FaultPlanError, FaultRule

__all__ = ["KINDS", "FaultInjector", "FaultPlan", "FaultPlanError", "FaultRule", "install"]
