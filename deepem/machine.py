"""What machine a result came from (benchmarks and the demo record it with their numbers)."""
import os
import platform

import torch


def describe():
    """CPU model, cores, torch version and threads, GPU name (when CUDA is available) and the
    1-minute load average at the time of the call (high means other jobs shared the machine)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        info["load_average_1min"] = None
    return info
