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
    normalize(text).split(' ').filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// Writes the tokens of `text` (see `tokenize`) to `out`, separated by single spaces. No
/// token holds a space, so this string is the tokens, and each n-gram is a slice of it.
fn tokens_into(text: &str, out: &mut String) {
    // Whether the last thing written is a word still being read.
    let mut in_word = false;
    let mut iter = text.char_indices().peekable();
    let separate = |out: &mut String| {
        if !out.is_empty() {
            out.push(' ');
        }
    };
    while let Some((i, c)) = iter.next() {
        let alphanumeric = c.is_ascii_alphanumeric() || (!c.is_ascii() && c.is_alphanumeric());
        if alphanumeric {
            if !in_word {
                separate(out);
                in_word = true;
            }
            if c.is_ascii() {
                out.push(c.to_ascii_lowercase());
            } else {
                out.extend(c.to_lowercase());
            }
            continue;
        }
        if (c == '\'' || c == '\u{2019}') && in_word && iter.peek().is_some_and(|(_, n)| n.is_alphabetic()) {
            out.push('\'');
            continue;
        }
        in_word = false;
        if c == '!' || c == '?' {
            separate(out);
            out.push(c);
        } else if let Some((raw, canonical)) =
            matches!(c, ':' | ';' | '(' | '<' | '=').then(|| emoticon_at(&text[i..])).flatten()
        {
            separate(out);
            out.push_str(canonical);
            // Skip the rest of the emoticon (all ASCII, one byte per char).
            for _ in 1..raw.len() {
                iter.next();
            }
        }
    }
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
    let mut out = String::with_capacity(text.len());
    tokens_into(text, &mut out);
    out
}

/// Calls `f` with every n-gram of a normalised text (`normalize`) for n in `min_n..=max_n`:
/// its runs of n tokens joined by single spaces, each a slice of `normalized` (nothing is
/// copied). Training and serving both take their n-grams from here.
pub fn for_each_ngram(normalized: &str, min_n: usize, max_n: usize, mut f: impl FnMut(&str)) {
    let mut bounds: Vec<(usize, usize)> = Vec::with_capacity(normalized.len() / 4 + 1);
    let mut start = 0;
    for (i, b) in normalized.bytes().enumerate() {
        if b == b' ' {
            bounds.push((start, i));
            start = i + 1;
        }
    }
    if start < normalized.len() {
        bounds.push((start, normalized.len()));
    }
    for n in min_n.max(1)..=max_n {
        if n > bounds.len() {
            break;
        }
        for window in bounds.windows(n) {
            f(&normalized[window[0].0..window[n - 1].1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ngrams(text: &str, min_n: usize, max_n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for_each_ngram(&normalize(text), min_n, max_n, |g| out.push(g.to_owned()));
        out
    }

    /// The tokeniser as it was before it wrote into one string (a token a `String`): the
    /// reference the one-string version must match on every text.
    fn reference_tokenize(text: &str) -> Vec<String> {
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
            if (c == '\'' || c == '\u{2019}')
                && !current.is_empty()
                && iter.peek().is_some_and(|(_, n)| n.is_alphabetic())
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

    /// Every sentence of the shipped training data, and texts made to break it: the tokens,
    /// the normalised text and every n-gram (its tokens joined by a space) are what the
    /// reference gives.
    #[test]
    fn one_string_tokens_match_the_reference_on_the_training_data_and_odd_texts() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/vader");
        let mut texts: Vec<String> = [
            "",
            " ",
            "!!",
            "don't STOP",
            "'quoted' it's",
            "rock'",
            "a:)b :) :-( <3 =) (: ;)",
            "x:data",
            "end :p",
            "İstanbul ÇAĞ Straße ΣΑΣ",
            "émoji 😀 👍🏽 ok",
            "tab\tnew\nline",
            "a\u{2019}s b\u{2019} \u{2019}c",
            "??!:(:(",
            "3.14 is 1,000",
            "ＦＵＬＬ width",
        ]
        .map(str::to_owned)
        .to_vec();
        for file in std::fs::read_dir(dir).unwrap() {
            let path = file.unwrap().path();
            if path.to_string_lossy().ends_with("_GroundTruth.txt") {
                let data = std::fs::read_to_string(&path).unwrap();
                texts.extend(data.lines().filter_map(|l| l.split('\t').nth(2)).map(str::to_owned));
            }
        }
        assert!(texts.len() > 20_000, "the training data was read: {}", texts.len());
        for text in &texts {
            let want = reference_tokenize(text);
            assert_eq!(tokenize(text), want, "{text:?}");
            assert_eq!(normalize(text), want.join(" "), "{text:?}");
            let joined: Vec<String> = (1..=3).flat_map(|n| want.windows(n).map(|w| w.join(" "))).collect();
            assert_eq!(ngrams(text, 1, 3), joined, "{text:?}");
        }
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
