"""The one seam between gpuops and NVML: each pynvml call gpuops makes, turned into plain values.

    with open_nvml() as nv:
        h = nv.handle(0)
        nv.name(h), nv.memory_mib(h), nv.processes(h, "compute")
    # -> ('NVIDIA H100 80GB HBM3', (40123.0, 81559.0), [(41234, 40000.0)])

`Nvml(lib)` takes the pynvml module (or, in tests, an object answering the same calls with pynvml's
own structures and error classes), so the decoding below is what runs in production and in tests.
Values NVML reports as "not available" or "not supported" come back as None, never as 0.
pynvml is imported only when a session is opened: `inv --list` does not pay for it.
"""

from __future__ import annotations

# NVML_VALUE_NOT_AVAILABLE_ulonglong: what NVML writes into a 64-bit field it cannot fill
# (per-process memory on MIG or WDDM, memory of some unified-memory devices).
NOT_AVAILABLE = 2**64 - 1
MIB = 1024 * 1024
# The driver's device files: every process with a CUDA or graphics context holds one open
# (/dev/dxg: the GPU under WSL2). A local PID that holds none is not the GPU process NVML means.
DEVICE_PREFIXES = ("/dev/nvidia", "/dev/dxg")


class NvmlUnavailable(Exception):
    """NVML cannot be used on this machine; `reason` says why in words a user can act on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NvmlCallFailed(Exception):
    """One NVML query failed (no permission, not supported, GPU lost); `reason` is NVML's word for it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# NVML init errors -> what the user should understand (keyed by pynvml's error class names).
_INIT_REASONS = {
    "NVMLError_LibraryNotFound": "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver installed here",
    "NVMLError_DriverNotLoaded": "the NVIDIA kernel driver is not loaded",
    "NVMLError_NoPermission": "no permission to open the NVIDIA devices (/dev/nvidia*)",
    "NVMLError_LibRmVersionMismatch": "NVML library and kernel driver versions differ "
    "(driver upgraded without reboot? reload the nvidia module or reboot)",
    "NVMLError_FunctionNotFound": "the NVIDIA driver is too old for this nvidia-ml-py",
}

# Failed queries -> the words shown in the table, e.g. "(processes: no permission)".
DRIVER_TOO_OLD = "the NVIDIA driver is too old for this query (upgrade the driver)"
_CALL_REASONS = {
    "NVMLError_NoPermission": "no permission",
    "NVMLError_NotSupported": "not supported",
    "NVMLError_FunctionNotFound": DRIVER_TOO_OLD,
    "NVMLError_GpuIsLost": "GPU is lost (fell off the bus: see `dmesg`, the machine may need a reset)",
}


def _reason(err) -> str:
    """The table's words for a failed query: `_reason(NVMLError_NoPermission())` -> "no permission"."""
    return _CALL_REASONS.get(type(err).__name__, str(err))


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _mib(value) -> float | None:
    if value is None or value == NOT_AVAILABLE:
        return None
    return value / MIB


class Nvml:
    """One NVML session, opened with `with`; nested `with` blocks share it (NVML counts its inits)."""

    def __init__(self, lib, *, device_prefixes: tuple[str, ...] = DEVICE_PREFIXES, missing: str | None = None):
        self._lib = lib
        self._missing = missing  # why there is no lib at all (nvidia-ml-py not installed)
        self.device_prefixes = tuple(device_prefixes)

    # --- session ---

    def __enter__(self) -> Nvml:
        if self._lib is None:
            raise NvmlUnavailable(self._missing or "nvidia-ml-py is not installed")
        try:
            self._lib.nvmlInit()
        except self._lib.NVMLError as err:
            reason = _INIT_REASONS.get(type(err).__name__, f"NVML failed to start: {err}")
            raise NvmlUnavailable(reason) from None
        except OSError as err:  # a broken libnvidia-ml install can fail in the loader itself
            raise NvmlUnavailable(f"NVML library could not be loaded: {err}") from None
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._lib.nvmlShutdown()
        except self._lib.NVMLError:
            pass  # nothing useful to do: the queries are already answered

    @property
    def _mismatch(self):
        # pynvml raises this plain Exception (not an NVMLError) when an unversioned call's newest
        # version is missing from the driver, e.g. the _v3 process queries on drivers before R510.
        return getattr(self._lib, "NVMLLibraryMismatchError", ())

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._lib.NVMLError as err:
            raise NvmlCallFailed(_reason(err)) from None
        except self._mismatch:
            raise NvmlCallFailed(DRIVER_TOO_OLD) from None

    def _optional(self, fn, *args, **kwargs):
        """A query whose "not supported" (MIG, some boards) means "no value", not an error."""
        try:
            return fn(*args, **kwargs)
        except (self._lib.NVMLError_NotSupported, self._lib.NVMLError_FunctionNotFound):
            return None
        except self._lib.NVMLError as err:
            raise NvmlCallFailed(_reason(err)) from None

    # --- queries ---

    def driver_version(self) -> str | None:
        try:
            return _text(self._lib.nvmlSystemGetDriverVersion())
        except self._lib.NVMLError:
            return None

    def device_count(self) -> int:
        return int(self._call(self._lib.nvmlDeviceGetCount))

    def handle(self, index: int):
        return self._call(self._lib.nvmlDeviceGetHandleByIndex, index)

    def name(self, handle) -> str:
        return _text(self._call(self._lib.nvmlDeviceGetName, handle))

    def uuid(self, handle) -> str | None:
        value = self._optional(self._lib.nvmlDeviceGetUUID, handle)
        return None if value is None else _text(value)

    def memory_mib(self, handle) -> tuple[float | None, float | None]:
        """(used, total) in MiB. Uses the v2 query where the driver has it: v1 counts the driver's
        reserved memory as used, which would make an idle GPU look busy."""
        lib = self._lib
        info = None
        version = getattr(lib, "nvmlMemory_v2", None)
        if version is not None:
            try:
                info = lib.nvmlDeviceGetMemoryInfo(handle, version=version)
            except (lib.NVMLError, TypeError):
                info = None  # old driver (or nvidia-ml-py) without the v2 query: fall back to v1
        if info is None:
            info = self._optional(lib.nvmlDeviceGetMemoryInfo, handle)
        if info is None:
            return None, None
        return _mib(info.used), _mib(info.total)

    def utilization_pct(self, handle) -> int | None:
        rates = self._optional(self._lib.nvmlDeviceGetUtilizationRates, handle)
        return None if rates is None else int(rates.gpu)

    def mig_enabled(self, handle) -> bool:
        modes = self._optional(self._lib.nvmlDeviceGetMigMode, handle)
        return bool(modes) and modes[0] == self._lib.NVML_DEVICE_MIG_ENABLE

    def processes(self, handle, kind: str) -> list[tuple[int, float | None]]:
        """[(pid, used MiB or None)] of "compute" or "graphics" processes; NvmlCallFailed if NVML won't say.
        Drivers before R510 lack the _v3 queries pynvml calls by default: then the _v2 ones answer."""
        lib = self._lib
        name = {"compute": "nvmlDeviceGetComputeRunningProcesses",
                "graphics": "nvmlDeviceGetGraphicsRunningProcesses"}[kind]
        try:
            entries = getattr(lib, name)(handle)
        except lib.NVMLError as err:
            raise NvmlCallFailed(_reason(err)) from None
        except self._mismatch:
            entries = self._call(getattr(lib, f"{name}_v2"), handle)
        return [(int(p.pid), _mib(p.usedGpuMemory)) for p in entries]

    def mig_device_uuids(self, handle) -> list[str]:
        """The UUIDs ("MIG-...") of the MIG devices on a MIG-enabled GPU, as CUDA_VISIBLE_DEVICES names them.
        NvmlCallFailed if NVML will not enumerate them."""
        lib = self._lib
        slots = self._call(lib.nvmlDeviceGetMaxMigDeviceCount, handle)
        uuids = []
        for i in range(int(slots)):
            try:
                mig = lib.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
            except lib.NVMLError_NotFound:
                continue  # an empty slot: no GPU instance created there
            except lib.NVMLError as err:
                raise NvmlCallFailed(_reason(err)) from None
            uuids.append(_text(self._call(lib.nvmlDeviceGetUUID, mig)))
        return uuids


def open_nvml(*, device_prefixes: tuple[str, ...] = DEVICE_PREFIXES) -> Nvml:
    """The real NVML (not yet opened: use it in a `with` block)."""
    try:
        import pynvml
    except ImportError:
        return Nvml(None, missing="nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    return Nvml(pynvml, device_prefixes=device_prefixes)
