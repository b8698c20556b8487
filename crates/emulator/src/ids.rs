//! Identifiers that look like the providers' (`chatcmpl-…`, `msg_01…`, `req_…`) and the
//! cheap randomness behind them and OpenAI's `obfuscation` padding.
//!
//! Not cryptographic: a SplitMix64 generator seeded from the clock and a process-wide
//! counter, so concurrent streams get distinct ids without a dependency on `rand`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static SEED_COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &[u8] = b"0123456789abcdef";

/// A small, fast pseudo-random generator.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let bump = SEED_COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        Rng(nanos ^ bump)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish value in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub(crate) fn string(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| char::from(alphabet[self.below(alphabet.len())]))
            .collect()
    }
}

pub(crate) fn chat_completion_id() -> String {
    format!("chatcmpl-{}", Rng::new().string(ALNUM, 29))
}

pub(crate) fn system_fingerprint() -> String {
    format!("fp_{}", Rng::new().string(HEX, 10))
}

pub(crate) fn openai_request_id() -> String {
    format!("req_{}", Rng::new().string(HEX, 32))
}

pub(crate) fn anthropic_message_id() -> String {
    format!("msg_01{}", Rng::new().string(BASE58, 22))
}

pub(crate) fn tool_call_id() -> String {
    format!("call_{}", Rng::new().string(ALNUM, 24))
}

pub(crate) fn anthropic_tool_use_id() -> String {
    format!("toolu_01{}", Rng::new().string(BASE58, 22))
}

pub(crate) fn anthropic_request_id() -> String {
    format!("req_011C{}", Rng::new().string(BASE58, 20))
}

pub(crate) fn gemini_response_id() -> String {
    Rng::new().string(BASE64URL, 23)
}

/// OpenAI-style `obfuscation` padding: 1 to 16 random characters.
pub(crate) fn obfuscation(rng: &mut Rng) -> String {
    let len = 1 + rng.below(16);
    rng.string(ALNUM, len)
}

pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_provider_shapes() {
        let id = chat_completion_id();
        assert!(id.starts_with("chatcmpl-") && id.len() == 38);
        assert!(anthropic_message_id().starts_with("msg_01"));
        assert_eq!(gemini_response_id().len(), 23);
        assert_ne!(chat_completion_id(), chat_completion_id());
    }
}
