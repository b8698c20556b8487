//! Deterministic answer and reasoning text.
//!
//! Tests on the client side compare what they reassembled with what the emulator sent, so the
//! text of an answer must be a pure function of its length. The word lists deliberately mix
//! ASCII with two-, three- and four-byte UTF-8 sequences: splitting frames into small byte
//! pieces then cuts code points in half, which is exactly what client decoders must survive.

/// Words of the answer; token `i` is `ANSWER_WORDS[i % len]` followed by one space.
const ANSWER_WORDS: &[&str] = &[
    "Hello",
    "café",
    "world",
    "naïve",
    "日本語",
    "🦀",
    "streams",
    "über",
    "tokens",
    "résumé",
    "Ελληνικά",
    "🚀",
    "arrive",
    "one",
    "by",
    "one:",
    "crème",
    "brûlée",
    "数据",
    "flows",
    "señor",
    "Привет",
    "test",
    "done.",
];

/// Words of the reasoning ("thinking") text, built the same way as the answer.
const REASONING_WORDS: &[&str] = &[
    "Let",
    "me",
    "think",
    "about",
    "déjà",
    "vu",
    "🤔",
    "思考",
    "carefully,",
    "step",
    "by",
    "step.",
];

/// Text of answer token `index` (0-based): one word and its following space.
pub(crate) fn answer_token(index: usize) -> String {
    token(ANSWER_WORDS, index)
}

/// Text of reasoning token `index` (0-based).
pub(crate) fn reasoning_token(index: usize) -> String {
    token(REASONING_WORDS, index)
}

fn token(words: &[&str], index: usize) -> String {
    let word = words[index % words.len()];
    let mut out = String::with_capacity(word.len() + 1);
    out.push_str(word);
    out.push(' ');
    out
}

/// The exact text the emulator streams for a successful answer of `len` tokens.
///
/// It is the concatenation of `len` tokens, each one word plus a following space, and it
/// contains multi-byte UTF-8 words (`café`, `naïve`, `日本語`, `🦀`) from the second token on.
pub fn answer_text(len: usize) -> String {
    (0..len).map(answer_token).collect()
}

/// The exact reasoning ("thinking") text the emulator streams for `len` reasoning tokens.
pub fn reasoning_text(len: usize) -> String {
    (0..len).map(reasoning_token).collect()
}

/// Deterministic prompt size: the number of whitespace-separated words, at least 1.
pub(crate) fn count_words<'a>(texts: impl IntoIterator<Item = &'a str>) -> usize {
    texts
        .into_iter()
        .map(|t| t.split_whitespace().count())
        .sum::<usize>()
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_is_concatenation_of_tokens() {
        let text = answer_text(30);
        let joined: String = (0..30).map(answer_token).collect();
        assert_eq!(text, joined);
        assert_eq!(text.split(' ').filter(|w| !w.is_empty()).count(), 30);
        assert!(text.starts_with("Hello café world naïve 日本語 🦀 "));
    }

    #[test]
    fn texts_contain_multibyte_sequences() {
        let answer = answer_text(12);
        assert!(answer.chars().any(|c| c.len_utf8() == 2));
        assert!(answer.chars().any(|c| c.len_utf8() == 3));
        assert!(answer.chars().any(|c| c.len_utf8() == 4));
        assert!(reasoning_text(8).chars().any(|c| c.len_utf8() == 4));
    }

    #[test]
    fn zero_length_is_empty() {
        assert_eq!(answer_text(0), "");
        assert_eq!(reasoning_text(0), "");
    }

    #[test]
    fn word_count_has_a_floor_of_one() {
        assert_eq!(count_words(["  "]), 1);
        assert_eq!(count_words(["a b", "c\nd\te"]), 5);
    }
}
