"""Spec-sheet figures of the GPUs the reports model: one table for the static report (aot) and the
benchmark CLI (`model`, bandwidth lookups), importable without torch or triton.

Every figure is the vendor's peak (boost clock, DRAM bandwidth of the SXM/board part); none is
measured here. ``lane_instr_per_s`` is the issue rate the roofline model uses: SMs x 4 schedulers
x 32 lanes x boost clock (one warp instruction per scheduler per cycle).
"""

from typing import Dict, NamedTuple, Optional


class Gpu(NamedTuple):
    name: str
    arch: str  # the sm_XY its kernels compile for
    bytes_per_s: float  # peak DRAM bandwidth
    sms: int
    boost_hz: float
    described: str

    @property
    def lane_instr_per_s(self) -> float:
        return self.sms * 4 * 32 * self.boost_hz

    def breakeven_lane_instr(self, bytes_per_element: float) -> float:
        """Lane-instructions per element above which a kernel that moves ``bytes_per_element``
        through DRAM is compute-bound rather than memory-bound on this GPU."""
        return bytes_per_element * self.lane_instr_per_s / self.bytes_per_s

    def modelled_seconds(self, bytes_moved: float, lane_instructions: float) -> float:
        """The roofline model: max(bytes / bandwidth, lane-instructions / issue rate)."""
        return max(bytes_moved / self.bytes_per_s, lane_instructions / self.lane_instr_per_s)


GPUS: Dict[str, Gpu] = {gpu.name: gpu for gpu in (
    Gpu("A100", "sm_80", 2.039e12, 108, 1.410e9, "A100 80GB SXM4, HBM2e, 2.039 TB/s (spec sheet)"),
    Gpu("H100", "sm_90", 3.35e12, 132, 1.980e9, "H100 SXM5, HBM3, 3.35 TB/s (spec sheet)"),
    Gpu("H200", "sm_90", 4.8e12, 132, 1.980e9, "H200 SXM, HBM3e, 4.8 TB/s (spec sheet)"),
    # NVIDIA publishes no B200 boost clock; 1.98 GHz is the commonly listed figure (third party)
    Gpu("B200", "sm_100", 8.0e12, 148, 1.980e9, "B200 SXM, HBM3e, 8 TB/s (spec sheet)"),
    Gpu("RTX5090", "sm_120", 1.792e12, 170, 2.407e9,
        "GeForce RTX 5090, GDDR7, 1.792 TB/s (spec sheet)"),
)}

# The GPU whose figures model each architecture's rows in the static report.
MODEL_GPU = {"sm_80": "A100", "sm_90": "H100", "sm_100": "B200", "sm_120": "RTX5090"}


def gpu_for_arch(arch: str) -> Optional[Gpu]:
    """The modelled GPU of an ``sm_XY`` architecture (None for one the table lacks)."""
    name = MODEL_GPU.get(arch)
    return GPUS[name] if name else None


# By device name (torch.cuda.get_device_properties(...).name), for parts the table above lacks
# too: the first key contained in the name wins, so more specific names come first.
BANDWIDTH_BY_DEVICE_NAME = (
    ("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
    ("B200", 8.0e12), ("A100-PCIE-40GB", 1.555e12), ("A100-SXM4-40GB", 1.555e12),
    ("A100", 2.039e12), ("RTX 5090", 1.792e12), ("L40", 0.864e12), ("A10", 0.6e12),
    ("4090", 1.008e12),
)


def bandwidth_for_device_name(name: str) -> float:
    """Spec-sheet DRAM bandwidth (bytes/s) of a device by its name, 0.0 when unknown."""
    for key, bytes_per_s in BANDWIDTH_BY_DEVICE_NAME:
        if key in name:
            return bytes_per_s
    return 0.0
