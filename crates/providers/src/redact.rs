//! Keeps the credential out of every message we pass on.
//!
//! Providers echo keys back in error messages, usually masked: OpenAI's 401 says
//! `Incorrect API key provided: sk-test***************0000`. A masked echo still leaks a prefix
//! and a suffix of the secret, and an unmasked one (some OpenAI-compatible servers) leaks all of
//! it. DESIGN.md 4.2: the credential never appears anywhere, so every provider message goes
//! through [`redact_key`] before it becomes an event.
//!
//! A "token" below is a maximal run of characters that can make up a key or its mask:
//! ASCII letters and digits, `-`, `_`, `*`, `.` and `…`. A token is replaced as a whole when
//!
//! * it contains the full key;
//! * it shares any substring of 8 or more characters with the key (a partial echo); or
//! * it is masked (contains `**`, `...` or `…`) and a visible fragment next to the mask of 4 or
//!   more characters is a prefix or a suffix of the key.
//!
//! Over-redaction is accepted: a message that loses a harmless word is better than one that
//! leaks part of a secret. A lone `.` ending a token (a sentence's full stop) is kept.

use std::collections::HashSet;

use polydev_protocol::ApiKey;

/// What replaces a redacted token.
pub const REDACTED: &str = "[redacted]";

/// Length of the key substrings that count as a partial echo.
const WINDOW: usize = 8;
/// Shortest masked prefix/suffix that counts as an echo.
const MIN_MASKED_FRAGMENT: usize = 4;
/// Keys shorter than this are replaced only where a token equals them (replacing every
/// occurrence of a two-letter key would shred the message without protecting anything).
const MIN_RAW_KEY: usize = 4;

/// Returns `text` with the key, and every token echoing a masked or partial form of it,
/// replaced by [`REDACTED`].
pub fn redact_key(text: &str, key: &ApiKey) -> String {
    let key = key.expose().trim();
    if key.is_empty() || text.is_empty() {
        return text.to_owned();
    }
    // 1. The full key anywhere, whatever surrounds it.
    let text = if key.len() >= MIN_RAW_KEY {
        text.replace(key, REDACTED)
    } else {
        text.to_owned()
    };
    // 2. Tokens that echo part of it.
    let windows: HashSet<&[u8]> = key.as_bytes().windows(WINDOW).collect();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find(is_token_char) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let len = tail.find(|c| !is_token_char(c)).unwrap_or(tail.len());
        let mut token = &tail[..len];
        let mut full_stop = "";
        if token.ends_with('.') && !token.ends_with("..") {
            token = &token[..token.len() - 1];
            full_stop = ".";
        }
        if !token.is_empty() && echoes_key(token, key, &windows) {
            out.push_str(REDACTED);
        } else {
            out.push_str(token);
        }
        out.push_str(full_stop);
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.' | '…')
}

fn echoes_key(token: &str, key: &str, windows: &HashSet<&[u8]>) -> bool {
    if token == key || (key.len() >= MIN_RAW_KEY && token.contains(key)) {
        return true;
    }
    if token.len() >= WINDOW
        && token
            .as_bytes()
            .windows(WINDOW)
            .any(|w| windows.contains(w))
    {
        return true;
    }
    is_masked(token) && masked_fragment_matches(token, key)
}

fn is_masked(token: &str) -> bool {
    token.contains("**") || token.contains("...") || token.contains('…')
}

/// Whether a visible fragment adjacent to a mask run is a >= 4-character prefix or suffix of
/// the key. Fragments are the pieces between mask characters (`*`, `.`, `…`).
fn masked_fragment_matches(token: &str, key: &str) -> bool {
    let is_mask = |c: char| matches!(c, '*' | '.' | '…');
    token
        .split(is_mask)
        .filter(|f| f.len() >= MIN_MASKED_FRAGMENT)
        .any(|f| key.starts_with(f) || key.ends_with(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str, key: &str) -> String {
        redact_key(text, &ApiKey::new(key))
    }

    const OPENAI_KEY: &str = "sk-test-FAKEFAKEFAKEFAKE0000";

    #[test]
    fn openai_masked_echo() {
        let msg = "Incorrect API key provided: sk-test***************0000. You can find your API key at https://platform.openai.com/account/api-keys.";
        let out = r(msg, OPENAI_KEY);
        assert_eq!(
            out,
            "Incorrect API key provided: [redacted]. You can find your API key at https://platform.openai.com/account/api-keys."
        );
    }

    #[test]
    fn masked_suffix_only_and_prefix_only() {
        assert_eq!(
            r("key ****0000 rejected", OPENAI_KEY),
            "key [redacted] rejected"
        );
        assert_eq!(
            r("key sk-t**** rejected", OPENAI_KEY),
            "key [redacted] rejected"
        );
        assert_eq!(
            r("key sk-test...0000 bad", OPENAI_KEY),
            "key [redacted] bad"
        );
        assert_eq!(r("key sk-test…0000 bad", OPENAI_KEY), "key [redacted] bad");
        // Three visible characters are not enough to identify anything.
        assert_eq!(r("key sk-***xyz", OPENAI_KEY), "key sk-***xyz");
        // A mask whose fragments are not part of this key is someone else's key.
        assert_eq!(r("key ab12****zz99", OPENAI_KEY), "key ab12****zz99");
    }

    #[test]
    fn full_key_anywhere() {
        let msg = format!("bad key={OPENAI_KEY}&x=1 and \"{OPENAI_KEY}\"");
        let out = r(&msg, OPENAI_KEY);
        assert!(!out.contains(OPENAI_KEY), "{out}");
        assert!(!out.contains("FAKEFAKE"), "{out}");
        assert_eq!(out, "bad key=[redacted]&x=1 and \"[redacted]\"");
        // Glued to other token characters.
        let out = r(&format!("xx{OPENAI_KEY}yy"), OPENAI_KEY);
        assert!(!out.contains("FAKE"), "{out}");
    }

    #[test]
    fn partial_echoes_of_eight_or_more() {
        // A middle substring of the key, unmasked.
        assert_eq!(
            r("saw AKEFAKEF in logs", OPENAI_KEY),
            "saw [redacted] in logs"
        );
        // Seven characters are tolerated (too short to be an echo by our rule).
        assert_eq!(r("saw AKEFAKE in logs", OPENAI_KEY), "saw AKEFAKE in logs");
        // Truncated key.
        assert_eq!(r("key: sk-test-FAKEF", OPENAI_KEY), "key: [redacted]");
    }

    #[test]
    fn gemini_and_anthropic_shapes() {
        let google = "AIzaSyA1234567890abcdefghijklmnopqrstu";
        let msg = format!("API key not valid: {google}. Please pass a valid API key.");
        assert_eq!(
            r(&msg, google),
            "API key not valid: [redacted]. Please pass a valid API key."
        );
        let ant = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789-AA";
        assert_eq!(
            r("invalid x-api-key sk-ant-api03-abc...9-AA", ant),
            "invalid x-api-key [redacted]"
        );
    }

    #[test]
    fn short_keys_only_as_whole_tokens() {
        // OpenAI's verbatim 401 for the key "kk".
        let msg = "Incorrect API key provided: kk. You can find your API key at https://platform.openai.com/account/api-keys.";
        assert_eq!(
            r(msg, "kk"),
            "Incorrect API key provided: [redacted]. You can find your API key at https://platform.openai.com/account/api-keys."
        );
        assert_eq!(r("a b", "a"), "[redacted] b");
        assert_eq!(r("banana", "a"), "banana");
    }

    #[test]
    fn nothing_to_redact() {
        assert_eq!(
            r("plain message, nothing here", OPENAI_KEY),
            "plain message, nothing here"
        );
        assert_eq!(r("", OPENAI_KEY), "");
        assert_eq!(r("text", ""), "text");
        assert_eq!(r("text", "   "), "text");
        // Non-ASCII text survives intact.
        assert_eq!(
            r("ошибка: ключ… неверен 😀", OPENAI_KEY),
            "ошибка: ключ… неверен 😀"
        );
    }

    #[test]
    fn key_with_surrounding_whitespace_still_matches() {
        assert_eq!(
            r(&format!("got {OPENAI_KEY}"), &format!("{OPENAI_KEY}\n")),
            "got [redacted]"
        );
    }

    #[test]
    fn never_leaks_a_window_of_the_key() {
        // Brute force: every 8-byte window of the key embedded in noise is removed.
        let key = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";
        for w in key.as_bytes().windows(WINDOW) {
            let w = std::str::from_utf8(w).unwrap_or_default();
            for msg in [
                format!("x {w} y"),
                format!("x Q{w}Q y"),
                format!("({w})"),
                format!("{w}."),
            ] {
                let out = r(&msg, key);
                assert!(!out.contains(w), "{msg:?} -> {out:?}");
            }
        }
    }
}
