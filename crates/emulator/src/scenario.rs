//! Scenario knobs and the model-name grammar.
//!
//! Clients under test pass the model name through untouched, so the model name is the one
//! channel a test has to steer the emulator per request. A model name is split on `-`; every
//! token that spells a knob (`len40`, `rate20`, `err429`, `block`, ...) sets that knob, and every
//! other token is ignored, so real names such as `gpt-5-mini` run with the defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Answer length used when neither the model name nor the defaults set `len`.
pub const DEFAULT_LEN: usize = 12;
/// Retry hint used when neither the model name nor the defaults set `retry`.
pub const DEFAULT_RETRY_MS: u64 = 1000;
/// Largest accepted `len` / `think` (a bound on the work one request can ask for).
pub const MAX_TOKENS_PER_STREAM: usize = 1_000_000;
/// Largest accepted delay of any kind (one day): keeps every deadline computation finite.
pub const MAX_DELAY_MS: u64 = 86_400_000;
/// Most parallel tool calls one answer may make.
pub const MAX_TOOL_CALLS: usize = 64;

/// A set of knobs. `None` / `false` means "not set here"; see [`Scenario::or`].
///
/// Parse one from a model name with [`Scenario::parse`]; the binary's default-scenario flags
/// build one too. Field meanings are documented in the crate README's grammar table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scenario {
    /// `len{N}`: answer length in tokens.
    pub len: Option<usize>,
    /// `rate{N}`: tokens per second; 0 means as fast as possible.
    pub rate: Option<u32>,
    /// `split{N}`: write every frame in pieces of N bytes (0: whole frames).
    pub split: Option<usize>,
    /// `ttfb{MS}`: delay before the response headers.
    pub ttfb_ms: Option<u64>,
    /// `stall{N}`: after N content events stop sending, keep the connection open.
    pub stall: Option<usize>,
    /// `drop{N}`: after N content events abort the connection (no chunked terminator).
    pub drop: Option<usize>,
    /// `trunc{N}`: after N content events end the body cleanly, without the provider's end.
    pub trunc: Option<usize>,
    /// `err{STATUS}`: answer with this HTTP error and the provider's real body.
    pub err: Option<u16>,
    /// `retry{MS}`: the retry delay hinted on 429/503/529; 0 sends no hint.
    pub retry_ms: Option<u64>,
    /// `times{N}`: faults apply only to the first N requests with this exact model name.
    pub times: Option<u32>,
    /// `mid{N}`: in-stream provider error after N content events.
    pub mid: Option<usize>,
    /// `block`: a safety block instead of an answer.
    pub block: bool,
    /// `block{REASON}`: a safety block with this Gemini `blockReason` (default `SAFETY`).
    pub block_reason: Option<BlockReason>,
    /// `policy{STATUS}`: the provider's content-policy refusal as an HTTP error.
    pub policy: Option<u16>,
    /// `azure{STATUS}`: Azure OpenAI's content-filter error (OpenAI endpoint only).
    pub azure: Option<u16>,
    /// `policymid{N}`: the provider's in-stream content-policy error after N content events.
    pub policymid: Option<usize>,
    /// `think{N}`: N reasoning tokens before the answer.
    pub think: Option<usize>,
    /// `ka{MS}`: keep-alive comment / ping interval while the stream is idle.
    pub ka_ms: Option<u64>,
    /// `tools{N}`: answer with N parallel calls to the request's tools instead of text (not
    /// when the conversation ends with tool results: then the model answers them).
    pub tools: Option<usize>,
    /// `argsplit{N}`: stream tool-call arguments in pieces of N bytes (never inside a
    /// character); 0 or absent: whole.
    pub argsplit: Option<usize>,
    /// `interleave`: OpenAI only: the parallel calls' argument pieces interleave by index.
    pub interleave: bool,
    /// `refuse`: OpenAI only: the answer is `refusal` deltas (the other providers' `block`).
    pub refuse: bool,
}

impl Scenario {
    /// Parse a model name (or any `-`-separated knob string). Unknown tokens are ignored.
    pub fn parse(model: &str) -> Scenario {
        let mut s = Scenario::default();
        for token in model.split('-') {
            if let Some(reason) = token.strip_prefix("block") {
                if reason.is_empty() {
                    s.block = true;
                } else if let Some(r) = BlockReason::parse(reason) {
                    s.block = true;
                    s.block_reason = Some(r);
                }
                continue;
            }
            match token {
                "interleave" => s.interleave = true,
                "refuse" => s.refuse = true,
                _ => {}
            }
            let split_at = token
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(token.len());
            let (name, digits) = token.split_at(split_at);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(value) = digits.parse::<u64>() else {
                continue;
            };
            let count = usize::try_from(value).unwrap_or(usize::MAX);
            match name {
                "len" => s.len = Some(count.min(MAX_TOKENS_PER_STREAM)),
                "rate" => s.rate = Some(u32::try_from(value).unwrap_or(u32::MAX)),
                "split" => s.split = Some(count),
                "ttfb" => s.ttfb_ms = Some(value.min(MAX_DELAY_MS)),
                "stall" => s.stall = Some(count),
                "drop" => s.drop = Some(count),
                "trunc" => s.trunc = Some(count),
                "err" if (400..=599).contains(&value) => s.err = u16::try_from(value).ok(),
                "policy" if (400..=599).contains(&value) => s.policy = u16::try_from(value).ok(),
                "azure" if (400..=599).contains(&value) => s.azure = u16::try_from(value).ok(),
                "policymid" => s.policymid = Some(count),
                "retry" => s.retry_ms = Some(value.min(MAX_DELAY_MS)),
                "times" => s.times = Some(u32::try_from(value).unwrap_or(u32::MAX)),
                "mid" => s.mid = Some(count),
                "think" => s.think = Some(count.min(MAX_TOKENS_PER_STREAM)),
                "ka" => s.ka_ms = Some(value.min(MAX_DELAY_MS)),
                "tools" => s.tools = Some(count.min(MAX_TOOL_CALLS)),
                "argsplit" => s.argsplit = Some(count),
                _ => {}
            }
        }
        s
    }

    /// Every knob set here, and for the others the value from `defaults`.
    pub fn or(&self, defaults: &Scenario) -> Scenario {
        Scenario {
            len: self.len.or(defaults.len),
            rate: self.rate.or(defaults.rate),
            split: self.split.or(defaults.split),
            ttfb_ms: self.ttfb_ms.or(defaults.ttfb_ms),
            stall: self.stall.or(defaults.stall),
            drop: self.drop.or(defaults.drop),
            trunc: self.trunc.or(defaults.trunc),
            err: self.err.or(defaults.err),
            retry_ms: self.retry_ms.or(defaults.retry_ms),
            times: self.times.or(defaults.times),
            mid: self.mid.or(defaults.mid),
            block: self.block || defaults.block,
            block_reason: self.block_reason.or(defaults.block_reason),
            policy: self.policy.or(defaults.policy),
            azure: self.azure.or(defaults.azure),
            policymid: self.policymid.or(defaults.policymid),
            think: self.think.or(defaults.think),
            ka_ms: self.ka_ms.or(defaults.ka_ms),
            tools: self.tools.or(defaults.tools),
            argsplit: self.argsplit.or(defaults.argsplit),
            interleave: self.interleave || defaults.interleave,
            refuse: self.refuse || defaults.refuse,
        }
    }

    /// Resolve to concrete values (defaults filled in, faults ordered).
    pub(crate) fn effective(&self) -> Effective {
        let faults = [
            (FaultKind::Mid, self.mid),
            (FaultKind::Trunc, self.trunc),
            (FaultKind::Stall, self.stall),
            (FaultKind::Drop, self.drop),
            (FaultKind::Policy, self.policymid),
        ];
        // With several faults the earliest wins; on a tie, the first of the list above.
        let fault = faults
            .iter()
            .filter_map(|&(kind, after)| after.map(|after| Fault { kind, after }))
            .min_by_key(|f| f.after);
        Effective {
            len: self.len.unwrap_or(DEFAULT_LEN).min(MAX_TOKENS_PER_STREAM),
            rate: self.rate.unwrap_or(0),
            split: self.split.unwrap_or(0),
            ttfb: Duration::from_millis(self.ttfb_ms.unwrap_or(0).min(MAX_DELAY_MS)),
            fault,
            err: self.err.filter(|s| (400..=599).contains(s)),
            retry_ms: self.retry_ms.unwrap_or(DEFAULT_RETRY_MS).min(MAX_DELAY_MS),
            times: self.times,
            block: self.block,
            block_reason: self.block_reason.unwrap_or_default(),
            policy: self.policy.filter(|s| (400..=599).contains(s)),
            azure: self.azure.filter(|s| (400..=599).contains(s)),
            think: self.think.unwrap_or(0).min(MAX_TOKENS_PER_STREAM),
            keep_alive: self
                .ka_ms
                .filter(|&ms| ms > 0)
                .map(|ms| Duration::from_millis(ms.min(MAX_DELAY_MS))),
            tools: self.tools.unwrap_or(0).min(MAX_TOOL_CALLS),
            argsplit: self.argsplit.unwrap_or(0),
            interleave: self.interleave,
            refuse: self.refuse,
        }
    }
}

/// What kind of stream fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    Stall,
    Drop,
    Trunc,
    Mid,
    /// The provider's in-stream content-policy error (`policymid`).
    Policy,
}

/// Gemini's `promptFeedback.blockReason` values that the Gemini API sends (python-genai
/// `BlockedReason`; `MODEL_ARMOR` and `JAILBREAK` are Vertex-only). Spelled in the model name
/// exactly as on the wire: `blockPROHIBITED_CONTENT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BlockReason {
    #[default]
    Safety,
    Other,
    Blocklist,
    ProhibitedContent,
    ImageSafety,
}

impl BlockReason {
    /// Every value, in the order of the API reference.
    pub const ALL: [BlockReason; 5] = [
        BlockReason::Safety,
        BlockReason::Other,
        BlockReason::Blocklist,
        BlockReason::ProhibitedContent,
        BlockReason::ImageSafety,
    ];

    /// The wire spelling (`PROHIBITED_CONTENT`).
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Safety => "SAFETY",
            BlockReason::Other => "OTHER",
            BlockReason::Blocklist => "BLOCKLIST",
            BlockReason::ProhibitedContent => "PROHIBITED_CONTENT",
            BlockReason::ImageSafety => "IMAGE_SAFETY",
        }
    }

    fn parse(s: &str) -> Option<BlockReason> {
        BlockReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A stream fault and the number of content events sent before it strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fault {
    pub kind: FaultKind,
    pub after: usize,
}

/// A scenario with every value decided.
#[derive(Debug, Clone)]
pub(crate) struct Effective {
    pub len: usize,
    pub rate: u32,
    pub split: usize,
    pub ttfb: Duration,
    pub fault: Option<Fault>,
    pub err: Option<u16>,
    pub retry_ms: u64,
    pub times: Option<u32>,
    pub block: bool,
    pub block_reason: BlockReason,
    /// `policy{STATUS}`.
    pub policy: Option<u16>,
    /// `azure{STATUS}`.
    pub azure: Option<u16>,
    pub think: usize,
    pub keep_alive: Option<Duration>,
    pub tools: usize,
    pub argsplit: usize,
    pub interleave: bool,
    pub refuse: bool,
}

impl Effective {
    /// The same scenario with every injected failure switched off (`times` exhausted).
    pub fn without_faults(mut self) -> Effective {
        self.fault = None;
        self.err = None;
        self.block = false;
        self.policy = None;
        self.azure = None;
        self.refuse = false;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_model_names_set_nothing() {
        for name in [
            "gpt-5-mini",
            "gpt-4o-2024-08-06",
            "claude-sonnet-4-5-20250929",
            "gemini-2.5-flash",
            "o3-mini",
        ] {
            assert_eq!(Scenario::parse(name), Scenario::default(), "{name}");
        }
    }

    #[test]
    fn knobs_are_parsed_and_unknown_tokens_ignored() {
        let s = Scenario::parse(
            "gpt-5-mini-len40-rate20-split1-ttfb150-err429-retry2500-times2-think8-ka100-block-lenx-foo7",
        );
        assert_eq!(s.len, Some(40));
        assert_eq!(s.rate, Some(20));
        assert_eq!(s.split, Some(1));
        assert_eq!(s.ttfb_ms, Some(150));
        assert_eq!(s.err, Some(429));
        assert_eq!(s.retry_ms, Some(2500));
        assert_eq!(s.times, Some(2));
        assert_eq!(s.think, Some(8));
        assert_eq!(s.ka_ms, Some(100));
        assert!(s.block);
        let s = Scenario::parse("m-tools3-argsplit1-interleave-refuse");
        assert_eq!((s.tools, s.argsplit), (Some(3), Some(1)));
        assert!(s.interleave && s.refuse);
    }

    #[test]
    fn content_policy_knobs() {
        let s = Scenario::parse("m-policy400-azure403-policymid0-blockPROHIBITED_CONTENT");
        assert_eq!(s.policy, Some(400));
        assert_eq!(s.azure, Some(403));
        assert_eq!(s.policymid, Some(0));
        assert!(s.block);
        assert_eq!(s.block_reason, Some(BlockReason::ProhibitedContent));
        let e = s.effective();
        assert_eq!(
            e.fault,
            Some(Fault {
                kind: FaultKind::Policy,
                after: 0
            })
        );
        assert_eq!(e.block_reason, BlockReason::ProhibitedContent);
        let off = e.without_faults();
        assert_eq!((off.policy, off.azure, off.fault), (None, None, None));
        // Unknown reasons and lower case are not knobs; `policy` outside 4xx/5xx is ignored.
        let s = Scenario::parse("m-blockprohibited-blockFOO-policy200");
        assert_eq!((s.block, s.block_reason, s.policy), (false, None, None));
        assert_eq!(
            Scenario::parse("m-block").effective().block_reason,
            BlockReason::Safety
        );
        for r in BlockReason::ALL {
            let s = Scenario::parse(&format!("m-block{}", r.as_str()));
            assert_eq!(s.block_reason, Some(r));
        }
    }

    #[test]
    fn out_of_range_values_are_ignored_or_clamped() {
        let s = Scenario::parse("m-err200-err99999-len99999999999-len18446744073709551616");
        assert_eq!(s.err, None);
        assert_eq!(s.len, Some(MAX_TOKENS_PER_STREAM));
    }

    #[test]
    fn model_knobs_override_defaults_per_knob() {
        let defaults = Scenario::parse("len5-rate100");
        let s = Scenario::parse("x-len7").or(&defaults);
        assert_eq!(s.len, Some(7));
        assert_eq!(s.rate, Some(100));
    }

    #[test]
    fn earliest_fault_wins() {
        let e = Scenario::parse("drop3-stall5-mid3").effective();
        assert_eq!(
            e.fault,
            Some(Fault {
                kind: FaultKind::Mid,
                after: 3
            })
        );
        assert_eq!(Scenario::parse("m").effective().len, DEFAULT_LEN);
    }
}
