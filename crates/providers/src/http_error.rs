//! Non-2xx responses: which [`ErrorKind`] they are, whether retrying can help, how long the
//! provider asked us to wait, and the provider's own words (without the key).
//!
//! With `stream: true`, request-level failures (bad key, unknown model, rate limit, overload
//! detected up front) arrive as an ordinary JSON error response, not as SSE. Each provider has
//! its own body shape and its own retry hints:
//!
//! * OpenAI: `{"error":{"message","type","param","code"}}`; `retry-after-ms` (float ms),
//!   `retry-after` (seconds or HTTP-date), `x-should-retry`; a 429 `insufficient_quota` will not
//!   clear by waiting.
//! * Anthropic: `{"type":"error","error":{"type","message"},"request_id"}`; `retry-after`;
//!   529 overloaded; a 413 may come from Cloudflare with a non-JSON body.
//! * Gemini: `google.rpc.Status` (sometimes wrapped in a one-element array) with `details[]`:
//!   `ErrorInfo.reason` (`API_KEY_INVALID` on a 400 is an auth failure), `QuotaFailure` (a
//!   per-day quota is fatal), `RetryInfo.retryDelay` (`"45.837906927s"`; no header at all).
//!
//! Whatever the status, a body that names a content-policy refusal (Azure `content_filter`
//! with its `innererror`, OpenAI `invalid_prompt` about the usage policy, Anthropic's "blocked
//! by content filtering policy") is `blocked`: the cause wins over the status (DESIGN.md 4.5).
//!
//! The parsing is deliberately shape-tolerant: OpenAI-compatible servers and proxies answer
//! with any of these shapes, or with `{"message"}` / `{"detail"}`, or with plain text or HTML.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};
use polydev_protocol::{ApiKey, ErrorEvent, ErrorKind, Provider};
use serde_json::Value;

use crate::classify;
use crate::redact::redact_key;
use crate::stream::StreamError;

/// Retry hints are clamped to one day: the runtime compares them with its own caps, so a
/// clamped "wait a day" still means "do not retry now", without overflowing anything.
pub const MAX_RETRY_AFTER_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest message we keep, in bytes (cut on a character boundary, marked with `…`).
const MAX_MESSAGE_BYTES: usize = 2000;

/// Maps a non-2xx response to the terminal error event (`partial` false; the runtime sets it).
///
/// `body` is the first bytes of the response body (the runtime caps it, e.g. at 64 KiB); a cut
/// JSON body simply falls back to the status line. The message is the provider's own, with its
/// error type or code appended, and never contains the key or a masked echo of it.
pub fn map_http_error(
    p: Provider,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: &ApiKey,
) -> ErrorEvent {
    map_http_error_at(p, status, headers, body, key, SystemTime::now())
}

/// [`map_http_error`] with an explicit clock (for HTTP-date retry hints in tests).
pub(crate) fn map_http_error_at(
    p: Provider,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: &ApiKey,
    now: SystemTime,
) -> ErrorEvent {
    let details = ErrorDetails::parse(body);
    let (mut kind, mut retryable) = classify::for_status(status.as_u16());

    if let Some(d) = &details {
        // Gemini answers a bad key with 400 INVALID_ARGUMENT; it is an auth failure.
        if status == StatusCode::BAD_REQUEST
            && d.reasons
                .iter()
                .any(|r| r.eq_ignore_ascii_case("API_KEY_INVALID"))
        {
            kind = ErrorKind::Auth;
            retryable = false;
        }
        // Out of quota or credit: waiting will not help (OpenAI insufficient_quota,
        // credit_balance_exhausted; Gemini per-day quota).
        if kind == ErrorKind::RateLimited
            && (d.identifiers().any(classify::is_quota_exhausted) || d.per_day_quota)
        {
            retryable = false;
        }
    }
    if let Some(v) = header_str(headers, "x-should-retry") {
        match v.trim() {
            v if v.eq_ignore_ascii_case("true") => retryable = true,
            v if v.eq_ignore_ascii_case("false") => retryable = false,
            _ => {}
        }
    }
    // The cause wins over the status, and no header makes a policy refusal worth retrying.
    if details
        .as_ref()
        .is_some_and(ErrorDetails::is_content_policy)
    {
        kind = ErrorKind::Blocked;
        retryable = false;
    }
    let retry_after_ms =
        retry_after_ms(headers, now).or_else(|| details.as_ref().and_then(|d| d.retry_delay_ms));

    let message = match details.as_ref().and_then(ErrorDetails::message) {
        Some(m) => m,
        None => status_line_message(p, status, body),
    };
    ErrorEvent {
        kind,
        status: Some(status.as_u16()),
        retryable,
        retry_after_ms,
        message: truncate(redact_key(&message, key)),
        partial: false,
    }
}

/// The provider's retry hint from headers, in milliseconds: `retry-after-ms` (float ms, the
/// OpenAI/Anthropic SDK extension) first, then `retry-after` as (possibly fractional) seconds or
/// an HTTP-date relative to `now` (a date in the past means 0). Negative, non-finite and
/// unparseable values are ignored; huge ones are clamped to [`MAX_RETRY_AFTER_MS`].
pub fn retry_after_ms(headers: &HeaderMap, now: SystemTime) -> Option<u64> {
    if let Some(ms) = header_str(headers, "retry-after-ms").and_then(parse_decimal) {
        return Some(clamp_ms(ms));
    }
    let value = header_str(headers, "retry-after")?.trim();
    if let Some(secs) = parse_decimal(value) {
        return Some(clamp_ms(secs * 1000.0));
    }
    let at = parse_http_date(value)?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(
        u64::try_from(wait.as_millis()).map_or(MAX_RETRY_AFTER_MS, |ms| ms.min(MAX_RETRY_AFTER_MS)),
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A plain non-negative decimal (`12`, `1.5`, `.5`); no sign, exponent, `inf` or `nan`.
fn parse_decimal(s: &str) -> Option<f64> {
    let s = s.trim();
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let dots = s.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != s.len() {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Milliseconds (already checked finite and >= 0), rounded up, clamped.
fn clamp_ms(ms: f64) -> u64 {
    let ms = ms.ceil();
    if ms >= MAX_RETRY_AFTER_MS as f64 {
        MAX_RETRY_AFTER_MS
    } else {
        // In range and non-negative: the cast is exact.
        ms as u64
    }
}

/// A protobuf `Duration` in its JSON form (`"45.837906927s"`), or `{seconds, nanos}`, in ms.
pub(crate) fn parse_proto_duration_ms(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => {
            let secs = parse_decimal(s.trim().strip_suffix('s')?)?;
            Some(clamp_ms(secs * 1000.0))
        }
        Value::Object(o) => {
            let secs = o.get("seconds").and_then(json_u64).unwrap_or(0);
            let nanos = o.get("nanos").and_then(json_u64).unwrap_or(0);
            let ms = secs
                .saturating_mul(1000)
                .saturating_add(nanos.div_ceil(1_000_000));
            Some(ms.min(MAX_RETRY_AFTER_MS))
        }
        _ => None,
    }
}

/// A JSON number or numeric string as u64 (protobuf int64 travels as a string).
fn json_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// What we could read from a JSON error body, whatever its shape.
#[derive(Debug, Default)]
pub(crate) struct ErrorDetails {
    pub message: Option<String>,
    /// OpenAI `error.type` / Anthropic `error.type`.
    pub error_type: Option<String>,
    /// OpenAI `error.code` (string, or a number some servers send).
    pub code: Option<String>,
    pub numeric_code: Option<u64>,
    /// Gemini canonical `status` (`RESOURCE_EXHAUSTED`, …).
    pub status: Option<String>,
    /// Azure OpenAI `innererror.code` (`ResponsibleAIPolicyViolation`).
    pub inner_code: Option<String>,
    /// Gemini `ErrorInfo.reason`s.
    pub reasons: Vec<String>,
    /// Gemini `QuotaFailure` names a per-day quota.
    pub per_day_quota: bool,
    /// Gemini `RetryInfo.retryDelay`.
    pub retry_delay_ms: Option<u64>,
}

impl ErrorDetails {
    /// Parses a JSON error body; `None` when the body is not JSON or says nothing useful.
    pub(crate) fn parse(body: &[u8]) -> Option<ErrorDetails> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let v: Value = serde_json::from_slice(body).ok()?;
        let d = Self::from_value(&v);
        (d.message.is_some()
            || d.error_type.is_some()
            || d.code.is_some()
            || d.status.is_some()
            || d.numeric_code.is_some())
        .then_some(d)
    }

    /// Reads any of the known shapes from a parsed body (or an in-stream error payload).
    pub(crate) fn from_value(v: &Value) -> ErrorDetails {
        // Gemini's non-SSE form wraps the error in a one-element array.
        let v = match v {
            Value::Array(items) => items.first().unwrap_or(&Value::Null),
            other => other,
        };
        let mut d = ErrorDetails::default();
        match v.get("error") {
            Some(e @ Value::Object(_)) => d.read_error_object(e),
            Some(Value::String(s)) => {
                d.message = non_empty(s);
                d.read_top_level_extras(v);
            }
            _ => {
                // `{"message": …}` / `{"detail": …}` (FastAPI-style servers) or a bare error
                // object (Responses-style flat events).
                d.read_error_object(v);
                if d.message.is_none() {
                    d.message = v.get("detail").and_then(detail_text);
                }
            }
        }
        d
    }

    fn read_top_level_extras(&mut self, v: &Value) {
        if self.error_type.is_none() {
            self.error_type = v.get("type").and_then(Value::as_str).and_then(non_empty);
        }
        if self.code.is_none() && self.numeric_code.is_none() {
            self.read_code(v.get("code"));
        }
    }

    fn read_code(&mut self, code: Option<&Value>) {
        match code {
            Some(Value::String(s)) => self.code = non_empty(s),
            Some(Value::Number(n)) => self.numeric_code = n.as_u64(),
            _ => {}
        }
    }

    fn read_error_object(&mut self, e: &Value) {
        self.message = e.get("message").and_then(Value::as_str).and_then(non_empty);
        self.error_type = e.get("type").and_then(Value::as_str).and_then(non_empty);
        self.read_code(e.get("code"));
        self.status = e.get("status").and_then(Value::as_str).and_then(non_empty);
        self.inner_code = e
            .get("innererror")
            .and_then(|i| i.get("code"))
            .and_then(Value::as_str)
            .and_then(non_empty);
        let Some(details) = e.get("details").and_then(Value::as_array) else {
            return;
        };
        for item in details {
            let ty = item.get("@type").and_then(Value::as_str).unwrap_or("");
            if let Some(reason) = item.get("reason").and_then(Value::as_str) {
                self.reasons.push(reason.to_owned());
            }
            if ty.ends_with("QuotaFailure") {
                let violations = item.get("violations").and_then(Value::as_array);
                self.per_day_quota |= violations.is_some_and(|vs| {
                    vs.iter().any(|v| {
                        v.get("quotaId")
                            .and_then(Value::as_str)
                            .is_some_and(|id| id.to_ascii_lowercase().contains("perday"))
                    })
                });
            }
            if let Some(delay) = item.get("retryDelay").and_then(parse_proto_duration_ms) {
                self.retry_delay_ms = Some(delay);
            }
        }
    }

    /// Whether the error is a content-policy refusal ([`classify::is_content_policy`]).
    pub(crate) fn is_content_policy(&self) -> bool {
        classify::is_content_policy(
            self.code.as_deref(),
            self.inner_code.as_deref(),
            self.message.as_deref(),
        )
    }

    /// The identifiers that classify the error, most specific first.
    pub(crate) fn identifiers(&self) -> impl Iterator<Item = &str> {
        self.code
            .iter()
            .chain(self.error_type.iter())
            .chain(self.reasons.iter())
            .chain(self.status.iter())
            .map(String::as_str)
    }

    /// The provider's message with its most specific identifier appended, e.g.
    /// `model: claude-3-5-sonnet-latest (not_found_error)`.
    pub(crate) fn message(&self) -> Option<String> {
        let id = self.identifiers().next();
        match (&self.message, id) {
            (Some(m), Some(id)) if !m.contains(id) => Some(format!("{m} ({id})")),
            (Some(m), _) => Some(m.clone()),
            (None, Some(id)) => Some(id.to_owned()),
            (None, None) => None,
        }
    }
}

/// The [`StreamError`] for an error object that arrived inside a 200 stream.
pub(crate) fn stream_error(details: &ErrorDetails, default_message: &str) -> StreamError {
    let (kind, mut retryable) = if details.is_content_policy() {
        (ErrorKind::Blocked, false)
    } else {
        classify::for_stream_error(details.identifiers(), details.numeric_code)
    };
    if details.per_day_quota {
        retryable = false;
    }
    let message = details
        .message()
        .unwrap_or_else(|| default_message.to_owned());
    StreamError {
        kind,
        message: truncate(message),
        retryable,
        retry_after_ms: details.retry_delay_ms,
    }
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// FastAPI's `detail` is a string, or a list of `{msg}` objects.
fn detail_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => non_empty(s),
        Value::Array(items) => {
            let msgs: Vec<&str> = items
                .iter()
                .filter_map(|i| i.get("msg").and_then(Value::as_str))
                .collect();
            (!msgs.is_empty()).then(|| msgs.join("; "))
        }
        _ => None,
    }
}

/// The fallback message when the body is not a JSON error: the status line, plus the first line
/// of a short plain-text body (never of HTML, e.g. a Cloudflare page).
fn status_line_message(p: Provider, status: StatusCode, body: &[u8]) -> String {
    let mut msg = format!("{} returned HTTP {}", provider_name(p), status.as_u16());
    if let Some(reason) = status.canonical_reason() {
        msg.push(' ');
        msg.push_str(reason);
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let text = text.trim_start_matches('\u{feff}').trim();
        let first = text.lines().map(str::trim).find(|l| !l.is_empty());
        if let Some(line) = first
            && !text.starts_with('<')
            && !text.starts_with('{')
            && !text.starts_with('[')
        {
            msg.push_str(": ");
            msg.push_str(line);
        }
    }
    msg
}

fn provider_name(p: Provider) -> &'static str {
    match p {
        Provider::OpenAi => "OpenAI",
        Provider::Anthropic => "Anthropic",
        Provider::Google => "Gemini",
    }
}

/// Caps a message at [`MAX_MESSAGE_BYTES`] on a character boundary.
pub(crate) fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Parses an HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, and the obsolete RFC 850 and asctime
/// forms that recipients must accept.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let (day, month, year, time) = match parts.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [wkday, day, month, year, time, "GMT"] if wkday.ends_with(',') => {
            (day.parse().ok()?, *month, year_4(year)?, *time)
        }
        // Sunday, 06-Nov-94 08:49:37 GMT
        [wkday, date, time, "GMT"] if wkday.ends_with(',') => {
            let mut it = date.split('-');
            let (d, m, y) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || y.len() != 2 {
                return None;
            }
            let yy: i64 = y.parse().ok()?;
            // RFC 9110: a two-digit year more than 50 years ahead is in the past century.
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            (d.parse().ok()?, m, year, *time)
        }
        // Sun Nov  6 08:49:37 1994
        [_wkday, month, day, time, year] => (day.parse().ok()?, *month, year_4(year)?, *time),
        _ => return None,
    };
    let month = month_number(month)?;
    let mut hms = time.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let sec: i64 = hms.next()?.parse().ok()?;
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

fn year_4(s: &str) -> Option<i64> {
    (s.len() == 4).then(|| s.parse().ok()).flatten()
}

fn month_number(m: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS.iter().position(|x| *x == m).map(|i| i as i64 + 1)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests;
