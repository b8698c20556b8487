//! Request routing, body bounding and recording.
//!
//! Every provider request goes through here first: it is counted, its body is read under the
//! size bound (413 in the provider's shape when exceeded), it is recorded (ring buffer and
//! optional NDJSON file), and only then handed to its provider. The `/emulator/*` control
//! endpoints are answered here too and are neither counted nor recorded.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use crate::body::ResponseBody;
use crate::ids;
use crate::providers::{Incoming, anthropic, fixed, gemini, openai};
use crate::state::{RecordedRequest, Shared};
use crate::text;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Status,
    Reset,
    Requests,
    Text,
    OpenAi,
    Anthropic,
    Gemini {
        model: String,
        method: gemini::Method,
    },
    NotFound,
}

fn route(method: &Method, path: &str) -> Route {
    let post = method == Method::POST;
    match path {
        "/emulator/status" if method == Method::GET => return Route::Status,
        "/emulator/reset" if post => return Route::Reset,
        "/emulator/requests" if method == Method::GET => return Route::Requests,
        "/emulator/text" if method == Method::GET => return Route::Text,
        "/v1/chat/completions" if post => return Route::OpenAi,
        "/v1/messages" if post => return Route::Anthropic,
        _ => {}
    }
    if !post {
        return Route::NotFound;
    }
    let decoded = percent_decode(path, false);
    let rest = ["/v1beta/models/", "/v1/models/", "/v1alpha/models/"]
        .iter()
        .find_map(|prefix| decoded.strip_prefix(prefix));
    let Some((model, method)) = rest.and_then(|r| r.rsplit_once(':')) else {
        return Route::NotFound;
    };
    if model.is_empty() || model.contains('/') {
        return Route::NotFound;
    }
    let method = match method {
        "streamGenerateContent" => gemini::Method::Stream,
        "generateContent" => gemini::Method::Generate,
        _ => return Route::NotFound,
    };
    Route::Gemini {
        model: model.to_owned(),
        method,
    }
}

/// Decode `%XX` escapes (some clients escape the `:` before a Gemini method); with
/// `plus_is_space`, also `+` (query values). Invalid escapes are kept as they are.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| hex(bytes[i + 1]).zip(hex(bytes[i + 2])))
            .flatten();
        match escaped {
            Some((high, low)) => {
                out.push(high * 16 + low);
                i += 3;
            }
            None => {
                out.push(if plus_is_space && bytes[i] == b'+' {
                    b' '
                } else {
                    bytes[i]
                });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_ok(value: &impl Serialize) -> Response<ResponseBody> {
    fixed(
        200,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// Serve one request. Never fails: every problem becomes a response.
pub(crate) async fn handle<B>(shared: Arc<Shared>, request: Request<B>) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let route = route(&method, &path);
    match route {
        Route::Status => return json_ok(&shared.snapshot()),
        Route::Reset => {
            shared.reset();
            return json_ok(&shared.snapshot());
        }
        Route::Requests => return json_ok(&shared.requests()),
        Route::Text => return text_endpoint(query.as_deref()),
        _ => {}
    }

    shared.count_request();
    let provider = match &route {
        Route::OpenAi => Some("openai"),
        Route::Anthropic => Some("anthropic"),
        Route::Gemini { .. } => Some("google"),
        _ => None,
    };
    let (parts, body) = request.into_parts();
    let arrival_us = ids::unix_micros();
    let mut recorded = RecordedRequest {
        seq: shared.next_seq(),
        time_ms: arrival_us / 1000,
        time_us: arrival_us,
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers: header_map(&parts.headers),
        body: serde_json::Value::Null,
        body_text: None,
        body_bytes: 0,
        provider: provider.map(str::to_owned),
        model: None,
    };

    let limit = shared.settings.max_body_bytes;
    let announced = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = match announced {
        Some(len) if len > limit as u64 => {
            recorded.body_bytes = len;
            None
        }
        _ => match Limited::new(body, limit).collect().await {
            Ok(collected) => Some(collected.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => {
                recorded.body_bytes = limit as u64 + 1;
                None
            }
            // The client went away or sent a broken body: nobody is left to answer.
            Err(_) => Some(Bytes::new()),
        },
    };
    let Some(bytes) = bytes else {
        shared.record(recorded);
        let response = match route {
            Route::Anthropic => anthropic::too_large(),
            Route::Gemini { .. } => gemini::too_large(limit),
            _ => openai::too_large(limit),
        };
        return finish(&shared, response);
    };
    recorded.set_body(&bytes);
    recorded.model = match &route {
        Route::Gemini { model, .. } => Some(model.clone()),
        _ => recorded
            .body
            .get("model")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
    };
    shared.record(recorded);

    let incoming = Incoming {
        shared: &shared,
        headers: &parts.headers,
        query: query.as_deref(),
        body: bytes,
    };
    let response = match &route {
        Route::OpenAi => openai::chat_completions(incoming).await,
        Route::Anthropic => anthropic::messages(incoming).await,
        Route::Gemini { model, method } => gemini::generate(incoming, model, *method).await,
        _ => not_found(&method, &path),
    };
    finish(&shared, response)
}

/// Count the bytes of a fixed body (streams count themselves as they go).
fn finish(shared: &Shared, response: Response<ResponseBody>) -> Response<ResponseBody> {
    if let Some(n) = response.body().fixed_len() {
        shared.add_bytes(n);
    }
    response
}

/// A 404 in the shape of the provider the path looks like.
fn not_found(method: &Method, path: &str) -> Response<ResponseBody> {
    if path.starts_with("/v1beta") || path.starts_with("/v1alpha") || path.starts_with("/v1/models")
    {
        gemini::not_found(path)
    } else if path.starts_with("/v1/messages") || path.starts_with("/v1/complete") {
        anthropic::not_found()
    } else {
        openai::invalid_url(method.as_str(), path)
    }
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    out
}

/// `GET /emulator/text?kind=answer|reasoning&len=N`: the exact text a stream of N tokens
/// carries, for clients that cannot call [`crate::answer_text`].
fn text_endpoint(query: Option<&str>) -> Response<ResponseBody> {
    let mut kind = "answer";
    let mut len = crate::scenario::DEFAULT_LEN;
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("kind", v)) => {
                kind = if v == "reasoning" {
                    "reasoning"
                } else {
                    "answer"
                }
            }
            Some(("len", v)) => {
                len = v
                    .parse::<usize>()
                    .unwrap_or(len)
                    .min(crate::scenario::MAX_TOKENS_PER_STREAM);
            }
            _ => {}
        }
    }
    let body = if kind == "reasoning" {
        text::reasoning_text(len)
    } else {
        text::answer_text(len)
    };
    fixed(200, "text/plain; charset=utf-8", body.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let post = Method::POST;
        assert_eq!(route(&post, "/v1/chat/completions"), Route::OpenAi);
        assert_eq!(route(&post, "/v1/messages"), Route::Anthropic);
        assert_eq!(
            route(
                &post,
                "/v1beta/models/gemini-2.5-flash-len3:streamGenerateContent"
            ),
            Route::Gemini {
                model: "gemini-2.5-flash-len3".into(),
                method: gemini::Method::Stream
            }
        );
        assert_eq!(
            route(&post, "/v1/models/gemini-2.5-flash%3AgenerateContent"),
            Route::Gemini {
                model: "gemini-2.5-flash".into(),
                method: gemini::Method::Generate
            }
        );
        assert_eq!(
            route(&post, "/v1beta/models/x:countTokens"),
            Route::NotFound
        );
        assert_eq!(
            route(&post, "/v1beta/models/:generateContent"),
            Route::NotFound
        );
        assert_eq!(route(&Method::GET, "/v1/chat/completions"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/emulator/status"), Route::Status);
        assert_eq!(route(&post, "/emulator/reset"), Route::Reset);
    }
}
