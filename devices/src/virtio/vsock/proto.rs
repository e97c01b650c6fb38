//! The virtio-vsock wire protocol: operations, flags, sizes.

pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// Largest payload of one packet, either direction.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Receive buffer we advertise per connection (our `buf_alloc`) while the
/// device's budget allows: the most guest data we hold for one connection.
pub const CONN_BUF: u32 = 256 * 1024;
/// The smallest buffer a connection is made with; when the budget has
/// less left, the connection is refused.
pub const MIN_CONN_BUF: u32 = 16 * 1024;
/// The sum of all connections' buffers: the most guest data the device
/// ever holds for the host, whatever the guest does (a 4 MiB guest once
/// made a device without it hold 220 MiB).
pub const GUEST_DATA_BUDGET: usize = 16 << 20;

/// A packet header's routing fields (the rest is filled when sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub src_cid: u64,
    pub src_port: u32,
    pub dst_cid: u64,
    pub dst_port: u32,
}

/// A packet the device wants to put on the guest's RX queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub route: Route,
    pub op: u16,
    pub flags: u32,
}
