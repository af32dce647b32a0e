//! sacreBLEU's tokenizers, reimplemented: `13a` (mteval-v13a, the default), `intl`
//! (mteval-v14 international) and `none`. Substitutions are leftmost, non-overlapping, applied in
//! order, as Python's `re.sub` applies them; words are then split on whitespace.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokenize {
    #[serde(rename = "13a")]
    Thirteen,
    Intl,
    None,
}

impl Tokenize {
    pub fn name(self) -> &'static str {
        match self {
            Tokenize::Thirteen => "13a",
            Tokenize::Intl => "intl",
            Tokenize::None => "none",
        }
    }
}

impl std::str::FromStr for Tokenize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "13a" => Ok(Tokenize::Thirteen),
            "intl" => Ok(Tokenize::Intl),
            "none" => Ok(Tokenize::None),
            _ => Err(format!("unknown tokenizer `{s}` (13a, intl, none)")),
        }
    }
}

/// 13a: ASCII punctuation except `'`, `,`, `-`, `.` is split off; `.` and `,` are split off
/// unless between digits; `-` after a digit is split off.
static RE_13A: LazyLock<[(Regex, &str); 4]> = LazyLock::new(|| {
    [
        (Regex::new(r"([\{-~\[-` -&\(-\+:-@/])").unwrap(), " $1 "),
        (Regex::new(r"([^0-9])([\.,])").unwrap(), "$1 $2 "),
        (Regex::new(r"([\.,])([^0-9])").unwrap(), " $1 $2"),
        (Regex::new(r"([0-9])(-)").unwrap(), "$1 $2 "),
    ]
});

/// intl: Unicode punctuation next to a non-digit, and every symbol, are split off.
static RE_INTL: LazyLock<[(Regex, &str); 3]> = LazyLock::new(|| {
    [
        (Regex::new(r"(\P{N})(\p{P})").unwrap(), "$1 $2 "),
        (Regex::new(r"(\p{P})(\P{N})").unwrap(), " $1 $2"),
        (Regex::new(r"(\p{S})").unwrap(), " $1 "),
    ]
});

/// Python's `str.isspace`: Unicode whitespace plus the ASCII information separators.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

fn apply(rules: &[(Regex, &str)], mut line: String) -> String {
    for (re, rep) in rules {
        line = re.replace_all(&line, *rep).into_owned();
    }
    line
}

/// Splits on whitespace and joins with single spaces (Python's `' '.join(s.split())`).
fn squeeze(s: &str) -> String {
    s.split(is_py_space).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

impl Tokenize {
    pub fn apply(self, line: &str) -> String {
        match self {
            Tokenize::None => line.to_string(),
            Tokenize::Thirteen => {
                let mut l = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
                if l.contains('&') {
                    l = l.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
                }
                squeeze(&apply(&*RE_13A, format!(" {l} ")))
            }
            Tokenize::Intl => squeeze(&apply(&*RE_INTL, line.to_string())),
        }
    }
}

/// sacreBLEU's segment preprocessing: optional lowercasing, trailing whitespace removed, then
/// the tokenizer.
pub fn preprocess(line: &str, tokenize: Tokenize, lowercase: bool) -> String {
    let line = if lowercase { line.to_lowercase() } else { line.to_string() };
    tokenize.apply(line.trim_end_matches(is_py_space))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirteen_a_by_hand() {
        let t = Tokenize::Thirteen;
        assert_eq!(t.apply("Hello, world!"), "Hello , world !");
        assert_eq!(t.apply("It costs $3.50, or 1,000 yen."), "It costs $ 3.50 , or 1,000 yen .");
        assert_eq!(t.apply("don't re-use 2-3 &quot;x&quot;"), "don't re-use 2 - 3 \" x \"");
        assert_eq!(t.apply("a/b (c) [d]"), "a / b ( c ) [ d ]");
        assert_eq!(t.apply("  "), "");
    }

    #[test]
    fn intl_splits_unicode_punctuation_and_symbols() {
        assert_eq!(Tokenize::Intl.apply("«Hallo», sagte er… 5€"), "« Hallo » , sagte er … 5 €");
    }
}
