#![allow(clippy::unwrap_used)]

use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, http::HeaderValue::from_str(v).unwrap());
    }
    h
}

/// 1994-11-06T08:49:37Z, the RFC's example date.
fn rfc_example() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(784_111_777)
}

#[test]
fn http_dates_in_all_three_forms() {
    let want = Some(rfc_example());
    assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), want);
    assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), want);
    assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), want);
    // Leap day and far years.
    assert_eq!(
        parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT"),
        Some(UNIX_EPOCH + Duration::from_secs(1_709_164_800))
    );
    assert_eq!(
        parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
        Some(UNIX_EPOCH)
    );
    for bad in [
        "",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49 GMT",
        "Wed, 31 Dec 1969 23:59:59 GMT",
        "06 Nov 1994",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
    ] {
        assert_eq!(parse_http_date(bad), None, "{bad:?}");
    }
}

#[test]
fn retry_after_http_date_is_relative_to_now() {
    let now = rfc_example();
    let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT")]);
    assert_eq!(retry_after_ms(&h, now), Some(30_000));
    // In the past: retry now.
    let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]);
    assert_eq!(retry_after_ms(&h, now), Some(0));
    // Absurdly far in the future: clamped.
    let h = headers(&[("retry-after", "Fri, 01 Jan 9999 00:00:00 GMT")]);
    assert_eq!(retry_after_ms(&h, now), Some(MAX_RETRY_AFTER_MS));
}

#[test]
fn retry_after_numbers() {
    let now = rfc_example();
    let cases = [
        (vec![("retry-after-ms", "1500.2")], Some(1501)),
        (vec![("retry-after-ms", "0.0")], Some(0)),
        (vec![("retry-after-ms", " 20 ")], Some(20)),
        (vec![("retry-after-ms", "1e9")], None),
        (vec![("retry-after-ms", "1.2.3")], None),
        (
            vec![("retry-after-ms", "99999999999999")],
            Some(MAX_RETRY_AFTER_MS),
        ),
        (vec![("retry-after", "2.25")], Some(2250)),
        (vec![("retry-after", ".5")], Some(500)),
        (vec![("retry-after", "86401")], Some(MAX_RETRY_AFTER_MS)),
        (vec![("retry-after", "+3")], None),
        (vec![("retry-after", "")], None),
        (vec![("retry-after", "-0.5")], None),
        (
            vec![("retry-after-ms", "x"), ("retry-after", "1")],
            Some(1000),
        ),
        (vec![], None),
    ];
    for (pairs, want) in cases {
        assert_eq!(retry_after_ms(&headers(&pairs), now), want, "{pairs:?}");
    }
    // A non-UTF-8 / opaque header value is ignored.
    let mut h = HeaderMap::new();
    h.insert(
        "retry-after",
        http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
    );
    assert_eq!(retry_after_ms(&h, now), None);
}

#[test]
fn protobuf_durations() {
    let cases = [
        (Value::from("47s"), Some(47_000)),
        (Value::from("45.837906927s"), Some(45_838)),
        (Value::from("0s"), Some(0)),
        (Value::from("0.0001s"), Some(1)),
        (Value::from("47"), None),
        (Value::from("-1s"), None),
        (Value::from("abc"), None),
        (Value::from("1e400s"), None),
        (Value::from("999999999999s"), Some(MAX_RETRY_AFTER_MS)),
        (
            serde_json::json!({"seconds": "3", "nanos": 500_000_000}),
            Some(3500),
        ),
        (serde_json::json!({"seconds": 2}), Some(2000)),
        (Value::from(5), None),
    ];
    for (v, want) in cases {
        assert_eq!(parse_proto_duration_ms(&v), want, "{v}");
    }
}

#[test]
fn http_date_retry_after_through_the_mapper() {
    let now = rfc_example();
    let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:39 GMT")]);
    let e = map_http_error_at(
        Provider::OpenAi,
        StatusCode::TOO_MANY_REQUESTS,
        &h,
        b"{}",
        &ApiKey::new("k"),
        now,
    );
    assert_eq!(e.retry_after_ms, Some(2000));
    assert_eq!(e.kind, ErrorKind::RateLimited);
}

#[test]
fn details_shapes() {
    let d = ErrorDetails::parse(
        br#"[{"error":{"code":400,"message":"m","status":"INVALID_ARGUMENT"}}]"#,
    )
    .unwrap();
    assert_eq!(d.numeric_code, Some(400));
    assert_eq!(d.message().as_deref(), Some("m (INVALID_ARGUMENT)"));
    assert!(ErrorDetails::parse(b"not json").is_none());
    assert!(ErrorDetails::parse(b"[]").is_none());
    assert!(ErrorDetails::parse(b"null").is_none());
    // BOM-prefixed JSON.
    let d = ErrorDetails::parse(b"\xEF\xBB\xBF{\"error\":{\"message\":\"x\"}}").unwrap();
    assert_eq!(d.message().as_deref(), Some("x"));
    // The identifier already in the message is not repeated.
    let d = ErrorDetails::parse(
        br#"{"error":{"message":"overloaded_error: busy","type":"overloaded_error"}}"#,
    )
    .unwrap();
    assert_eq!(d.message().as_deref(), Some("overloaded_error: busy"));
    // Only an identifier.
    let d = ErrorDetails::parse(br#"{"error":{"type":"api_error"}}"#).unwrap();
    assert_eq!(d.message().as_deref(), Some("api_error"));
}

#[test]
fn truncation_respects_char_boundaries() {
    let s = "😀".repeat(1000);
    let t = truncate(s);
    assert!(t.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
    assert!(t.ends_with('…'));
    assert_eq!(truncate("short".into()), "short");
}
