//! Names for containers that were not given one: an adjective and a
//! noun, as Docker does (our own word lists).

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "clever", "crisp", "daring", "eager", "fancy", "gentle", "glad",
    "golden", "happy", "humble", "jolly", "keen", "kind", "lively", "lucky", "merry", "mighty",
    "nimble", "noble", "patient", "plucky", "proud", "quiet", "rapid", "shiny", "silent", "steady",
    "swift", "tidy", "vivid", "warm", "wise", "witty", "young", "zesty",
];

const NOUNS: &[&str] = &[
    "anchor", "badger", "beacon", "birch", "canyon", "cedar", "comet", "coral", "delta", "ember",
    "falcon", "fjord", "glacier", "harbor", "heron", "island", "juniper", "kestrel", "lagoon",
    "lantern", "maple", "meadow", "nebula", "orchid", "otter", "pebble", "pine", "quartz", "raven",
    "ridge", "river", "summit", "thistle", "tundra", "walrus", "willow", "yarrow", "zephyr",
];

/// A random `adjective_noun`.
pub fn random_name() -> String {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let r = if n == 4 {
        u32::from_le_bytes(b)
    } else {
        std::process::id()
            ^ std::time::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| d.subsec_nanos())
    } as usize;
    let a = ADJECTIVES[r % ADJECTIVES.len()];
    let n = NOUNS[(r / ADJECTIVES.len()) % NOUNS.len()];
    format!("{a}_{n}")
}
