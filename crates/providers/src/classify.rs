//! One place that turns provider error vocabulary (HTTP statuses, OpenAI `type`/`code`,
//! Anthropic `error.type`, Gemini canonical `status`) into our [`ErrorKind`] and a retry verdict.
//!
//! It exists so that an error means the same thing whether it arrived as an HTTP status before
//! the stream or as an in-stream error object after a 200, and whichever provider (or
//! OpenAI-compatible server) sent it.

use polydev_protocol::ErrorKind;

/// Kind and retry verdict for a non-2xx HTTP status (DESIGN.md 4.2).
pub(crate) fn for_status(status: u16) -> (ErrorKind, bool) {
    match status {
        400 | 413 | 422 => (ErrorKind::BadRequest, false),
        401 => (ErrorKind::Auth, false),
        // Anthropic `billing_error`: out of credit, like OpenAI's `insufficient_quota`.
        402 => (ErrorKind::RateLimited, false),
        403 => (ErrorKind::Permission, false),
        404 => (ErrorKind::NotFound, false),
        // Request timeout and conflict: the SDKs retry both.
        408 | 409 => (ErrorKind::Upstream, true),
        429 => (ErrorKind::RateLimited, true),
        // Gemini's CANCELLED ("the client closed the connection"): not our doing, try again.
        499 => (ErrorKind::Upstream, true),
        503 | 529 => (ErrorKind::Overloaded, true),
        500..=599 => (ErrorKind::Upstream, true),
        400..=499 => (ErrorKind::BadRequest, false),
        // 1xx/3xx (a redirect we do not follow) or anything else non-2xx.
        _ => (ErrorKind::Upstream, false),
    }
}

/// Whether an error identifier says the account is out of quota or credit: a 429 that will not
/// clear by waiting (OpenAI `insufficient_quota`, the 2026 `credit_balance_exhausted`,
/// Anthropic `billing_error`).
pub(crate) fn is_quota_exhausted(id: &str) -> bool {
    let id = id.to_ascii_lowercase();
    id.contains("insufficient_quota")
        || id.contains("credit_balance")
        || id.contains("billing")
        || id.contains("quota_exceeded")
}

/// Kind and retry verdict for an error identifier (`overloaded_error`, `server_error`,
/// `RESOURCE_EXHAUSTED`, `rate_limit_exceeded`, …). `None` when the identifier says nothing we
/// recognise.
pub(crate) fn for_identifier(id: &str) -> Option<(ErrorKind, bool)> {
    let id = id.trim().to_ascii_lowercase();
    if id.is_empty() {
        return None;
    }
    let has = |needle: &str| id.contains(needle);
    let verdict = if is_quota_exhausted(&id) {
        (ErrorKind::RateLimited, false)
    } else if has("overload") || has("unavailable") || has("slow_down") {
        (ErrorKind::Overloaded, true)
    } else if has("rate_limit")
        || has("ratelimit")
        || has("too_many_requests")
        || has("resource_exhausted")
    {
        (ErrorKind::RateLimited, true)
    } else if has("authentication")
        || has("unauthenticated")
        || has("invalid_api_key")
        || has("api_key_invalid")
    {
        (ErrorKind::Auth, false)
    } else if has("permission") {
        (ErrorKind::Permission, false)
    } else if has("not_found") {
        (ErrorKind::NotFound, false)
    } else if has("invalid_request")
        || has("invalid_argument")
        || has("bad_request")
        || has("too_large")
        || has("context_length")
        || has("failed_precondition")
        || has("unsupported")
    {
        (ErrorKind::BadRequest, false)
    } else if has("server_error")
        || has("api_error")
        || has("internal")
        || has("timeout")
        || has("deadline_exceeded")
        || has("unknown")
        || has("aborted")
        || has("cancelled")
    {
        (ErrorKind::Upstream, true)
    } else {
        return None;
    };
    Some(verdict)
}

/// Error codes that by themselves say a provider's content policy refused the prompt or the
/// output (`README.md`, "Content-policy refusals", has the sources). Compared whole and
/// case-insensitively, never as substrings: Azure's `content_filter_error` means the filter
/// *failed to run*, the opposite of a block.
const POLICY_CODES: [&str; 5] = [
    // Azure OpenAI: a 400 whose `innererror` carries the filter results.
    "content_filter",
    // OpenAI's safety system (Images, and compatible servers on chat).
    "content_policy_violation",
    // OpenAI image moderation.
    "moderation_blocked",
    // OpenAI Responses `ResponseError.code` values that name a policy.
    "image_content_policy_violation",
    "bio_policy",
];

/// Azure's `innererror.code` for a request its content filter refused.
const POLICY_INNER_CODE: &str = "ResponsibleAIPolicyViolation";

/// Whether an error object is a content-policy refusal: DESIGN.md 4.5, the cause wins over the
/// status (an HTTP 400 or an in-stream error that names the policy is `blocked`, not
/// `bad_request`). Structured fields first; message text only where the provider gives no
/// field that says so (see the two text rules below).
pub(crate) fn is_content_policy(
    code: Option<&str>,
    inner_code: Option<&str>,
    message: Option<&str>,
) -> bool {
    let code = code.map(str::trim);
    if code.is_some_and(|c| POLICY_CODES.iter().any(|p| c.eq_ignore_ascii_case(p)))
        || inner_code.is_some_and(|c| c.trim().eq_ignore_ascii_case(POLICY_INNER_CODE))
    {
        return true;
    }
    let message = message.unwrap_or("").to_ascii_lowercase();
    // OpenAI's `invalid_prompt` does not name a cause by itself (it is a generic code in the
    // Assistants and Responses enums), so only its usage-policy / safety wording counts.
    if code.is_some_and(|c| c.eq_ignore_ascii_case("invalid_prompt")) {
        return message.contains("usage policy") || message.contains("safety reasons");
    }
    // Anthropic gives no code for it: the only signal is an `invalid_request_error` whose
    // message says "Output blocked by content filtering policy" (HTTP 400 and in-stream).
    message.contains("blocked by content filtering policy")
}

/// Kind and retry verdict for an error that arrived inside a 200 stream: the first identifier
/// we recognise wins, then a numeric code that looks like an HTTP status, then `upstream`
/// (retryable: a mid-stream failure is usually transient; the runtime never retries after
/// output anyway).
pub(crate) fn for_stream_error<'a>(
    identifiers: impl IntoIterator<Item = &'a str>,
    numeric_code: Option<u64>,
) -> (ErrorKind, bool) {
    if let Some(v) = identifiers.into_iter().find_map(for_identifier) {
        return v;
    }
    match numeric_code.and_then(|c| u16::try_from(c).ok()) {
        Some(code @ 400..=599) => for_status(code),
        _ => (ErrorKind::Upstream, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_design_table() {
        let table = [
            (400, ErrorKind::BadRequest, false),
            (401, ErrorKind::Auth, false),
            (402, ErrorKind::RateLimited, false),
            (403, ErrorKind::Permission, false),
            (404, ErrorKind::NotFound, false),
            (405, ErrorKind::BadRequest, false),
            (408, ErrorKind::Upstream, true),
            (409, ErrorKind::Upstream, true),
            (413, ErrorKind::BadRequest, false),
            (422, ErrorKind::BadRequest, false),
            (429, ErrorKind::RateLimited, true),
            (499, ErrorKind::Upstream, true),
            (500, ErrorKind::Upstream, true),
            (502, ErrorKind::Upstream, true),
            (503, ErrorKind::Overloaded, true),
            (504, ErrorKind::Upstream, true),
            (529, ErrorKind::Overloaded, true),
            (302, ErrorKind::Upstream, false),
        ];
        for (status, kind, retry) in table {
            assert_eq!(for_status(status), (kind, retry), "{status}");
        }
    }

    #[test]
    fn identifiers() {
        let table = [
            ("overloaded_error", ErrorKind::Overloaded, true),
            ("UNAVAILABLE", ErrorKind::Overloaded, true),
            ("rate_limit_error", ErrorKind::RateLimited, true),
            ("rate_limit_exceeded", ErrorKind::RateLimited, true),
            ("RESOURCE_EXHAUSTED", ErrorKind::RateLimited, true),
            ("too_many_requests", ErrorKind::RateLimited, true),
            ("insufficient_quota", ErrorKind::RateLimited, false),
            ("credit_balance_exhausted", ErrorKind::RateLimited, false),
            ("billing_error", ErrorKind::RateLimited, false),
            ("server_error", ErrorKind::Upstream, true),
            ("api_error", ErrorKind::Upstream, true),
            ("INTERNAL", ErrorKind::Upstream, true),
            ("timeout_error", ErrorKind::Upstream, true),
            ("invalid_request_error", ErrorKind::BadRequest, false),
            ("request_too_large", ErrorKind::BadRequest, false),
            ("authentication_error", ErrorKind::Auth, false),
            ("permission_error", ErrorKind::Permission, false),
            ("not_found_error", ErrorKind::NotFound, false),
        ];
        for (id, kind, retry) in table {
            assert_eq!(for_identifier(id), Some((kind, retry)), "{id}");
        }
        assert_eq!(for_identifier("something_new"), None);
        assert_eq!(for_identifier("  "), None);
    }

    #[test]
    fn content_policy_codes_fields_and_texts() {
        let yes = [
            (Some("content_filter"), None, None),
            (Some("Content_Filter"), None, None),
            (None, Some("ResponsibleAIPolicyViolation"), None),
            (Some("content_policy_violation"), None, None),
            (Some("moderation_blocked"), None, None),
            (Some("bio_policy"), None, None),
            (Some("image_content_policy_violation"), None, None),
            (
                Some("invalid_prompt"),
                None,
                Some(
                    "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
                ),
            ),
            (
                Some("invalid_prompt"),
                None,
                Some("Invalid prompt: we've limited access to this content for safety reasons."),
            ),
            (
                None,
                None,
                Some("Output blocked by content filtering policy"),
            ),
        ];
        for (code, inner, msg) in yes {
            assert!(
                is_content_policy(code, inner, msg),
                "{code:?} {inner:?} {msg:?}"
            );
        }
        let no = [
            // The filter failed to run: nothing was blocked.
            (
                Some("content_filter_error"),
                None,
                Some("The contents are not filtered"),
            ),
            (
                Some("invalid_prompt"),
                None,
                Some("Invalid prompt: the schema is malformed"),
            ),
            (
                Some("invalid_request_error"),
                None,
                Some("messages: the request was rejected"),
            ),
            // A malformed request that merely mentions safety settings.
            (
                None,
                None,
                Some("* GenerateContentRequest.safety_settings[4]: element predicate failed"),
            ),
            (Some("unsupported_parameter"), Some("SomethingElse"), None),
            (None, None, None),
        ];
        for (code, inner, msg) in no {
            assert!(
                !is_content_policy(code, inner, msg),
                "{code:?} {inner:?} {msg:?}"
            );
        }
    }

    #[test]
    fn stream_errors_fall_back_to_codes_then_upstream() {
        assert_eq!(
            for_stream_error(["weird"], Some(503)),
            (ErrorKind::Overloaded, true)
        );
        assert_eq!(
            for_stream_error(["weird"], Some(429)),
            (ErrorKind::RateLimited, true)
        );
        assert_eq!(for_stream_error([], Some(7)), (ErrorKind::Upstream, true));
        assert_eq!(for_stream_error([], None), (ErrorKind::Upstream, true));
        assert_eq!(
            for_stream_error(["UNAVAILABLE"], Some(500)),
            (ErrorKind::Overloaded, true)
        );
    }
}
