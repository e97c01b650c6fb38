//! virtio-vsock (placeholder until the device lands).
