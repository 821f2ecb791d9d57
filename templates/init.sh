#!/bin/bash
# Guest init (PID 1) for VM {{ vm_name }} on {{ node }}, harness run {{ run_id }}.
# The root file system is the host's / over 9p, read-only. Rendered by harness from init.sh.

# Mount the guest's own /proc and /sys unconditionally: through the 9p root these paths show the
# host's directories, and `mountpoint` would read the host's mount table and say they are mounted.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts
mkdir -p /dev/hugepages
mkdir -p /dev/shm
mount -t devpts -o "rw,noexec,nosuid,gid=5,mode=0620" devpts /dev/pts || true
# This VM's run directory (startup.conf, running.exec, this script) lives on the host under /run,
# which the guest sees over 9p. The tmpfs mounted on /run below would hide it, so keep it on /mnt
# while the tmpfs goes on, then move it back to the same path: every path in the rendered files
# stays valid inside the guest.
mount --bind {{ vm_run_dir | sh }} /mnt
mount -t tmpfs -o "rw,noexec,nosuid,size=10%,mode=0755" tmpfs /run
mount -t tmpfs -o "rw,noexec,nosuid,size=10%,mode=0755" tmpfs /tmp
mkdir -p {{ vm_run_dir | sh }} && mount --move /mnt {{ vm_run_dir | sh }}
# The page size the guest kernel was booted with (hugepagesz=), not a fixed 2M.
mount -t hugetlbfs -o "rw,relatime,pagesize={{ page_size }}" hugetlbfs /dev/hugepages
{% if guest_vfio %}
# The guest has no IOMMU: user-space drivers (DPDK, VPP's virtio/avf) need vfio's no-IOMMU mode.
echo Y > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode
{% endif %}
{% if guest_dpdk %}
# DPDK in the guest drives the two NICs at 00:06.0 and 00:07.0 through vfio-pci.
echo 0000:00:06.0 > /sys/bus/pci/devices/0000:00:06.0/driver/unbind
echo 0000:00:07.0 > /sys/bus/pci/devices/0000:00:07.0/driver/unbind
echo vfio-pci > /sys/bus/pci/devices/0000:00:06.0/driver_override
echo vfio-pci > /sys/bus/pci/devices/0000:00:07.0/driver_override
echo 0000:00:06.0 > /sys/bus/pci/drivers/vfio-pci/bind
echo 0000:00:07.0 > /sys/bus/pci/drivers/vfio-pci/bind
{% endif %}
{% if vnf_kind == "vpp" %}
mkdir -p /run/vpp
{% endif %}
{% if init_command %}
{{ init_command }}
{% endif %}
{% if vnf_bin %}
{{ vnf_bin }}
{% endif %}
# The host's /sbin/poweroff is a systemctl symlink, useless without systemd: fall back to busybox,
# then to sysrq. The kernel logs "reboot: Power down", which the harness treats as a failure.
poweroff -f 2>/dev/null || busybox poweroff -f 2>/dev/null || echo o > /proc/sysrq-trigger
