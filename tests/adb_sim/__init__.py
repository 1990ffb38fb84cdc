"""A phone simulator for testing edgetrim's adb path without a phone.

``SimAdbd`` speaks the device side of the real adb wire protocol on loopback TCP; a real adb server
(``AdbServer``, adbutils' bundled binary on an isolated port) connects to it with ``adb connect``.
``SimDevice`` holds the phone's fingerprint, filesystem and fault switches; its shell runs pushed
``benchmark_model`` stand-ins (``fake_benchmark_binary``) by really executing the pushed .tflite with
the LiteRT interpreter on the host and printing the tool's output format.

Example:
    server = AdbServer().start()
    phone = SimAdbd(SimDevice(DeviceSpec(model="Pixel 7")), free_port()).start()
    server.connect(phone.serial)
    ...  # ANDROID_ADB_SERVER_PORT=server.port, target f"adb:{phone.serial}"
    phone.stop(); server.stop()
"""

from .adbd import SimAdbd
from .binary import EM_AARCH64, EM_ARM, EM_X86_64, fake_benchmark_binary
from .device import DeviceSpec, SimDevice
from .server import AdbServer, free_port

__all__ = [
    "EM_AARCH64",
    "EM_ARM",
    "EM_X86_64",
    "AdbServer",
    "DeviceSpec",
    "SimAdbd",
    "SimDevice",
    "fake_benchmark_binary",
    "free_port",
]
