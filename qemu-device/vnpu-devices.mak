# Minimal x86_64 device set for the vnpu test VM: q35 with its ISA serial console, plus the vnpu device.
CONFIG_Q35=y
CONFIG_SERIAL_ISA=y
CONFIG_PCIE_PORT=y
CONFIG_VNPU=y
# The read-only host root for the guest (./vnpu vm --host-root): virtio-9p over PCI.
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_9P=y
