//! Tokenisation and n-gram generation: the one definition of "what the model sees".
//!
//! The same function runs at training time, at serving time and for the cache key, so
//! two inputs that tokenise alike share a cache entry and always get the same answer.

/// Emoticons kept as tokens, each with the canonical form it is counted as.
const EMOTICONS: [(&str, &str); 14] = [
    (":-)", ":)"),
    (":)", ":)"),
    ("(:", ":)"),
    (":-(", ":("),
    (":(", ":("),
    (":'(", ":("),
    (":-d", ":d"),
    (":d", ":d"),
    (";-)", ";)"),
    (";)", ";)"),
    (":-p", ":p"),
    (":p", ":p"),
    ("<3", "<3"),
    ("=)", ":)"),
];

/// Splits text into lowercase tokens.
///
/// A token is a run of alphanumeric characters; an apostrophe between two letters stays
/// inside the word (`don't`, `it's`). `!` and `?` are kept as tokens of their own because
/// they carry sentiment intensity, and so are common emoticons (`:)`, `:-(`, `<3`, …,
/// in a canonical form). All other punctuation and whitespace separate tokens.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut iter = text.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        if c.is_ascii_alphanumeric() {
            current.push(c.to_ascii_lowercase());
            continue;
        }
        if !c.is_ascii() && c.is_alphanumeric() {
            current.extend(c.to_lowercase());
            continue;
        }
        if (c == '\'' || c == '\u{2019}') && !current.is_empty() && iter.peek().is_some_and(|(_, n)| n.is_alphabetic())
        {
            current.push('\'');
            continue;
        }
        if !current.is_empty() {
            tokens.push(std::mem::take(&mut current));
        }
        if c == '!' || c == '?' {
            tokens.push(c.to_string());
        } else if let Some((raw, canonical)) =
            matches!(c, ':' | ';' | '(' | '<' | '=').then(|| emoticon_at(&text[i..])).flatten()
        {
            tokens.push((*canonical).to_owned());
            // Skip the rest of the emoticon (all ASCII, one byte per char).
            for _ in 1..raw.len() {
                iter.next();
            }
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

fn emoticon_at(rest: &str) -> Option<&'static (&'static str, &'static str)> {
    let head = rest.get(..3.min(rest.len())).or_else(|| rest.get(..2.min(rest.len())))?;
    EMOTICONS.iter().find(|(raw, _)| {
        head.len() >= raw.len()
            && head.as_bytes()[..raw.len()].eq_ignore_ascii_case(raw.as_bytes())
            // An emoticon must not run into a word (`:data`), except at the end of text.
            && !rest[raw.len()..].chars().next().is_some_and(char::is_alphanumeric)
    })
}

/// The canonical form of a text: its tokens joined by single spaces.
///
/// Used for the response-cache key, so equivalent inputs (case, spacing, punctuation the
/// model ignores) share one entry.
pub fn normalize(text: &str) -> String {
    tokenize(text).join(" ")
}

/// Calls `f` with every n-gram of `tokens` for n in `min_n..=max_n`, n-grams joined by a
/// single space. One buffer is reused, so no n-gram is allocated on its own.
pub fn for_each_ngram(tokens: &[String], min_n: usize, max_n: usize, mut f: impl FnMut(&str)) {
    let mut buf = String::with_capacity(64);
    for n in min_n.max(1)..=max_n {
        if n > tokens.len() {
            break;
        }
        for window in tokens.windows(n) {
            buf.clear();
            for (i, t) in window.iter().enumerate() {
                if i > 0 {
                    buf.push(' ');
                }
                buf.push_str(t);
            }
            f(&buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ngrams(text: &str, min_n: usize, max_n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for_each_ngram(&tokenize(text), min_n, max_n, |g| out.push(g.to_owned()));
        out
    }

    #[test]
    fn lowercases_and_splits_on_punctuation() {
        assert_eq!(tokenize("The Rock, is GREAT."), ["the", "rock", "is", "great"]);
    }

    #[test]
    fn keeps_inner_apostrophes_and_drops_quotes() {
        assert_eq!(tokenize("I don't 'like' it's"), ["i", "don't", "like", "it's"]);
        assert_eq!(tokenize("don\u{2019}t"), ["don't"]);
    }

    #[test]
    fn keeps_exclamation_and_question_marks() {
        assert_eq!(tokenize("wow!! really?"), ["wow", "!", "!", "really", "?"]);
    }

    #[test]
    fn keeps_emoticons_in_canonical_form() {
        assert_eq!(tokenize("great :-) really :("), ["great", ":)", "really", ":("]);
        assert_eq!(tokenize("love it <3 :D"), ["love", "it", "<3", ":d"]);
        assert_eq!(tokenize("see http://x.com :data"), ["see", "http", "x", "com", "data"]);
    }

    #[test]
    fn handles_unicode_and_empty_input() {
        assert_eq!(tokenize("Ünïcödé CAFÉ"), ["ünïcödé", "café"]);
        assert!(tokenize("  ... ").is_empty());
        assert!(tokenize("").is_empty());
    }

    #[test]
    fn normalize_makes_equivalent_inputs_equal() {
        assert_eq!(normalize("  Great   movie. "), normalize("great movie"));
        assert_ne!(normalize("great movie"), normalize("great movie!"));
    }

    #[test]
    fn unigrams_and_bigrams_in_order() {
        assert_eq!(ngrams("not good at all", 1, 2), ["not", "good", "at", "all", "not good", "good at", "at all"]);
    }

    #[test]
    fn ngrams_longer_than_text_are_skipped() {
        assert_eq!(ngrams("one", 1, 3), ["one"]);
        assert!(ngrams("", 1, 2).is_empty());
    }
}
