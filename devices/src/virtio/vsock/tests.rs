//! virtio-vsock unit tests (protocol parsing); the device is exercised by
//! a real guest in the integration tests.

use super::device::parse_connect;

#[test]
fn connect_line() {
    assert_eq!(parse_connect(b"CONNECT 52"), Ok(52));
    assert_eq!(parse_connect(b"CONNECT 52\r"), Ok(52));
    assert!(parse_connect(b"CONNECT").is_err());
    assert!(parse_connect(b"CONNECT -1").is_err());
    assert!(parse_connect(b"connect 5").is_err());
    assert!(parse_connect(b"CONNECT 99999999999").is_err());
    assert!(parse_connect(&[0xff, 0xfe]).is_err());
}
