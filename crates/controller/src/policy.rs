//! Request policies that protect third parties and our own logs: which caller-chosen base URLs
//! are allowed (SSRF), what a `user_id` may be, and how text that might hold a secret is made
//! safe before it reaches a log line or an error body.
//!
//! SSRF (reference/reliability.md 7.4): a caller who can choose `base_url` can send the
//! credential, and the runtime's requests, anywhere the controller's network reaches (cloud
//! metadata, internal services). So a per-request `base_url` is refused unless it falls under a
//! prefix the operator allowed (`POLYDEV_ALLOWED_BASE_URLS`, default none), compared as text
//! after rejecting everything that makes text comparison unsound (userinfo, dot segments,
//! percent-encoding, queries). The controller holds no provider credential of its own: the key
//! in a job is always the caller's, so a caller URL is never paired with a server-side key.

use crate::config::MAX_USER_ID_BYTES;

/// Checks an operator-supplied allowed prefix; returns a reason when unusable.
pub fn check_allowed_prefix(prefix: &str) -> Result<(), String> {
    check_url_text(prefix)?;
    Ok(())
}

/// Whether a caller's `base_url` may be used under `allowed` prefixes.
pub fn base_url_allowed(url: &str, allowed: &[String]) -> Result<(), String> {
    if allowed.is_empty() {
        return Err(
            "base_url is not accepted by this controller (no allowed base URLs are configured)"
                .into(),
        );
    }
    check_url_text(url).map_err(|reason| format!("invalid base_url: {reason}"))?;
    let ok = allowed.iter().any(|prefix| {
        url == prefix
            || (url.starts_with(prefix.as_str())
                && (prefix.ends_with('/') || url[prefix.len()..].starts_with('/')))
    });
    if ok {
        Ok(())
    } else {
        Err("base_url is not one of the allowed base URLs".into())
    }
}

/// Rejects URL text whose meaning differs from its prefix: userinfo (`https://a.com@evil`),
/// dot segments, percent-encoding, backslashes, queries, fragments, whitespace.
fn check_url_text(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| "must start with http:// or https://".to_owned())?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err("has no host".into());
    }
    if url.len() > 2048 {
        return Err("is too long".into());
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '\\' | '%' | '?' | '#'))
    {
        return Err("must not contain userinfo, percent-encoding, a query or a fragment".into());
    }
    if rest.split('/').skip(1).any(|seg| seg == "." || seg == "..") {
        return Err("must not contain . or .. segments".into());
    }
    Ok(())
}

/// `user_id` must be present, short and printable (it is stored and logged).
pub fn check_user_id(user_id: Option<&str>) -> Result<(), String> {
    let Some(u) = user_id else {
        return Err("user_id is required".into());
    };
    if u.trim().is_empty() {
        return Err("user_id is required".into());
    }
    if u.len() > MAX_USER_ID_BYTES {
        return Err(format!("user_id is longer than {MAX_USER_ID_BYTES} bytes"));
    }
    if u.chars().any(char::is_control) {
        return Err("user_id must not contain control characters".into());
    }
    if let Some(c) = u.chars().find(|&c| is_invisible(c)) {
        return Err(format!(
            "user_id must not contain invisible or direction-changing characters (found U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(())
}

/// Characters that print as nothing or reorder the text around them: Unicode's format
/// characters (category Cf: zero-width space and joiners, bidi embeddings, overrides and
/// isolates, the BOM, soft hyphen, tag characters…) and the line and paragraph separators.
/// In an id they make two users look like one ("u1" and "u1" + U+200B) or spoof a log line.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0001}' | '\u{E0020}'..='\u{E007F}'
        | '\u{0600}'..='\u{0605}' | '\u{06DD}' | '\u{070F}' | '\u{08E2}' | '\u{110BD}' | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}')
}

/// A JSON parse error made safe for a response body: quoted input fragments (serde quotes
/// string values in type errors, which could be a misplaced credential) are elided.
pub fn sanitize_json_error(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(512));
    let mut in_quote = false;
    for c in msg.chars() {
        match (c, in_quote) {
            ('"', false) => {
                in_quote = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                in_quote = false;
                out.push('"');
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
        if out.len() > 400 {
            out.push('…');
            break;
        }
    }
    out
}

/// A line of runtime output that was not an event, made safe for a log line: the execution's
/// own credential (and any long fragment of it) is masked, control characters are escaped, and
/// the line is cut to a short prefix.
pub fn redact_line(line: &str, secret: &str) -> String {
    const MAX_SHOWN: usize = 200;
    const FRAG: usize = 12;
    // Only a bounded prefix is ever shown, so only a bounded prefix is scanned.
    let mut cut = line.len().min(4096);
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    let s = &line[..cut];
    let mut masked = vec![false; s.len()];
    let secret = secret.trim();
    if secret.len() >= 4 {
        let mut mark = |frag: &str| {
            for (i, m) in s.match_indices(frag) {
                masked[i..i + m.len()].iter_mut().for_each(|b| *b = true);
            }
        };
        mark(secret);
        // Every fragment of FRAG+ characters, in case the line holds only part of the key.
        for start in 0..=secret.len().saturating_sub(FRAG) {
            if let Some(frag) = secret.get(start..start + FRAG) {
                mark(frag);
            }
        }
    }
    let mut out = String::new();
    let mut in_mask = false;
    for (i, c) in s.char_indices() {
        if masked[i] {
            if !in_mask {
                out.push_str("**redacted**");
            }
            in_mask = true;
            continue;
        }
        in_mask = false;
        out.extend(c.escape_debug());
        if out.len() >= MAX_SHOWN {
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base_url_matrix() {
        let allowed = vec![
            "https://api.example.com/v1".to_owned(),
            "http://127.0.0.1:8787/".to_owned(),
        ];
        for ok in [
            "https://api.example.com/v1",
            "https://api.example.com/v1/",
            "https://api.example.com/v1/deployments/x",
            "http://127.0.0.1:8787/",
            "http://127.0.0.1:8787/v1",
        ] {
            assert!(base_url_allowed(ok, &allowed).is_ok(), "{ok}");
        }
        for bad in [
            "https://api.example.com/v10",
            "https://api.example.com.evil.com/v1",
            "https://api.example.com/v1@evil.com",
            "https://api.example.com/v1/../../admin",
            "https://api.example.com/v1/%2e%2e/admin",
            "https://api.example.com/v1?x=1",
            "http://api.example.com/v1",
            "http://127.0.0.1:87870/",
            "http://169.254.169.254/latest/meta-data/",
            "file:///etc/passwd",
            "https://api.example.com/v1\\..\\x",
            "",
        ] {
            assert!(base_url_allowed(bad, &allowed).is_err(), "{bad}");
        }
        assert!(base_url_allowed("https://api.example.com/v1", &[]).is_err());
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_allowed_prefix("https://api.openai.com/v1").is_ok());
        assert!(check_allowed_prefix("https://").is_err());
        assert!(check_allowed_prefix("https://user:pw@host").is_err());
        assert!(check_allowed_prefix("ftp://host").is_err());
    }

    #[test]
    fn user_ids() {
        assert!(check_user_id(Some("u_1")).is_ok());
        assert!(check_user_id(None).is_err());
        assert!(check_user_id(Some("  ")).is_err());
        assert!(check_user_id(Some(&"x".repeat(300))).is_err());
        assert!(check_user_id(Some("a\nb")).is_err());
        // Probe F11: invisible and direction-changing characters.
        for bad in [
            "u1\u{200b}",
            "admin\u{202e}gnp.exe",
            "a\u{2028}b",
            "\u{feff}u1",
            "u\u{2066}1",
        ] {
            let e = check_user_id(Some(bad)).unwrap_err();
            assert!(e.contains("invisible"), "{bad:?}: {e}");
        }
        // Ordinary non-ASCII ids stay valid.
        for ok in ["ünïcødé", "用户-7", "user@example.com"] {
            assert!(check_user_id(Some(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn json_errors_lose_quoted_input() {
        let msg = r#"invalid type: string "sk-SECRET-123", expected struct Credentials at line 1 column 40"#;
        let s = sanitize_json_error(msg);
        assert!(!s.contains("SECRET"), "{s}");
        assert!(s.contains("expected struct Credentials"), "{s}");
    }

    #[test]
    fn garbage_lines_are_redacted() {
        let key = "sk-test-FAKE-CANARY7f3a9c-openai-000000";
        let line = format!("oops {key} and half {}", &key[..20]);
        let r = redact_line(&line, key);
        assert!(!r.contains("CANARY"), "{r}");
        let r = redact_line(&"x".repeat(10_000), key);
        assert!(r.len() < 300);
        assert_eq!(redact_line("a\u{1b}[31mb", key), "a\\u{1b}[31mb");
    }
}
