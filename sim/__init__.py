"""sim: the deterministic simulation of SIM.md, World 2 (one process, one seed).

`SimDisk` is `pager.disk`'s `Disk` in memory with power loss and sector faults.
"""

from .disk import NO_DISK_FAULTS, POWER_MODES, DiskFaults, SimDisk, SimFile, SimLock

__all__ = ["NO_DISK_FAULTS", "POWER_MODES", "DiskFaults", "SimDisk", "SimFile", "SimLock"]
