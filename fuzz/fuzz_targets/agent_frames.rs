//! What a hostile guest agent can send `vm run`: any bytes on the control
//! connection. Every frame must parse or fail cleanly, never panic.
#![no_main]

use agent_protocol::{read_frame, AgentMessage, HostMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = std::io::Cursor::new(data);
    while let Ok(Some(_)) = read_frame::<_, AgentMessage>(&mut r) {}
    // The agent's side reads host frames the same way.
    let mut r = std::io::Cursor::new(data);
    while let Ok(Some(_)) = read_frame::<_, HostMessage>(&mut r) {}
});
